"""The adaptive sample count: its stopping rule, rounds, reproducibility and calibration."""

import keras
import numpy as np
import pytest

from uncertainty.calibration import Calibration, decide
from uncertainty.mc import MCEngine
from uncertainty.risk import FLAG_EVERYTHING, NoveltyPolicy, RiskPolicy
from uncertainty.sequential import (
    SequentialDraw,
    SequentialRun,
    StoppingRule,
    _kl_to_mean,
    _per_sample_risk,
    calibrate_auto,
    round_schedule,
    round_seed,
    run_sequential,
    sample_sequential,
)
from uncertainty.summary import summarize

CLASSES = 4


def rule(**settings) -> StoppingRule:
    return StoppingRule(risk_metric="one_minus_confidence", risk_threshold=0.2,
                        conformal_quantile=0.5, novelty_metric="mutual_information",
                        novelty_threshold=0.1, **settings)


def clear_row(n: int) -> np.ndarray:
    """[n, classes]: every sample sure of class 0."""
    return np.tile([0.97, 0.01, 0.01, 0.01], (n, 1))


def ambiguous_row(n: int, seed: int = 0) -> np.ndarray:
    """[n, classes]: samples torn between classes 0 and 1."""
    first = np.random.default_rng(seed).uniform(0.05, 0.95, size=n)
    return np.stack([first * 0.98, (1 - first) * 0.98, np.full(n, 0.01), np.full(n, 0.01)], 1)


def synthetic(n: int, kinds: str) -> np.ndarray:
    """[n, rows, classes] with one row per character of ``kinds`` (c: clear, a: ambiguous)."""
    return np.stack([clear_row(n) if kind == "c" else ambiguous_row(n, seed=index)
                     for index, kind in enumerate(kinds)], axis=1)


def test_clear_rows_are_settled_at_once_and_ambiguous_ones_are_not():
    samples = synthetic(8, "cacca")
    assert rule().settled(samples).tolist() == [True, False, True, True, False]


def test_each_decision_quantity_can_hold_a_row_open():
    n = 16
    near_risk = np.tile([0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3], (n, 1))  # 1 - confidence = 0.2
    near_risk[::2, 0] += 0.05
    near_risk[1::2, 0] -= 0.05
    near_risk[:, 1:] = (1 - near_risk[:, :1]) / 3
    # a second class around the conformal cut 0.5, but the label clear
    near_cut = np.tile([0.0, 0.5, 0.02, 0.0], (n, 1))
    near_cut[:, 1] += np.linspace(-0.1, 0.1, n)
    near_cut[:, 0] = 1 - near_cut[:, 1:].sum(1)
    samples = np.stack([near_risk, near_cut], axis=1)
    strict = rule(label_tolerance=0, set_tolerance=0, risk_tolerance=0, novelty_tolerance=0)
    assert strict.settled(samples).tolist() == [False, False]
    # with a far risk threshold the first row is settled; the second still waits on its set
    far = StoppingRule(**{**strict.__dict__, "risk_threshold": 0.6, "novelty_threshold": 1.0})
    assert far.settled(samples).tolist() == [True, False]
    # a tolerance wider than the intervals settles the close calls
    assert rule(set_tolerance=1.0, risk_tolerance=1.0).settled(samples).tolist() == [True, True]


def test_per_sample_forms_average_to_the_summary_scores():
    samples = np.random.default_rng(1).dirichlet(np.ones(CLASSES), size=(12, 5))  # [12, 5, 4]
    summary = summarize(samples)
    n, mean, top = len(samples), summary.mean, summary.label
    kl = _kl_to_mean(samples, mean)
    np.testing.assert_allclose(kl.mean(0), summary.mutual_information, atol=1e-12)
    unbiased = kl * n / (n - 1)
    values, threshold, _ = _per_sample_risk(samples, mean, top, unbiased,
                                            "one_minus_confidence", 0.3, 0.1)
    np.testing.assert_allclose(values.mean(0), 1 - summary.confidence)
    values, _, _ = _per_sample_risk(samples, mean, top, unbiased, "predictive_entropy", 0.3, 0.1)
    np.testing.assert_allclose(values.mean(0) - unbiased.mean(0) / n,
                               summary.predictive_entropy)
    values, threshold, _ = _per_sample_risk(samples, mean, top, unbiased,
                                            "predicted_class_std", 0.3, 0.1)
    np.testing.assert_allclose(values.mean(0) * (n - 1) / n, summary.predicted_class_std**2)
    assert threshold == pytest.approx(0.09)
    values, threshold, _ = _per_sample_risk(samples, mean, top, unbiased,
                                            "mutual_information", FLAG_EVERYTHING, 0.1)
    assert threshold == FLAG_EVERYTHING and not values.any()  # flagged whatever: settled


