"""The overload benchmark's loads: closed-loop clients, and open-loop arrivals at fixed
times on a pool of keep-alive connections, each request recorded as an Answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

import uvloop

from benchmarks.load_client import Connection, header, status

MAX_CONNECTIONS = 1024
DRAIN_S = 30.0  # after a load's last send, how long its answers may take
# statuses of requests without an HTTP answer
CONNECTION_ERROR, NOT_SENT, NO_ANSWER = 0, -1, -2
#: in the body of the door's 429 (service/door.py), not in the scheduler's
DOOR_REFUSAL = b"predictions are in flight"


@dataclass(slots=True)
class Answer:
    """One request: when it was sent (scheduled, in the open loop) and answered."""

    kind: str  # capacity, overload, recovery, idle, small, big, budget
    sent: float  # monotonic seconds
    done: float
    status: int  # HTTP status, or CONNECTION_ERROR, NOT_SENT, NO_ANSWER
    lag: float = 0.0  # open loop: seconds from the scheduled time to the write
    retry_after: float | None = None  # 429: seconds; nan when absent or unreadable
    at_door: bool = False  # 429 from the door (service/door.py), before any parsing
    error_body: bool = True  # a non-200 answer's body is {"error": ...}
    picked: list | None = None  # budget: [n_samples, budget_limited] per prediction

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1e3


@dataclass
class Load:
    """Closed-loop clients posting ``requests`` (cycled) as answers of ``kind``."""

    kind: str
    requests: list[bytes]
    clients: int
    parse: bool = False  # read n_samples and budget_limited off each 200 answer
    backoff: bool = False  # after a 429, wait its Retry-After (1 s without one)


def answer(kind: str, sent: float, head: bytes, body: bytes, parse: bool) -> Answer:
    got = Answer(kind, sent, time.monotonic(), status(head))
    if got.status == 200:
        if parse:
            got.picked = picked(body)
        return got
    try:
        got.error_body = "error" in json.loads(body)
    except (ValueError, TypeError):
        got.error_body = False
    if got.status == 429:
        got.retry_after = _seconds(header(head, b"retry-after"))
        got.at_door = DOOR_REFUSAL in body
    return got


def picked(body: bytes) -> list | None:
    """[n_samples, budget_limited] of each prediction of a /predict_batched answer."""
    try:
        return [[p["n_samples"], bool(p.get("budget_limited"))] for p in json.loads(body)]
    except (ValueError, TypeError, KeyError):
        return None


def _seconds(value: bytes | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


async def closed_client(address: tuple[str, int], load: Load, first: int, stop: float,
                        out: list[Answer]) -> None:
    """One client: a request, its answer, the next, until ``stop``."""
    connection, index = Connection(address), first
    while time.monotonic() < stop:
        sent = time.monotonic()
        try:
            head, body = await connection.request(load.requests[index % len(load.requests)])
        except asyncio.CancelledError:
            out.append(Answer(load.kind, sent, time.monotonic(), NO_ANSWER))
            connection.close()
            raise
        except (OSError, EOFError, ValueError):
            out.append(Answer(load.kind, sent, time.monotonic(), CONNECTION_ERROR))
            connection.close()
            await asyncio.sleep(0.05)
        else:
            out.append(answer(load.kind, sent, head, body, load.parse))
            if load.backoff and out[-1].status == 429:
                wait = out[-1].retry_after
                await asyncio.sleep(min(1.0 if math.isnan(wait) else wait,
                                        max(0.0, stop - time.monotonic())))
        index += load.clients
    connection.close()


async def closed_loop(address: tuple[str, int], loads: list[Load], seconds: float) -> list[Answer]:
    """Every load's clients at once for ``seconds``; answers still out DRAIN_S later
    count as NO_ANSWER."""
    out: list[Answer] = []
    stop = time.monotonic() + seconds
    tasks = [asyncio.create_task(closed_client(address, load, i, stop, out))
             for load in loads for i in range(load.clients)]
    done, pending = await asyncio.wait(tasks, timeout=seconds + DRAIN_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()
    return out


class OpenLoop:
    """Requests at fixed times, each on an idle keep-alive connection of a pool that
    grows up to MAX_CONNECTIONS; a request waits for one when the pool is full."""

    def __init__(self, address: tuple[str, int], requests: list[bytes]) -> None:
        self.address, self.requests = address, requests
        self.queue: asyncio.Queue = asyncio.Queue()
        self.out: list[Answer] = []
        self.workers: list[asyncio.Task] = []
        self.idle = 0

    async def run(self, segments: list[tuple[str, float, float]]) -> list[Answer]:
        """``segments``: (kind, requests per second, seconds), back to back."""
        schedule = self.schedule(segments, time.monotonic())
        report = schedule[0][1] + 10
        for number, (kind, when) in enumerate(schedule):
            await asyncio.sleep(when - time.monotonic())
            self.queue.put_nowait((kind, when, self.requests[number % len(self.requests)]))
            self.grow()
            if when >= report:
                report = self.progress(report)
        await self.drain()
        return self.out

    @staticmethod
    def schedule(segments, start: float) -> list[tuple[str, float]]:
        times = []
        for kind, rate, seconds in segments:
            times += [(kind, start + i / rate) for i in range(max(1, round(rate * seconds)))]
            start += seconds
        return times

    def grow(self) -> None:
        waiting = self.queue.qsize() - self.idle
        while waiting > 0 and len(self.workers) < MAX_CONNECTIONS:
            self.workers.append(asyncio.create_task(self.worker()))
            waiting -= 1

    def progress(self, report: float) -> float:
        ok = sum(a.status == 200 for a in self.out)
        print(f"  {len(self.out)} answered ({ok} 200), {len(self.workers)} connections",
              flush=True)
        return report + 10

    async def worker(self) -> None:
        connection = Connection(self.address)
        try:
            while True:
                self.idle += 1
                kind, when, payload = await self.queue.get()
                self.idle -= 1
                await self.send(connection, kind, when, payload)
        finally:
            connection.close()

    async def send(self, connection: Connection, kind: str, when: float,
                   payload: bytes) -> None:
        lag = time.monotonic() - when
        try:
            head, body = await connection.request(payload)
        except asyncio.CancelledError:
            self.out.append(Answer(kind, when, time.monotonic(), NO_ANSWER, lag))
            raise
        except (OSError, EOFError, ValueError):
            self.out.append(Answer(kind, when, time.monotonic(), CONNECTION_ERROR, lag))
            connection.close()
            return
        got = answer(kind, when, head, body, parse=False)
        got.lag = lag
        self.out.append(got)

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and (self.queue.qsize()
                                               or self.idle < len(self.workers)):
            await asyncio.sleep(0.05)
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        while not self.queue.empty():
            kind, when, _ = self.queue.get_nowait()
            now = time.monotonic()
            self.out.append(Answer(kind, when, now, NOT_SENT, lag=now - when))


def run(coroutine):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)
