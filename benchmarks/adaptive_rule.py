"""How the adaptive sample count's settings trade samples for quality, offline.

One draw of 100 samples per row of the validation and test splits (common random
numbers); every variant of the procedure (uncertainty.sequential) reads its rounds
from the same draws (the first n samples of each row, which is how a fresh draw is
distributed), is calibrated on the validation rows as ``calibrate_auto`` does, and
judged on the test rows against fixed N seen through the same draws. Each figure is
the mean over ``--repeats`` orderings of the 100 samples (samples are exchangeable).
Beside them, two oracles that know each row's 100-sample draw: one gives the row N in
proportion to the spread of its top-class probability (n = c * std, rounded up to the
rounds' counts); the other gives it the N that minimises the expected log-loss of the
mean at a given mean N, n = c * sqrt(B) (any integer from 1 to 100), where B = sum_c
var_c / (2 p_c) is the log-loss that one sample's noise adds (the mean of n adds B / n,
to second order). No rule that must estimate a row's spread from its own samples can
do better than the second at the same mean N: a bound on NLL at a mean N.

    python benchmarks/adaptive_rule.py --model uq-classifier:latest \\
        --output benchmarks/results/adaptive_rule.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from training.cli import OneLineErrorParser, fail  # noqa: E402

#: (name, first round, StoppingRule settings)
VARIANTS = (
    ("default", 8, {}),
    ("first round 4", 4, {}),
    ("first round 4, confidence 0.99", 4, {"confidence": 0.99}),
    ("confidence 0.98", 8, {"confidence": 0.98}),
    ("confidence 0.90", 8, {"confidence": 0.90}),
    ("no tolerances", 8, {"label_tolerance": 0.0, "set_tolerance": 0.0, "risk_tolerance": 0.0,
                          "novelty_tolerance": 0.0}),
)
FIXED = (8, 12, 16, 25, 50, 100)
ORACLE_SCALES = (60, 100, 200)
#: n = c * sqrt(B): c = 50 gives a mean N of about 12 on the default Fashion-MNIST model
LOG_LOSS_ORACLE_SCALES = (50, 75)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path,
                        default=Path("benchmarks/results/adaptive_rule.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import bentoml

    from artifacts.store import load_classifier
    from training.data import load_dataset
    from training.evaluation import mc_samples
    from uncertainty import metrics
    from uncertainty.calibration import decide
    from uncertainty.engine import MCEngine, configure_tensorflow_threads
    from uncertainty.sequential import (
        StoppingRule,
        calibrate_auto,
        round_schedule,
        run_sequential,
    )

    configure_tensorflow_threads()
    try:
        model, card, tag = load_classifier(args.model)
    except bentoml.exceptions.NotFound:
        return fail(parser.prog, f"model {args.model!r} is not in the store")
    training = card.training
    data = load_dataset(card.dataset, training.get("validation_fraction", 0.1),
                        training.get("seed", 0))
    engine = MCEngine(model)
    print(f"drawing 100 samples for {len(data.x_val)} validation and {len(data.x_test)} test "
          "rows", flush=True)
    draws = {name: mc_samples(engine, x, 100, args.seed + offset)
             for name, x, offset in (("val", data.x_val, 0), ("test", data.x_test, 10**6))}
    stopping = card.calibration_for(100)
    y_val, y_test = data.y_val, data.y_test
    rows_test = np.arange(len(y_test))
    reference = draws["test"].astype(np.float64).mean(axis=0)  # [rows, classes]: N=100
    top = reference.argmax(axis=1)
    spread = draws["test"][:, rows_test, top].std(axis=0)  # [rows] the oracle's knowledge
    variance = draws["test"].astype(np.float64).var(axis=0, ddof=1)  # [rows, classes]
    noise_cost = np.where(reference > 0, variance / (2 * np.maximum(reference, 1e-300)),
                          0.0).sum(axis=1)  # [rows] B

    def orderings(samples: np.ndarray):
        for repeat in range(args.repeats):
            if repeat == 0:
                yield samples
                continue
            order = np.argsort(np.random.default_rng(repeat).random(samples.shape[:2]), axis=0)
            yield np.take_along_axis(samples, order[:, :, None], axis=0)

    def run(samples: np.ndarray, rows: int, rule: StoppingRule, schedule):
        starts = (0, *schedule)
        return run_sequential(lambda active, r, count: samples[starts[r]:starts[r] + count][
            :, active], rows, rule, schedule)

    def quality(mean: np.ndarray) -> dict[str, float]:
        return {"accuracy": metrics.accuracy(mean, y_test), "nll": metrics.nll(mean, y_test),
                "ece": metrics.ece(mean, y_test)}

    results: dict[str, dict[str, float]] = {}

    def record(name: str, figures: list[dict[str, float]]) -> None:
        results[name] = {key: float(np.mean([f[key] for f in figures])) for key in figures[0]}

    for n in FIXED:
        record(f"fixed N={n}", [{"mean_n_samples": float(n), **quality(
            test[:n].astype(np.float64).mean(axis=0))} for test in orderings(draws["test"])])
    for name, first, settings in VARIANTS:
        rule = StoppingRule.of(stopping, **settings)
        schedule = round_schedule(first, 100)
        figures = []
        for val, test in zip(orderings(draws["val"]), orderings(draws["test"]), strict=True):
            calibrated = run(val, len(y_val), rule, schedule)
            auto = calibrate_auto(
                calibrated, y_val, schedule=schedule, stopping=rule, stopping_n_samples=100,
                target_error=stopping.risk_policy.target_error,
                conformal_alpha=card.conformal_alpha,
                novelty_false_alarm_rate=stopping.novelty_policy.false_alarm_rate)
            result = run(test, len(y_test), rule, schedule)
            decision = decide(result.summary, auto.calibration)
            accepted = ~decision.error_risk
            figures.append({
                "mean_n_samples": float(result.n_samples.mean()),
                **quality(result.summary.mean),
                "selective_error": float((result.summary.label != y_test)[accepted].mean()),
                "conformal_coverage": float(decision.prediction_sets[rows_test, y_test].mean()),
            })
        record(f"auto: {name}", figures)
        print(f"auto: {name} (first {first}, {dataclasses.asdict(rule)})", flush=True)
    def oracle(name: str, n: np.ndarray) -> None:
        """Each test row's mean over its first n[row] samples."""
        figures = []
        for test in orderings(draws["test"]):
            used = np.arange(100)[:, None] < n[None, :]  # [100, rows]
            mean = (test * used[:, :, None]).sum(axis=0) / n[:, None]
            figures.append({"mean_n_samples": float(n.mean()), **quality(mean)})
        record(name, figures)

    steps = np.array(round_schedule(8, 100))
    for scale in ORACLE_SCALES:
        wanted = np.clip(scale * spread, steps[0], steps[-1])
        oracle(f"oracle: n = {scale} * std",
               steps[np.minimum(np.searchsorted(steps, wanted), len(steps) - 1)])
    for scale in LOG_LOSS_ORACLE_SCALES:
        oracle(f"oracle: n = {scale} * sqrt(B)",
               np.clip(np.ceil(scale * np.sqrt(noise_cost)), 1, 100).astype(np.int64))

    base = results["fixed N=100"]
    print(f"\n{tag}, test split, mean of {args.repeats} orderings of one 100-sample draw\n")
    print("| | mean N | accuracy - N=100 | NLL - N=100 | ECE | error among unflagged |")
    print("|---|---|---|---|---|---|")
    for name, figures in results.items():
        selective = figures.get("selective_error")
        print(f"| {name} | {figures['mean_n_samples']:.2f} | "
              f"{figures['accuracy'] - base['accuracy']:+.4f} | "
              f"{figures['nll'] - base['nll']:+.4f} | {figures['ece']:.4f} | "
              f"{'' if selective is None else f'{selective:.4f}'} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": tag, "repeats": args.repeats,
                                       "results": results}, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
