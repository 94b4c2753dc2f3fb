"""Admission at the door: a bound on prediction requests in flight, from Little's law.

A request in flight waits, on average, (requests in flight) / (requests answered per
second). The door lets a prediction request in while fewer than ``share *
max_latency * speed`` are in flight (and always while fewer than ``MIN_IN_FLIGHT``);
past that, the middleware answers 429 before BentoML parses the body. ``speed`` is
the most answers per second the service has shown lately: the rate measured over
short windows, whose peak decays with a half-life of ``PEAK_HALF_LIFE`` seconds (the
rate itself only shows what was asked, not what the service can do). The bound
follows the service's speed whatever makes it slow (the engine, the event loop, the
prediction log): the scheduler's queue (service/scheduler.py) sees the engine only,
while under overload on this machine the event loop saturates first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: Requests in flight the door always lets in: a quiet service never refuses a burst
#: of this many (the scheduler still refuses work its engine cannot do in time).
MIN_IN_FLIGHT = 32
#: The share of UQ_BATCH_MAX_LATENCY_MS that requests in flight may wait on average; the
#: rest is the margin for the slow ones (the bound is on the p99), low enough that the
#: scheduler, whose refusals come after parsing and cost ten times more, does not refuse
#: (python -m benchmarks.overload, 3x overload, with the middleware outside BentoML's app: 0.35
#: gave 81% and 87% goodput at p99 125-149 ms, 0.5 83-89% in four runs at p99 133-144
#: ms with every 429 at the door, 0.7 79% at p99 227 ms).
SHARE = 0.5


class Door:
    """Counts prediction requests in flight and the answers per second."""

    #: The rate is measured over windows of this many seconds.
    WINDOW = 0.25
    PEAK_HALF_LIFE = 10.0
    #: The most requests in flight lately decays with this half-life (seconds).
    CROWD_HALF_LIFE = 1.0

    def __init__(self, max_latency: float, share: float = SHARE,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_latency = max_latency
        self.share = share
        self.clock = clock
        self.in_flight = 0
        self._crowd, self._crowd_at = 0.0, clock()
        self._peak = 0.0  # answers per second, at the last window's end
        self._answers = 0  # in the current window
        self._window_start = clock()

    @property
    def limit(self) -> int:
        return max(MIN_IN_FLIGHT, math.floor(self.share * self.max_latency * self.speed()))

    def speed(self) -> float:
        """The most answers per second lately (the peak of short windows, decaying)."""
        now = self.clock()
        elapsed = now - self._window_start
        decay = 0.5 ** (elapsed / self.PEAK_HALF_LIFE)
        if elapsed >= self.WINDOW:
            self._peak = max(self._peak * decay, self._answers / elapsed)
            self._answers, self._window_start = 0, now
            return self._peak
        return self._peak * decay

    def refusal(self) -> str | None:
        """Why a prediction request arriving now is refused, or None."""
        if self.in_flight < self.limit:
            return None
        return (f"the service is overloaded: {self.in_flight} predictions are in flight and it "
                f"answers about {self.speed():.0f} per second, so a new one would wait past "
                f"{self.share * self.max_latency * 1000:.0f} ms (UQ_BATCH_MAX_LATENCY_MS="
                f"{self.max_latency * 1000:.0f}); retry later")

    def retry_after(self) -> float:
        """Seconds until the requests in flight are answered, about."""
        return self.in_flight / max(self.speed(), 1.0)

    def crowd(self) -> float:
        """The most requests in flight lately (decaying): requests that arrive in waves
        are counted whole, even by the first of a wave."""
        now = self.clock()
        self._crowd *= 0.5 ** ((now - self._crowd_at) / self.CROWD_HALF_LIFE)
        self._crowd, self._crowd_at = max(self._crowd, self.in_flight), now
        return self._crowd

    def enter(self) -> None:
        self.in_flight += 1
        self.crowd()

    def leave(self) -> None:
        self.in_flight -= 1
        self._answers += 1
        self.speed()
