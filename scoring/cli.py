"""uq-score: score a backlog offline, to Parquet, on one machine or on a Ray cluster.

    uq-score --model uq-classifier:latest --input npz:backlog.npz --output scores/
    uq-score --model TAG --input photos/ --output DIR --n-samples 30 --seed 7
    uq-score --model TAG --input s3://bucket/table/ --output /shared/DIR --ray-address auto

Every row gets the service's prediction (mean probabilities, std, entropies, mutual
information, risk flag with its reasons, conformal prediction set) at N samples,
with the card's calibration for N. A row's randomness comes from ``--seed`` and
its id, so the scores are the same bit for bit however the rows are chunked,
batched or distributed. A rerun with the same settings resumes (locally: shards
already written are skipped); with other settings it is refused. Bad input that
stops the whole run is reported in one line with exit code 2; a row that cannot
be used (an unreadable image) is listed by id in summary.json and the rest scored.
summary.json also holds the drift of the scored rows against the card's
calibration reference at N (scoring.output.drift_summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from artifacts.inputs import InputSpec
from artifacts.store import MODEL_FILE, CardError, load_classifier, read_card
from commandline.arguments import OneLineErrorParser, fail, integer_at_least, positive_integer

PROG = "uq-score"
#: Rows per chunk (one local shard) by default, lowered so that a chunk's float32
#: inputs stay within DEFAULT_CHUNK_BYTES.
DEFAULT_CHUNK_ROWS = 16384
DEFAULT_CHUNK_BYTES = 64 * 2**20
MANIFEST_FORMAT = 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG, description="Score inputs offline with MC dropout, to Parquet and "
        "summary.json, locally or on a Ray cluster.")
    parser.add_argument("--model", default="uq-classifier:latest",
                        help="model tag in the BentoML store (default: %(default)s)")
    parser.add_argument("--input", required=True, metavar="SRC",
                        help="npz:PATH (array x, optional ids), a folder of PNG/JPEG images "
                        "(ids: relative paths), or a Parquet file or folder with an id column "
                        "and an image-bytes or number-list column")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR",
                        help="folder for run.json, scores/*.parquet and summary.json; a rerun "
                        "with the same settings resumes")
    parser.add_argument("--n-samples", type=positive_integer, metavar="N",
                        help="Monte Carlo samples per row (default: the card's default N)")
    parser.add_argument("--seed", type=integer_at_least(0), default=0,
                        help="with each row's id, seeds the row's samples (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_integer,
                        help="rows per engine call (default: as many as one compiled call of "
                        "8192 rows holds at N, rounded up to whole calls of the engine's "
                        "prefix); does not change the results")
    parser.add_argument("--chunk-size", type=positive_integer, metavar="ROWS",
                        help=f"rows per chunk, one local shard (default: {DEFAULT_CHUNK_ROWS}, "
                        f"fewer for inputs over {DEFAULT_CHUNK_BYTES // 2**20} MiB a chunk)")
    parser.add_argument("--id-column", default="id",
                        help="Parquet input: the id column (default: %(default)s)")
    parser.add_argument("--column",
                        help="Parquet input: the image-bytes or number-list column (default: "
                        "'image' or 'x', or the only other column)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="score on this Ray cluster ('auto': the one this machine is part "
                        "of) with Ray Data; the output folder must be shared with its workers")
    parser.add_argument("--ray-actors", type=positive_integer,
                        help="Ray: engine actors (default: the cluster's CPUs but one, "
                        "which Ray Data's reads and writes use, / --ray-cpus-per-actor)")
    parser.add_argument("--ray-cpus-per-actor", type=positive_integer, default=1,
                        help="Ray: CPUs (and TensorFlow threads) per actor (default: "
                        "%(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    return parser


def default_chunk_rows(input_size: int) -> int:
    """DEFAULT_CHUNK_ROWS, or fewer so that a chunk's float32 inputs fit DEFAULT_CHUNK_BYTES."""
    return max(1, min(DEFAULT_CHUNK_ROWS, DEFAULT_CHUNK_BYTES // (4 * input_size)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return fail(PROG, "uq-score needs pyarrow: pip install 'uq-serving[ray]'")
    from scoring.sources import InputError, check_exists  # pyarrow: checked just above

    try:
        check_exists(args.input)  # before the model loads: a typo fails in a second
    except InputError as error:
        return fail(PROG, str(error))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _run(args)
    except InputError as error:
        return fail(PROG, str(error))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def stored_classifier(tag: str):
    """The store entry of ``tag``, its card and full tag, without loading TensorFlow (a Ray
    driver ships the entry's ``.keras`` file and never runs the model). Raises InputError."""
    import bentoml

    from scoring.sources import InputError  # pyarrow: the ray extra

    try:
        model_ref = bentoml.models.get(tag)
        return model_ref, read_card(model_ref), str(model_ref.tag)
    except bentoml.exceptions.NotFound:
        raise InputError(f"model {tag!r} is not in the store ('bentoml models list' shows "
                         "what is)") from None
    except (CardError, ValueError) as error:  # a card too old, a malformed tag
        raise InputError(str(error)) from None


def _run(args: argparse.Namespace) -> int:
    # pyarrow: the ray extra, which main checks for
    from scoring.output import SUMMARY, prepare, summarize_scores, write_json, written_shards
    from scoring.sources import InputError, open_source

    started = time.perf_counter()
    model_ref, card, tag = stored_classifier(args.model)
    n_samples = args.n_samples or card.default_n_samples
    spec = InputSpec(tuple(card.input_shape), tuple(card.value_range))
    source = open_source(args.input, spec, args.id_column, args.column)
    chunk_rows = args.chunk_size or default_chunk_rows(spec.size)
    runner = "ray" if args.ray_address else "local"
    manifest = {
        "format": MANIFEST_FORMAT, "model": tag, "n_samples": n_samples, "seed": args.seed,
        "input": args.input, "input_fingerprint": source.fingerprint(), "rows": source.rows,
        "kind": source.kind, "chunk_rows": chunk_rows, "runner": runner,
    }
    state = prepare(args.output, manifest)
    if state == "complete":
        print(f"{PROG}: {args.output} already holds this run, complete: see "
              f"{args.output / SUMMARY}", file=sys.stderr)
        return 0
    score = _score_on_ray if args.ray_address else _score_locally
    facts = score(args, model_ref, card, tag, source, n_samples, chunk_rows, state)
    if facts is None:
        return 1
    summary = summarize_scores(args.output, manifest, card)
    if summary["rows"] != source.rows:  # files in scores/ that this run did not write
        raise InputError(f"{args.output} holds {summary['rows']} scored rows for "
                         f"{source.rows} inputs (written shards: "
                         f"{len(written_shards(args.output))}): delete it and run again")
    seconds = time.perf_counter() - started
    rows_now = facts.pop("rows_scored", source.rows)
    summary["runner"] = {"kind": runner, **facts, "seconds": round(seconds, 3),
                         "rows_per_second": round(rows_now / seconds, 1)}
    write_json(args.output / SUMMARY, summary)
    unreadable = summary["unreadable"]["count"]
    flagged = summary["flagged"]["fraction"] or 0.0
    print(f"{PROG}: {summary['scored']:,} of {summary['rows']:,} rows scored"
          + (f", {unreadable:,} unreadable (listed in summary.json)" if unreadable else "")
          + f", {flagged:.1%} flagged, in {seconds:.1f} s -> {summary['scores']}",
          file=sys.stderr)
    return 0


def _score_locally(args, model_ref, card, tag, source, n_samples, chunk_rows, state) -> dict:
    """Score in this process; the runner's facts for summary.json."""
    # import TensorFlow: only when scoring in this process
    from scoring.local import run_local
    from scoring.scorer import Scorer
    from scoring.sources import InputError
    from uncertainty.mc import configure_tensorflow_threads

    configure_tensorflow_threads()
    model, card, tag = load_classifier(model_ref)
    try:
        scorer = Scorer(model, card, tag, n_samples, args.seed, args.batch_size)
    except ValueError as error:  # a model the engine cannot sample
        raise InputError(f"model {tag}: {error}") from None
    facts = run_local(scorer, source, args.output, chunk_rows, progress=not args.no_progress)
    return {"batch_size": scorer.batch_size, **facts}


def _score_on_ray(args, model_ref, card, tag, source, n_samples, chunk_rows, state
                  ) -> dict | None:
    """Score on the Ray cluster at --ray-address; the runner's facts for summary.json, or
    None after a one-line report of a failed Ray job."""
    # pyarrow and Ray: the ray extra
    from scoring.output import SCORES
    from scoring.ray_runner import RayRunError, connect, disconnect, run_ray
    from scoring.sources import InputError

    if state == "resume" and any((args.output / SCORES).iterdir()):
        raise InputError(f"{args.output} holds an unfinished Ray run; Ray runs do not resume: "
                         "delete it and run again")
    with open(model_ref.path_of(MODEL_FILE), "rb") as stream:
        model_bytes = stream.read()
    connected = connect(args.ray_address)
    try:
        facts = run_ray(model_bytes, card, tag, source, args.output, n_samples=n_samples,
                        seed=args.seed, batch_size=args.batch_size, chunk_rows=chunk_rows,
                        actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                        progress=not args.no_progress)
    except RayRunError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return None
    finally:
        if connected:
            disconnect()
    return {"address": args.ray_address, "batch_size": args.batch_size, **facts}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

