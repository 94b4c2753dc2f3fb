"""Evaluation shared by uq-train and uq-evaluate: MC dropout through the serving
engine, quality metrics, risk-policy and conformal calibration; and the "near the
best quality" rule of uq-evaluate's plateau and uq-loadtest's recommendation, with
the paired bootstrap that gives it intervals.

TensorFlow is imported only when a model is evaluated, so that uq-loadtest's
report can use the rule without it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from uncertainty import metrics
from uncertainty.calibration import Calibration, calibrate, decide, for_n_samples
from uncertainty.risk import (
    FLAG_EVERYTHING,
    RISK_DELTA,
    error_upper_bound,
    fewest_rows_to_certify,
    risk_scores,
)
from uncertainty.sequential import (
    DEFAULT_MAX_AUTO_SAMPLES,
    FIRST_ROUND_SAMPLES,
    AutoCalibration,
    SequentialDraw,
    StoppingRule,
    calibrate_auto,
    round_schedule,
    sample_sequential,
)
from uncertainty.summary import UncertaintySummary, summarize

if TYPE_CHECKING:
    import keras

    from uncertainty.mc import MCEngine

#: Rows per engine call when sampling a whole split, to bound memory.
ROWS_PER_SAMPLING_BATCH = 1000
#: "Stopped improving": accuracy and NLL not shown to fall further than these short of
#: the best over all N (see near_best).
ACCURACY_TOLERANCE = 0.001
NLL_TOLERANCE = 0.005
#: The paired bootstrap over test rows behind near_best's intervals.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
INTERVAL_LEVEL = 0.95
RESAMPLES_PER_BLOCK = 100  # bounds the [resamples, rows] weights held at once


def mc_samples(engine: MCEngine, x: np.ndarray, n_samples: int, seed: int,
               stratified: bool = False) -> np.ndarray:
    """``n_samples`` MC samples ``[n_samples, rows, classes]`` of a whole split ``x``
    (``stratified``: Latin hypercubes of masks, MCEngine.sample)."""
    parts = [
        engine.sample(x[start : start + ROWS_PER_SAMPLING_BATCH], n_samples, seed=seed + index,
                      stratified=stratified)
        for index, start in enumerate(range(0, len(x), ROWS_PER_SAMPLING_BATCH))
    ]
    return np.concatenate(parts, axis=1)


def mc_summary(engine: MCEngine, x: np.ndarray, n_samples: int, seed: int) -> UncertaintySummary:
    """Summary of ``n_samples`` MC samples for every row of ``x`` (a whole split)."""
    return summarize(mc_samples(engine, x, n_samples, seed))


def nested_summaries(samples: np.ndarray, counts: Sequence[int]) -> dict[int, UncertaintySummary]:
    """Common random numbers: for each N in ``counts``, the summary of the first N of
    the same draws ``samples`` ``[max(counts), rows, classes]``, so that differences
    between N are not masked by fresh Monte Carlo noise at each N."""
    return {n: summarize(samples[:n]) for n in counts}


@dataclasses.dataclass(frozen=True)
class RowQuality:
    """Per row, the expected quality of an N-sample prediction, estimated from the
    row's M draws as the mean over their floor(M / N) disjoint groups of N samples:
    unbiased like the first N alone, with a fraction of its Monte Carlo noise."""

    correct: np.ndarray  # [rows] share of the groups whose mean predicts the label
    nll: np.ndarray  # [rows] mean over the groups of the label's negative log-likelihood


def grouped_quality(samples: np.ndarray, labels: np.ndarray, n_samples: int) -> RowQuality:
    """RowQuality at ``n_samples`` of samples ``[M, rows, classes]`` and labels ``[rows]``."""
    groups = len(samples) // n_samples
    means = samples[: groups * n_samples].reshape(
        groups, n_samples, *samples.shape[1:]).mean(axis=1, dtype=np.float64)
    # means: [groups, rows, classes]
    true_class = means[:, np.arange(len(labels)), labels]  # [groups, rows]
    return RowQuality(
        correct=(means.argmax(axis=2) == labels).mean(axis=0),
        nll=-np.log(np.maximum(true_class, metrics.NLL_FLOOR)).mean(axis=0),
    )


@dataclasses.dataclass(frozen=True)
class NestedDraw:
    """One draw of M = max(counts) samples per row, seen at each N of counts."""

    summaries: dict[int, UncertaintySummary]  # of the first N samples of each row
    quality: dict[int, RowQuality]  # from all M samples; empty without labels


def nested_mc_draw(
    engine: MCEngine, x: np.ndarray, counts: Sequence[int], seed: int,
    labels: np.ndarray | None = None,
) -> NestedDraw:
    """Common random numbers over a whole split ``x`` ``[rows, *input_shape]`` in
    bounded memory: max(counts) samples are drawn for ROWS_PER_SAMPLING_BATCH rows
    at a time, with mc_samples' seeds, so the summaries are
    ``nested_summaries(mc_samples(engine, x, max(counts), seed), counts)``; with
    ``labels`` ``[rows]``, each N's RowQuality too."""
    summaries, quality = [], []
    for index, start in enumerate(range(0, len(x), ROWS_PER_SAMPLING_BATCH)):
        rows = slice(start, start + ROWS_PER_SAMPLING_BATCH)
        samples = mc_samples(engine, x[rows], max(counts), seed + index)  # [M, block, classes]
        summaries.append(nested_summaries(samples, counts))
        if labels is not None:
            quality.append({n: grouped_quality(samples, labels[rows], n) for n in counts})
    return NestedDraw(
        summaries={n: concatenate_rows([part[n] for part in summaries]) for n in counts},
        quality={n: concatenate_rows([part[n] for part in quality]) for n in counts}
        if quality else {},
    )


