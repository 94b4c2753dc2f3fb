"""Drift of the uncertainty scores against the calibration split, over a sliding window.

The reference: at calibration time, for each calibrated N and each score of
:data:`SCORES`, the share of calibration rows whose score is exactly 0 (both
scores have a point mass there: mutual information when every sample agrees, 1 -
confidence when a mean probability rounds to 1) and :data:`QUANTILE_LEVELS` + 1
quantiles of the positive scores (:func:`reference_of`, a few kB in the card).

The stream: each prediction's score is mapped to its reference CDF value at the
prediction's own N (the probability integral transform, :func:`to_uniform`;
randomised over the point mass at 0 and any other tie), which is uniform on [0, 1]
for inputs like the calibration rows whatever their N. So predictions at every
calibrated N pool into one stream; predictions at N off the calibration grid have
no reference and are not fed (scores move with N, so a neighbour's reference would
raise false alarms).

The test: the transformed values fall into :data:`BINS` equiprobable bins; over the
last :data:`WINDOW` predictions the chi-square statistic of the bin counts against
``WINDOW / BINS`` each, divided by ``1 + WINDOW / reference_rows`` (the variance the
reference's own sampling error adds to a bin's share), is the drift score of that
score (:func:`window_statistics`). The alarm is on while either score's statistic is
above :data:`THRESHOLD`, evaluated after every prediction.

The threshold is set by simulation (:func:`null_maxima`): with both streams uniform
and independent, a window statistic above it anywhere in a run of
:data:`RUN_LENGTH` = 10,000 predictions after the window has filled happens in at
most ALPHA_PER_SCORE = 0.5% of runs per score, so in at most 1% for the pair (the union
bound): the expected run length between false alarms is then about RUN_LENGTH /
0.01 = 10^6 predictions, far above the 10,000 asked, and a replay of 10,000
in-distribution predictions raises no alarm 99 times in 100. Shapes: a stream of
``m`` predictions is arrays ``[m]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

#: The uncertainty scores watched, as :func:`uncertainty.risk.risk_scores` names them.
SCORES = ("mutual_information", "one_minus_confidence")
#: Quantiles of the positive scores kept per N and score (levels k / QUANTILE_LEVELS).
QUANTILE_LEVELS = 50
BINS = 10
WINDOW = 200
#: Predictions per simulated run, and the share of runs per score allowed a false alarm.
RUN_LENGTH = 10_000
ALPHA_PER_SCORE = 0.005
#: The (1 - ALPHA_PER_SCORE) quantile of the largest statistic over RUN_LENGTH predictions
#: under the null for WINDOW and BINS: threshold_for(ALPHA_PER_SCORE, runs=20_000, seed=1)
#: gives 41.9 (40 s), rounded up; tests/uncertainty/test_drift.py checks the false-alarm
#: rate it gives on fewer runs.
THRESHOLD = 42.0
#: The alarm goes off when every statistic is below this share of the threshold.
CLEAR_FRACTION = 0.5
SIGNIFICANT_DIGITS = 6


@dataclasses.dataclass(frozen=True)
class ScoreReference:
    """One score's distribution on the calibration rows at one N."""

    zero_fraction: float  # share of rows whose score is 0
    quantiles: list[float]  # QUANTILE_LEVELS + 1 ascending quantiles of the positive scores


@dataclasses.dataclass(frozen=True)
class DriftReference:
    """The calibration rows' scores at one N: what the drift detector compares against."""

    rows: int
    scores: dict[str, ScoreReference]


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in values]


