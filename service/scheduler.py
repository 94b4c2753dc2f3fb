"""Every engine call of the service, on one lane: admission by queued work, latency
budgets, continuous batching by rows and instances, big requests sliced and
interleaved with small ones.

Work: one request's (or one batched item's) instances ``x`` ``[batch, *input_shape]``
at one ``n_samples``. Its engine rows (batch x N, instance-major) are cut into
slices of at most :data:`SLICE_ROWS` rows, a fixed function of the request alone:
whole instances when N fits a slice, in as few slices of nearly equal size as fit
(64 instances at N=30: four of 16, so that the slices of four such works fill a
round of 64 instances), else one instance's samples in nearly equal parts. "auto"
is sliced by instances, as many as its first round's samples fit (64 at 8
samples), and priced at its mean N on the calibration split.

Rounds: while the engine thread draws one round, requests queue; the next round
takes the next slice of each queued work in arrival order, as long as the round
stays within ``max_rows`` rows and ``max_instances`` instances (a work that does
not fit waits a round; the first always fits), then fills what room is left with
further slices of the works in arrival order. Rounds are full whenever work is
queued, and works finish one after another, the oldest first, rather than all in
the same round: their clients' next requests then arrive while the engine draws
the others, instead of in a wave that finds the engine idle and fills a small
round (4 clients x 64 images at N=30 filled rounds of 1,536 rows on average, not
the 1,920 rows of their slices). While short works (a single slice) wait, a round
with slices of long works is followed by one without: a small request waits for
at most the round in flight, and big ones still get every other round.

Unseeded fixed-N slices of every work share one engine call; seeded slices run as
calls of their own, slice ``k`` with a seed derived from the request's seed and
``k`` (slice 0: the seed itself), so that the same seed gives the same answer
whatever else is queued.

Unseeded "auto" slices are batched continuously: a slice starts its sequential
procedure (uncertainty.sequential.SequentialRun) in the round that takes it, and
every round then draws the next round of every procedure under way, in one engine
call: the first rounds of new slices beside the later rounds of older ones, whose
few open instances would otherwise pay an engine call each. A slice is answered once
its instances have all stopped (not when its procedure's slowest instance does), and a
work finishes with its last slice. Later rounds are not held to the round's caps: they
are work already admitted, and small (the instances still open after the first round,
about a sixth of them on the default model). While no request has arrived since the
loop took the round, no queued work has a slice left and no work finished in it, the
engine thread draws the next one at once, without waiting for the event loop; otherwise
the loop takes the next round, so that the next first slices share its call (a later
round alone, of a few open instances, pays an engine call's fixed cost for little work)
and the finished works' answers go out (their clients' next requests then join too).
Admission counts the later rounds among the rounds such a work needs.

Admission, when a request arrives: refused (:class:`Overloaded`, 429) when the rows
admitted and not yet drawn would pass ``max_queued_rows`` (an empty queue admits
anything). A request without a budget is refused when it would wait past
``max_latency`` before its work starts: the time since it reached the service (its
``arrived``, which counts the event loop's lag before the middleware saw it), the round
in flight and the rounds the next slices of the queued works fill before its first one
(how late works finish, which a big request's own length inflates, is not counted).
Its own engine time is its own: four requests of 64 instances are normal load, however
long they take together. A request with a budget is predicted to finish:
the round in flight, then the rounds it needs, each holding a slice of every queued
work, priced by :class:`CostModel`, plus how late works have finished against the model
(:class:`Lateness`, a high quantile). Without N, it takes the largest of
its candidate N predicted to finish by its deadline without making a queued budgeted
work late, down to ``min_samples``; else it is refused, unless the engine is idle: then
it is tried at ``min_samples``, so that a cost model that prices rounds too high learns
again (refusing everything, it would never see a round). A budget is answered in time or
with 429, never late: a queued budgeted work whose deadline passed is refused before
its round, and one whose predictions come after its deadline
is refused then. Overload of the event loop itself is the door's to refuse
(service/door.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from service import metrics
from service.latency import SLICE_ROWS, CostModel, Lateness, LoopLag
from service.schemas import AUTO, Prediction
from uncertainty.sequential import SequentialDraw, SequentialRun

logger = logging.getLogger(__name__)

class Overloaded(Exception):
    """429: the work cannot be admitted now; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Slice:
    """Instances ``[start, stop)`` of a work, ``samples`` samples each."""

    index: int
    start: int
    stop: int
    samples: int
    rows: float  # engine rows (expected, for "auto")

    @property
    def instances(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(eq=False)
class Work:
    """One request's engine work. ``n_samples`` None: the scheduler picks from
    ``choices`` (descending) the largest N that meets ``deadline``."""

    x: np.ndarray  # [batch, *input_shape]
    n_samples: int | str | None
    choices: tuple[int, ...] = ()
    deadline: float | None = None  # self.clock() seconds
    seed: int | None = None
    risk_threshold: float | None = None
    return_samples: bool = False
    arrived: float = dataclasses.field(default_factory=time.perf_counter)
    # set at admission and while it runs
    budget_limited: bool = False
    slices: list[Slice] = dataclasses.field(default_factory=list)
    remaining_rows: float = 0.0  # rows of the slices not yet started
    short: bool = True  # a single slice: it never waits behind a long work's slices
    parts: list[list[np.ndarray]] = dataclasses.field(default_factory=list)  # per instance
    predictions: list[Prediction] = dataclasses.field(default_factory=list)  # "auto"
    open_runs: int = 0  # its unseeded "auto" slices whose procedure is under way
    engine_seconds: float = 0.0  # rounds it took part in
    predicted_finish: float = 0.0  # self.clock() seconds, by the cost model alone
    future: asyncio.Future | None = None
    cancelled: bool = False

    @property
    def batch(self) -> int:
        return len(self.x)

    @property
    def unseeded_fixed(self) -> bool:
        return self.seed is None and self.n_samples != AUTO

    @property
    def done(self) -> bool:
        return not self.slices and not self.open_runs


@dataclasses.dataclass(eq=False)
class _AutoRun:
    """The unseeded "auto" slices that one round took with the same options, their
    sequential procedure under way as one batch (one evaluation of the stopping rule per
    round for all of them)."""

    pieces: list[tuple[Work, Slice]]
    x: np.ndarray  # [the slices' instances, *input_shape]
    run: SequentialRun
    #: the slices not yet answered, each with its rows in the run (``x``) ``[instances]``
    unanswered: list[tuple[Work, Slice, np.ndarray]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        ends = np.cumsum([piece.instances for _, piece in self.pieces])
        self.unanswered = [(work, piece, np.arange(end - piece.instances, end))
                           for (work, piece), end in zip(self.pieces, ends, strict=True)]

    @property
    def works(self) -> list[Work]:
        """The works of its unanswered slices."""
        return [work for work, *_ in self.unanswered]

    def take_stopped(self) -> list[tuple[Work, Slice, np.ndarray]]:
        """The unanswered slices whose instances have all stopped, now answered."""
        if not self.unanswered:
            return []
        # whether a row is open from each unanswered slice's first row to the next one's
        # (the rows between, of answered slices, have all stopped)
        starts = [int(rows[0]) for *_, rows in self.unanswered]
        done = (~np.logical_or.reduceat(self.run.n_used == 0, starts)).tolist()
        stopped = [entry for entry, ended in zip(self.unanswered, done, strict=True) if ended]
        self.unanswered = [entry for entry, ended in zip(self.unanswered, done, strict=True)
                           if not ended]
        return stopped


class _Drawn(NamedTuple):
    """What one round drew: the works it finished, the engine rows, the works it drew for."""

    finished: list[Work]
    rows: float
    works: list[Work]


class _Ahead:
    """The queued works as admission sees them: per work (in arrival order), its remaining
    rows and the rows and instances of its next slice; with their totals, kept as works
    are added, so that an admission reads them without summing the queue again."""

    def __init__(self, works: Iterable[Work]) -> None:
        self.entries: list[tuple[float, float, int]] = []
        self.rows = self.slice_rows = 0.0
        self.slice_instances = 0
        for work in works:
            first = work.slices[0] if work.slices else None
            self.add(work.remaining_rows, first.rows if first else 0.0,
                     first.instances if first else 0)

    def add(self, rows: float, slice_rows: float, slice_instances: int) -> None:
        self.entries.append((rows, slice_rows, slice_instances))
        self.rows += rows
        self.slice_rows += slice_rows
        self.slice_instances += slice_instances


@dataclasses.dataclass
class _Round:
    started: float
    rows: float


class Scheduler:
    """Runs works on one engine thread (the predictor's), in rounds; see the module
    docstring. Call :meth:`run` from the event loop."""

    def __init__(self, predictor, *, max_rows: int, max_instances: int,
                 max_queued_rows: int, max_latency: float,
                 crowd: Callable[[], float] = lambda: 0, lag: LoopLag | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.predictor = predictor
        #: the seconds of rounds, admissions and deadlines (Work.arrived and deadline too)
        self.clock = clock
        #: the most prediction requests received and not answered lately (service/door.py)
        self.crowd = crowd
        self.max_rows = max_rows
        self.max_instances = max_instances
        self.max_queued_rows = max_queued_rows
        self.max_latency = max_latency
        self.costs = CostModel()
        self._works: dict[Work, None] = {}  # admitted and unfinished, in arrival order
        self._round: _Round | None = None
        self._runs: list[_AutoRun] = []  # the engine thread's; read between rounds
        #: slices wait for a round: works arrived since the loop last took one, or queued
        #: works it left out (the engine thread reads it)
        self._slices_waiting = False
        self._long_last = False  # whether the last round held slices of long works
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="uq-engine")
        #: the event loop's lag, watched while the scheduler serves (requests' arrival
        #: times count it: service/middleware.py)
        self.lag = lag or LoopLag(clock)
        self.lateness = Lateness(clock)
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def queued_rows(self) -> float:
        """Rows admitted and not yet handed to the engine."""
        return sum(work.remaining_rows for work in self._works)

    async def run(self, works: Sequence[Work]) -> list[list[Prediction]]:
        """Admit ``works`` together (or raise :class:`Overloaded` for all), then wait for
        their predictions."""
        self._admit(works)
        loop = asyncio.get_running_loop()
        self._ensure_serving(loop)
        for work in works:
            work.future = loop.create_future()
            self._works[work] = None
        self._slices_waiting = True
        self._wake.set()
        try:
            results = [await work.future for work in works]
        except (asyncio.CancelledError, Overloaded):  # the client went away, or a budget
            for work in works:  # expired: draw nothing more for them
                work.cancelled = True
            raise
        finished = self.clock()
        for work in works:
            self.lateness.observe(finished - work.predicted_finish)
        late = [work for work in works if work.deadline is not None and finished > work.deadline]
        if late:  # a budget's answer comes in time or as a 429, never late
            raise Overloaded(f"{_budget(late[0])} passed before the predictions were drawn; "
                             "retry later", self._drain_seconds())
        return results

    # admission

    def _admit(self, works: Sequence[Work]) -> None:
        now = self.clock()
        ahead = _Ahead(self._works)
        for work in works:
            self._choose(work, ahead, now)
            self._delay_queued(work)
            rows = work.remaining_rows
            if ahead.entries and ahead.rows + rows > self.max_queued_rows:
                raise Overloaded(
                    f"the service has {ahead.rows:.0f} engine rows queued and this request "
                    f"needs {rows:.0f} more (UQ_MAX_QUEUED_ROWS={self.max_queued_rows}); retry "
                    "later", self._drain_seconds(),
                )
            ahead.add(rows, work.slices[0].rows, work.slices[0].instances)

    def _choose(self, work: Work, ahead: _Ahead, now: float) -> None:
        """Set the work's N and plan its slices, or raise Overloaded: with a budget, see
        :meth:`_choose_in_budget`; without one, its N is admitted while its first slice is
        predicted to start within ``max_latency`` of its arrival (its own engine time, a big
        request's seconds, is its own), and always by an idle engine: then nothing of ours
        makes it wait (a busy event loop is the door's to refuse)."""
        if work.deadline is not None:
            self._choose_in_budget(work, ahead, now)
            return
        self._plan(work, work.n_samples)
        work.predicted_finish = now + self._predicted_seconds(
            self._rounds(work), work.remaining_rows, work.batch, ahead)
        if self._idle(ahead):
            return
        waited = now - work.arrived + self._start_seconds(work, ahead)
        if waited > self.max_latency:
            raise Overloaded(
                f"the service cannot start this request within {self.max_latency * 1000:.0f} "
                f"ms (UQ_BATCH_MAX_LATENCY_MS) now: it would wait about {waited * 1000:.0f} ms; "
                "retry later", self._drain_seconds())

    def _choose_in_budget(self, work: Work, ahead: _Ahead, now: float) -> None:
        """The largest of the work's choices predicted to finish by its deadline, the
        lateness counted, without making a queued budgeted work late; else Overloaded."""
        candidates = (work.n_samples,) if work.n_samples is not None else work.choices
        margin = self.lateness.seconds
        choosing = len(candidates) > 1
        slack = self._slack(margin) if choosing else math.inf
        # requests received (or about to be: they come in waves) and not yet queued will
        # share the rounds: a budget assumes they take the N it takes, so that it never
        # picks more than all of them could have
        unqueued = max(0, round(self.crowd()) - len(self._works) - 1) if choosing else 0
        for n_samples in candidates:
            self._plan(work, n_samples)
            per_instance = work.remaining_rows / work.batch
            predicted = now + self._predicted_seconds(
                self._rounds(work), work.remaining_rows + unqueued * per_instance,
                work.batch + unqueued, ahead)
            work.predicted_finish = predicted
            if predicted + margin <= work.deadline and (
                    n_samples == candidates[-1] or self._growth(work) <= slack):
                work.budget_limited = n_samples != candidates[0]
                return
        if self._idle(ahead):  # try the prediction; an answer
            work.budget_limited = choosing  # that comes late is still refused (run)
            return
        needed = (predicted + margin - work.arrived) * 1000
        raise Overloaded(f"{_budget(work)} cannot be met now, even at {work.n_samples} "
                         f"samples (about {needed:.0f} ms); retry later", self._drain_seconds())

    def _idle(self, ahead: _Ahead) -> bool:
        """Nothing ahead of a work being admitted, and no round in flight."""
        return not ahead.entries and self._round is None

    def _start_seconds(self, work: Work, ahead: _Ahead) -> float:
        """Seconds until the work's first slice is drawn: the round in flight, then the
        rounds that the next slices of the queued works fill before the one it joins."""
        first = work.slices[0]
        rows, instances = ahead.slice_rows, ahead.slice_instances
        before = max(math.ceil((rows + first.rows) / self.max_rows),
                     math.ceil((instances + first.instances) / self.max_instances)) - 1
        return self._round_left() + self.costs.seconds(before, min(rows, before * self.max_rows))

    def _slack(self, margin: float) -> float:
        """Seconds the next round may grow before a queued work with a budget is predicted
        to miss it: a budget picks no N that makes the others late."""
        return min((work.deadline - work.predicted_finish - margin for work in self._works
                    if work.deadline is not None and work.slices), default=math.inf)

    def _growth(self, work: Work) -> float:
        """Seconds the work's first slice adds to the round it joins."""
        first = work.slices[0]
        return self.costs.seconds(0, first.rows)

    def _delay_queued(self, work: Work) -> None:
        """The queued works draw their next slice in the round this work joins."""
        growth = self._growth(work)
        for queued in self._works:
            if queued.slices:
                queued.predicted_finish += growth

    def _rounds(self, work: Work) -> int:
        """Rounds until the work is drawn: one per slice, and for unseeded "auto" the later
        rounds of its last slice's procedure (a seeded one draws them in its own round)."""
        later = len(self.predictor.auto.schedule) - 1 if (
            work.n_samples == AUTO and work.seed is None) else 0
        return len(work.slices) + later

    def _plan(self, work: Work, n_samples: int | str) -> None:
        work.n_samples = n_samples
        if n_samples == AUTO:  # samples of the first call, at most, and expected per instance
            auto = self.predictor.auto
            first, samples, expected = auto.schedule[0], auto.max_samples, auto.mean_n_samples
        else:
            first = samples = expected = n_samples
        if first <= SLICE_ROWS:  # whole instances: as few slices as fit, of nearly equal size
            parts = -(-work.batch // (SLICE_ROWS // first))
            bounds = [index * work.batch // parts for index in range(parts + 1)]
            work.slices = [
                Slice(index, start, stop, samples, (stop - start) * expected)
                for index, (start, stop) in enumerate(itertools.pairwise(bounds))
            ]
        else:  # one instance per slice, its samples in nearly equal parts
            parts = -(-n_samples // SLICE_ROWS)
            sizes = [len(part) for part in np.array_split(np.arange(n_samples), parts)]
            work.slices = [
                Slice(instance * parts + part, instance, instance + 1, size, size)
                for instance in range(work.batch) for part, size in enumerate(sizes)
            ]
        work.remaining_rows = sum(piece.rows for piece in work.slices)
        work.short = len(work.slices) == 1

    def _predicted_seconds(self, slices: int, rows: float, instances: int,
                           ahead: _Ahead) -> float:
        """Seconds until work of ``slices`` slices, ``rows`` rows and ``instances`` instances
        would be drawn, after the round in flight and beside ``ahead``: the next ``slices``
        slices of each queued work (its next one, when ``slices`` is 1: their totals)."""
        if slices == 1:
            rows += ahead.slice_rows
            instances += ahead.slice_instances
        else:
            for remaining, slice_rows, slice_instances in ahead.entries:
                share = min(remaining, slices * slice_rows)
                rows += share
                instances += share / max(slice_rows, 1e-9) * slice_instances
        rounds = max(slices, math.ceil(rows / self.max_rows),
                     math.ceil(instances / self.max_instances))
        return self._round_left() + self.costs.seconds(rounds, rows)

    def _round_left(self) -> float:
        if self._round is None:
            return 0.0
        expected = self.costs.seconds(1, self._round.rows)
        return max(0.0, self._round.started + expected - self.clock())

    def _drain_seconds(self) -> float:
        """Seconds until the queued work is drawn: the Retry-After of a refusal."""
        rows = self.queued_rows
        rounds = math.ceil(rows / self.max_rows)
        return self._round_left() + self.costs.seconds(rounds, rows)

    # the rounds

    def _ensure_serving(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._tasks or self._tasks[0].done() or self._tasks[0].get_loop() is not loop:
            self._wake = asyncio.Event()
            self._tasks = [loop.create_task(self._serve(), name="uq-scheduler"),
                           loop.create_task(self.lag.watch(), name="uq-loop-lag")]

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # requests the loop has read and not yet handed over join the round taken next
            await asyncio.sleep(0)
            pieces = self._next_round()
            if not pieces and not self._runs:
                self._wake.clear()
                await self._wake.wait()
                continue
            rows = sum(piece.rows for _, piece in pieces)
            instances = (sum(piece.instances for _, piece in pieces)  # new, and still open
                         + sum(len(run.run.active) for run in self._runs))
            self._round = _Round(self.clock(), rows)
            metrics.BATCH_SIZE.observe(instances)
            metrics.QUEUED_ROWS.set(self.queued_rows)
            try:
                drawn = await loop.run_in_executor(self._executor, self._draw, pieces)
            except Exception as error:  # a server fault: fail the round's works, go on
                logger.exception("an engine round failed")
                self._fail({work for work, _ in pieces}
                           | {work for run in self._runs for work in run.works}, error)
                self._runs = []
                continue
            finally:
                elapsed = self.clock() - self._round.started
                self._round = None
            self.costs.observe(drawn.rows, elapsed)
            for work in drawn.works:
                work.engine_seconds += elapsed
            for work in drawn.finished:
                self._works.pop(work, None)
                if not work.future.done():
                    work.future.set_result(work.predictions)
            metrics.QUEUED_ROWS.set(self.queued_rows)

    def _next_round(self) -> list[tuple[Work, Slice]]:
        """The next slice of each queued work, in arrival order, within the round's caps,
        then further slices in the same order while they fit; while short works (one
        slice) wait, every other round leaves the long ones out."""
        self._refuse_expired()
        for work in [work for work in self._works if work.cancelled]:
            self._works.pop(work)
        self._runs = [run for run in self._runs
                      if not all(work.cancelled for work in run.works)]
        with_long = not (self._long_last and any(work.short and work.slices
                                                 for work in self._works))
        takers = [work for work in self._works if work.slices and (work.short or with_long)]
        # a slice of each work; then the rest of each in turn, while the round has room
        turns = itertools.chain(takers, (work for work in takers
                                         for _ in range(len(work.slices))))
        pieces, rows, instances = [], 0.0, 0
        for work in turns:
            if not work.slices:
                continue
            piece = work.slices[0]
            if pieces and (rows + piece.rows > self.max_rows
                           or instances + piece.instances > self.max_instances):
                continue
            work.slices.pop(0)
            work.remaining_rows -= piece.rows
            pieces.append((work, piece))
            rows += piece.rows
            instances += piece.instances
        self._long_last = any(not work.short for work, _ in pieces)
        self._slices_waiting = any(work.slices for work in self._works)
        return pieces

    def _refuse_expired(self) -> None:
        """Refuse, at once, the budgeted works whose deadline passed before their round."""
        now = self.clock()
        expired = {work for work in self._works
                   if work.deadline is not None and work.slices and now > work.deadline}
        for work in expired:
            self._fail({work}, Overloaded(f"{_budget(work)} can no longer be met; retry later",
                                          self._drain_seconds()))

    def _fail(self, works: set[Work], error: Exception) -> None:
        for work in works:
            self._works.pop(work, None)
            if not work.future.done():
                work.future.set_exception(error)

    # in the engine thread

    def _draw(self, pieces: list[tuple[Work, Slice]]) -> _Drawn:
        """Draw one round: the new slices, and the next round of every "auto" run."""
        fixed = [(work, piece) for work, piece in pieces if work.unseeded_fixed]
        if fixed:
            self._draw_fixed(fixed)
        rows = sum(piece.rows for _, piece in fixed)
        autos: dict[tuple, list[tuple[Work, Slice]]] = {}
        for work, piece in pieces:
            if work.n_samples == AUTO and work.seed is None:
                autos.setdefault((work.risk_threshold, work.return_samples), []).append(
                    (work, piece))
            elif not work.unseeded_fixed:
                self._draw_seeded(work, piece)
                rows += piece.rows
        for group in autos.values():
            self._start_run(group)
        works = list(dict.fromkeys([*(work for work, _ in pieces),
                                    *(work for run in self._runs for work in run.works)]))
        if self._runs:
            rows += self._draw_auto_round()
        # on at once while no slice waits to share the call and no answer waits to go out
        while self._runs and not self._slices_waiting and not any(work.done for work in works):
            rows += self._draw_auto_round()
        finished = [work for work in works if work.done and not work.cancelled]
        self._finish([work for work in finished if work.n_samples != AUTO])
        return _Drawn(finished, rows, works)

    def _draw_fixed(self, pieces: list[tuple[Work, Slice]]) -> None:
        """One engine call for the unseeded fixed-N slices of every work."""
        x = np.concatenate([work.x[piece.start:piece.stop] for work, piece in pieces])
        counts = np.concatenate([np.full(piece.instances, piece.samples) for _, piece in pieces])
        arrays = self.predictor.engine.sample_ragged(x, counts)  # one [count, classes] per row
        offset = 0
        for work, piece in pieces:
            _keep(work, piece, arrays[offset:offset + piece.instances])
            offset += piece.instances

    def _start_run(self, pieces: list[tuple[Work, Slice]]) -> None:
        """One sequential procedure for new "auto" slices with the same options."""
        for work, _ in pieces:
            if not work.predictions:  # filled by instance as its runs end, in any order
                work.predictions = [None] * work.batch
            work.open_runs += 1
        x = np.concatenate([work.x[piece.start:piece.stop] for work, piece in pieces])
        run = self.predictor.auto_run(len(x), pieces[0][0].risk_threshold)
        self._runs.append(_AutoRun(pieces, x, run))

    def _draw_auto_round(self) -> int:
        """One engine call for the next round of every "auto" run, each open instance
        drawing its run's next count; then the predictions of the slices whose instances
        have all stopped. Returns the engine rows drawn."""
        runs = self._runs
        x = np.concatenate([run.x[run.run.active] for run in runs])
        counts = np.concatenate([np.full(len(run.run.active), run.run.next_count)
                                 for run in runs])
        arrays = self.predictor.engine.sample_ragged(  # one [count, classes] per open row
            x, counts, stratified=self.predictor.auto.stratified)
        offset = 0
        for run in runs:
            opened = len(run.run.active)
            run.run.advance(np.stack(arrays[offset:offset + opened], axis=1))
            offset += opened
        self._runs = [run for run in runs if not run.run.done]
        self._answer_stopped(runs)
        return int(counts.sum())

    def _answer_stopped(self, runs: list[_AutoRun]) -> None:
        """Predictions of the "auto" slices whose instances have all stopped, those with the
        same options together: a slice's work need not wait for its run's slowest row."""
        groups: dict[tuple, list[tuple[list[tuple[Work, Slice]], SequentialDraw]]] = {}
        for run in runs:
            stopped = run.take_stopped()
            if stopped:
                work = stopped[0][0]
                rows = np.concatenate([rows for *_, rows in stopped])
                groups.setdefault((work.risk_threshold, work.return_samples), []).append(
                    ([(work, piece) for work, piece, _ in stopped], run.run.result(rows)))
        for (risk_threshold, return_samples), group in groups.items():
            predictions = self.predictor.auto_predictions(
                SequentialDraw.joined([draw for _, draw in group]), risk_threshold,
                return_samples)
            offset = 0
            for work, piece in (pair for pairs, _ in group for pair in pairs):
                work.predictions[piece.start:piece.stop] = predictions[
                    offset:offset + piece.instances]
                work.open_runs -= 1
                offset += piece.instances

    def _draw_seeded(self, work: Work, piece: Slice) -> None:
        """A seeded slice, alone: its samples depend on its work and index only."""
        seed = _slice_seed(work.seed, piece.index)
        x = work.x[piece.start:piece.stop]
        if work.n_samples == AUTO:
            work.predictions += self.predictor.predict(
                x, n_samples=AUTO, seed=seed, risk_threshold=work.risk_threshold,
                return_samples=work.return_samples)
        else:
            _keep(work, piece, self.predictor.engine.sample_ragged(
                x, [piece.samples] * piece.instances, seed))

    def _finish(self, works: list[Work]) -> None:
        """Predictions of finished fixed-N works; those with the same N and options
        share one summary."""
        groups: dict[tuple, list[Work]] = {}
        for work in works:
            key = (work.n_samples, work.risk_threshold, work.return_samples)
            groups.setdefault(key, []).append(work)
        for (_, risk_threshold, return_samples), group in groups.items():
            samples = np.stack([np.concatenate(parts) for work in group for parts in work.parts],
                               axis=1)  # [n_samples, instances, classes]
            predictions = self.predictor.predictions(samples, risk_threshold, return_samples)
            offset = 0
            for work in group:
                work.predictions = predictions[offset:offset + work.batch]
                work.parts = []
                offset += work.batch


def _budget(work: Work) -> str:
    return f"latency_budget_ms: {(work.deadline - work.arrived) * 1000:g} ms"


def _keep(work: Work, piece: Slice, arrays: Sequence[np.ndarray]) -> None:
    """Add a slice's samples (one ``[samples, classes]`` array per instance) to its work."""
    if not work.parts:
        work.parts = [[] for _ in range(work.batch)]
    for instance, array in zip(range(piece.start, piece.stop), arrays, strict=True):
        work.parts[instance].append(array)


def _slice_seed(seed: int | None, index: int) -> int | None:
    """Slice 0 draws with the request's seed (as a request of one slice always did);
    slice k with a seed derived from both."""
    if seed is None or index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)