def test_rounds_double_up_to_the_cap_and_seeds_differ_per_round():
    assert round_schedule() == (8, 16, 32, 64, 100)
    assert round_schedule(4, 64) == (4, 8, 16, 32, 64)
    assert round_schedule(3, 3) == (3,)
    for first, cap in ((1, 10), (8, 4), (4, 2.5)):
        with pytest.raises(ValueError):
            round_schedule(first, cap)
    seeds = {round_seed(7, index) for index in range(5)}
    assert len(seeds) == 5 and all(0 <= seed < 2**63 for seed in seeds)
    assert round_seed(7, 2) == round_seed(7, 2) and round_seed(None, 0) is None


def counting_draw(samples: np.ndarray, log: list[int]):
    """A Draw over fixed samples [max N, rows, classes] that logs the rows of each round."""
    schedule = round_schedule(4, len(samples))
    starts = (0, *schedule)

    def draw(active, round_index, count):
        assert count == schedule[round_index] - starts[round_index]
        log.append(len(active))
        return samples[starts[round_index] : starts[round_index] + count][:, active]

    return draw, schedule


def test_stopped_rows_leave_the_batch():
    samples = synthetic(64, "caccacccca")  # [64, 10, 4]
    rows: list[int] = []
    draw, schedule = counting_draw(samples, rows)
    strict = rule(label_tolerance=0, set_tolerance=0, risk_tolerance=0, novelty_tolerance=0)
    result = run_sequential(draw, 10, strict, schedule)
    assert schedule == (4, 8, 16, 32, 64)
    assert rows[0] == 10 and rows[1] <= 3 and rows == result.active_rows
    assert sorted(rows, reverse=True) == rows
    clear = np.array([kind == "c" for kind in "caccacccca"])
    assert (result.n_samples[clear] == 4).all() and (result.n_samples[~clear] > 4).all()
    # every row's answer is the summary of its own first n samples
    for row in range(10):
        n = result.n_samples[row]
        np.testing.assert_array_equal(result.samples[row], samples[:n, row])
        expected = summarize(samples[:n, row : row + 1])
        assert result.summary.mean[row] == pytest.approx(expected.mean[0])
        assert result.summary.mutual_information[row] == pytest.approx(
            expected.mutual_information[0])
    assert result.engine_rows == sum(n * r for n, r in zip(
        np.diff((0, *schedule)), rows, strict=False))


def test_a_run_drawn_round_by_round_is_the_procedure_and_joins_with_others():
    """SequentialRun (rounds drawn by the caller) answers as run_sequential does, checks
    the shape of what it is given, and the draws of two runs join in row order."""
    samples = synthetic(64, "caccacccca")  # [64, 10, 4]
    draw, schedule = counting_draw(samples, [])
    strict = rule(label_tolerance=0, set_tolerance=0, risk_tolerance=0, novelty_tolerance=0)
    whole = run_sequential(draw, 10, strict, schedule)
    halves = []
    for rows in (slice(0, 4), slice(4, 10)):
        run = SequentialRun(rows.stop - rows.start, strict, schedule)
        with pytest.raises(ValueError, match="still open"):
            run.result()
        while not run.done:
            with pytest.raises(ValueError, match=r"expected samples \[\d+, \d+, classes\]"):
                run.advance(samples[:1, rows][:, run.active])
            start = schedule[run.round_index - 1] if run.round_index else 0
            run.advance(samples[start:start + run.next_count, rows][:, run.active])
        halves.append(run.result())
    joined = SequentialDraw.joined(halves)
    np.testing.assert_array_equal(joined.n_samples, whole.n_samples)
    np.testing.assert_array_equal(joined.summary.mean, whole.summary.mean)
    assert joined.active_rows == whole.active_rows
    assert all(np.array_equal(a, b) for a, b in zip(joined.samples, whole.samples, strict=True))


