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
from uncertainty.risk import RISK_DELTA, error_upper_bound, risk_scores
from uncertainty.summary import UncertaintySummary, summarize

if TYPE_CHECKING:
    import keras

    from uncertainty.engine import MCEngine

#: Rows per engine call when sampling a whole split, to bound memory.
ROWS_PER_SAMPLING_BATCH = 1000
#: "Stopped improving": accuracy and NLL not shown to fall further than these short of
#: the best over all N (see near_best).
ACCURACY_TOLERANCE = 0.001
NLL_TOLERANCE = 0.005
#: The paired bootstrap over test rows behind near_best's intervals.
BOOTSTRAP_RESAMPLES = 1000
INTERVAL_LEVEL = 0.95
RESAMPLES_PER_BLOCK = 100  # bounds the [resamples, rows] weights held at once


def mc_samples(engine: MCEngine, x: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """``n_samples`` MC samples ``[n_samples, rows, classes]`` of a whole split ``x``."""
    parts = [
        engine.sample(x[start : start + ROWS_PER_SAMPLING_BATCH], n_samples, seed=seed + index)
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


def nested_mc_summaries(
    engine: MCEngine, x: np.ndarray, counts: Sequence[int], seed: int
) -> dict[int, UncertaintySummary]:
    """``nested_summaries(mc_samples(engine, x, max(counts), seed), counts)`` in bounded
    memory: max(counts) samples are drawn for ROWS_PER_SAMPLING_BATCH rows of ``x``
    ``[rows, *input_shape]`` at a time, with mc_samples' seeds, so the draws are the same."""
    parts = [
        nested_summaries(
            mc_samples(engine, x[start : start + ROWS_PER_SAMPLING_BATCH], max(counts),
                       seed + index),
            counts,
        )
        for index, start in enumerate(range(0, len(x), ROWS_PER_SAMPLING_BATCH))
    ]
    return {n: concatenate_summaries([part[n] for part in parts]) for n in counts}


def concatenate_summaries(parts: Sequence[UncertaintySummary]) -> UncertaintySummary:
    """The summaries of consecutive row blocks as one summary of all their rows."""
    return UncertaintySummary(**{
        field.name: np.concatenate([getattr(part, field.name) for part in parts])
        for field in dataclasses.fields(UncertaintySummary)
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


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise total-variation distance between probability rows: [batch]."""
    return 0.5 * np.abs(p - q).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class QualityNoise:
    """Paired-bootstrap intervals of each N's distance to the best N: per N, the
    accuracy shortfall to the most accurate N and the NLL excess over the N of
    lowest NLL, each as a point value and an INTERVAL_LEVEL percentile interval."""

    best_accuracy_n_samples: int
    best_nll_n_samples: int
    by_n_samples: dict[int, dict[str, Any]]


def quality_noise(
    probabilities_by_n: Mapping[int, np.ndarray], labels: np.ndarray, seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> QualityNoise:
    """Resample the test rows ``resamples`` times (seeded) and recompute every N's
    accuracy and NLL on the same resample, so that the differences keep their
    pairing: ``probabilities_by_n`` maps N to mean probabilities ``[rows, classes]``
    of the same rows, best drawn with common random numbers (nested_mc_summaries).
    Monte Carlo noise is independent across rows, so it is in the row-to-row spread
    the bootstrap sees. The best N is the point estimate's (the largest N on ties)."""
    counts = sorted(probabilities_by_n)
    correct = np.stack([probabilities_by_n[n].argmax(axis=1) == labels for n in counts],
                       axis=1).astype(np.float64)  # [rows, K]
    losses = np.stack([row_nll(probabilities_by_n[n], labels) for n in counts], axis=1)
    best_accuracy = _last_argmax(correct.mean(axis=0))
    best_nll = _last_argmax(-losses.mean(axis=0))
    means = bootstrap_means(np.concatenate([correct, losses], axis=1), resamples, seed)
    accuracy_means, nll_means = np.split(means, 2, axis=1)  # [resamples, K] each
    shortfall = accuracy_means[:, [best_accuracy]] - accuracy_means
    excess = nll_means - nll_means[:, [best_nll]]
    tails = 50 * (1 - INTERVAL_LEVEL), 50 * (1 + INTERVAL_LEVEL)
    shortfall_ends, excess_ends = (np.percentile(differences, tails, axis=0)  # [2, K]
                                   for differences in (shortfall, excess))
    accuracy, nll = correct.mean(axis=0), losses.mean(axis=0)  # [K]
    return QualityNoise(
        best_accuracy_n_samples=counts[best_accuracy],
        best_nll_n_samples=counts[best_nll],
        by_n_samples={n: {
            "accuracy_shortfall": float(accuracy[best_accuracy] - accuracy[k]),
            "accuracy_shortfall_interval": shortfall_ends[:, k].tolist(),
            "nll_excess": float(nll[k] - nll[best_nll]),
            "nll_excess_interval": excess_ends[:, k].tolist(),
        } for k, n in enumerate(counts)},
    )


def row_nll(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood ``[rows]`` of ``[rows, classes]`` probabilities;
    its mean is metrics.nll."""
    true_class = probabilities[np.arange(len(labels)), labels]
    return -np.log(np.maximum(true_class, metrics.NLL_FLOOR))


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
    tolerance, that is when the lower end of the 95% paired-bootstrap interval of the
    shortfall is at most ACCURACY_TOLERANCE and that of the excess at most
    NLL_TOLERANCE (``accuracy_shortfall_interval``, ``nll_excess_interval``; see
    quality_noise). Each is a one-sided test at 2.5% of "worse by more than the
    tolerance": N is dropped only on evidence, so a difference within the noise of
    the draws does not decide. Rows without intervals (older files) compare the
    point differences to the best of ``rows`` instead.
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
) -> Evaluation:
    """Calibrate at every N of the grid on the validation split, then measure the
    default N (``n_samples``, in the grid) on the test split."""
    from uncertainty.engine import MCEngine

    engine = MCEngine(model)
    calibrations = calibrate_grid(
        engine, x_val, y_val, calibration_grid, target_error=risk_target_error,
        conformal_alpha=conformal_alpha, novelty_false_alarm_rate=novelty_false_alarm_rate,
        seed=seed,
    )
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
        },
        deterministic_probabilities=deterministic,
        test_summary=test,
        test_labels=y_test,
    )


def risk_coverage_curves(
    summary: UncertaintySummary, labels: np.ndarray
) -> dict[str, metrics.RiskCoverage]:
    errors = summary.label != labels
    return {
        name: metrics.risk_coverage_curve(scores, errors)
        for name, scores in risk_scores(summary).items()
    }
