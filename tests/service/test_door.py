"""The door's bound on requests in flight (service/door.py), from Little's law, on a clock
the tests move."""

import pytest

from service.door import MIN_IN_FLIGHT, Door
from tests.service.fake_clock import FakeClock


def answer_at(door: Door, clock: FakeClock, rate: float, seconds: float) -> None:
    """``rate`` answers per second for ``seconds``, one request in flight at a time."""
    for _ in range(round(rate * seconds)):
        door.enter()
        clock.advance(1 / rate)
        door.leave()


def test_a_quiet_service_lets_a_burst_in_up_to_the_minimum():
    door = Door(max_latency=0.2, clock=FakeClock())
    for _ in range(MIN_IN_FLIGHT):
        assert door.refusal() is None
        door.enter()
    assert "overloaded" in door.refusal()


def test_the_bound_follows_the_fastest_recent_rate():
    clock = FakeClock()
    door = Door(max_latency=1.0, share=0.5, clock=clock)
    answer_at(door, clock, rate=200, seconds=1.5)
    speed = door.speed()
    # the peak of the last window, decayed over at most one window since
    assert 200 * 0.5 ** (Door.WINDOW / Door.PEAK_HALF_LIFE) <= speed <= 200
    assert door.limit == max(MIN_IN_FLIGHT, int(0.5 * 1.0 * speed))
    for _ in range(door.limit):
        assert door.refusal() is None
        door.enter()
    refusal = door.refusal()
    assert f"{door.in_flight} predictions are in flight" in refusal
    assert "UQ_BATCH_MAX_LATENCY_MS=1000" in refusal
    assert door.retry_after() == pytest.approx(door.in_flight / door.speed(), rel=0.01)


def test_the_peak_rate_decays_slowly_when_less_is_asked():
    clock = FakeClock()
    door = Door(max_latency=1.0, clock=clock)
    answer_at(door, clock, rate=200, seconds=0.6)
    busy = door.speed()
    answer_at(door, clock, rate=20, seconds=0.6)
    assert busy * 0.9 < door.speed() < busy


def test_the_crowd_remembers_a_wave_of_requests_for_a_while():
    clock = FakeClock()
    door = Door(max_latency=1.0, clock=clock)
    for _ in range(32):
        door.enter()
    for _ in range(32):
        door.leave()
    assert door.in_flight == 0
    assert door.crowd() == 32  # the first of the next wave still counts the last one
    clock.advance(Door.CROWD_HALF_LIFE / 4)
    assert door.crowd() == pytest.approx(32 * 0.5 ** 0.25)
