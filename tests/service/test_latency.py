"""What the scheduler predicts with (service/latency.py): the cost of a round, how late
works finish, the event loop's lag."""

import asyncio

import numpy as np
import pytest

from service.latency import CostModel, Lateness, LoopLag
from tests.service.fake_clock import FakeClock


def test_the_cost_model_learns_a_linear_cost():
    costs = CostModel()
    rng = np.random.default_rng(0)
    for _ in range(400):
        rows = rng.integers(1, 2048)
        costs.observe(rows, 0.003 + 2e-5 * rows)
    np.testing.assert_allclose(costs.coefficients, [0.003, 2e-5], rtol=0.05)
    assert costs.seconds(2, 1000) == pytest.approx(0.006 + 0.02, rel=0.05)


def test_lateness_tracks_a_high_quantile_of_how_late_works_finish():
    lateness = Lateness()
    for late in np.random.default_rng(0).exponential(0.010, size=50_000):
        lateness.observe(late)
    quantile = -0.010 * np.log(1 - Lateness.QUANTILE)  # of the exponential distribution
    assert lateness.seconds == pytest.approx(quantile, rel=0.15)


def test_loop_lag_sees_a_blocked_event_loop():
    clock = FakeClock()
    lag = LoopLag(clock, clock.sleep)  # its timers run exactly on time

    async def scenario():
        watcher = asyncio.ensure_future(lag.watch())
        for _ in range(4):
            await asyncio.sleep(0)  # probes on time
        quiet = lag.seconds
        clock.advance(0.1)  # the loop is blocked while the watcher waits for its timer
        await asyncio.sleep(0)
        watcher.cancel()
        return quiet, lag.seconds

    quiet, blocked = asyncio.run(scenario())
    assert quiet == pytest.approx(0.0, abs=1e-9)
    assert blocked == pytest.approx(LoopLag.WEIGHT * 0.1)
