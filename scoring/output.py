"""The output folder of ``uq-score``::

    DIR/run.json       the run's settings: model tag, N, seed, input and its fingerprint,
                       chunk size, runner; a rerun must match them (it resumes)
    DIR/scores/        the Parquet dataset, one row per input (scoring.scorer); locally
                       one shard per chunk, part-00000.parquet ..., each written to a
                       hidden temporary name and renamed, so a shard is whole or absent
    DIR/summary.json   written last, from the scores: counts, flagged fractions by
                       reason, unreadable rows by id, and the drift of the scored rows
                       against the card's calibration reference at N
                       (:func:`drift_summary`)

Read the scores with ``pandas.read_parquet("DIR/scores")`` or any Parquet reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.sources import InputError
from uncertainty import drift
from uncertainty.calibration import REASONS

MANIFEST, SUMMARY, SCORES = "run.json", "summary.json", "scores"
#: unreadable rows listed by id in summary.json (all are counted)
MAX_LISTED_UNREADABLE = 10_000
_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")
DRIFT_METHOD = (
    "the service's drift statistic (uncertainty/drift.py) with one window holding every "
    "scored row: chi-square of 10 equiprobable bins of each score's reference CDF value, "
    "divided by 1 + rows / reference rows; about 9 for rows like the calibration rows, "
    "growing with the rows when they differ. drifted: the largest is above the service's "
    "alarm threshold"
)


def prepare(output: Path, manifest: dict[str, Any]) -> str:
    """Make ``output`` ready for the run ``manifest`` describes: ``"new"``, ``"resume"``
    (a run with the same settings started here) or ``"complete"`` (it finished).
    Raises InputError for a folder that holds something else."""
    path = output / MANIFEST
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            raise InputError(f"{path} is not a uq-score manifest: use another --output") from None
        differences = [key for key in sorted(set(previous) | set(manifest))
                       if previous.get(key) != manifest.get(key)]
        if differences:
            key = differences[0]
            raise InputError(
                f"{output} holds a run with other settings ({key}: {previous.get(key)!r}, now "
                f"{manifest.get(key)!r}): use another --output, or delete it to start over"
            )
        return "complete" if (output / SUMMARY).is_file() else "resume"
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InputError(f"{output} exists and holds no uq-score run: use a new or empty folder")
    try:
        (output / SCORES).mkdir(parents=True, exist_ok=True)
        write_json(path, manifest)
    except OSError as error:
        raise InputError(f"cannot write to {output}: {error.strerror or error}") from None
    return "new"


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: to a hidden temporary file, then rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def shard_path(output: Path, k: int) -> Path:
    return output / SCORES / f"part-{k:05d}.parquet"


def written_shards(output: Path) -> set[int]:
    """The chunks whose shard is in ``output`` (whole: shards appear by rename)."""
    folder = output / SCORES
    if not folder.is_dir():
        return set()
    return {int(match[1]) for name in os.listdir(folder) if (match := _SHARD.match(name))}


_TEXT_COLUMNS = ["class_name", "reasons", "prediction_set", "model", "error"]
#: Parquet options of the scores: dictionary pages and compression only for ids and text.
#: Dictionary-encoding the float columns (and giving up) tripled the write time, and
#: snappy halved its speed to shrink the files by a sixth: random doubles do not compress.
PARQUET_OPTIONS = {
    "use_dictionary": _TEXT_COLUMNS,
    "compression": {column: "snappy" for column in ["id", *_TEXT_COLUMNS]} | {
        column: "none" for column in ["label", "confidence", "probabilities", "std",
                                      "predictive_entropy", "expected_entropy",
                                      "mutual_information", "risk_score", "novelty_score",
                                      "flagged", "n_samples", "calibrated_n_samples"]},
}


def write_shard(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary, **PARQUET_OPTIONS)
    os.replace(temporary, path)


def read_scores(output: Path, columns: list[str] | None = None) -> pa.Table:
    """The whole scores dataset (for tests and small runs)."""
    import pyarrow.dataset as pads

    return pads.dataset(output / SCORES, format="parquet").to_table(columns=columns)


def summarize_scores(output: Path, run: dict[str, Any], card) -> dict[str, Any]:
    """summary.json's content, from the scores in ``output`` (whichever runner wrote them):
    a scan of five small columns, a batch at a time. ``run``: the manifest."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(output / SCORES, format="parquet")
    rows = scored = flagged = 0
    by_reason = dict.fromkeys(REASONS, 0)
    labels = dict.fromkeys(card.class_names, 0)
    unreadable_count, unreadable = 0, []
    reference = next((c.reference for c in card.calibrations
                      if c.n_samples == run["n_samples"]), None)
    drift_counts = {name: np.zeros(drift.BINS, np.int64) for name in drift.SCORES}
    for batch in dataset.to_batches(columns=["id", "class_name", "flagged", "reasons", "error",
                                             "mutual_information", "confidence"]):
        rows += batch.num_rows
        if reference is not None:
            count_drift_bins(batch, reference, run["seed"], drift_counts)
        failed = pc.is_valid(batch.column("error"))
        failures = int(pc.sum(failed).as_py() or 0)
        scored += batch.num_rows - failures
        flagged += int(pc.sum(pc.fill_null(batch.column("flagged"), False)).as_py() or 0)
        for entry in pc.value_counts(pc.list_flatten(batch.column("reasons"))).to_pylist():
            by_reason[entry["values"]] += entry["counts"]
        for entry in pc.value_counts(batch.column("class_name").drop_null()).to_pylist():
            labels[entry["values"]] += entry["counts"]
        if failures:
            unreadable_count += failures
            failed_rows = batch.filter(failed)
            unreadable += [{"id": row_id, "error": error} for row_id, error in zip(
                failed_rows.column("id").to_pylist(), failed_rows.column("error").to_pylist(),
                strict=True)]
            unreadable = sorted(unreadable, key=lambda row: str(row["id"]))[:MAX_LISTED_UNREADABLE]
    calibration = card.calibration_for(run["n_samples"])

    def share(count: int) -> dict[str, Any]:
        return {"count": count, "fraction": count / scored if scored else None}

    return {
        "model": run["model"],
        "input": run["input"],
        "n_samples": run["n_samples"],
        "calibrated_n_samples": calibration.n_samples,
        "seed": run["seed"],
        "rows": rows,
        "scored": scored,
        "unreadable": {"count": unreadable_count, "listed": len(unreadable), "rows": unreadable},
        "flagged": share(flagged),
        "flagged_by_reason": {reason: share(count) for reason, count in by_reason.items()},
        "labels": labels,
        "risk_policy": {"metric": calibration.risk_policy.metric,
                        "threshold": calibration.risk_policy.threshold},
        "novelty_policy": {"metric": calibration.novelty_policy.metric,
                           "threshold": calibration.novelty_policy.threshold},
        "drift": drift_summary(reference, drift_counts, card.calibrated_n_samples,
                               run["n_samples"]),
        "scores": str(output / SCORES),
    }