def concatenate_rows(parts: Sequence[Any]) -> Any:
    """Per-row figures (an UncertaintySummary, a RowQuality) of consecutive row blocks
    as one of all their rows: every field concatenated along its first axis."""
    return type(parts[0])(**{
        field.name: np.concatenate([getattr(part, field.name) for part in parts])
        for field in dataclasses.fields(parts[0])
    })


def calibrate_grid(
    engine: MCEngine, x: np.ndarray, y: np.ndarray, grid: Sequence[int], *,
    target_error: float, conformal_alpha: float, novelty_false_alarm_rate: float, seed: int,
) -> list[Calibration]:
    """One calibration per N of ``grid`` on the rows ``x`` ``[rows, *input_shape]``,
    from nested draws (the first N of max(grid) samples per row)."""
    summaries = nested_summaries(mc_samples(engine, x, max(grid), seed), grid)
    return [
        calibrate(summaries[n], y, n, target_error=target_error,
                  conformal_alpha=conformal_alpha,
                  novelty_false_alarm_rate=novelty_false_alarm_rate)
        for n in grid
    ]


#: Seed offsets of the adaptive procedure's runs, apart from calibrate_grid's and the
#: test split's draws.
AUTO_CALIBRATION_SEED_OFFSET = 3 * 10**6
AUTO_TEST_SEED_OFFSET = 4 * 10**6


def auto_draw(
    engine: MCEngine, x: np.ndarray, rule: StoppingRule, schedule: Sequence[int], seed: int,
    stratified: bool,
) -> SequentialDraw:
    """The adaptive procedure (uncertainty.sequential) on a whole split ``x``, as the
    service runs it, ROWS_PER_SAMPLING_BATCH rows at a time with mc_samples' seeds."""
    parts = [
        sample_sequential(engine, x[start : start + ROWS_PER_SAMPLING_BATCH], rule, schedule,
                          seed=seed + index, stratified=stratified)
        for index, start in enumerate(range(0, len(x), ROWS_PER_SAMPLING_BATCH))
    ]
    return SequentialDraw(
        summary=concatenate_rows([part.summary for part in parts]),
        n_samples=np.concatenate([part.n_samples for part in parts]),
        samples=[row for part in parts for row in part.samples],
        active_rows=[sum(rows) for rows in zip(*(  # per round, over the blocks
            part.active_rows + [0] * (len(schedule) - len(part.active_rows))
            for part in parts), strict=True)],
    )


