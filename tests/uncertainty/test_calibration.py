"""Calibration per N, the rule that picks one for a request's N, and the decision."""

import math

import numpy as np
import pytest

from uncertainty.calibration import (
    Calibration,
    calibrate,
    calibration_grid,
    decide,
    for_n_samples,
)
from uncertainty.risk import NoveltyPolicy, RiskPolicy, calibrate_novelty_policy
from uncertainty.summary import summarize


def calibration(n_samples: int, threshold: float = 0.1) -> Calibration:
    return Calibration(
        n_samples=n_samples,
        risk_policy=RiskPolicy("one_minus_confidence", threshold, 0.02, 0.8, 0.01, {}),
        conformal_quantile=0.5,
        novelty_policy=NoveltyPolicy("mutual_information", 0.05, 0.03, 0.03),
    )


def test_off_the_grid_error_risk_comes_from_below_and_novelty_from_above():
    grid = [calibration(n) for n in (1, 5, 10, 30)]
    counts = (1, 2, 4, 5, 9, 10, 29, 30, 1000)
    picked = {n: (for_n_samples(grid, n).n_samples,
                  for_n_samples(grid, n).novelty_calibrated_n_samples) for n in counts}
    assert picked == {1: (1, 1), 2: (1, 5), 4: (1, 5), 5: (5, 5), 9: (5, 10), 10: (10, 10),
                      29: (10, 30), 30: (30, 30), 1000: (30, 30)}
    assert for_n_samples(grid, 9).novelty_policy is grid[2].novelty_policy
    assert for_n_samples(grid, 9).risk_policy is grid[1].risk_policy
    assert for_n_samples([calibration(5), calibration(10)], 2).n_samples == 5  # below the grid


def test_the_grid_always_holds_the_default_n():
    assert calibration_grid((10, 1, 5), 8) == (1, 5, 8, 10)
    with pytest.raises(ValueError, match=">= 1"):
        calibration_grid((0, 5), 8)


def ambiguous_samples(rows: int, n_samples: int, seed: int = 0) -> np.ndarray:
    """Samples [n_samples, rows, 3] whose disagreement grows with the row index."""
    rng = np.random.default_rng(seed)
    spread = np.linspace(0.0, 3.0, rows)[None, :, None]
    logits = rng.normal(size=(n_samples, rows, 3)) * spread + np.array([2.0, 0.0, 0.0])
    return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)


def test_novelty_adds_at_most_the_stated_share_of_false_alarms():
    summary = summarize(ambiguous_samples(4000, 20))
    error_risk = np.arange(4000) >= 3000  # the most uncertain quarter is flagged already
    policy = calibrate_novelty_policy(summary, error_risk, false_alarm_rate=0.05)
    added = policy.novel(summary.mutual_information) & ~error_risk
    assert 0.04 < added.mean() <= 0.05
    assert policy.calibration_false_alarm_rate == pytest.approx(added.mean())
    # on fresh rows from the same distribution the bound holds too
    fresh = summarize(ambiguous_samples(4000, 20, seed=1))
    assert (policy.novel(fresh.mutual_information) & ~error_risk).mean() < 0.06


def test_one_sample_turns_novelty_off():
    summary = summarize(ambiguous_samples(100, 1))
    policy = calibrate_novelty_policy(summary, np.zeros(100, bool), false_alarm_rate=0.05)
    assert policy.threshold == pytest.approx(math.log(3))  # mutual information never exceeds it
    more_samples = summarize(ambiguous_samples(100, 4))
    assert not policy.novel(more_samples.mutual_information).any()


def test_decide_names_every_reason_and_an_override_moves_only_error_risk():
    samples = ambiguous_samples(300, 10)
    labels = np.zeros(300, int)
    fitted = calibrate(summarize(samples), labels, 10, target_error=0.2, conformal_alpha=0.1,
                       novelty_false_alarm_rate=0.05)
    decision = decide(summarize(samples), fitted)
    for row in range(300):
        reasons = decision.reasons(row)
        assert ("error_risk" in reasons) == decision.error_risk[row]
        assert ("novelty" in reasons) == decision.novel[row]
        assert decision.flagged[row] == bool(reasons)
    relaxed = decide(summarize(samples), fitted, risk_threshold=10.0)
    assert not relaxed.error_risk.any() and (relaxed.novel == decision.novel).all()
