"""How the adaptive sample count's settings trade samples for quality, offline.

In each of ``--repeats`` rounds, one draw of 100 independent samples per row of the
validation and test splits, and one of 100 stratified samples (Latin hypercubes of masks
in blocks of 8, ``MCEngine.sample(stratified=True)``). Every variant of the procedure
(uncertainty.sequential) reads its rounds from one of them (rounds ``[a, b)`` of the
draw: for rounds that start at multiples of 8, which is how a fresh draw of each round
is distributed), is calibrated on the validation rows as ``calibrate_auto`` does, and is
judged on the test rows against fixed N seen through the same independent draw. Figures
are means over the rounds, each against its own round's N=100, with their spread (min to
max); the mean N and NLL of each variant on the validation rows, where settings are
chosen, stand beside them. Also shown: two oracles that know each row's 100-sample draw:
one gives the row N in proportion to the spread of its top-class probability (n = c *
std, rounded up to the rounds' counts); the other gives it the N that minimises the
expected log-loss of the mean at a given mean N, n = c * sqrt(B) (any integer from 1 to
100), where B = sum_c var_c / (2 p_c) is the log-loss that one sample's noise adds (the
mean of n adds B / n, to second order). No rule that must estimate a row's spread from
its own samples can do better than the second at the same mean N: a bound on NLL at a
mean N for independent samples (for stratified ones B overstates the noise, and the
oracle is a reference, not a bound).

    python -m benchmarks.adaptive_rule --model uq-classifier:latest \\
        --output benchmarks/results/adaptive_rule.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from artifacts.store import load_classifier
from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from training.data import load_dataset
from training.evaluation import mc_samples
from uncertainty import metrics
from uncertainty.calibration import decide
from uncertainty.sequential import StoppingRule, calibrate_auto, round_schedule, run_sequential

#: (name, first round, StoppingRule settings, stratified rounds)
VARIANTS = (
    ("default", 8, {}, True),
    ("confidence 0.90", 8, {"confidence": 0.90}, True),
    ("confidence 0.96", 8, {"confidence": 0.96}, True),
    ("confidence 0.98", 8, {"confidence": 0.98}, True),
    ("no tolerances", 8, {"label_tolerance": 0.0, "set_tolerance": 0.0, "risk_tolerance": 0.0,
                          "novelty_tolerance": 0.0}, True),
    ("independent rounds", 8, {}, False),
    ("independent rounds, first round 4", 4, {}, False),
)
FIXED = (8, 12, 16, 25, 50, 100)
FIXED_STRATIFIED = (8, 12, 16)
ORACLE_SCALES = (60, 100)
#: n = c * sqrt(B): c = 50 gives a mean N of about 12 on the default Fashion-MNIST model
LOG_LOSS_ORACLE_SCALES = (50, 75)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.adaptive_rule",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path,
                        default=Path("benchmarks/results/adaptive_rule.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if args.repeats < 1 or args.seed < 0:
        parser.error("--repeats must be >= 1 and --seed >= 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import bentoml

    from uncertainty.mc import MCEngine, configure_tensorflow_threads  # imports TensorFlow

    configure_tensorflow_threads()
    try:
        model, card, tag = load_classifier(args.model)
    except bentoml.exceptions.NotFound:
        return fail(parser.prog, f"model {args.model!r} is not in the store")
    training = card.training
    data = load_dataset(card.dataset, training.get("validation_fraction", 0.1),
                        training.get("seed", 0))
    engine = MCEngine(model)
    stopping = card.calibration_for(100)
    y_val, y_test = data.y_val, data.y_test
    rows_test = np.arange(len(y_test))

    def run(samples: np.ndarray, rows: int, rule: StoppingRule, schedule):
        starts = (0, *schedule)
        return run_sequential(lambda active, r, count: samples[starts[r]:starts[r] + count][
            :, active], rows, rule, schedule)

    def quality(mean: np.ndarray) -> dict[str, float]:
        return {"accuracy": metrics.accuracy(mean, y_test), "nll": metrics.nll(mean, y_test),
                "ece": metrics.ece(mean, y_test)}

    def prefix_means(test: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Each test row's mean over its first n[row] samples [rows, classes]."""
        used = np.arange(len(test))[:, None] < n[None, :]  # [100, rows]
        return (test * used[:, :, None]).sum(axis=0) / n[:, None]

    def auto(draw: dict[str, np.ndarray], first: int, settings: dict, stratified: bool
             ) -> dict[str, float]:
        rule = StoppingRule.of(stopping, **settings)
        schedule = round_schedule(first, 100)
        calibrated = run(draw["val"], len(y_val), rule, schedule)
        fitted = calibrate_auto(
            calibrated, y_val, schedule=schedule, stopping=rule, stopping_n_samples=100,
            stratified=stratified, target_error=stopping.risk_policy.target_error,
            conformal_alpha=card.conformal_alpha,
            novelty_false_alarm_rate=stopping.novelty_policy.false_alarm_rate)
        result = run(draw["test"], len(y_test), rule, schedule)
        decision = decide(result.summary, fitted.calibration)
        accepted = ~decision.error_risk
        return {
            # the validation rows, on which the settings are chosen
            "val_mean_n_samples": float(calibrated.n_samples.mean()),
            "val_nll": metrics.nll(calibrated.summary.mean, y_val),
            "mean_n_samples": float(result.n_samples.mean()),
            **quality(result.summary.mean),
            "selective_error": float((result.summary.label != y_test)[accepted].mean()),
            "conformal_coverage": float(decision.prediction_sets[rows_test, y_test].mean()),
        }

    rounds: list[dict[str, dict[str, float]]] = []
    for repeat in range(args.repeats):
        print(f"round {repeat + 1} of {args.repeats}: drawing 100 independent and 100 "
              f"stratified samples for {len(y_val)} validation and {len(y_test)} test rows",
              flush=True)
        seed = args.seed + repeat * 10**7
        draws = {stratified: {name: mc_samples(engine, x, 100, seed + offset, stratified)
                              for name, x, offset in (("val", data.x_val, 0),
                                                      ("test", data.x_test, 10**6))}
                 for stratified in (False, True)}
        figures: dict[str, dict[str, float]] = {}
        for n in FIXED:
            figures[f"fixed N={n}"] = {"mean_n_samples": float(n), **quality(
                draws[False]["test"][:n].astype(np.float64).mean(axis=0))}
        for n in FIXED_STRATIFIED:
            figures[f"fixed N={n}, stratified"] = {"mean_n_samples": float(n), **quality(
                draws[True]["test"][:n].astype(np.float64).mean(axis=0))}
        for name, first, settings, stratified in VARIANTS:
            figures[f"auto: {name}"] = auto(draws[stratified], first, settings, stratified)
        for stratified in (False, True):
            test = draws[stratified]["test"].astype(np.float64)
            kind = "stratified" if stratified else "independent"
            reference = test.mean(axis=0)  # [rows, classes]
            top = reference.argmax(axis=1)
            spread = test[:, rows_test, top].std(axis=0)  # [rows] the oracle's knowledge
            noise_cost = np.where(reference > 0, test.var(axis=0, ddof=1) / (
                2 * np.maximum(reference, 1e-300)), 0.0).sum(axis=1)  # [rows] B
            steps = np.array(round_schedule(8, 100))
            for scale in ORACLE_SCALES if not stratified else ():
                wanted = np.clip(scale * spread, steps[0], steps[-1])
                n = steps[np.minimum(np.searchsorted(steps, wanted), len(steps) - 1)]
                figures[f"oracle: n = {scale} * std, {kind}"] = {
                    "mean_n_samples": float(n.mean()), **quality(prefix_means(test, n))}
            for scale in LOG_LOSS_ORACLE_SCALES:
                n = np.clip(np.ceil(scale * np.sqrt(noise_cost)), 1, 100).astype(np.int64)
                figures[f"oracle: n = {scale} * sqrt(B), {kind}"] = {
                    "mean_n_samples": float(n.mean()), **quality(prefix_means(test, n))}
        val_base = metrics.nll(draws[False]["val"].astype(np.float64).mean(axis=0), y_val)
        for values in figures.values():
            if "val_nll" in values:
                values["val_nll_vs_100"] = values.pop("val_nll") - val_base
        base = figures["fixed N=100"]
        for values in figures.values():
            values["accuracy_vs_100"] = values["accuracy"] - base["accuracy"]
            values["nll_vs_100"] = values["nll"] - base["nll"]
        rounds.append(figures)
        print(f"  auto (default): mean N {figures['auto: default']['mean_n_samples']:.2f}, "
              f"NLL {figures['auto: default']['nll_vs_100']:+.4f} against N=100", flush=True)

    results = {name: {key: float(np.mean([r[name][key] for r in rounds]))
                      for key in rounds[0][name]} for name in rounds[0]}
    for name, values in results.items():
        for key in ("nll_vs_100", "accuracy_vs_100", "ece"):
            values[f"{key}_range"] = [float(min(r[name][key] for r in rounds)),
                                      float(max(r[name][key] for r in rounds))]
    print(f"\n{tag}, test split, mean (min to max) of {args.repeats} rounds, each against "
          "its own N=100\n")
    print("| | validation: mean N | NLL - N=100 | test: mean N | accuracy - N=100 | "
          "NLL - N=100 | ECE | error among unflagged |")
    print("|---|---|---|---|---|---|---|---|")
    for name, figures in results.items():
        selective = figures.get("selective_error")
        low, high = figures["nll_vs_100_range"]
        validation = (f"{figures['val_mean_n_samples']:.2f} | {figures['val_nll_vs_100']:+.4f}"
                      if "val_nll_vs_100" in figures else " | ")
        print(f"| {name} | {validation} | {figures['mean_n_samples']:.2f} | "
              f"{figures['accuracy_vs_100']:+.4f} | "
              f"{figures['nll_vs_100']:+.4f} ({low:+.4f} to {high:+.4f}) | "
              f"{figures['ece']:.4f} | {'' if selective is None else f'{selective:.4f}'} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**origin, "model": tag, "repeats": args.repeats,
                                       "results": results, "rounds": rounds}, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