def calibrate_auto_procedure(
    engine: MCEngine, x: np.ndarray, y: np.ndarray, calibrations: Sequence[Calibration], *,
    max_samples: int, target_error: float, conformal_alpha: float,
    novelty_false_alarm_rate: float, seed: int,
) -> tuple[AutoCalibration, SequentialDraw]:
    """Calibrate ``n_samples: "auto"`` as its own N on the rows ``x``, ``y``: the
    stopping rule stops against the calibration of the largest calibrated N up to
    ``max_samples`` (``calibrations`` ascend in N), then the procedure runs on the rows,
    in stratified rounds, and its outputs fit the final policies
    (uncertainty.sequential.calibrate_auto).
    Returns the calibration and the procedure's draw."""
    stopping_calibration = for_n_samples(calibrations, max_samples)
    stopping = StoppingRule.of(stopping_calibration)
    schedule = round_schedule(min(FIRST_ROUND_SAMPLES, max_samples), max_samples)
    result = auto_draw(engine, x, stopping, schedule, seed, stratified=True)
    auto = calibrate_auto(
        result, y, schedule=schedule, stopping=stopping,
        stopping_n_samples=stopping_calibration.n_samples, stratified=True,
        target_error=target_error,
        conformal_alpha=conformal_alpha, novelty_false_alarm_rate=novelty_false_alarm_rate,
    )
    return auto, result


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise total-variation distance between probability rows: [batch]."""
    return 0.5 * np.abs(p - q).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class QualityNoise:
    """Per N: the expected accuracy and NLL (RowQuality), the accuracy shortfall to
    the most accurate N and the NLL excess over the N of lowest NLL, each difference
    as a point value and a paired-bootstrap INTERVAL_LEVEL percentile interval."""

    best_accuracy_n_samples: int
    best_nll_n_samples: int
    by_n_samples: dict[int, dict[str, Any]]


def quality_noise(
    quality: Mapping[int, RowQuality], resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> QualityNoise:
    """Resample the test rows ``resamples`` times and recompute every N's expected
    accuracy and NLL on the same resample, so that the differences keep their
    pairing; ``quality`` maps N to RowQuality of the same rows from one draw
    (nested_mc_draw). Monte Carlo noise is independent across rows, so what is left
    of it is in the row-to-row spread the bootstrap sees. The seed is fixed, not the
    draws': the resampled rows are part of the method, the same whatever the draws.
    The best N is the point estimate's (the largest N on ties)."""
    counts = sorted(quality)
    correct = np.stack([quality[n].correct for n in counts], axis=1)  # [rows, K]
    losses = np.stack([quality[n].nll for n in counts], axis=1)  # [rows, K]
    accuracy, nll = correct.mean(axis=0), losses.mean(axis=0)  # [K]
    best_accuracy, best_nll = _last_argmax(accuracy), _last_argmax(-nll)
    means = bootstrap_means(np.concatenate([correct, losses], axis=1), resamples, seed)
    accuracy_means, nll_means = np.split(means, 2, axis=1)  # [resamples, K] each
    shortfall = accuracy_means[:, [best_accuracy]] - accuracy_means
    excess = nll_means - nll_means[:, [best_nll]]
    tails = 50 * (1 - INTERVAL_LEVEL), 50 * (1 + INTERVAL_LEVEL)
    shortfall_ends, excess_ends = (np.percentile(differences, tails, axis=0)  # [2, K]
                                   for differences in (shortfall, excess))
    return QualityNoise(
        best_accuracy_n_samples=counts[best_accuracy],
        best_nll_n_samples=counts[best_nll],
        by_n_samples={n: {
            "accuracy": float(accuracy[k]),
            "nll": float(nll[k]),
            "accuracy_shortfall": float(accuracy[best_accuracy] - accuracy[k]),
            "accuracy_shortfall_interval": shortfall_ends[:, k].tolist(),
            "nll_excess": float(nll[k] - nll[best_nll]),
            "nll_excess_interval": excess_ends[:, k].tolist(),
        } for k, n in enumerate(counts)},
    )


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Column means of ``values`` ``[rows, columns]`` over ``resamples`` bootstrap
    resamples of the rows, one resample for all columns: ``[resamples, columns]``."""
    rng = np.random.default_rng(seed)
    rows = len(values)
    uniform = np.full(rows, 1.0 / rows)
    return np.concatenate([
        rng.multinomial(rows, uniform, size=min(RESAMPLES_PER_BLOCK, resamples - start))
        @ values / rows  # row counts [block, rows] @ [rows, columns]
        for start in range(0, resamples, RESAMPLES_PER_BLOCK)
    ])


def _last_argmax(values: np.ndarray) -> int:
    return len(values) - 1 - int(np.argmax(values[::-1]))


def near_best(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the N of ``row``, one of evaluation.json's ``by_n_samples`` ``rows``, is
    near the best quality, within Monte Carlo and test-set noise.

    The rule: N is near the best when neither its accuracy shortfall to the most
    accurate N nor its NLL excess over the N of lowest NLL is shown to exceed its
    tolerance, that is when the lower end of the 95% interval of the shortfall is at
    most ACCURACY_TOLERANCE and that of the excess at most NLL_TOLERANCE
    (``accuracy_shortfall_interval``, ``nll_excess_interval``). The accuracy and NLL
    are those expected of an N-sample prediction (RowQuality, one draw per test row
    for every N), the intervals paired-bootstrap percentiles over test rows
    (quality_noise). Each end is a one-sided test at 2.5% of "worse by more than the
    tolerance": N is ruled out only on evidence, never by noise that happened to
    favour another N. Rows without intervals (older files) compare the point
    differences to the best of ``rows`` instead.
    """
    shortfall = _lower_end(row, "accuracy_shortfall_interval",
                           max(other["accuracy"] for other in rows) - row["accuracy"])
    excess = _lower_end(row, "nll_excess_interval",
                        row["nll"] - min(other["nll"] for other in rows))
    return shortfall <= ACCURACY_TOLERANCE and excess <= NLL_TOLERANCE


