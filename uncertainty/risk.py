"""Risk policy and conformal prediction sets, calibrated on held-out data.

Risk policy: one uncertainty score and a threshold; a prediction whose score is
above the threshold is flagged ("do not trust"). Calibration picks, among the
candidate scores, the one with the lowest AURC on the calibration split, then
the threshold by selection with guaranteed risk (SGR, Geifman and El-Yaniv,
2017): a binary search over coverages for the largest one whose Clopper-Pearson
upper bound on the selective error, at confidence 1 - RISK_DELTA / log2(n),
stays at or under the target. The point estimate is not enough: on
Fashion-MNIST a threshold whose validation error is 0.0167 gives 0.0216 on the
test split (the validation split, held out from train, is easier than test).

Conformal sets (split conformal, LAC score ``1 - p(true class)``): with
calibrated quantile ``q``, the set holds every class with mean probability at
least ``1 - q`` (and always the predicted class), and covers the true class
with probability at least ``1 - alpha``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from uncertainty.metrics import aurc, risk_coverage_curve
from uncertainty.summary import UncertaintySummary

RISK_SCORES = (
    "predicted_class_std",
    "predictive_entropy",
    "mutual_information",
    "one_minus_confidence",
)
#: The threshold when no coverage meets the target: every score (>= 0) is above it.
FLAG_EVERYTHING = -1.0
#: Chance that the chosen threshold's true selective error exceeds the target.
RISK_DELTA = 0.01


def risk_scores(summary: UncertaintySummary) -> dict[str, np.ndarray]:
    """Every candidate score ``[batch]``; higher means less trustworthy."""
    return {
        "predicted_class_std": summary.predicted_class_std,
        "predictive_entropy": summary.predictive_entropy,
        "mutual_information": summary.mutual_information,
        "one_minus_confidence": 1.0 - summary.confidence,
    }


def risk_score(summary: UncertaintySummary, metric: str) -> np.ndarray:
    if metric not in RISK_SCORES:
        raise ValueError(f"metric must be one of {', '.join(RISK_SCORES)}, got {metric!r}")
    return risk_scores(summary)[metric]


@dataclasses.dataclass(frozen=True)
class RiskPolicy:
    metric: str
    threshold: float  # flagged when score > threshold
    target_error: float
    calibration_coverage: float  # fraction unflagged on the calibration split
    calibration_error: float  # error among unflagged on the calibration split
    aurc_by_metric: dict[str, float]

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def error_upper_bound(errors: int, accepted: int, confidence: float) -> float:
    """Clopper-Pearson upper bound on an error rate seen as ``errors`` in ``accepted``."""
    from scipy.stats import beta

    if errors >= accepted:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, accepted - errors))


def calibrate_risk_policy(
    summary: UncertaintySummary, labels: np.ndarray, target_error: float
) -> RiskPolicy:
    """Pick the score with the best AURC and the widest threshold that meets
    ``target_error`` with probability 1 - RISK_DELTA."""
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must lie in (0, 1), got {target_error}")
    errors = summary.label != np.asarray(labels)
    scores = risk_scores(summary)
    aurc_by_metric = {name: aurc(values, errors) for name, values in scores.items()}
    metric = min(aurc_by_metric, key=aurc_by_metric.get)
    curve = risk_coverage_curve(scores[metric], errors)
    accepted = np.round(curve.coverage * len(errors)).astype(int)  # [k] per threshold
    wrong = np.round(curve.risk * accepted).astype(int)
    steps = math.ceil(math.log2(len(accepted) + 1))  # binary-search steps over k + 1 options
    confidence = 1.0 - RISK_DELTA / steps
    low, high = -1, len(accepted) - 1  # indices into the thresholds; -1 accepts nothing
    for _ in range(steps):
        if low == high:
            break
        middle = (low + high + 1) // 2
        if error_upper_bound(wrong[middle], accepted[middle], confidence) <= target_error:
            low = middle
        else:
            high = middle - 1
    if low < 0:  # nothing is safe enough: flag everything (scores are >= 0)
        threshold, coverage, error = FLAG_EVERYTHING, 0.0, 0.0
    else:
        threshold = float(curve.thresholds[low])
        coverage, error = float(curve.coverage[low]), float(curve.risk[low])
    return RiskPolicy(
        metric=metric,
        threshold=threshold,
        target_error=target_error,
        calibration_coverage=coverage,
        calibration_error=error,
        aurc_by_metric=aurc_by_metric,
    )


def conformal_quantile(mean_probabilities: np.ndarray, labels: np.ndarray, alpha: float) -> float:
    """Split-conformal quantile of ``1 - p(true class)`` over ``[n, classes]`` probabilities."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    labels = np.asarray(labels)
    scores = 1.0 - mean_probabilities[np.arange(len(labels)), labels]
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:  # too few calibration rows for this alpha: every class is in the set
        return 1.0
    return float(np.sort(scores)[rank - 1])


def prediction_sets(mean_probabilities: np.ndarray, quantile: float) -> np.ndarray:
    """Boolean ``[batch, classes]``: class c is in row i's set when p >= 1 - quantile;
    the predicted class always is."""
    members = mean_probabilities >= 1.0 - quantile
    members[np.arange(len(members)), mean_probabilities.argmax(axis=1)] = True
    return members
