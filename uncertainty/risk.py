"""Risk policy and conformal prediction sets, calibrated on held-out data.

Risk policy: one uncertainty score and a threshold; a prediction whose score is
above the threshold is flagged for error risk ("do not trust"). The threshold
comes from selection with guaranteed risk (SGR, Geifman and El-Yaniv, 2017): a
binary search over coverages for the largest one whose Clopper-Pearson upper
bound on the selective error stays at or under the target. The search runs for
every candidate score at confidence 1 - RISK_DELTA / (scores x log2 n): by the
union bound all of them hold together with probability 1 - RISK_DELTA, so
picking the score afterwards, on the same rows (the widest guaranteed
coverage), keeps the guarantee. The point estimate is not enough: on
Fashion-MNIST a threshold whose validation error is 0.0167 gave 0.0216 on the
test split (the validation split, held out from train, is easier than test).

Novelty policy: an epistemic score (mutual information) against a threshold
such that an input exchangeable with the calibration rows, and not flagged for
error risk, is flagged as novel with probability at most ``rate``: a false
alarm is a flag that novelty adds (a conformal bound, see
:func:`calibrate_novelty_policy`).

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
    summary: UncertaintySummary, labels: np.ndarray, target_error: float,
    metrics: tuple[str, ...] = RISK_SCORES,
) -> RiskPolicy:
    """The score and threshold that leave the most predictions unflagged while the
    error among them meets ``target_error`` with probability 1 - RISK_DELTA.
    ``metrics`` limits the candidate scores (the adaptive procedure keeps the score it
    stops by); the confidence stays that of a choice among all of them."""
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must lie in (0, 1), got {target_error}")
    unknown = [name for name in metrics if name not in RISK_SCORES]
    if not metrics or unknown:
        raise ValueError(f"metrics must be some of {', '.join(RISK_SCORES)}, got {metrics}")
    errors = summary.label != np.asarray(labels)
    scores = risk_scores(summary)
    aurc_by_metric = {name: aurc(values, errors) for name, values in scores.items()}
    confidence = 1.0 - RISK_DELTA / len(scores)  # the union bound covers choosing a score
    candidates = {
        name: _guaranteed_threshold(values, errors, target_error, confidence)
        for name, values in scores.items() if name in metrics
    }
    # widest coverage first; among equals, the score that ranks errors best
    metric = max(candidates, key=lambda name: (candidates[name][1], -aurc_by_metric[name]))
    threshold, coverage, error = candidates[metric]
    return RiskPolicy(
        metric=metric,
        threshold=threshold,
        target_error=target_error,
        calibration_coverage=coverage,
        calibration_error=error,
        aurc_by_metric=aurc_by_metric,
    )


def _guaranteed_threshold(
    scores: np.ndarray, errors: np.ndarray, target_error: float, confidence: float
) -> tuple[float, float, float]:
    """SGR for one score: (threshold, coverage, error among the accepted) of the widest
    coverage whose upper bound meets the target at ``confidence`` over the whole
    binary search."""
    curve = risk_coverage_curve(scores, errors)
    accepted = np.round(curve.coverage * len(errors)).astype(int)  # [k] per threshold
    wrong = np.round(curve.risk * accepted).astype(int)
    steps = math.ceil(math.log2(len(accepted) + 1))  # binary-search steps over k + 1 options
    step_confidence = 1.0 - (1.0 - confidence) / steps
    low, high = -1, len(accepted) - 1  # indices into the thresholds; -1 accepts nothing
    for _ in range(steps):
        if low == high:
            break
        middle = (low + high + 1) // 2
        if error_upper_bound(wrong[middle], accepted[middle], step_confidence) <= target_error:
            low = middle
        else:
            high = middle - 1
    if low < 0:  # nothing is safe enough: flag everything (scores are >= 0)
        return FLAG_EVERYTHING, 0.0, 0.0
    return float(curve.thresholds[low]), float(curve.coverage[low]), float(curve.risk[low])


def fewest_rows_to_certify(target_error: float, distinct_scores: bool = False) -> int:
    """The fewest calibration rows, all predicted correctly, with which
    :func:`calibrate_risk_policy` certifies ``target_error`` for a threshold that leaves
    answers unflagged; with fewer, every answer is flagged (:data:`FLAG_EVERYTHING`).

    Rows with errors need more. In general: the smallest k whose Clopper-Pearson bound on
    0 errors in k rows meets the target at the least confidence the search uses (one
    step), a floor for any rows. With ``distinct_scores`` (every row's score differs, as
    with more than one sample): the fewest for which the search's first step, the most
    certain half of the rows at the confidence of a search over all of them, passes."""
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must lie in (0, 1), got {target_error}")
    confidence = 1.0 - RISK_DELTA / len(RISK_SCORES)
    if distinct_scores:
        rows = 1
        while error_upper_bound(0, (rows - 1) // 2 + 1, 1.0 - (1.0 - confidence) / math.ceil(
                math.log2(rows + 1))) > target_error:
            rows += 1
        return rows
    # 0 errors in k: the bound is 1 - (1 - confidence)^(1/k); from its closed form ...
    rows = math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_error))
    # ... to the bound as the search computes it, past any rounding
    while rows > 1 and error_upper_bound(0, rows - 1, confidence) <= target_error:
        rows -= 1
    while error_upper_bound(0, rows, confidence) > target_error:
        rows += 1
    return rows


@dataclasses.dataclass(frozen=True)
class NoveltyPolicy:
    metric: str  # an epistemic score of risk_scores()
    threshold: float  # novel when score > threshold
    false_alarm_rate: float  # the stated bound on the false alarms novelty adds
    calibration_false_alarm_rate: float  # the share of calibration rows novelty alone flags

    def novel(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


NOVELTY_METRIC = "mutual_information"


def calibrate_novelty_policy(
    summary: UncertaintySummary, error_risk: np.ndarray, false_alarm_rate: float,
    metric: str = NOVELTY_METRIC,
) -> NoveltyPolicy:
    """The threshold on ``metric`` above which an in-distribution input that the error-risk
    rule lets through (``error_risk`` ``[rows]`` false) is flagged as novel with
    probability at most ``false_alarm_rate``: a false alarm is a flag novelty adds.

    Split conformal on the score that is ``metric`` where ``error_risk`` is false and
    lowest where it is true: the ``ceil((n + 1)(1 - rate))``-th smallest. When the
    calibration rows show no disagreement at all (one sample: mutual information is 0),
    there is nothing to calibrate and the threshold is the score's largest possible
    value, ln(classes): novelty is off."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must lie in (0, 1), got {false_alarm_rate}")
    scores = risk_score(summary, metric)
    rank = math.ceil((len(scores) + 1) * (1 - false_alarm_rate))
    if rank > len(scores):
        raise ValueError(
            f"{len(scores)} calibration rows are too few for a novelty false-alarm rate of "
            f"{false_alarm_rate}: it needs at least {math.ceil(1 / false_alarm_rate) - 1}"
        )
    if not scores.any():
        threshold = math.log(summary.mean.shape[1])
    else:
        let_through = np.where(np.asarray(error_risk), FLAG_EVERYTHING, scores)
        threshold = max(float(np.sort(let_through)[rank - 1]), 0.0)
    added = (scores > threshold) & ~np.asarray(error_risk)
    return NoveltyPolicy(
        metric=metric,
        threshold=threshold,
        false_alarm_rate=false_alarm_rate,
        calibration_false_alarm_rate=float(added.mean()),
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
