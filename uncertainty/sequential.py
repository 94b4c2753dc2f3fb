"""Adaptive sample count: draw Monte Carlo samples in rounds, and stop each row once
its decision is settled.

A fixed N pays the worst case for every input: most inputs are decided after a
handful of samples, a few ambiguous ones need 50 to 100. ``n_samples: "auto"``
draws samples in rounds (cumulative counts ``schedule``: 8, 16, 32, 64, 100 by
default) and, after each round, stops every row whose decision, that is its label,
its flag reasons and its prediction set, is settled by the stopping rule
(:class:`StoppingRule`). Stopped rows leave the batch: later rounds run on fewer
rows. A row still open after the last round stops there.

The stopping rule. Every decision quantity is the mean over the row's n samples of
a per-sample value, so it has a standard error ``se = std(values, ddof=1) /
sqrt(n)`` and an interval ``estimate +- t * se``, where ``t`` is the one-sided
``confidence`` quantile (0.93) of Student's t with n - 1 degrees of freedom (1.66
at n = 8, 1.56 at 16, 1.49 at 64: wide while the spread itself is uncertain). A
quantity is settled when its interval excludes its threshold, or when the interval
is narrower than the quantity's tolerance (``t * se < tolerance``): then the
estimate is known to lie within the tolerance of the threshold, a close call that
more samples would not make clear at any reasonable cost. The decision quantities,
for the row's current top class ``k`` (the argmax of the mean), with their
tolerances:

- the label: for every other class ``c``, the lead ``p_s[k] - p_s[c]`` against 0
  (``label_tolerance``);
- the prediction set: for every class ``c`` but ``k`` (always in the set), the
  probability ``p_s[c]`` against the conformal cut ``1 - q`` (``set_tolerance``);
- the error-risk flag: the risk score against its threshold (``risk_tolerance``),
  per sample ``1 - p_s[k]`` (one_minus_confidence), the cross-entropy ``-sum_c
  p_s[c] log mean[c]`` (predictive_entropy: its mean is the entropy of the mean),
  ``KL(p_s || mean)`` (mutual_information) or ``(p_s[k] - mean[k])**2`` against the
  squared threshold (predicted_class_std: its mean is the variance);
- the novelty flag: mutual information against the novelty threshold
  (``novelty_tolerance``), per sample ``KL(p_s || mean)``: mutual information is
  exactly their mean.

The mean of n samples underestimates mutual information and variance by a factor
(n - 1) / n, as a variance with ddof=0 does: the rule undoes it (``n / (n - 1)``
times the per-sample values, and for the entropy ``KL / (n - 1)`` added), so that a
row's estimates aim at the same figure at every n.

A row stops when all are settled. The thresholds it stops against are those of the
fixed-N calibration of the largest N (``AutoCalibration.stopping``); a request's
``risk_threshold`` replaces the error-risk one.

The rule is a heuristic with many looks at the data, so it promises nothing by
itself: the promises come from calibrating the procedure as its own "N"
(:func:`calibrate_auto`). Its outputs on the calibration rows, each row stopped
where the rule stopped it, fit the final risk threshold (on the stopping rule's
score), the conformal quantile and the novelty threshold, exactly as a fixed N's
are fitted on its N-sample summaries: the guarantees then hold for what the
procedure answers.

Stratified rounds: the procedure as calibrated now draws each round as Latin
hypercubes of dropout masks (``MCEngine.sample(stratified=True)``): in each block of 8
samples of a row, every unit of every dropout layer is dropped as often as its rate
says, give or take one. Each sample is still an exact dropout sample, but the mean of
a round varies much less than that of independent samples, which is what
brings the NLL of "auto" near that of N=100 (no allocation of independent samples
can: see benchmarks/adaptive_rule.py). The rule's standard error treats the samples as
independent and so overstates the error of a stratified mean: rows stop later than
they would need to, not earlier. ``AutoCalibration.stratified`` records how the card's
procedure was calibrated; cards calibrated before keep independent rounds.

Reproducibility: round ``r`` draws with the engine seed ``round_seed(seed, r)``, so
the same seed and inputs give bit-identical answers (the rows of a round and their
order follow from the earlier rounds). Shapes: a round's draw is ``[k, active rows,
classes]``; results are per row.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from uncertainty.calibration import Calibration
from uncertainty.risk import (
    FLAG_EVERYTHING,
    RISK_SCORES,
    NoveltyPolicy,
    RiskPolicy,
    calibrate_novelty_policy,
    calibrate_risk_policy,
    conformal_quantile,
    risk_score,
)
from uncertainty.summary import UncertaintySummary, summarize

if TYPE_CHECKING:
    from uncertainty.mc import MCEngine

#: What a request asks for to get the adaptive sample count.
AUTO = "auto"
#: Samples of the first round; then the count doubles until the cap. One stratified block
#: (uncertainty.mc.masks.STRATUM_BLOCK). With independent rounds, first rounds of 4 let rows
#: stop on samples that happened to agree: NLL 0.0161 above N=100's at mean N 6.8, against 0.0107
#: at 10.2 from 8 (benchmarks/results/adaptive_rule.json).
FIRST_ROUND_SAMPLES = 8
DEFAULT_MAX_AUTO_SAMPLES = 100
#: One-sided confidence of a decision quantity's interval (Student's t, n - 1 dof): of
#: those tried (0.90, 0.93, 0.96, 0.98), the lowest whose NLL on the validation rows stays
#: within half the 0.005 target of N=100's (benchmarks/results/adaptive_rule.json).
DEFAULT_CONFIDENCE = 0.93
#: Interval half-widths (t * se) below which a quantity counts as settled, in its units.
DEFAULT_LABEL_TOLERANCE = 0.2
DEFAULT_SET_TOLERANCE = 0.2
DEFAULT_RISK_TOLERANCE = 0.1
DEFAULT_NOVELTY_TOLERANCE = 0.1

#: A round's draw: (the rows still open [active] as indices into the batch, the round's
#: number, how many new samples) -> probabilities [count, active, classes].
Draw = Callable[[np.ndarray, int, int], np.ndarray]


def round_schedule(
    first: int = FIRST_ROUND_SAMPLES, max_samples: int = DEFAULT_MAX_AUTO_SAMPLES
) -> tuple[int, ...]:
    """Cumulative sample counts of the rounds: ``first``, doubling, then ``max_samples``
    (8, 16, 32, 64, 100 by default)."""
    for value, name in ((first, "first round samples"), (max_samples, "max auto samples")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2 (a standard error needs two "
                             f"samples), got {value!r}")
    if max_samples < first:
        raise ValueError(f"max auto samples ({max_samples}) must be at least the first "
                         f"round's ({first})")
    counts = [first]
    while counts[-1] * 2 < max_samples:
        counts.append(counts[-1] * 2)
    if counts[-1] != max_samples:
        counts.append(max_samples)
    return tuple(counts)


def round_seed(seed: int | None, round_index: int) -> int | None:
    """The engine seed of round ``round_index`` for a request ``seed`` (None: fresh)."""
    if seed is None:
        return None
    state = np.random.SeedSequence([int(seed), round_index]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 63 bits: a valid engine seed


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """The thresholds a row's decision is settled against, and how many standard
    errors away its estimates must be (the module docstring states the rule)."""

    risk_metric: str
    risk_threshold: float  # flagged when the score is above it
    conformal_quantile: float  # a class is in the set when its probability >= 1 - q
    novelty_metric: str
    novelty_threshold: float
    confidence: float = DEFAULT_CONFIDENCE
    label_tolerance: float = DEFAULT_LABEL_TOLERANCE
    set_tolerance: float = DEFAULT_SET_TOLERANCE
    risk_tolerance: float = DEFAULT_RISK_TOLERANCE
    novelty_tolerance: float = DEFAULT_NOVELTY_TOLERANCE

    def __post_init__(self) -> None:
        if self.risk_metric not in RISK_SCORES:
            raise ValueError(f"risk_metric must be one of {', '.join(RISK_SCORES)}, "
                             f"got {self.risk_metric!r}")
        if self.novelty_metric != "mutual_information":
            raise ValueError("the stopping rule settles novelty on mutual_information only, "
                             f"got {self.novelty_metric!r}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0.5, 1), got {self.confidence}")
        tolerances = (self.label_tolerance, self.set_tolerance, self.risk_tolerance,
                      self.novelty_tolerance)
        if min(tolerances) < 0:
            raise ValueError(f"tolerances must be >= 0, got {tolerances}")

    @classmethod
    def of(cls, calibration: Calibration, **settings: float) -> StoppingRule:
        """The rule that stops against one fixed-N calibration's thresholds; ``settings``
        are the confidence and the tolerances."""
        return cls(
            risk_metric=calibration.risk_policy.metric,
            risk_threshold=calibration.risk_policy.threshold,
            conformal_quantile=calibration.conformal_quantile,
            novelty_metric=calibration.novelty_policy.metric,
            novelty_threshold=calibration.novelty_policy.threshold,
            **settings,
        )

    def settled(self, samples: np.ndarray) -> np.ndarray:
        """Bool ``[rows]``: whether each row's decision is settled by its samples
        ``[n, rows, classes]`` (n >= 2)."""
        p = np.asarray(samples, dtype=np.float64)
        n, rows, _ = p.shape
        if n < 2:
            raise ValueError(f"the stopping rule needs at least 2 samples per row, got {n}")
        mean = p.mean(axis=0)  # [rows, classes]
        top = mean.argmax(axis=1)  # [rows]
        p_top = p[:, np.arange(rows), top]  # [n, rows]
        others = np.ones_like(mean, dtype=bool)
        others[np.arange(rows), top] = False  # [rows, classes]

        t = _student_t(self.confidence, n - 1)

        def settled(values: np.ndarray, threshold: float, tolerance: float) -> np.ndarray:
            """values [n, ...], whose mean is the estimate: the interval excludes
            ``threshold`` or is narrower than ``tolerance``."""
            half_width = t * values.std(axis=0, ddof=1) / math.sqrt(n)
            return (np.abs(values.mean(axis=0) - threshold) > half_width) | (
                half_width < tolerance)

        kl = _kl_to_mean(p, mean) * (n / (n - 1))  # [n, rows], mean: unbiased MI
        label = settled(p_top[:, :, None] - p, 0.0, self.label_tolerance) | ~others
        prediction_set = settled(p, 1.0 - self.conformal_quantile, self.set_tolerance) | ~others
        risk_values, risk_threshold, risk_tolerance = _per_sample_risk(
            p, mean, top, kl, self.risk_metric, self.risk_threshold, self.risk_tolerance)
        return (label.all(axis=1) & prediction_set.all(axis=1)
                & settled(risk_values, risk_threshold, risk_tolerance)
                & settled(kl, self.novelty_threshold, self.novelty_tolerance))


@functools.lru_cache(maxsize=256)
def _student_t(confidence: float, degrees_of_freedom: int) -> float:
    from scipy.stats import t

    return float(t.ppf(confidence, degrees_of_freedom))


def _kl_to_mean(p: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``KL(p_s || mean)`` per sample and row ``[n, rows]``; its mean over samples is the
    mutual information. 0 log 0 is 0 (and a class with mean 0 has p_s = 0)."""
    positive = p > 0
    log_ratio = np.log(np.where(positive, p, 1.0)) - np.log(np.where(positive, mean, 1.0))
    return np.where(positive, p * log_ratio, 0.0).sum(axis=-1)


