"""One chunk of inputs -> one table of scored rows, the same wherever it runs.

A row's randomness comes from the run's seed and the row's id, never from where the
row sits: :func:`row_seeds` hashes ``(seed, id)`` into a 64-bit seed per row and the
engine's ``sample_keyed`` draws that row's dropout masks from it (SplitMix64 streams
keyed per row and dropout layer, counted by sample number). So a row gets the same
samples, bit for bit, in any chunk, batch, process, thread count or Ray actor. The
summary, risk decision and conformal set are per-row functions of the samples and
the card's calibration for N (``card.calibration_for(N)``, as the service uses).

Output columns (:func:`output_schema`), one row per input, in the chunk's order:
``id``, ``label``, ``class_name``, ``confidence``, ``probabilities`` and ``std``
(``[classes]``), ``predictive_entropy``, ``expected_entropy``, ``mutual_information``,
``risk_score`` (the calibrated error-risk metric), ``novelty_score``, ``flagged``,
``reasons``, ``prediction_set`` (class names), ``model``, ``n_samples``,
``calibrated_n_samples`` and ``error``: null for a scored row; for a row that could
not be used (an unreadable image, say) the message, and nulls in the prediction
columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from artifacts.inputs import InputSpec
from scoring.sources import decode
from uncertainty.calibration import REASONS, decide
from uncertainty.mc import MCEngine, splitmix64_numpy
from uncertainty.summary import summarize

if TYPE_CHECKING:
    import keras

    from artifacts.cards import ModelCard


def output_schema(id_type: pa.DataType, classes: int) -> pa.Schema:
    per_class = pa.list_(pa.float64(), classes)
    return pa.schema([
        ("id", id_type),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
        ("probabilities", per_class),
        ("std", per_class),
        ("predictive_entropy", pa.float64()),
        ("expected_entropy", pa.float64()),
        ("mutual_information", pa.float64()),
        ("risk_score", pa.float64()),
        ("novelty_score", pa.float64()),
        ("flagged", pa.bool_()),
        ("reasons", pa.list_(pa.string())),
        ("prediction_set", pa.list_(pa.string())),
        ("model", pa.string()),
        ("n_samples", pa.int32()),
        ("calibrated_n_samples", pa.int32()),
        ("error", pa.string()),
    ])


def row_seeds(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """uint64 ``[rows]``: each row's seed, a hash of the run's ``seed`` and the row's id
    (integer ids: SplitMix64, vectorised; string ids: keyed BLAKE2b)."""
    key = hashlib.blake2b(f"uq-score\0{seed}".encode(), digest_size=8).digest()
    if pa.types.is_integer(ids.type):
        values = np.asarray(ids.to_numpy(zero_copy_only=False)).astype(np.int64).view(np.uint64)
        with np.errstate(over="ignore"):
            return splitmix64_numpy(
                splitmix64_numpy(values) + np.uint64(int.from_bytes(key, "little"))
            )
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8, key=key).digest(),
                        "little") for value in ids.to_pylist()),
        dtype=np.uint64, count=len(ids),
    )


def default_batch_size(max_rows_per_call: int, n_samples: int, prefix_rows: int) -> int:
    """Rows per engine call: as many as one compiled call holds at N, rounded up to whole
    calls of the engine's keyed prefix (``prefix_rows`` inputs), which then pads none."""
    return -(-max(1, max_rows_per_call // n_samples) // prefix_rows) * prefix_rows


@dataclasses.dataclass(frozen=True)
class Sampled:
    """A chunk's ids ``[n]``, the positions of its usable rows ``[k]``, messages for the
    others (position -> message) and the usable rows' samples ``[n_samples, k, classes]``."""

    ids: pa.Array
    rows: np.ndarray
    errors: dict[int, str]
    samples: np.ndarray


class Scorer:
    """Scores chunks (``scoring.sources``) with one model at one N and seed."""

    def __init__(self, model: keras.Model, card: ModelCard, tag: str, n_samples: int,
                 seed: int, batch_size: int | None = None) -> None:
        self.engine = MCEngine(model)
        self.card, self.tag = card, tag
        self.n_samples, self.seed = n_samples, seed
        self.calibration = card.calibration_for(n_samples)
        self.spec = InputSpec(tuple(card.input_shape), tuple(card.value_range))
        self.batch_size = batch_size or default_batch_size(
            self.engine.max_rows_per_call, n_samples, self.engine.keyed_prefix_rows)
        self.class_names = np.asarray(card.class_names, dtype=object)
        self._class_names = pa.array(card.class_names, pa.string())

    def score(self, chunk: pa.Table, kind: str) -> pa.Table:
        """The output table of a chunk (``id`` and ``x`` or ``image``): one row per input."""
        return self.finish(self.sample(chunk, kind))

    def sample(self, chunk: pa.Table, kind: str) -> Sampled:
        """The engine's part of :meth:`score`: decode the chunk and draw its samples."""
        rows, x, errors = decode(chunk, kind, self.spec)
        ids = chunk.column("id").combine_chunks()
        seeds = row_seeds(ids.take(pa.array(rows, pa.int64())), self.seed)
        samples = np.empty((self.n_samples, len(rows), len(self.class_names)), np.float32)
        for start in range(0, len(rows), self.batch_size):
            batch = slice(start, start + self.batch_size)
            samples[:, batch] = self.engine.sample_keyed(x[batch], self.n_samples,
                                                         seeds[batch], seed=self.seed)
        return Sampled(ids, rows, errors, samples)

    def finish(self, sampled: Sampled) -> pa.Table:
        """The rest of :meth:`score`, without TensorFlow (the local runner overlaps it with
        the next chunk's sampling): summaries, risk decisions, the table."""
        parts = [self._summarize(sampled.samples[:, start:start + self.batch_size])
                 for start in range(0, len(sampled.rows), self.batch_size)]
        scored = {name: np.concatenate([part[name] for part in parts]) if parts else None
                  for name in _SCORED_FIELDS}
        return self._table(sampled.ids, sampled.rows, sampled.errors, scored)

    def _summarize(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        summary = summarize(samples)  # [N, batch, classes] -> per row
        decision = decide(summary, self.calibration)
        return {
            "label": summary.label, "confidence": summary.confidence,
            "probabilities": summary.mean, "std": summary.std,
            "predictive_entropy": summary.predictive_entropy,
            "expected_entropy": summary.expected_entropy,
            "mutual_information": summary.mutual_information,
            "risk_score": decision.risk_scores, "novelty_score": decision.novelty_scores,
            "error_risk": decision.error_risk, "novel": decision.novel,
            "prediction_set": decision.prediction_sets,
        }

    def _table(self, ids: pa.Array, rows: np.ndarray, errors: dict[int, str],
               scored: dict[str, np.ndarray | None]) -> pa.Table:
        n, classes = len(ids), len(self.class_names)
        schema = output_schema(ids.type, classes)
        if scored["label"] is None:  # nothing usable in this chunk
            scored = _empty_scored(classes)
        columns = {
            "label": pa.array(scored["label"].astype(np.int32)),
            "class_name": self._class_names.take(scored["label"]),
            "confidence": pa.array(scored["confidence"]),
            "probabilities": _per_class(scored["probabilities"]),
            "std": _per_class(scored["std"]),
            **{name: pa.array(scored[name]) for name in (
                "predictive_entropy", "expected_entropy", "mutual_information",
                "risk_score", "novelty_score")},
            "flagged": pa.array(scored["error_risk"] | scored["novel"]),
            "reasons": _names_where(np.stack([scored["error_risk"], scored["novel"]], axis=1),
                                    _REASON_NAMES),
            "prediction_set": _names_where(scored["prediction_set"], self._class_names),
        }
        if errors:  # spread the scored rows out to their positions, nulls elsewhere
            index = np.zeros(n, np.int64)
            index[rows] = np.arange(len(rows))
            usable = np.zeros(n, bool)
            usable[rows] = True
            positions = pa.array(index, mask=~usable)
            columns = {name: column.take(positions) for name, column in columns.items()}
        if errors:
            message = [None] * n
            for position, text in errors.items():
                message[position] = text
            error = pa.array(message, pa.string())
        else:
            error = pa.nulls(n, pa.string())
        return pa.table({
            "id": ids,
            **columns,
            "model": pa.array([self.tag], pa.string()).take(np.zeros(n, np.int32)),
            "n_samples": pa.array(np.full(n, self.n_samples, np.int32)),
            "calibrated_n_samples": pa.array(np.full(n, self.calibration.n_samples, np.int32)),
            "error": error,
        }, schema=schema)


_SCORED_FIELDS = ("label", "confidence", "probabilities", "std", "predictive_entropy",
                  "expected_entropy", "mutual_information", "risk_score", "novelty_score",
                  "error_risk", "novel", "prediction_set")


def _empty_scored(classes: int) -> dict[str, np.ndarray]:
    per_row = np.zeros(0)
    return {
        **{name: per_row for name in _SCORED_FIELDS},
        "label": np.zeros(0, np.int64),
        "probabilities": np.zeros((0, classes)), "std": np.zeros((0, classes)),
        "error_risk": np.zeros(0, bool), "novel": np.zeros(0, bool),
        "prediction_set": np.zeros((0, classes), bool),
    }


def _per_class(values: np.ndarray) -> pa.FixedSizeListArray:
    """float64 ``[rows, classes]`` as a fixed-size list per row."""
    return pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(values, dtype=np.float64).reshape(-1)), values.shape[1]
    )


_REASON_NAMES = pa.array(REASONS, pa.string())


def _names_where(chosen: np.ndarray, names: pa.Array) -> pa.ListArray:
    """bool ``[rows, k]`` -> per row the list of ``names[j]`` where ``chosen[row, j]``."""
    counts = chosen.sum(axis=1)
    offsets = np.zeros(len(chosen) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    _, which = np.nonzero(chosen)  # row-major: each row's names in order
    return pa.ListArray.from_arrays(pa.array(offsets), names.take(which))