def score_reference(scores: np.ndarray, levels: int = QUANTILE_LEVELS) -> ScoreReference:
    """The reference of one score ``[rows]`` (non-negative)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = scores[scores > 0]
    quantiles = (np.quantile(positive, np.linspace(0.0, 1.0, levels + 1)) if len(positive)
                 else np.zeros(levels + 1))
    return ScoreReference(zero_fraction=float(1.0 - len(positive) / len(scores)),
                          quantiles=_rounded(quantiles))


def reference_of(scores: Mapping[str, np.ndarray]) -> DriftReference:
    """The reference of the calibration rows' scores (name -> ``[rows]``, every name of
    SCORES; :func:`uncertainty.risk.risk_scores` gives them)."""
    rows = len(scores[SCORES[0]])
    return DriftReference(rows=rows, scores={name: score_reference(scores[name])
                                             for name in SCORES})


def to_uniform(reference: ScoreReference, scores: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The reference CDF at each score ``[m]``: values in [0, 1] ``[m]``, uniform when the
    scores are distributed as the reference's. A score of 0 maps uniformly into [0,
    zero_fraction]; a positive one to zero_fraction + (1 - zero_fraction) G(score),
    G the positive scores' CDF interpolated linearly between quantiles, uniformly
    across the levels a score ties with. ``draws`` ``[m]``, uniform in [0, 1), break
    the ties."""
    scores = np.asarray(scores, dtype=np.float64)
    quantiles = np.asarray(reference.quantiles)
    levels = len(quantiles) - 1
    zero = reference.zero_fraction
    left = np.searchsorted(quantiles, scores, "left")  # [m]
    right = np.searchsorted(quantiles, scores, "right")
    below = np.clip(left - 1, 0, levels - 1)
    width = quantiles[below + 1] - quantiles[below]
    fraction = np.clip((scores - quantiles[below]) / np.where(width > 0, width, 1.0), 0.0, 1.0)
    positive = np.where(left == 0, 0.0, np.where(left > levels, 1.0, (below + fraction) / levels))
    tie = right > left  # equal to one or more quantiles: spread over the levels it spans
    positive = np.where(tie, (left + draws * (right - 1 - left)) / levels, positive)
    return np.where(scores > 0, zero + (1.0 - zero) * positive, draws * zero)


