"""PNG plots for training and evaluation reports (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uncertainty.metrics import ReliabilityBins, RiskCoverage  # noqa: E402


def reliability_diagram(bins_by_name: Mapping[str, ReliabilityBins], path: Path) -> None:
    """Accuracy against confidence per bin, one line per prediction method."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for name, bins in bins_by_name.items():
        filled = bins.count > 0
        axis.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", label=name)
    axis.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram",
             xlim=(0, 1), ylim=(0, 1))
    axis.legend(loc="upper left")
    _save(figure, path)


def risk_coverage_plot(
    curves: Mapping[str, RiskCoverage],
    path: Path,
    operating_point: tuple[float, float] | None = None,
) -> None:
    """Selective error against coverage, one line per score; the chosen
    threshold's (coverage, error) as a marker."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, curve in curves.items():
        axis.step(curve.coverage, curve.risk, where="post", label=name)
    if operating_point is not None:
        axis.scatter(*operating_point, color="black", zorder=3, label="risk threshold")
    axis.set(xlabel="coverage (fraction not flagged)", ylabel="error among not flagged",
             title="Risk-coverage", xlim=(0, 1))
    axis.set_ylim(bottom=0)
    axis.legend()
    _save(figure, path)


def training_curves(history: Mapping[str, Sequence[float]], path: Path) -> None:
    """Loss and accuracy per epoch, training against validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                axis.plot(np.arange(1, len(values) + 1), values, label=label)
        axis.set(xlabel="epoch", ylabel=metric, title=metric)
        axis.legend()
    _save(figure, path)


def lines_against(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: Path,
    xlabel: str,
    title: str,
    log_x: bool = False,
) -> None:
    """One panel per series, all against the same ``x``."""
    figure, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.4), squeeze=False)
    for axis, (name, values) in zip(axes[0], series.items(), strict=True):
        axis.plot(x, values, marker="o")
        axis.set(xlabel=xlabel, title=name)
        if log_x:
            axis.set_xscale("log")
    figure.suptitle(title)
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
