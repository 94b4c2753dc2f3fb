"""The drift detector: its reference, its run length between false alarms and its delay,
by simulation on synthetic scores."""

import numpy as np
import pytest

from uncertainty import drift
from uncertainty.drift import (
    SCORES,
    THRESHOLD,
    WINDOW,
    DriftDetector,
    null_maxima,
    reference_of,
    score_reference,
    to_uniform,
    window_statistics,
)


def synthetic_scores(rows: int, rng: np.random.Generator, scale: float = 1.0) -> dict:
    """Scores shaped like the real ones: a point mass at 0 and a long right tail."""
    mutual_information = rng.lognormal(-4.0, 1.5, rows) * scale
    one_minus_confidence = np.where(rng.random(rows) < 0.1, 0.0,
                                    rng.lognormal(-3.0, 2.0, rows) * scale)
    return {"mutual_information": mutual_information,
            "one_minus_confidence": one_minus_confidence}


def test_the_reference_is_small_and_maps_its_own_distribution_to_uniform():
    rng = np.random.default_rng(0)
    scores = synthetic_scores(6000, rng)
    reference = reference_of(scores)
    assert reference.rows == 6000 and set(reference.scores) == set(SCORES)
    confidence = reference.scores["one_minus_confidence"]
    assert confidence.zero_fraction == pytest.approx(0.1, abs=0.01)
    assert len(confidence.quantiles) == drift.QUANTILE_LEVELS + 1
    fresh = synthetic_scores(20_000, rng)
    for name in SCORES:
        uniform = to_uniform(reference.scores[name], fresh[name], rng.random(20_000))
        shares = np.bincount(drift.to_bins(uniform), minlength=drift.BINS) / len(uniform)
        np.testing.assert_allclose(shares, 0.1, atol=0.012)


def test_ties_spread_over_the_levels_they_span():
    rng = np.random.default_rng(1)
    reference = score_reference(np.zeros(100))  # one sample: mutual information is 0
    assert reference.zero_fraction == 1.0
    uniform = to_uniform(reference, np.zeros(10_000), rng.random(10_000))
    assert 0.45 < uniform.mean() < 0.55 and uniform.min() >= 0 and uniform.max() <= 1


def test_window_statistics_match_a_direct_count_and_chunking():
    rng = np.random.default_rng(2)
    bins = rng.integers(0, 10, 700).astype(np.int8)
    statistics = window_statistics(bins, window=200, n_bins=10)
    assert np.isnan(statistics[:199]).all()
    for step in (199, 350, 699):
        counts = np.bincount(bins[step - 199: step + 1], minlength=10)
        assert statistics[step] == pytest.approx(((counts - 20.0) ** 2 / 20.0).sum())
    chunked = np.concatenate([
        window_statistics(bins[:150], 200, 10),
        window_statistics(bins[150:400], 200, 10, history=bins[:150]),
        window_statistics(bins[400:], 200, 10, history=bins[200:400]),
    ])
    np.testing.assert_allclose(chunked, statistics, equal_nan=True)


def test_the_threshold_keeps_false_alarms_within_ten_thousand_predictions_rare():
    # both scores' streams, independent: a run alarms when either does (the union bound
    # allows 2 x ALPHA_PER_SCORE = 1%); 300 runs of 10,000 predictions
    maxima = null_maxima(runs=600, seed=7).reshape(300, 2).max(axis=1)
    alarmed = int((maxima > THRESHOLD).sum())
    assert alarmed <= 8, f"{alarmed} of 300 in-distribution runs raised a false alarm"
    # and the threshold is not needlessly high: a third of it is crossed in most runs
    assert (maxima > THRESHOLD * 2 / 3).mean() > 0.5


def test_the_detector_raises_no_alarm_in_distribution_and_one_soon_after_a_shift():
    rng = np.random.default_rng(3)
    references = {10: reference_of(synthetic_scores(6000, rng)),
                  30: reference_of(synthetic_scores(6000, rng, scale=1.3))}
    delays = []
    for run in range(10):
        detector = DriftDetector(references, seed=run)
        n_samples = rng.choice([10, 30], 10_000)  # mixed N pool into one stream
        scores = {name: np.where(n_samples == 10, a, b) for name, a, b in zip(
            SCORES, synthetic_scores(10_000, rng).values(),
            synthetic_scores(10_000, rng, scale=1.3).values(), strict=True)}
        update = detector.update(n_samples, scores)
        assert not update.alarm.any() and detector.alarms == 0
        assert detector.observed == 10_000
        shifted = detector.update(np.full(400, 10), synthetic_scores(400, rng, scale=4.0))
        assert shifted.alarm.any()
        delays.append(int(np.argmax(shifted.alarm)) + 1)
        assert detector.alarms >= 1 and detector.last_alarm_observed == 10_000 + delays[-1]
    assert max(delays) <= WINDOW, delays


def test_predictions_off_the_grid_are_skipped():
    rng = np.random.default_rng(4)
    detector = DriftDetector({10: reference_of(synthetic_scores(1000, rng))}, seed=0)
    detector.update(np.array([10, 15, 10]), synthetic_scores(3, rng))
    state = detector.state()
    assert (state["observed"], state["skipped"]) == (2, 1)
    assert state["alarm"] is False and state["scores"]["mutual_information"] is None


def test_a_small_reference_widens_the_test():
    rng = np.random.default_rng(5)
    small = DriftDetector({10: reference_of(synthetic_scores(200, rng))})
    assert small.reference_factor == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least one N"):
        DriftDetector({})


def test_a_batch_statistic_is_the_detectors_with_one_window_of_the_whole_batch():
    rng = np.random.default_rng(5)
    bins = rng.integers(0, drift.BINS, 700).astype(np.int8)
    counts = np.bincount(bins, minlength=drift.BINS)
    by_window = window_statistics(bins, window=700, n_bins=drift.BINS)[-1] / (1 + 700 / 3000)
    assert drift.batch_statistic(counts, reference_rows=3000) == pytest.approx(by_window)
    assert drift.batch_statistic(np.full(drift.BINS, 70), reference_rows=3000) == 0.0
