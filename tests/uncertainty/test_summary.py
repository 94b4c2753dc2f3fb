import numpy as np
import pytest

from uncertainty.summary import entropy, summarize


def test_disagreeing_confident_samples_are_all_epistemic():
    # two samples, one row: each sample is certain, they disagree
    summary = summarize(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
    np.testing.assert_allclose(summary.mean, [[0.5, 0.5]])
    np.testing.assert_allclose(summary.std, [[0.5, 0.5]])
    np.testing.assert_allclose(summary.predictive_entropy, [np.log(2)])
    np.testing.assert_allclose(summary.expected_entropy, [0.0])
    np.testing.assert_allclose(summary.mutual_information, [np.log(2)])
    assert summary.label.tolist() == [0]
    np.testing.assert_allclose(summary.confidence, [0.5])


def test_agreeing_uncertain_samples_are_all_aleatoric():
    row = [0.25, 0.25, 0.5]
    summary = summarize(np.array([[row, [1.0, 0.0, 0.0]]] * 3))
    expected = -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))
    np.testing.assert_allclose(summary.predictive_entropy, [expected, 0.0])
    np.testing.assert_allclose(summary.expected_entropy, [expected, 0.0])
    np.testing.assert_allclose(summary.mutual_information, [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(summary.std, np.zeros((2, 3)))
    assert summary.label.tolist() == [2, 0]
    np.testing.assert_allclose(summary.predicted_class_std, [0.0, 0.0])


def test_hand_computed_std_of_predicted_class():
    samples = np.array([[[0.9, 0.1]], [[0.7, 0.3]], [[0.8, 0.2]]])
    summary = summarize(samples)
    np.testing.assert_allclose(summary.mean, [[0.8, 0.2]])
    np.testing.assert_allclose(summary.predicted_class_std, [np.sqrt(0.02 / 3)])


def test_zero_and_one_probabilities_stay_finite():
    assert entropy(np.array([0.0, 1.0])) == 0.0
    summary = summarize(np.array([[[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]]))
    for field in ("predictive_entropy", "expected_entropy", "mutual_information"):
        assert np.all(np.isfinite(getattr(summary, field)))


def test_single_sample_has_no_spread():
    summary = summarize(np.array([[[0.6, 0.4], [0.1, 0.9]]]))
    np.testing.assert_array_equal(summary.std, np.zeros((2, 2)))
    np.testing.assert_allclose(summary.mutual_information, [0.0, 0.0], atol=1e-15)


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[n_samples, batch, classes\]"):
        summarize(np.ones((3, 2)))