def row_draws(ids: list[Any], seed: int) -> np.ndarray:
    """Two uniform draws in [0, 1) per row ``[rows, 2]`` (one per drift score) from the run's
    seed and the row's id: the drift test breaks ties with them, so its result does not
    depend on the order in which a runner wrote the rows."""
    key = hashlib.blake2b(f"uq-score drift\0{seed}".encode(), digest_size=16).digest()
    digests = b"".join(hashlib.blake2b(str(row_id).encode(), digest_size=16, key=key).digest()
                       for row_id in ids)
    return (np.frombuffer(digests, "<u8").reshape(-1, 2) >> np.uint64(11)) * 2.0**-53


def count_drift_bins(batch: pa.RecordBatch, reference: drift.DriftReference, seed: int,
                     counts: dict[str, np.ndarray]) -> None:
    """Add the scored rows of ``batch`` to each drift score's bin counts ``[bins]``."""
    scored = batch.filter(pc.is_null(batch.column("error")))
    if not scored.num_rows:
        return
    draws = row_draws(scored.column("id").to_pylist(), seed)
    confidence = scored.column("confidence").to_numpy()
    values = {"mutual_information": scored.column("mutual_information").to_numpy(),
              "one_minus_confidence": 1.0 - confidence}
    for column, name in enumerate(drift.SCORES):
        uniform = drift.to_uniform(reference.scores[name], values[name], draws[:, column])
        counts[name] += np.bincount(drift.to_bins(uniform), minlength=drift.BINS)


def drift_summary(reference: drift.DriftReference | None, counts: dict[str, np.ndarray],
                  calibrated_n_samples: list[int], n_samples: int) -> dict[str, Any]:
    """summary.json's ``drift``: each score's :func:`uncertainty.drift.batch_statistic` of
    the scored rows against the card's reference at ``n_samples``, the largest as
    ``score``; or a null score and a note that says why there is none."""
    scored = int(counts[drift.SCORES[0]].sum())
    if reference is None:
        calibrated = ", ".join(map(str, calibrated_n_samples))
        why = (f"the card holds no calibration reference at N = {n_samples} (calibrated N: "
               f"{calibrated}); scores move with N, so another N's reference would not do"
               if n_samples not in calibrated_n_samples else
               "the card was calibrated before calibration references were kept: "
               "recalibrate it with uq-calibrate")
        return {"score": None, "note": f"no drift score: {why}"}
    if scored < drift.WINDOW:
        return {"score": None, "note": f"no drift score: {scored} scored rows, fewer than the "
                f"{drift.WINDOW} of the service's drift window"}
    statistics = {name: round(drift.batch_statistic(counts[name], reference.rows), 3)
                  for name in drift.SCORES}
    score = max(statistics.values())
    return {"score": score, "scores": statistics, "threshold": drift.THRESHOLD,
            "drifted": score > drift.THRESHOLD, "rows": scored,
            "reference_rows": reference.rows, "reference_n_samples": n_samples,
            "method": DRIFT_METHOD}