def _lower_end(row: Mapping[str, Any], interval: str, point_difference: float) -> float:
    return row[interval][0] if interval in row else point_difference


def plateau(rows: Sequence[Mapping[str, Any]]) -> int:
    """The smallest N near the best quality (near_best): where quality stops improving."""
    return min(int(row["n_samples"]) for row in rows if near_best(row, rows))


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": metrics.accuracy(probabilities, labels),
        "nll": metrics.nll(probabilities, labels),
        "brier": metrics.brier(probabilities, labels),
        "ece": metrics.ece(probabilities, labels),
    }


def selective_metrics(
    summary: UncertaintySummary, labels: np.ndarray, calibration: Calibration
) -> dict[str, float]:
    """What one calibration's decisions are worth on ``summary`` against ``labels``."""
    decision = decide(summary, calibration)
    errors = summary.label != labels
    return {
        "aurc": metrics.aurc(decision.risk_scores, errors),
        **decision_metrics(errors, decision.error_risk, decision.novel,
                           decision.prediction_sets[np.arange(len(labels)), labels],
                           decision.prediction_sets.sum(axis=1)),
    }


def decision_metrics(
    errors: np.ndarray, error_risk: np.ndarray, novel: np.ndarray, covered: np.ndarray,
    set_sizes: np.ndarray,
) -> dict[str, float]:
    """The guarantees' figures from per-row outcomes, all ``[rows]``: the error among
    predictions not flagged for error risk with its upper bound at the policy's
    confidence, how often each reason flags, conformal coverage and set size."""
    accepted = ~error_risk
    accepted_count, wrong = int(accepted.sum()), int(errors[accepted].sum())
    return {
        "selective_error": wrong / accepted_count if accepted_count else 0.0,
        "selective_error_upper_bound": error_upper_bound(wrong, accepted_count, 1 - RISK_DELTA),
        "coverage": accepted_count / len(errors),
        "error_risk_fraction": float(error_risk.mean()),
        "novelty_fraction": float(novel.mean()),
        "novelty_added_fraction": float((novel & accepted).mean()),
        "flagged_fraction": float((error_risk | novel).mean()),
        "conformal_coverage": float(covered.mean()),
        "conformal_mean_set_size": float(set_sizes.mean()),
    }