def _per_sample_risk(
    p: np.ndarray, mean: np.ndarray, top: np.ndarray, kl: np.ndarray, metric: str,
    threshold: float, tolerance: float,
) -> tuple[np.ndarray, float, float]:
    """Per-sample values ``[n, rows]`` whose mean estimates the risk score ``metric`` (for
    predicted_class_std, its square), with the threshold and tolerance in their units.
    ``kl`` ``[n, rows]``: the per-sample KL to the mean, already times n / (n - 1)."""
    n, rows = p.shape[0], np.arange(p.shape[1])
    if threshold < 0:  # FLAG_EVERYTHING: every score (>= 0) is above it, and settled
        return np.zeros(p.shape[:2]), FLAG_EVERYTHING, 0.0
    if metric == "one_minus_confidence":
        return 1.0 - p[:, rows, top], threshold, tolerance
    if metric == "predictive_entropy":  # E[H(mean of n)] falls short of H by about MI / n
        log_mean = np.log(np.where(mean > 0, mean, 1.0))
        return -(p * log_mean).sum(axis=-1) + kl / n, threshold, tolerance
    if metric == "mutual_information":
        return kl, threshold, tolerance
    if metric == "predicted_class_std":  # std +- tolerance, as a variance
        squared = (p[:, rows, top] - mean[rows, top]) ** 2 * (n / (n - 1))
        return squared, threshold**2, 2 * threshold * tolerance + tolerance**2
    raise ValueError(f"unknown risk metric {metric!r}")


