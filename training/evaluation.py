"""Evaluation shared by uq-train and uq-evaluate: MC dropout through the serving
engine, quality metrics, risk-policy and conformal calibration; and the "near the
best quality" rule of uq-evaluate's plateau and uq-loadtest's recommendation.

TensorFlow is imported only when a model is evaluated, so that uq-loadtest's
report can use the rule without it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from uncertainty import metrics
from uncertainty.calibration import Calibration, calibrate, decide, for_n_samples
from uncertainty.risk import RISK_DELTA, error_upper_bound, risk_scores
from uncertainty.summary import UncertaintySummary, summarize

if TYPE_CHECKING:
    import keras

    from uncertainty.engine import MCEngine

#: Rows per engine call when sampling a whole split, to bound memory.
ROWS_PER_SAMPLING_BATCH = 1000
#: "Stopped improving": within these of the best accuracy and NLL over all N.
ACCURACY_TOLERANCE = 0.001
NLL_TOLERANCE = 0.005


def mc_samples(engine: MCEngine, x: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """``n_samples`` MC samples ``[n_samples, rows, classes]`` of a whole split ``x``."""
    parts = [
        engine.sample(x[start : start + ROWS_PER_SAMPLING_BATCH], n_samples, seed=seed + index)
        for index, start in enumerate(range(0, len(x), ROWS_PER_SAMPLING_BATCH))
    ]
    return np.concatenate(parts, axis=1)


def mc_summary(engine: MCEngine, x: np.ndarray, n_samples: int, seed: int) -> UncertaintySummary:
    """Summary of ``n_samples`` MC samples for every row of ``x`` (a whole split)."""
    return summarize(mc_samples(engine, x, n_samples, seed))


def nested_summaries(samples: np.ndarray, counts: Sequence[int]) -> dict[int, UncertaintySummary]:
    """Common random numbers: for each N in ``counts``, the summary of the first N of
    the same draws ``samples`` ``[max(counts), rows, classes]``, so that differences
    between N are not masked by fresh Monte Carlo noise at each N."""
    return {n: summarize(samples[:n]) for n in counts}


def calibrate_grid(
    engine: MCEngine, x: np.ndarray, y: np.ndarray, grid: Sequence[int], *,
    target_error: float, conformal_alpha: float, novelty_false_alarm_rate: float, seed: int,
) -> list[Calibration]:
    """One calibration per N of ``grid`` on the rows ``x`` ``[rows, *input_shape]``,
    from nested draws (the first N of max(grid) samples per row)."""
    summaries = nested_summaries(mc_samples(engine, x, max(grid), seed), grid)
    return [
        calibrate(summaries[n], y, n, target_error=target_error,
                  conformal_alpha=conformal_alpha,
                  novelty_false_alarm_rate=novelty_false_alarm_rate)
        for n in grid
    ]


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise total-variation distance between probability rows: [batch]."""
    return 0.5 * np.abs(p - q).sum(axis=1)


def near_best(row: dict[str, float], rows: list[dict[str, float]]) -> bool:
    """Whether ``row``'s accuracy and NLL are within tolerance of the best in ``rows``."""
    return (row["accuracy"] >= max(r["accuracy"] for r in rows) - ACCURACY_TOLERANCE
            and row["nll"] <= min(r["nll"] for r in rows) + NLL_TOLERANCE)


def plateau(rows: list[dict[str, float]]) -> int:
    """The smallest N whose accuracy and NLL are within tolerance of the best."""
    return next(int(row["n_samples"]) for row in rows if near_best(row, rows))


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": metrics.accuracy(probabilities, labels),
        "nll": metrics.nll(probabilities, labels),
        "brier": metrics.brier(probabilities, labels),
        "ece": metrics.ece(probabilities, labels),
    }


def selective_metrics(
    summary: UncertaintySummary, labels: np.ndarray, calibration: Calibration
) -> dict[str, float]:
    """What one calibration's decisions are worth on ``summary`` against ``labels``:
    the error among predictions not flagged for error risk (with its upper bound at
    the policy's confidence), how often each reason flags, conformal coverage."""
    decision = decide(summary, calibration)
    errors = summary.label != labels
    accepted = ~decision.error_risk
    accepted_count, wrong = int(accepted.sum()), int(errors[accepted].sum())
    sets = decision.prediction_sets
    return {
        "aurc": metrics.aurc(decision.risk_scores, errors),
        "selective_error": wrong / accepted_count if accepted_count else 0.0,
        "selective_error_upper_bound": error_upper_bound(wrong, accepted_count, 1 - RISK_DELTA),
        "coverage": accepted_count / len(labels),
        "error_risk_fraction": float(decision.error_risk.mean()),
        "novelty_fraction": float(decision.novel.mean()),
        "flagged_fraction": float(decision.flagged.mean()),
        "conformal_coverage": float(np.mean(sets[np.arange(len(labels)), labels])),
        "conformal_mean_set_size": float(sets.sum(axis=1).mean()),
    }


@dataclasses.dataclass(frozen=True)
class Evaluation:
    calibrations: list[Calibration]  # ascending N
    test_metrics: dict[str, dict[str, float]]  # "deterministic", "mc" (at the default N)
    deterministic_probabilities: np.ndarray  # [n_test, classes]
    test_summary: UncertaintySummary  # at the default N
    test_labels: np.ndarray  # [n_test]


def evaluate_and_calibrate(
    model: keras.Model,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_samples: int,
    calibration_grid: Sequence[int],
    risk_target_error: float,
    conformal_alpha: float,
    novelty_false_alarm_rate: float,
    seed: int,
) -> Evaluation:
    """Calibrate at every N of the grid on the validation split, then measure the
    default N (``n_samples``, in the grid) on the test split."""
    from uncertainty.engine import MCEngine

    engine = MCEngine(model)
    calibrations = calibrate_grid(
        engine, x_val, y_val, calibration_grid, target_error=risk_target_error,
        conformal_alpha=conformal_alpha, novelty_false_alarm_rate=novelty_false_alarm_rate,
        seed=seed,
    )
    test = mc_summary(engine, x_test, n_samples, seed + 10**6)
    deterministic = model.predict(x_test, batch_size=1024, verbose=0)
    deterministic_aurc = metrics.aurc(1.0 - deterministic.max(axis=1),
                                      deterministic.argmax(axis=1) != y_test)
    return Evaluation(
        calibrations=calibrations,
        test_metrics={
            "deterministic": {**classification_metrics(deterministic, y_test),
                              "aurc": deterministic_aurc},
            "mc": {**classification_metrics(test.mean, y_test),
                   **selective_metrics(test, y_test, for_n_samples(calibrations, n_samples))},
        },
        deterministic_probabilities=deterministic,
        test_summary=test,
        test_labels=y_test,
    )


def risk_coverage_curves(
    summary: UncertaintySummary, labels: np.ndarray
) -> dict[str, metrics.RiskCoverage]:
    errors = summary.label != labels
    return {
        name: metrics.risk_coverage_curve(scores, errors)
        for name, scores in risk_scores(summary).items()
    }
