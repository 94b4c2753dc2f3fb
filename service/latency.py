"""What the scheduler (service/scheduler.py) predicts a work's finish with: the cost of
an engine round, the event loop's lag, and how late works finish against the cost model.
Each reads the clock it is given."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

#: Rows of one slice of a work: a round with a slice of a big request takes about
#: 12 ms on the 2-core machine (python -m benchmarks.overload measures the effect).
SLICE_ROWS = 512


class CostModel:
    """Seconds of one round of ``rows`` engine rows: ``overhead + per_row * rows``, fitted
    online by least squares that weigh the last ``memory`` rounds most, kept near a
    prior (two pseudo-rounds) until rounds of different sizes have been seen. The
    per-prediction work (summary, risk, the response object) is counted per row: a
    term per instance could not be told apart from the one per row while requests share
    one N, and a budget then took large N for free."""

    def __init__(self, overhead: float = 0.002, per_row: float = 2.5e-5,
                 memory: int = 500) -> None:
        self.decay = 1 - 1 / memory
        prior = np.array([overhead, per_row])
        points = np.array([[1, 1], [1, SLICE_ROWS]], dtype=float)
        self._prior_gram = points.T @ points
        self._prior_moment = points.T @ (points @ prior)
        self._gram = np.zeros((2, 2))  # decayed sum of features x features^T
        self._moment = np.zeros(2)  # decayed sum of features x seconds
        self.coefficients = prior

    def observe(self, rows: float, seconds: float) -> None:
        features = np.array([1.0, rows])
        self._gram = self.decay * self._gram + np.outer(features, features)
        self._moment = self.decay * self._moment + features * seconds
        solved = np.linalg.solve(self._gram + self._prior_gram,
                                 self._moment + self._prior_moment)
        self.coefficients = np.maximum(solved, [0.0, 1e-7])

    def seconds(self, rounds: int, rows: float) -> float:
        overhead, per_row = self.coefficients
        return rounds * overhead + rows * per_row


class LoopLag:
    """How late the event loop runs a timer: about what a request that has just reached
    the service waited before its first step (reading and parsing it come after), which
    no request can measure for itself. An exponentially weighted mean of probes every
    ``PERIOD`` seconds, each weighing ``WEIGHT``."""

    PERIOD = 0.005
    WEIGHT = 0.2

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        self.seconds = 0.0

    async def watch(self) -> None:
        while True:
            started = self.clock()
            await self.sleep(self.PERIOD)
            # asyncio may run a timer up to its clock's resolution early, and a clock
            # that stands still (the scheduler's tests) shows it early by the period
            late = max(0.0, self.clock() - started - self.PERIOD)
            self.seconds += self.WEIGHT * (late - self.seconds)


class Lateness:
    """How much later than the cost model predicted works finish (the event loop's time
    for reading, checking and answering requests, which no round measures): a running
    ``QUANTILE`` of (finished - predicted), added to every prediction, so that budgets
    are met about that often (with 32 clients and 50 ms budgets, 0.95 gave 88% of the
    answers within the budget, 0.99 93%, 0.995 97%: python -m benchmarks.overload). A
    stochastic quantile estimate: each observation moves it up by ``QUANTILE * STEP``
    seconds if late, down by ``(1 - QUANTILE) * STEP`` otherwise."""

    QUANTILE = 0.995
    STEP = 0.002
    #: Without observations (nothing admitted, nothing finishing) the estimate halves
    #: every this many seconds, so that a refusing service learns again.
    HALF_LIFE = 1.0

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._estimate = 0.0
        self._at = clock()

    @property
    def seconds(self) -> float:
        return self._estimate * 0.5 ** ((self.clock() - self._at) / self.HALF_LIFE)

    def observe(self, late: float) -> None:
        estimate = self.seconds
        self._estimate = estimate + self.STEP * (self.QUANTILE - (late <= estimate))
        self._at = self.clock()
