"""uq-evaluate's row for ``n_samples: "auto"`` (uncertainty.sequential): what the adaptive
sample count buys against every fixed N, and whether the card's promises hold for it.

The procedure runs as the service runs it (training.evaluation.auto_draw) on the test
split and on each shifted set, under the card's calibration of "auto". Its row holds
the quality figures of the fixed-N rows, the mean and distribution of the N it used,
and, paired over the test rows with the fixed-N rows' expected accuracy and NLL
(training.evaluation.RowQuality), the differences to every evaluated N with
paired-bootstrap intervals; the shortfall to the best N in the fields that
training.evaluation.near_best reads, so the same rule judges it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    INTERVAL_LEVEL,
    auto_draw,
    bootstrap_means,
    classification_metrics,
    flag_fractions,
    guarantee_figures,
    selective_metrics,
    total_variation,
)
from uncertainty import metrics

logger = logging.getLogger(__name__)

#: The procedure's draws: seed + (AUTO_SEED_INDEX + k) * SEED_STRIDE, k = 0 for the test
#: split, 1, 2, ... for the shifted sets, apart from uq-evaluate's other draws.
AUTO_SEED_INDEX = 50


def auto_report(engine: Any, card: Any, x_test: np.ndarray, y_test: np.ndarray,
                quality: Mapping[int, Any], reference: np.ndarray,
                shifted_inputs: Mapping[str, np.ndarray], seed: int,
                seed_stride: int) -> dict[str, Any] | None:
    """The "auto" row of evaluation.json, or None when the card has no calibration of
    "auto". ``quality``: N -> RowQuality of the test rows (the fixed-N rows' draw);
    ``reference``: the reference mean probabilities of the first test rows."""
    auto = card.auto_calibration
    if auto is None:
        logger.info('the card has no calibration of "auto": no auto row')
        return None
    started = time.perf_counter()
    result = auto_draw(engine, x_test, auto.stopping, auto.schedule,
                       seed + AUTO_SEED_INDEX * seed_stride, auto.stratified)
    summary, calibration = result.summary, auto.calibration
    logger.info("auto on the test split: mean N %.2f in %.1f s", result.n_samples.mean(),
                time.perf_counter() - started)
    row: dict[str, Any] = {
        "n_samples": "auto",
        "schedule": list(auto.schedule),
        **n_samples_figures(result.n_samples, auto.schedule),
        **classification_metrics(summary.mean, y_test),
        **selective_metrics(summary, y_test, calibration),
        "estimator_error": float(
            total_variation(summary.mean[: len(reference)], reference).mean()),
        **paired_differences(summary.mean, y_test, quality),
        "guarantees": guarantee_figures(summary, y_test, calibration, card.conformal_alpha),
        "shifted": {},
    }
    for index, (name, inputs) in enumerate(shifted_inputs.items(), start=1):
        shifted = auto_draw(engine, inputs, auto.stopping, auto.schedule,
                            seed + (AUTO_SEED_INDEX + index) * seed_stride, auto.stratified)
        row["shifted"][name] = {**flag_fractions(shifted.summary, calibration),
                                "mean_n_samples": float(shifted.n_samples.mean())}
    return row


def n_samples_figures(n_samples: np.ndarray, schedule: list[int] | tuple[int, ...]
                      ) -> dict[str, Any]:
    """Mean, quantiles and distribution (share of rows per N of the schedule) of the
    samples each row used."""
    return {
        "mean_n_samples": float(n_samples.mean()),
        "median_n_samples": float(np.median(n_samples)),
        "p90_n_samples": float(np.percentile(n_samples, 90)),
        "n_samples_distribution": {str(n): float((n_samples == n).mean()) for n in schedule},
    }


def paired_differences(mean: np.ndarray, labels: np.ndarray, quality: Mapping[int, Any],
                       resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Accuracy and NLL of the auto predictions ``mean`` ``[rows, classes]`` against each
    fixed N's expected ones (``quality``: N -> RowQuality of the same rows), as points
    and paired-bootstrap intervals over the rows: ``versus`` N -> differences (auto minus
    N), and the shortfall to the most accurate N and excess over the N of lowest NLL
    in the fields of a by-N row."""
    counts = sorted(quality)
    true_class = mean[np.arange(len(labels)), labels]
    auto_correct = (mean.argmax(axis=1) == labels).astype(float)  # [rows]
    auto_nll = -np.log(np.maximum(true_class, metrics.NLL_FLOOR))
    columns = np.stack([auto_correct, auto_nll]
                       + [quality[n].correct for n in counts]
                       + [quality[n].nll for n in counts], axis=1)  # [rows, 2 + 2K]
    means = bootstrap_means(columns, resamples, BOOTSTRAP_SEED)  # [resamples, 2 + 2K]
    point = columns.mean(axis=0)
    k = len(counts)
    tails = 50 * (1 - INTERVAL_LEVEL), 50 * (1 + INTERVAL_LEVEL)

    def difference(auto_column: int, fixed_column: int) -> tuple[float, list[float]]:
        values = means[:, auto_column] - means[:, fixed_column]
        return (float(point[auto_column] - point[fixed_column]),
                np.percentile(values, tails).tolist())

    versus = {}
    for index, n in enumerate(counts):
        accuracy, accuracy_interval = difference(0, 2 + index)
        nll, nll_interval = difference(1, 2 + k + index)
        versus[str(n)] = {"accuracy_difference": accuracy,
                          "accuracy_difference_interval": accuracy_interval,
                          "nll_difference": nll, "nll_difference_interval": nll_interval}
    # the best N as quality_noise picks it: the largest N on ties
    best_accuracy = counts[k - 1 - int(np.argmax(point[2 : 2 + k][::-1]))]
    best_nll = counts[k - 1 - int(np.argmax(-point[2 + k :][::-1]))]
    shortfall = versus[str(best_accuracy)]
    excess = versus[str(best_nll)]
    return {
        "accuracy_shortfall": -shortfall["accuracy_difference"],
        "accuracy_shortfall_interval": sorted(-end for end in
                                              shortfall["accuracy_difference_interval"]),
        "nll_excess": excess["nll_difference"],
        "nll_excess_interval": excess["nll_difference_interval"],
        "versus": versus,
    }


def table_line(row: dict[str, Any], near: bool) -> str:
    """The auto row of uq-evaluate's quality table, in its columns."""
    interval = _interval(row["accuracy_shortfall_interval"])
    nll_interval = _interval(row["nll_excess_interval"])
    return (f"{'auto':>5} {row['accuracy']:>9.4f} {row['nll']:>7.4f} {row['brier']:>7.4f} "
            f"{row['ece']:>7.4f} {row['aurc']:>7.4f} {row['flagged_fraction']:>8.3f} "
            f"{row['selective_error']:>8.4f} {row['conformal_coverage']:>8.3f} "
            f"{row['estimator_error']:>8.4f} {interval:>22} {nll_interval:>22}"
            f"{' near best' if near else ''}")


def summary_lines(row: dict[str, Any]) -> list[str]:
    """What the auto row used, and its differences to the largest evaluated N."""
    shares = ", ".join(f"{n}: {share:.1%}" for n, share in row["n_samples_distribution"].items()
                       if share > 0)
    largest = max(row["versus"], key=int)
    versus = row["versus"][largest]
    guarantees = row["guarantees"]
    lines = [
        f"auto used N = {row['mean_n_samples']:.2f} on average (median "
        f"{row['median_n_samples']:.0f}, 90th percentile {row['p90_n_samples']:.0f}; rows "
        f"stopping at {shares})",
        f"auto against N={largest}: accuracy {versus['accuracy_difference']:+.4f} "
        f"{_interval(versus['accuracy_difference_interval'])}, NLL "
        f"{versus['nll_difference']:+.4f} {_interval(versus['nll_difference_interval'])}",
        f"auto guarantees: error among unflagged {guarantees['selective_error']:.4f} (bound "
        f"{guarantees['selective_error_upper_bound']:.4f}, target "
        f"{guarantees['target_error']:.4f}), set coverage "
        f"{guarantees['conformal_coverage']:.3f} (1-alpha "
        f"{guarantees['conformal_coverage_target']:.3f}), novelty false alarms "
        f"{guarantees['novelty_false_alarm_rate']:.3f} (stated "
        f"{guarantees['novelty_false_alarm_target']:.3f})"
        + ("" if all(guarantees["holds"].values()) else "  ! a promise is shown broken"),
    ]
    if row["shifted"]:
        lines.append("auto on shifted sets: " + ", ".join(
            f"{name} {figures['flagged_fraction']:.3f} flagged at mean N "
            f"{figures['mean_n_samples']:.1f}" for name, figures in row["shifted"].items()))
    return lines


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy, NLL and ECE against N, with auto at its mean N, and the distribution of
    the N that auto used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, auto = report["by_n_samples"], report["auto"]
    counts = [row["n_samples"] for row in rows]
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for axis, name in zip(axes[:3], ("accuracy", "nll", "ece"), strict=True):
        axis.plot(counts, [row[name] for row in rows], marker="o", label="fixed N")
        axis.plot([auto["mean_n_samples"]], [auto[name]], marker="*", markersize=14,
                  linestyle="none", color="tab:red", label="auto (at its mean N)")
        axis.set(xlabel="MC samples N", title=name, xscale="log")
    axes[0].legend(fontsize=7)
    distribution = auto["n_samples_distribution"]
    axes[3].bar([str(n) for n in distribution], list(distribution.values()), color="tab:red")
    axes[3].set(xlabel="samples used", ylabel="share of test rows",
                title=f"auto: mean N {auto['mean_n_samples']:.1f}")
    figure.suptitle(f'n_samples "auto" against fixed N ({report.get("model", "")})')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _interval(ends: list[float]) -> str:
    return f"[{ends[0]:+.4f}, {ends[1]:+.4f}]"