@pytest.fixture(scope="module")
def engine() -> MCEngine:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16, activation="elu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    return MCEngine(model)


@pytest.mark.parametrize("stratified", [True, False])
def test_the_same_seed_gives_bit_identical_answers_and_rows_leave_the_engine_calls(
        engine, stratified):
    x = np.random.default_rng(0).normal(scale=2.0, size=(40, 6)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    sample = engine.sample

    def counted(rows, n_samples, seed=None, stratified=False):
        calls.append((len(rows), n_samples, stratified))
        return sample(rows, n_samples, seed, stratified)

    def run(seed: int):
        return sample_sequential(engine, x, rule(), round_schedule(4, 32), seed=seed,
                                 stratified=stratified)

    engine.sample = counted
    try:
        first = run(11)
    finally:
        del engine.sample
    second, other = run(11), run(12)
    np.testing.assert_array_equal(first.n_samples, second.n_samples)
    np.testing.assert_array_equal(first.summary.mean, second.summary.mean)
    for a, b in zip(first.samples, second.samples, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.summary.mean, other.summary.mean)
    # engine rows: every round draws only for the rows still open
    assert calls[0] == (40, 4, stratified) and [rows for rows, *_ in calls] == first.active_rows
    assert {drawn for *_, drawn in calls} == {stratified}
    assert sum(rows * count for rows, count, _ in calls) == first.engine_rows
    assert first.engine_rows < 40 * 32 and len(calls) >= 2 and calls[-1][0] < 40


def test_calibrating_auto_fits_the_final_policies_on_the_procedures_outputs():
    rng = np.random.default_rng(5)
    rows = 600
    kinds = "".join(rng.choice(["c", "a"], p=[0.7, 0.3], size=rows))
    samples = synthetic(32, kinds)
    # the labels follow the mean probabilities: errors where the samples disagree
    labels = (rng.random(rows) > samples.mean(0)[:, 0]).astype(int)
    draw, schedule = counting_draw(samples, [])
    stopping = rule()
    result = run_sequential(draw, rows, stopping, schedule)
    auto = calibrate_auto(result, labels, schedule=schedule, stopping=stopping,
                          stopping_n_samples=32, stratified=True, target_error=0.1,
                          conformal_alpha=0.1, novelty_false_alarm_rate=0.05)
    assert auto.schedule == schedule and auto.max_samples == 32 and auto.stratified
    assert auto.risk_policy.metric == stopping.risk_metric  # the score the rule settles
    assert auto.mean_n_samples == pytest.approx(result.n_samples.mean())
    assert sum(auto.n_samples_shares.values()) == pytest.approx(1.0)
    assert set(auto.n_samples_shares) <= set(schedule)
    decision = decide(result.summary, auto.calibration)
    accepted = ~decision.error_risk
    assert (result.summary.label != labels)[accepted].mean() <= 0.1
    assert decision.prediction_sets[np.arange(rows), labels].mean() >= 0.9
    assert auto.rule(0.05).risk_threshold == 0.05 and auto.rule() is stopping


def test_a_rule_comes_from_a_calibration_and_refuses_bad_settings():
    calibration = Calibration(
        n_samples=100,
        risk_policy=RiskPolicy("predictive_entropy", 0.3, 0.02, 0.8, 0.01, {}),
        conformal_quantile=0.4,
        novelty_policy=NoveltyPolicy("mutual_information", 0.07, 0.03, 0.03),
    )
    made = StoppingRule.of(calibration, confidence=0.99)
    assert (made.risk_metric, made.risk_threshold, made.conformal_quantile,
            made.novelty_threshold, made.confidence) == ("predictive_entropy", 0.3, 0.4,
                                                         0.07, 0.99)
    for bad in ({"confidence": 1.0}, {"risk_tolerance": -0.1}, {"risk_metric": "x"},
                {"novelty_metric": "predictive_entropy"}):
        with pytest.raises(ValueError):
            StoppingRule(**{**made.__dict__, **bad})
    with pytest.raises(ValueError, match="at least 2 samples"):
        made.settled(synthetic(1, "c"))
