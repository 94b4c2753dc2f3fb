import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from uncertainty import metrics

PROBABILITIES = np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1], [0.2, 0.8]])
LABELS = np.array([0, 0, 0, 1])


def test_accuracy_counts_argmax_hits():
    # argmax: 0, 1, 0, 1 against labels 0, 0, 0, 1
    assert metrics.accuracy(PROBABILITIES, LABELS) == 0.75


def test_nll_by_hand():
    expected = -(np.log(0.5) + np.log(0.25) + np.log(0.9) + np.log(0.8)) / 4
    assert metrics.nll(PROBABILITIES, LABELS) == pytest.approx(expected)


def test_nll_is_finite_for_a_zero_probability():
    assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(
        -np.log(metrics.NLL_FLOOR)
    )


def test_brier_by_hand():
    expected = (0.5 + 2 * 0.75**2 + 2 * 0.1**2 + 2 * 0.2**2) / 4
    assert metrics.brier(PROBABILITIES, LABELS) == pytest.approx(expected)


def test_ece_by_hand():
    # 2 bins: confidences 0.5, 0.75 go to (0, 0.5] and (0.5, 1]; 0.9, 0.8 to (0.5, 1]
    # bin 1: one row, conf 0.5, correct -> gap 0.5
    # bin 2: three rows, mean conf 0.8167, accuracy 2/3 -> gap 0.15
    expected = 0.25 * 0.5 + 0.75 * abs((0.75 + 0.9 + 0.8) / 3 - 2 / 3)
    assert metrics.ece(PROBABILITIES, LABELS, n_bins=2) == pytest.approx(expected)


def test_perfect_calibration_has_zero_ece():
    probabilities = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.ece(probabilities, np.array([0, 1])) == 0.0


def test_reliability_bins_put_confidence_one_in_the_last_bin():
    bins = metrics.reliability_bins(np.array([[1.0, 0.0]]), np.array([0]), n_bins=10)
    assert bins.count.tolist() == [0] * 9 + [1]


def test_risk_coverage_and_aurc_by_hand():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    errors = np.array([False, True, False, True])
    curve = metrics.risk_coverage_curve(scores, errors)
    np.testing.assert_allclose(curve.coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.risk, [0.0, 0.5, 1 / 3, 0.5])
    assert metrics.aurc(scores, errors) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_tied_scores_are_accepted_together():
    scores = np.array([0.1, 0.1, 0.2])
    errors = np.array([True, False, False])
    curve = metrics.risk_coverage_curve(scores, errors)
    np.testing.assert_allclose(curve.thresholds, [0.1, 0.2])
    np.testing.assert_allclose(curve.coverage, [2 / 3, 1.0])
    np.testing.assert_allclose(curve.risk, [0.5, 1 / 3])
    assert metrics.aurc(scores, errors) == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 1 / 3)


def test_selective_error_at_threshold():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    errors = np.array([False, True, False, True])
    result = metrics.selective_error(scores, errors, threshold=0.3)
    assert result.coverage == 0.75
    assert result.error == pytest.approx(1 / 3)
    assert metrics.selective_error(scores, errors, threshold=0.0).coverage == 0.0


def test_ood_auroc_counts_ties_half_as_roc_auc_score_does():
    rng = np.random.default_rng(0)
    inside, outside = rng.integers(0, 5, 300) / 4, rng.integers(2, 7, 200) / 4  # many ties
    labels = np.r_[np.zeros(300), np.ones(200)]
    expected = roc_auc_score(labels, np.r_[inside, outside])
    assert metrics.ood_auroc(inside, outside) == pytest.approx(expected, abs=1e-12)
    assert metrics.ood_auroc([0.5, 0.5], [0.5]) == 0.5


def test_ood_auroc_orders():
    assert metrics.ood_auroc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert metrics.ood_auroc([0.8, 0.9], [0.1, 0.2]) == 0.0
    assert metrics.ood_auroc([0.5, 0.5], [0.5, 0.5]) == 0.5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy(PROBABILITIES, LABELS[:2])
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.nll(PROBABILITIES, np.array([0, 0, 0, 2]))
    with pytest.raises(ValueError, match="finite"):
        metrics.aurc(np.array([np.nan]), np.array([True]))