@dataclasses.dataclass(frozen=True)
class SequentialDraw:
    """What the procedure drew for a batch of rows."""

    summary: UncertaintySummary  # [rows], each row of its own samples
    n_samples: np.ndarray  # [rows] the samples each row used
    samples: list[np.ndarray]  # per row its samples [n_samples[i], classes]
    active_rows: list[int]  # rows drawn in each round: the batch shrinks as rows stop

    @property
    def engine_rows(self) -> int:
        """Rows x samples drawn in all."""
        return int(self.n_samples.sum())

    @classmethod
    def joined(cls, draws: Sequence[SequentialDraw]) -> SequentialDraw:
        """The draws of several batches as one draw of all their rows, in order (rows
        drawn per round: summed)."""
        if len(draws) == 1:
            return draws[0]
        ends = np.cumsum([len(draw.n_samples) for draw in draws])
        summary = _scatter([(np.arange(end - len(draw.n_samples), end), draw.summary)
                            for draw, end in zip(draws, ends, strict=True)], int(ends[-1]))
        return cls(summary=summary, n_samples=np.concatenate([d.n_samples for d in draws]),
                   samples=[row for draw in draws for row in draw.samples],
                   active_rows=[sum(counts) for counts in itertools.zip_longest(
                       *(draw.active_rows for draw in draws), fillvalue=0)])


