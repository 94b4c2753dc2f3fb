"""PNG plots for training and evaluation reports (matplotlib, no display needed)."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel of marked_against_samples: measured lines (label -> one value per N)
    and the promises they answer to, drawn dashed."""

    title: str
    measured: Mapping[str, Sequence[float]]
    promised: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)


def marked_against_samples(
    n_samples: Sequence[int],
    calibrated: Sequence[bool],
    panels: Sequence[Panel],
    path: Path,
    title: str,
) -> None:
    """Panels against N (log scale): measured values as filled circles at calibrated
    N and open squares off the grid, promises as dashed steps."""
    n_values, on_grid = np.asarray(n_samples), np.asarray(calibrated, dtype=bool)
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        for label, values in panel.measured.items():
            values = np.asarray(values)
            (line,) = axis.plot(n_values, values, linewidth=1, label=label)
            axis.scatter(n_values[on_grid], values[on_grid], color=line.get_color(), zorder=3)
            axis.scatter(n_values[~on_grid], values[~on_grid], marker="s", zorder=3,
                         facecolors="none", edgecolors=line.get_color())
        for label, values in panel.promised.items():
            axis.step(n_values, values, where="post", linestyle="--", color="grey", label=label)
        axis.set(xlabel="MC samples N", title=panel.title, xscale="log")
        axis.legend(fontsize=7)
    axes[0][0].scatter([], [], color="black", label="calibrated N")
    axes[0][0].scatter([], [], marker="s", facecolors="none", edgecolors="black",
                       label="off the grid")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    _save(figure, path)


def drift_replay_plot(statistics: Mapping[str, np.ndarray], alarm: np.ndarray, switch: int,
                      threshold: float, path: Path, title: str) -> None:
    """The drift statistics ``[steps]`` per score against the prediction count, the
    threshold, where the stream switched to the shifted set and where the alarm was on."""
    figure, axis = plt.subplots(figsize=(9, 3.8))
    steps = np.arange(1, len(alarm) + 1)
    for name, values in statistics.items():
        axis.plot(steps, values, linewidth=0.8, label=name)
    axis.axhline(threshold, color="black", linestyle="--", linewidth=1, label="alarm threshold")
    axis.axvline(switch + 0.5, color="grey", linewidth=1)
    top = np.nanmax([np.nanmax(values) for values in statistics.values()] + [threshold])
    axis.fill_between(steps, 0, top * 1.05, where=alarm, color="tab:red", alpha=0.15, step="mid",
                      label="alarm on")
    axis.set(xlabel="predictions", ylabel="drift statistic", title=title, yscale="symlog")
    axis.legend(fontsize=7, loc="upper left")
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
