"""Quality metrics for probabilistic classifiers and uncertainty scores.

``probabilities`` are ``[batch, classes]`` (for MC dropout: the mean over
samples), ``labels`` are ``[batch]`` integers. An uncertainty ``score`` is
``[batch]`` with higher meaning less trustworthy; selective prediction accepts
the rows whose score is at or below a threshold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Probabilities are clipped here before the log in ``nll``.
NLL_FLOOR = 1e-12


def _check(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1] or len(labels) == 0:
        raise ValueError(
            "probabilities must be [batch, classes] and labels [batch] with batch > 0, got "
            f"{list(probabilities.shape)} and {list(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise ValueError(f"labels must lie in [0, {probabilities.shape[1]})")
    return probabilities, labels.astype(np.int64)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    probabilities, labels = _check(probabilities, labels)
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, in nats."""
    probabilities, labels = _check(probabilities, labels)
    true_class = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true_class, NLL_FLOOR))))


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of the squared distance to one-hot."""
    probabilities, labels = _check(probabilities, labels)
    one_hot = np.eye(probabilities.shape[1])[labels]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins ``(edges[i], edges[i + 1]]``; empty bins hold 0."""

    edges: np.ndarray  # [n_bins + 1]
    confidence: np.ndarray  # [n_bins] mean confidence in the bin
    accuracy: np.ndarray  # [n_bins] accuracy in the bin
    count: np.ndarray  # [n_bins] rows in the bin


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> ReliabilityBins:
    probabilities, labels = _check(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    safe = np.maximum(count, 1)
    return ReliabilityBins(
        edges=edges,
        confidence=np.bincount(index, weights=confidence, minlength=n_bins) / safe,
        accuracy=np.bincount(index, weights=correct, minlength=n_bins) / safe,
        count=count,
    )


def ece(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width confidence bins."""
    bins = reliability_bins(probabilities, labels, n_bins)
    weights = bins.count / bins.count.sum()
    return float(np.sum(weights * np.abs(bins.accuracy - bins.confidence)))


@dataclasses.dataclass(frozen=True)
class RiskCoverage:
    """Selective prediction at each distinct score: accept rows with score <= threshold."""

    thresholds: np.ndarray  # [k] distinct scores, ascending
    coverage: np.ndarray  # [k] fraction of rows accepted
    risk: np.ndarray  # [k] error rate among accepted rows


def _scores_and_errors(scores: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    errors = np.asarray(errors, dtype=bool)
    if scores.ndim != 1 or scores.shape != errors.shape or len(scores) == 0:
        raise ValueError(
            f"scores and errors must be non-empty [batch] arrays, got {list(scores.shape)} "
            f"and {list(errors.shape)}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores, errors


def risk_coverage_curve(scores: np.ndarray, errors: np.ndarray) -> RiskCoverage:
    """``errors[i]`` is True where row ``i`` is misclassified."""
    scores, errors = _scores_and_errors(scores, errors)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    cumulative_errors = np.cumsum(errors[order])
    # the last position of each group of equal scores: a threshold accepts all or none
    last_of_group = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    accepted = last_of_group + 1
    return RiskCoverage(
        thresholds=sorted_scores[last_of_group],
        coverage=accepted / len(scores),
        risk=cumulative_errors[last_of_group] / accepted,
    )


def aurc(scores: np.ndarray, errors: np.ndarray) -> float:
    """Area under the risk-coverage curve (lower is better), as a step function."""
    curve = risk_coverage_curve(scores, errors)
    widths = np.diff(np.r_[0.0, curve.coverage])
    return float(np.sum(widths * curve.risk))


@dataclasses.dataclass(frozen=True)
class SelectiveResult:
    error: float  # error rate among accepted rows (0 when none is accepted)
    coverage: float  # fraction of rows accepted


def selective_error(scores: np.ndarray, errors: np.ndarray, threshold: float) -> SelectiveResult:
    scores, errors = _scores_and_errors(scores, errors)
    accepted = scores <= threshold
    count = int(accepted.sum())
    return SelectiveResult(
        error=float(errors[accepted].sum() / count) if count else 0.0,
        coverage=count / len(scores),
    )


def ood_auroc(in_distribution_scores: np.ndarray, out_of_distribution_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution rows (positives) by a higher score."""
    inside = np.asarray(in_distribution_scores, dtype=np.float64).ravel()
    outside = np.asarray(out_of_distribution_scores, dtype=np.float64).ravel()
    if len(inside) == 0 or len(outside) == 0:
        raise ValueError("ood_auroc needs at least one in- and one out-of-distribution score")
    # Mann-Whitney: the share of (inside, outside) pairs ordered right, ties counting half
    scores = np.r_[inside, outside]  # [rows]
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based, ties averaged
    pairs_right = ranks[len(inside):].sum() - len(outside) * (len(outside) + 1) / 2
    return float(pairs_right / (len(inside) * len(outside)))