class SequentialRun:
    """The procedure on ``rows`` rows, one round at a time, for callers that draw the
    rounds themselves (the service's scheduler shares each round's engine call among
    several runs): ``active`` rows draw ``next_count`` samples each, which ``advance``
    takes; once ``done``, ``result()``."""

    def __init__(self, rows: int, rule: StoppingRule, schedule: Sequence[int]) -> None:
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        self.rule = rule
        self.schedule = tuple(schedule)
        self.rows = rows
        self.round_index = 0
        self.active = np.arange(rows)  # [open rows] indices into the batch
        self._drawn: np.ndarray | None = None  # [n so far, open rows, classes]
        #: per summary field, its values [rows, ...] for the rows stopped so far
        self._summary: dict[str, np.ndarray] = {}
        #: [rows] the samples each row used, 0 while it is open
        self.n_used = np.zeros(rows, dtype=np.int64)
        self._samples: list[np.ndarray | None] = [None] * rows

    @property
    def done(self) -> bool:
        return not len(self.active)

    @property
    def next_count(self) -> int:
        """Samples each open row draws in the next round."""
        previous = self.schedule[self.round_index - 1] if self.round_index else 0
        return self.schedule[self.round_index] - previous

    def advance(self, fresh: np.ndarray) -> None:
        """Take the round's samples ``[next_count, open rows, classes]`` and stop the rows
        the rule settles (all of them after the last round)."""
        fresh = np.asarray(fresh)
        if self.done or fresh.ndim != 3 or fresh.shape[:2] != (self.next_count,
                                                                len(self.active)):
            raise ValueError(
                f"expected samples [{self.next_count if not self.done else 0}, "
                f"{len(self.active)}, classes] for the open rows, got {list(fresh.shape)}")
        drawn = fresh if self._drawn is None else np.concatenate([self._drawn, fresh])
        total = self.schedule[self.round_index]
        last = self.round_index == len(self.schedule) - 1
        stop = np.ones(len(self.active), dtype=bool) if last else self.rule.settled(drawn)
        if stop.any():
            stopped, rows = drawn[:, stop], self.active[stop]
            self._keep(rows, summarize(stopped))
            self.n_used[rows] = total
            for column, row in enumerate(rows.tolist()):
                self._samples[row] = stopped[:, column]
            self.active, drawn = self.active[~stop], drawn[:, ~stop]
        self._drawn = drawn
        self.round_index += 1

    def _keep(self, rows: np.ndarray, summary: UncertaintySummary) -> None:
        """The summary of the rows that stopped (``rows`` ``[k]``, indices into the batch)."""
        for field in dataclasses.fields(UncertaintySummary):
            values = getattr(summary, field.name)  # [k, ...]
            if field.name not in self._summary:
                self._summary[field.name] = np.empty((self.rows, *values.shape[1:]),
                                                     values.dtype)
            self._summary[field.name][rows] = values

    def result(self, rows: np.ndarray | None = None) -> SequentialDraw:
        """The draw of ``rows`` (indices into the batch ``[k]``, each stopped; by default
        every row, once ``done``): a caller may answer rows before the last ends."""
        rows = np.arange(self.rows) if rows is None else np.asarray(rows)
        if not self.n_used[rows].all():
            raise ValueError(f"{int((self.n_used[rows] == 0).sum())} rows are still open")
        n_used = self.n_used[rows]
        return SequentialDraw(
            summary=UncertaintySummary(**{name: values[rows]
                                          for name, values in self._summary.items()}),
            n_samples=n_used, samples=[self._samples[row] for row in rows.tolist()],
            active_rows=[int(count) for count in ((n_used[None, :] >= np.array(
                self.schedule)[:, None]).sum(axis=1)) if count])


def run_sequential(
    draw: Draw, rows: int, rule: StoppingRule, schedule: Sequence[int]
) -> SequentialDraw:
    """The procedure on ``rows`` rows, drawing through ``draw`` (see :data:`Draw`)."""
    run = SequentialRun(rows, rule, schedule)
    while not run.done:
        run.advance(draw(run.active, run.round_index, run.next_count))
    return run.result()


