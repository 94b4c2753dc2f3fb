"""What stratified (Latin hypercube) dropout masks cost and buy, against independent ones.

On a stored classifier and its test split, in one run:

* cost: the time of ``MCEngine.sample(x, 8, stratified=True)`` against the same call
  with independent masks, for calls of 64 to 4,096 rows (medians of ``--rounds``
  interleaved rounds);
* gain: how much the mean of N samples varies between draws (the sum over classes of
  its variance across ``--draws`` seeds, averaged over ``--rows`` test rows), stratified
  against independent, for N = 8, 12 (a block and a half), 16 and 32.

    python -m benchmarks.stratified --model uq-classifier:latest \\
        --output benchmarks/results/stratified.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from artifacts.store import load_classifier
from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from training.data import load_dataset

CALL_ROWS = (64, 512, 2048, 4096)
SAMPLE_COUNTS = (8, 12, 16, 32)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.stratified",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/stratified.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if min(args.rounds, args.rows) < 1 or args.draws < 2:
        parser.error("--rounds and --rows must be >= 1, --draws >= 2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import bentoml

    from uncertainty.mc import MCEngine, configure_tensorflow_threads  # imports TensorFlow

    configure_tensorflow_threads()
    try:
        model, card, tag = load_classifier(args.model)
    except bentoml.exceptions.NotFound:
        return fail(parser.prog, f"model {args.model!r} is not in the store")
    x = load_dataset(card.dataset).x_test[: max(args.rows, max(CALL_ROWS) // 8)]
    engine = MCEngine(model)

    times: dict[tuple[int, bool], list[float]] = {}
    for rows in CALL_ROWS:  # compile first
        for stratified in (False, True):
            engine.sample(x[: rows // 8], 8, stratified=stratified)
    for _ in range(args.rounds):
        for rows in CALL_ROWS:
            for stratified in (False, True):
                started = time.perf_counter()
                for _ in range(5):
                    engine.sample(x[: rows // 8], 8, stratified=stratified)
                times.setdefault((rows, stratified), []).append(
                    (time.perf_counter() - started) / 5)
    cost = [{"rows": rows,
             "independent_ms": 1e3 * statistics.median(times[rows, False]),
             "stratified_ms": 1e3 * statistics.median(times[rows, True]),
             "ratio": statistics.median(  # round by round: the machine drifts
                 s / i for s, i in zip(times[rows, True], times[rows, False], strict=True))}
            for rows in CALL_ROWS]

    rows = x[: args.rows]
    gain = []
    for n_samples in SAMPLE_COUNTS:
        spread = {}
        for stratified in (False, True):
            means = np.stack([engine.sample(rows, n_samples, seed=seed, stratified=stratified)
                              .mean(axis=0) for seed in range(args.draws)])  # [draws, rows, C]
            spread[stratified] = float(means.var(axis=0, ddof=1).sum(axis=1).mean())
        gain.append({"n_samples": n_samples, "independent_variance": spread[False],
                     "stratified_variance": spread[True],
                     "ratio": spread[True] / spread[False]})
        print(f"N={n_samples}: the stratified mean varies {spread[True] / spread[False]:.2f}x "
              "as much", flush=True)

    print(f"\n{tag}: an engine call of 8 samples per row, medians of {args.rounds} rounds\n")
    print("| rows | independent ms | stratified ms | stratified / independent |")
    print("|---|---|---|---|")
    for row in cost:
        print(f"| {row['rows']} | {row['independent_ms']:.2f} | {row['stratified_ms']:.2f} | "
              f"{row['ratio']:.2f} |")
    print(f"\nvariance of the mean of N samples over {args.draws} draws, {len(rows)} test rows\n")
    print("| N | independent | stratified | stratified / independent |")
    print("|---|---|---|---|")
    for row in gain:
        print(f"| {row['n_samples']} | {row['independent_variance']:.2e} | "
              f"{row['stratified_variance']:.2e} | {row['ratio']:.2f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**origin, "model": tag, "rounds": args.rounds,
                                       "draws": args.draws, "rows": len(rows),
                                       "cost": cost, "gain": gain}, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
