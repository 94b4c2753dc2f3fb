"""Evaluation shared by uq-train and uq-evaluate: MC dropout through the serving
engine, quality metrics, risk-policy and conformal calibration; and the "near the
best quality" rule of uq-evaluate's plateau and uq-loadtest's recommendation.

TensorFlow is imported only when a model is evaluated, so that uq-loadtest's
report can use the rule without it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from uncertainty import metrics
from uncertainty.risk import (
    RiskPolicy,
    calibrate_risk_policy,
    conformal_quantile,
    prediction_sets,
    risk_score,
    risk_scores,
)
from uncertainty.summary import UncertaintySummary, summarize

if TYPE_CHECKING:
    import keras

    from uncertainty.engine import MCEngine

#: Rows per engine call when sampling a whole split, to bound memory.
ROWS_PER_SAMPLING_BATCH = 1000
#: "Stopped improving": within these of the best accuracy and NLL over all N.
ACCURACY_TOLERANCE = 0.001
NLL_TOLERANCE = 0.005


def mc_summary(engine: MCEngine, x: np.ndarray, n_samples: int, seed: int) -> UncertaintySummary:
    """Summary of ``n_samples`` MC samples for every row of ``x`` (a whole split)."""
    parts = [
        engine.sample(x[start : start + ROWS_PER_SAMPLING_BATCH], n_samples, seed=seed + index)
        for index, start in enumerate(range(0, len(x), ROWS_PER_SAMPLING_BATCH))
    ]
    return summarize(np.concatenate(parts, axis=1))


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
    summary: UncertaintySummary, labels: np.ndarray, policy: RiskPolicy, quantile: float
) -> dict[str, float]:
    """Risk-flag and prediction-set quality of ``summary`` against ``labels``."""
    errors = summary.label != labels
    scores = risk_score(summary, policy.metric)
    selective = metrics.selective_error(scores, errors, policy.threshold)
    sets = prediction_sets(summary.mean, quantile)
    return {
        "aurc": metrics.aurc(scores, errors),
        "selective_error": selective.error,
        "coverage": selective.coverage,
        "flagged_fraction": 1.0 - selective.coverage,
        "conformal_coverage": float(np.mean(sets[np.arange(len(labels)), labels])),
        "conformal_mean_set_size": float(sets.sum(axis=1).mean()),
    }


@dataclasses.dataclass(frozen=True)
class Evaluation:
    policy: RiskPolicy
    conformal_quantile: float
    test_metrics: dict[str, dict[str, float]]  # "deterministic", "mc"
    deterministic_probabilities: np.ndarray  # [n_test, classes]
    test_summary: UncertaintySummary
    test_labels: np.ndarray  # [n_test]


def evaluate_and_calibrate(
    model: keras.Model,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_samples: int,
    risk_target_error: float,
    conformal_alpha: float,
    seed: int,
) -> Evaluation:
    """Calibrate on the validation split, then measure on the test split."""
    from uncertainty.engine import MCEngine

    engine = MCEngine(model)
    validation = mc_summary(engine, x_val, n_samples, seed)
    policy = calibrate_risk_policy(validation, y_val, risk_target_error)
    quantile = conformal_quantile(validation.mean, y_val, conformal_alpha)
    test = mc_summary(engine, x_test, n_samples, seed + 10**6)
    deterministic = model.predict(x_test, batch_size=1024, verbose=0)
    deterministic_aurc = metrics.aurc(1.0 - deterministic.max(axis=1),
                                      deterministic.argmax(axis=1) != y_test)
    return Evaluation(
        policy=policy,
        conformal_quantile=quantile,
        test_metrics={
            "deterministic": {**classification_metrics(deterministic, y_test),
                              "aurc": deterministic_aurc},
            "mc": {**classification_metrics(test.mean, y_test),
                   **selective_metrics(test, y_test, policy, quantile)},
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
