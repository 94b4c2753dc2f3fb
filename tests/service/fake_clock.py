"""A clock that tests move by hand, for the service's timers (service/door.py,
service/scheduler.py): what they measure then does not depend on how busy the machine is."""

import asyncio


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` on this clock: the seconds pass at once, and the event loop
        runs its other tasks once."""
        self.advance(seconds)
        await asyncio.sleep(0)