def _scatter(parts: list[tuple[np.ndarray, UncertaintySummary]], rows: int) -> UncertaintySummary:
    """One summary of ``rows`` rows from the summaries of disjoint row groups."""
    fields = {}
    for field in dataclasses.fields(UncertaintySummary):
        first = getattr(parts[0][1], field.name)
        values = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
        for indices, summary in parts:
            values[indices] = getattr(summary, field.name)
        fields[field.name] = values
    return UncertaintySummary(**fields)


def sample_sequential(
    engine: MCEngine, x: np.ndarray, rule: StoppingRule, schedule: Sequence[int],
    seed: int | None = None, *, stratified: bool,
) -> SequentialDraw:
    """The procedure on ``x`` ``[batch, *input_shape]`` through ``engine``: round ``r``
    samples the open rows with the engine seed ``round_seed(seed, r)``, as Latin
    hypercubes of masks when ``stratified``."""
    x = np.asarray(x, dtype=np.float32)

    def draw(active: np.ndarray, round_index: int, count: int) -> np.ndarray:
        rows = x if len(active) == len(x) else x[active]
        return engine.sample(rows, count, seed=round_seed(seed, round_index),
                             stratified=stratified)

    return run_sequential(draw, len(x), rule, schedule)


@dataclasses.dataclass(frozen=True)
class AutoCalibration:
    """The adaptive procedure, calibrated as its own "N": its rounds, the rule it
    stops by (with the thresholds of the fixed-N calibration of ``stopping_n_samples``),
    and the policies fitted on its own outputs on the calibration rows."""

    schedule: tuple[int, ...]  # cumulative samples of the rounds
    stopping: StoppingRule
    stopping_n_samples: int  # whose fixed-N calibration gave the stopping thresholds
    risk_policy: RiskPolicy  # on the stopping rule's score
    conformal_quantile: float
    novelty_policy: NoveltyPolicy
    mean_n_samples: float  # on the calibration rows
    n_samples_shares: dict[int, float]  # N -> share of calibration rows that stopped there
    #: rounds drawn as Latin hypercubes of masks (False: cards calibrated before, whose
    #: rounds were independent samples and are drawn so still)
    stratified: bool = False

    @property
    def max_samples(self) -> int:
        return self.schedule[-1]

    @property
    def calibration(self) -> Calibration:
        """The final policies as a Calibration (for ``decide``); its ``n_samples`` is the
        procedure's cap, while responses say ``"auto"``."""
        return Calibration(n_samples=self.max_samples, risk_policy=self.risk_policy,
                           conformal_quantile=self.conformal_quantile,
                           novelty_policy=self.novelty_policy)

    def rule(self, risk_threshold: float | None = None) -> StoppingRule:
        """The stopping rule; a request's ``risk_threshold`` replaces the error-risk one
        (it replaces the final threshold too)."""
        if risk_threshold is None:
            return self.stopping
        return dataclasses.replace(self.stopping, risk_threshold=float(risk_threshold))


def calibrate_auto(
    result: SequentialDraw, labels: np.ndarray, *, schedule: Sequence[int],
    stopping: StoppingRule, stopping_n_samples: int, stratified: bool, target_error: float,
    conformal_alpha: float, novelty_false_alarm_rate: float,
) -> AutoCalibration:
    """Fit the final policies on the procedure's outputs ``result`` for the calibration
    rows (labels ``[rows]``), as ``uncertainty.calibration.calibrate`` fits a fixed N's.
    The error-risk score stays the stopping rule's, so that "settled" refers to the score
    the flag uses; its threshold keeps the confidence of the choice among every
    candidate score (the score was chosen on these rows at the stopping N)."""
    summary = result.summary
    risk_policy = calibrate_risk_policy(summary, labels, target_error,
                                        metrics=(stopping.risk_metric,))
    error_risk = risk_score(summary, risk_policy.metric) > risk_policy.threshold
    counts, frequency = np.unique(result.n_samples, return_counts=True)
    return AutoCalibration(
        schedule=tuple(int(n) for n in schedule),
        stopping=stopping,
        stopping_n_samples=int(stopping_n_samples),
        risk_policy=risk_policy,
        conformal_quantile=conformal_quantile(summary.mean, labels, conformal_alpha),
        novelty_policy=calibrate_novelty_policy(summary, error_risk, novelty_false_alarm_rate),
        mean_n_samples=float(result.n_samples.mean()),
        n_samples_shares={int(n): float(f / len(result.n_samples))
                          for n, f in zip(counts, frequency, strict=True)},
        stratified=stratified,
    )