@dataclasses.dataclass(frozen=True)
class Evaluation:
    calibrations: list[Calibration]  # ascending N
    test_metrics: dict[str, dict[str, float]]  # "deterministic", "mc" (at the default N)
    deterministic_probabilities: np.ndarray  # [n_test, classes]
    test_summary: UncertaintySummary  # at the default N
    test_labels: np.ndarray  # [n_test]
    auto_calibration: AutoCalibration | None = None  # n_samples "auto"


def evaluate_and_calibrate(
    model: keras.Model,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_samples: int,
    calibration_grid: Sequence[int],
    risk_target_error: float,
    conformal_alpha: float,
    novelty_false_alarm_rate: float,
    seed: int,
    max_auto_samples: int = DEFAULT_MAX_AUTO_SAMPLES,
) -> Evaluation:
    """Calibrate at every N of the grid on the validation split, and the adaptive
    procedure ("auto", at most ``max_auto_samples`` samples) as its own N; then measure
    the default N (``n_samples``, in the grid) and "auto" on the test split."""
    from uncertainty.mc import MCEngine  # imports TensorFlow: loadtest reads this module too

    engine = MCEngine(model)
    calibrations = calibrate_grid(
        engine, x_val, y_val, calibration_grid, target_error=risk_target_error,
        conformal_alpha=conformal_alpha, novelty_false_alarm_rate=novelty_false_alarm_rate,
        seed=seed,
    )
    auto, _ = calibrate_auto_procedure(
        engine, x_val, y_val, calibrations, max_samples=max_auto_samples,
        target_error=risk_target_error, conformal_alpha=conformal_alpha,
        novelty_false_alarm_rate=novelty_false_alarm_rate, seed=seed + AUTO_CALIBRATION_SEED_OFFSET,
    )
    auto_test = auto_draw(engine, x_test, auto.stopping, auto.schedule,
                          seed + AUTO_TEST_SEED_OFFSET, auto.stratified)
    test = mc_summary(engine, x_test, n_samples, seed + 10**6)
    deterministic = model.predict(x_test, batch_size=1024, verbose=0)
    deterministic_aurc = metrics.aurc(1.0 - deterministic.max(axis=1),
                                      deterministic.argmax(axis=1) != y_test)
    return Evaluation(
        calibrations=calibrations,
        test_metrics={
            "deterministic": {**classification_metrics(deterministic, y_test),
                              "aurc": deterministic_aurc},
            "mc": {**classification_metrics(test.mean, y_test),
                   **selective_metrics(test, y_test, for_n_samples(calibrations, n_samples))},
            "auto": {**classification_metrics(auto_test.summary.mean, y_test),
                     **selective_metrics(auto_test.summary, y_test, auto.calibration),
                     "mean_n_samples": float(auto_test.n_samples.mean())},
        },
        deterministic_probabilities=deterministic,
        test_summary=test,
        test_labels=y_test,
        auto_calibration=auto,
    )