def to_bins(uniform: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Equiprobable bin of each value in [0, 1]: ``[m]`` int8."""
    return np.minimum((np.asarray(uniform) * bins).astype(np.int8), bins - 1)


def window_statistics(bins: np.ndarray, window: int = WINDOW, n_bins: int = BINS,
                      history: np.ndarray | None = None) -> np.ndarray:
    """The chi-square statistic of the bin counts over the last ``window`` values, after
    each value of ``bins`` ``[..., m]``: ``[..., m]``, NaN until ``window`` values
    (``history`` ``[..., h]``, h < window or = window, included) have been seen."""
    bins = np.asarray(bins)
    if history is not None and history.shape[-1]:
        bins = np.concatenate([history, bins], axis=-1)
        new = bins.shape[-1] - history.shape[-1]
    else:
        new = bins.shape[-1]
    expected = window / n_bins
    full = bins.shape[-1] - window + 1  # steps with a full window
    statistics = np.full(bins.shape, np.nan)
    if full > 0:
        one_hot = bins[..., None] == np.arange(n_bins, dtype=bins.dtype)  # [..., steps, bins]
        counts = np.cumsum(one_hot, axis=-2, dtype=np.int32)
        counts = np.concatenate([np.zeros_like(counts[..., :1, :]), counts], axis=-2)
        in_window = counts[..., window:, :] - counts[..., :-window, :]  # [..., full, bins]
        statistics[..., window - 1:] = ((in_window - expected) ** 2).sum(axis=-1) / expected
    return statistics[..., bins.shape[-1] - new:]


def batch_statistic(counts: np.ndarray, reference_rows: int) -> float:
    """The detector's statistic with one window holding a whole batch: the chi-square of
    the batch's bin counts ``[bins]`` against an equal share each, divided by 1 + batch
    / reference_rows (the reference's own sampling error), as :class:`DriftDetector`
    divides its windows'. About 9 (the bins less one) for a batch like the calibration
    rows, growing with the batch's size when it is not."""
    counts = np.asarray(counts, dtype=np.float64)
    batch = counts.sum()
    expected = batch / len(counts)
    return float(((counts - expected) ** 2).sum() / expected / (1.0 + batch / reference_rows))


def null_maxima(runs: int, run_length: int = RUN_LENGTH, window: int = WINDOW,
                n_bins: int = BINS, seed: int = 0, block: int = 50) -> np.ndarray:
    """The largest window statistic of each of ``runs`` simulated in-distribution runs
    of ``run_length`` predictions after the window has filled: ``[runs]``."""
    rng = np.random.default_rng(seed)
    maxima = []
    for start in range(0, runs, block):
        count = min(block, runs - start)
        bins = rng.integers(0, n_bins, size=(count, run_length + window - 1), dtype=np.int8)
        maxima.append(np.nanmax(window_statistics(bins, window, n_bins), axis=-1))
    return np.concatenate(maxima)


def threshold_for(alpha: float, runs: int, **options) -> float:
    """The statistic exceeded anywhere in a run in a share ``alpha`` of simulated
    in-distribution runs (null_maxima's options)."""
    return float(np.quantile(null_maxima(runs, **options), 1.0 - alpha))


@dataclasses.dataclass(frozen=True)
class DriftUpdate:
    """What a batch of predictions did to the detector."""

    statistics: dict[str, np.ndarray]  # score -> [m] adjusted statistic after each (NaN: not full)
    alarm: np.ndarray  # [m] bool: whether the alarm is on after each prediction fed


class DriftDetector:
    """The sliding-window test over the stream of predictions at calibrated N.

    ``references``: N -> DriftReference. Not thread-safe: one caller at a time."""

    def __init__(self, references: Mapping[int, DriftReference], *, window: int = WINDOW,
                 n_bins: int = BINS, threshold: float = THRESHOLD, seed: int | None = None
                 ) -> None:
        if not references:
            raise ValueError("a drift detector needs the reference of at least one N")
        self.references = dict(references)
        self.window, self.n_bins, self.threshold = window, n_bins, threshold
        rows = min(reference.rows for reference in self.references.values())
        #: the chi-square statistic's divisor for the reference's own sampling error
        self.reference_factor = 1.0 + window / rows
        self.rng = np.random.default_rng(seed)
        self.history = {name: np.zeros(0, np.int8) for name in SCORES}  # last window bins
        self.statistics = dict.fromkeys(SCORES, float("nan"))
        self.observed = 0  # predictions fed
        self.skipped = 0  # predictions at N without a reference (off the grid, "auto")
        self.alarm = False
        self.alarms = 0  # times the alarm came on
        self.last_alarm_observed: int | None = None  # `observed` when it last came on

    def update(self, n_samples: np.ndarray, scores: Mapping[str, np.ndarray]) -> DriftUpdate:
        """Feed predictions in order: their N ``[m]`` and scores (name -> ``[m]``)."""
        n_samples = np.asarray(n_samples)
        known = np.isin(n_samples, list(self.references))
        self.skipped += int((~known).sum())
        n_samples = n_samples[known]
        statistics = {}
        for name in SCORES:
            values = np.asarray(scores[name], dtype=np.float64)[known]
            uniform = np.empty(len(values))
            for n in np.unique(n_samples):
                rows = n_samples == n
                uniform[rows] = to_uniform(self.references[int(n)].scores[name], values[rows],
                                           self.rng.random(int(rows.sum())))
            bins = to_bins(uniform, self.n_bins)
            statistics[name] = window_statistics(
                bins, self.window, self.n_bins, self.history[name]) / self.reference_factor
            self.history[name] = np.concatenate([self.history[name], bins])[-self.window:]
            if len(bins):
                self.statistics[name] = float(statistics[name][-1])
        largest = np.full(len(n_samples), -np.inf)
        for values in statistics.values():
            largest = np.fmax(largest, values)  # NaN (window not full) counts as below
        alarm = np.zeros(len(n_samples), bool)
        for step, value in enumerate(largest):
            if not self.alarm and value > self.threshold:
                self.alarm = True
                self.alarms += 1
                self.last_alarm_observed = self.observed + step + 1
            elif self.alarm and value < self.threshold * CLEAR_FRACTION:
                self.alarm = False
            alarm[step] = self.alarm
        self.observed += len(n_samples)
        return DriftUpdate(statistics=statistics, alarm=alarm)

    def state(self) -> dict:
        """The detector's state as JSON values."""
        return {
            "method": (f"chi-square of {self.n_bins} equiprobable bins of each score's "
                       f"reference CDF value over the last {self.window} predictions at "
                       "calibrated N"),
            "window": self.window,
            "threshold": self.threshold,
            "reference_n_samples": sorted(self.references),
            "observed": self.observed,
            "skipped": self.skipped,
            "scores": {name: (None if np.isnan(value) else round(value, 3))
                       for name, value in self.statistics.items()},
            "alarm": self.alarm,
            "alarms": self.alarms,
            "last_alarm_observed": self.last_alarm_observed,
        }
