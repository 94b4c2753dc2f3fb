"""Calibration per sample count, and the risk decision it makes.

Uncertainty scores move with N (the flagged fraction at one threshold grows with
N, and so does mutual information), so a threshold fitted at one N promises
nothing at another. A :class:`Calibration` holds, for one N,
the risk policy, the conformal quantile and the novelty policy fitted on
calibration rows sampled at that N, and the distribution of those rows'
uncertainty scores that the drift detector compares live traffic against
(:mod:`uncertainty.drift`). A request's N uses the calibration of its
own N, and off the grid a rule that errs on the safe side for each promise
(:func:`for_n_samples`): ``uq-evaluate`` and ``loadtest.guarantees`` measure the
guarantees at N off the grid with it.

Shapes: a summary has ``batch`` rows; a decision's arrays are ``[batch]``, its
prediction sets ``[batch, classes]``.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from uncertainty.drift import DriftReference, reference_of
from uncertainty.risk import (
    NoveltyPolicy,
    RiskPolicy,
    calibrate_novelty_policy,
    calibrate_risk_policy,
    conformal_quantile,
    prediction_sets,
    risk_score,
    risk_scores,
)
from uncertainty.summary import UncertaintySummary

DEFAULT_GRID = (1, 5, 10, 20, 30, 50, 100)
DEFAULT_NOVELTY_FALSE_ALARM_RATE = 0.03
REASONS = ("error_risk", "novelty")


@dataclasses.dataclass(frozen=True)
class Calibration:
    n_samples: int
    risk_policy: RiskPolicy
    conformal_quantile: float
    novelty_policy: NoveltyPolicy
    #: where the novelty policy was calibrated, when not at ``n_samples`` (off the grid)
    novelty_n_samples: int | None = None
    #: the calibration rows' uncertainty scores (cards calibrated before drift have none)
    reference: DriftReference | None = None

    @property
    def novelty_calibrated_n_samples(self) -> int:
        return self.n_samples if self.novelty_n_samples is None else self.novelty_n_samples


def calibration_grid(requested: Iterable[int], default_n_samples: int) -> tuple[int, ...]:
    """The N to calibrate: ``requested`` and the default N, ascending."""
    grid = tuple(sorted({*requested, default_n_samples}))
    if grid[0] < 1:
        raise ValueError(f"calibrated sample counts must be >= 1, got {grid[0]}")
    return grid


def calibrate(
    summary: UncertaintySummary,
    labels: np.ndarray,
    n_samples: int,
    *,
    target_error: float,
    conformal_alpha: float,
    novelty_false_alarm_rate: float,
) -> Calibration:
    """Fit every policy of one N on calibration rows summarised at that N."""
    risk_policy = calibrate_risk_policy(summary, labels, target_error)
    error_risk = risk_score(summary, risk_policy.metric) > risk_policy.threshold
    return Calibration(
        n_samples=n_samples,
        risk_policy=risk_policy,
        conformal_quantile=conformal_quantile(summary.mean, labels, conformal_alpha),
        novelty_policy=calibrate_novelty_policy(summary, error_risk, novelty_false_alarm_rate),
        reference=reference_of(risk_scores(summary)),
    )


def for_n_samples(calibrations: Sequence[Calibration], n_samples: int) -> Calibration:
    """The calibration a request for ``n_samples`` uses (``calibrations`` ascend in N).

    On the grid, its own. Between two calibrated N, the risk policy and conformal
    quantile of the one below, the novelty policy of the one above: scores move with N
    in directions measured on Fashion-MNIST (docs/guarantees.md), so that each promise errs on the
    safe side. The flagged fraction at a fixed error-risk threshold grows with N, so a
    threshold from a smaller N flags at least as much; mutual information grows with
    N, so a novelty threshold from a larger N raises fewer false alarms. Below the grid,
    the smallest calibrated N; above it, the largest."""
    counts = [calibration.n_samples for calibration in calibrations]
    below = bisect.bisect_right(counts, n_samples) - 1
    if below < 0:
        return calibrations[0]
    if counts[below] == n_samples or below == len(counts) - 1:
        return calibrations[below]
    above = calibrations[below + 1]
    return dataclasses.replace(calibrations[below], novelty_policy=above.novelty_policy,
                               novelty_n_samples=above.n_samples)


@dataclasses.dataclass(frozen=True)
class RiskDecision:
    """Per row: the error-risk and novelty scores, which thresholds they pass, and
    the conformal prediction set."""

    risk_scores: np.ndarray  # [batch]
    risk_threshold: float
    error_risk: np.ndarray  # [batch] bool: risk score above risk_threshold
    novelty_scores: np.ndarray  # [batch]
    novel: np.ndarray  # [batch] bool
    prediction_sets: np.ndarray  # [batch, classes] bool

    @property
    def flagged(self) -> np.ndarray:
        """[batch] bool: any reason holds."""
        return self.error_risk | self.novel

    def reasons(self, row: int) -> list[str]:
        return _reasons(self.error_risk[row], self.novel[row])

    def reasons_per_row(self) -> list[list[str]]:
        """``reasons(row)`` of every row, at once."""
        return [_reasons(error_risk, novel) for error_risk, novel in zip(
            self.error_risk.tolist(), self.novel.tolist(), strict=True)]


def _reasons(error_risk: bool, novel: bool) -> list[str]:
    return [reason for reason, holds in zip(REASONS, (error_risk, novel), strict=True) if holds]


def decide(
    summary: UncertaintySummary, calibration: Calibration, risk_threshold: float | None = None
) -> RiskDecision:
    """Apply one calibration to a summary; ``risk_threshold`` overrides the error-risk
    threshold (the novelty threshold stays the calibrated one)."""
    policy, novelty = calibration.risk_policy, calibration.novelty_policy
    threshold = policy.threshold if risk_threshold is None else risk_threshold
    scores = risk_score(summary, policy.metric)
    novelty_scores = risk_score(summary, novelty.metric)
    return RiskDecision(
        risk_scores=scores,
        risk_threshold=float(threshold),
        error_risk=scores > threshold,
        novelty_scores=novelty_scores,
        novel=novelty.novel(novelty_scores),
        prediction_sets=prediction_sets(summary.mean, calibration.conformal_quantile),
    )