def risk_coverage_curves(
    summary: UncertaintySummary, labels: np.ndarray
) -> dict[str, metrics.RiskCoverage]:
    errors = summary.label != labels
    return {
        name: metrics.risk_coverage_curve(scores, errors)
        for name, scores in risk_scores(summary).items()
    }


def guarantee_figures(summary, labels: np.ndarray, calibration,
                      conformal_alpha: float) -> dict[str, Any]:
    """selective_metrics on in-distribution rows, the novelty false-alarm rate (the
    share of rows that novelty alone flags: novel, not flagged for error risk, as the
    novelty policy is calibrated), each promise beside its figure, and whether each
    holds: a promise fails only when the rows show, at confidence 1 - RISK_DELTA, a
    rate above it (the Clopper-Pearson lower bound of the rate exceeds the promise)."""
    decision = decide(summary, calibration)
    errors = summary.label != labels  # [rows]
    covered = decision.prediction_sets[np.arange(len(labels)), labels]  # [rows]
    false_alarms = decision.novel & ~decision.error_risk  # [rows]
    target_error = calibration.risk_policy.target_error
    false_alarm_rate = calibration.novelty_policy.false_alarm_rate
    return {
        **selective_metrics(summary, labels, calibration),
        "target_error": target_error,
        "conformal_coverage_target": 1.0 - conformal_alpha,
        "novelty_false_alarm_rate": float(false_alarms.mean()),
        "novelty_false_alarm_target": false_alarm_rate,
        "holds": {
            "selective_error": not shown_above(errors[~decision.error_risk], target_error),
            "conformal_coverage": not shown_above(~covered, conformal_alpha),
            "novelty_false_alarms": not shown_above(false_alarms, false_alarm_rate),
        },
    }


def shown_above(events: np.ndarray, rate: float) -> bool:
    """Whether ``events`` ``[rows]`` bool show their rate above ``rate`` at confidence
    1 - RISK_DELTA: the Clopper-Pearson lower bound exceeds it."""
    count, total = int(events.sum()), len(events)
    lower_bound = 1.0 - error_upper_bound(total - count, total, 1 - RISK_DELTA)
    return lower_bound > rate


def flag_fractions(summary, calibration) -> dict[str, float]:
    """The share of rows flagged for any reason and for each."""
    decision = decide(summary, calibration)
    return {"flagged_fraction": float(decision.flagged.mean()),
            "error_risk_fraction": float(decision.error_risk.mean()),
            "novelty_fraction": float(decision.novel.mean())}


def uncertified_warning(card: Any, rows: int) -> str | None:
    """What a calibration of ``card`` on ``rows`` rows that certified no threshold means
    (the saved model flags every answer at its N), in one line; None when all did."""
    policies = [(str(c.n_samples), c.risk_policy) for c in card.calibrations]
    if card.auto_calibration is not None:
        policies.append(('"auto"', card.auto_calibration.risk_policy))
    uncertified = [n for n, policy in policies if policy.threshold == FLAG_EVERYTHING]
    if not uncertified:
        return None
    target = card.risk_policy.target_error
    fewest = fewest_rows_to_certify(target)
    fewest_distinct = fewest_rows_to_certify(target, distinct_scores=True)
    why = (f"{rows} rows are too few" if rows < fewest else
           f"{rows} rows are too few for scores that differ" if rows < fewest_distinct else
           f"too many of the most certain of the {rows} rows are wrong")
    scope = ("every answer" if len(uncertified) == len(policies) else
             f"every answer at N = {', '.join(uncertified)}")
    return (f"no threshold certifies an error of at most {target:g} among unflagged answers "
            f"(that needs at least {fewest} calibration rows, all predicted correctly, and "
            f"{fewest_distinct} when their scores all differ, as they do at N > 1; {why}): "
            f"the saved model will flag {scope}")
