import numpy as np
import pytest

from uncertainty.risk import (
    FLAG_EVERYTHING,
    calibrate_risk_policy,
    conformal_quantile,
    error_upper_bound,
    fewest_rows_to_certify,
    prediction_sets,
)
from uncertainty.summary import summarize


def confident_then_wrong(n: int, seed: int = 0):
    """Samples whose uncertainty grows with the row index; the most confident 40%
    are wrong 1% of the time, the rest 30%: [1, n, 2] samples and [n] labels."""
    rng = np.random.default_rng(seed)
    confidence = np.linspace(0.99, 0.5, n)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)[None]  # predicts class 0
    wrong = rng.random(n) < np.where(np.arange(n) < 0.4 * n, 0.01, 0.3)
    return summarize(probabilities), wrong.astype(int)


def test_threshold_meets_the_target_with_a_margin():
    summary, labels = confident_then_wrong(20000)
    policy = calibrate_risk_policy(summary, labels, target_error=0.05)
    assert policy.metric in policy.aurc_by_metric
    assert 0.4 < policy.calibration_coverage < 0.6
    accepted = round(policy.calibration_coverage * 20000)
    errors = round(policy.calibration_error * accepted)
    # the bound, not just the point estimate, is under the target ...
    assert error_upper_bound(errors, accepted, 0.99) <= 0.05
    assert policy.calibration_error < 0.05
    # ... and the search takes (nearly) the widest such coverage
    wider = accepted + 400
    rows_errors = (labels[:wider] != 0).sum()
    assert error_upper_bound(rows_errors, wider, 0.99) > 0.05 - 0.005


def test_an_unreachable_target_flags_everything():
    summary, labels = confident_then_wrong(500)
    labels[:] = 1  # every prediction wrong
    policy = calibrate_risk_policy(summary, labels, target_error=0.01)
    assert policy.threshold == FLAG_EVERYTHING and policy.calibration_coverage == 0.0


def test_clopper_pearson_bound_by_hand():
    # zero errors in n trials: the upper bound is 1 - (1 - confidence)^(1/n)
    assert error_upper_bound(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert error_upper_bound(5, 5, 0.95) == 1.0


def test_conformal_quantile_and_sets_by_hand():
    mean = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 1, 1, 0])
    # scores 1 - p(true): 0.1, 0.6, 0.2, 0.3; alpha 0.5 -> rank ceil(5 * 0.5) = 3 -> 0.3
    assert conformal_quantile(mean, labels, alpha=0.5) == pytest.approx(0.3)
    sets = prediction_sets(mean, 0.3)  # classes with p >= 0.7, plus the argmax
    assert sets.tolist() == [[True, False], [True, False], [False, True], [True, False]]
    assert conformal_quantile(mean, labels, alpha=0.01) == 1.0  # too few rows: every class


def test_bad_arguments():
    summary, labels = confident_then_wrong(10)
    with pytest.raises(ValueError, match="target_error"):
        calibrate_risk_policy(summary, labels, target_error=0.0)
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(summary.mean, labels, alpha=1.5)


def uniform_answers(rows: int, confidence: float):
    """One sample of ``rows`` identical answers for class 0: every score ties."""
    return summarize(np.tile([confidence, 1 - confidence], (1, rows, 1)))


@pytest.mark.parametrize("target_error", [0.2, 0.05, 0.02, 0.005])
def test_the_fewest_rows_that_can_certify_a_threshold(target_error):
    fewest = fewest_rows_to_certify(target_error)
    right = np.zeros(fewest, int)  # every answer correct
    policy = calibrate_risk_policy(uniform_answers(fewest, 0.9), right, target_error)
    assert policy.calibration_coverage == 1.0
    for summary in (uniform_answers(fewest - 1, 0.9), confident_then_wrong(fewest - 1)[0]):
        policy = calibrate_risk_policy(summary, right[1:], target_error)
        assert policy.threshold == FLAG_EVERYTHING
    assert fewest_rows_to_certify(0.02) == 297  # ln(0.01 / 4) / ln(0.98) = 296.6


def distinct_answers(rows: int):
    """Two samples of ``rows`` answers for class 0 whose every score differs from row to
    row (confidence and the samples' spread both vary)."""
    rng = np.random.default_rng(3)
    confidence, spread = rng.uniform(0.6, 0.94, rows), rng.uniform(0.001, 0.05, rows)
    samples = np.stack([confidence + spread, confidence - spread])  # [2, rows]
    return summarize(np.stack([samples, 1 - samples], axis=-1))


@pytest.mark.parametrize("target_error", [0.2, 0.05, 0.02])
def test_the_fewest_rows_of_distinct_scores_that_can_certify_a_threshold(target_error):
    fewest = fewest_rows_to_certify(target_error, distinct_scores=True)
    assert fewest > 2 * fewest_rows_to_certify(target_error)  # the first step tests half
    for rows, certifies in ((fewest, True), (fewest - 1, False)):
        summary = distinct_answers(rows)
        policy = calibrate_risk_policy(summary, np.zeros(rows, int), target_error)
        assert (policy.threshold != FLAG_EVERYTHING) == certifies, rows
