"""Overload and latency budgets (issue 13): capacity, 3x overload and recovery, big
requests beside small ones, and requests that carry a latency budget, through HTTP.

    python benchmarks/overload.py --serve --model uq-classifier:latest \\
        --output benchmarks/results/overload.json
    python benchmarks/overload.py --host http://127.0.0.1:3000 --phases capacity,budget \\
        --capacity-seconds 5

Against a real ``bentoml serve`` on loopback (``--serve``) or a running one (``--host``),
after a short warm-up of every path the chosen phases use:

1. capacity: C closed-loop clients (``--clients``) for D seconds (``--capacity-seconds``)
   on /predict_batched, one image per request at N (``--n-samples``): the 200 answers
   per second are the capacity;
2. overload: open-loop arrivals at ``--overload`` x capacity for ``--overload-seconds``,
   then 0.5 x capacity for ``--recovery-seconds``. Requests leave at fixed times on a
   pool of keep-alive connections that grows as needed up to 1024, and each is timed
   from its scheduled time (no coordinated omission); "late" counts those written more
   than 10 ms after it (the send lag: the time a request waited for a connection).
   Recovery: the first request after the overload must get a 200 within
   UQ_BATCH_MAX_LATENCY_MS, and the p99 of the 200s in 1 s windows (by send time)
   must be back within 1.5x the capacity phase's p99, and stay there, within 5 s;
3. big: 4 clients posting one image at N to /predict, first alone (the idle p99) and
   then for as long beside 2 clients posting 64 images x 1000 samples each (a big
   client refused with 429 waits its Retry-After; the others resend at once);
4. budget: C clients on /predict_batched with ``latency_budget_ms`` 50 and no
   n_samples: the share answered 200, the share of 200s within 50 ms as this client
   measured them, and the N the service picked.

Closed-loop clients send their next request as soon as an answer comes, a 429 too
(but the big ones); the load's answers still out 30 s after its end count as
"no_answer", and open-loop requests still waiting for a connection then as "not_sent".

The server worker's RSS (the largest process of the server's tree) is read after the
warm-up and after the last phase, and this client's own CPU use is reported per phase
(in cores, of the 2 it shares with the server). Writes ``--output`` (JSON), a Markdown
summary and a PNG of answers, statuses and p99 per second beside it, and prints the
targets with PASS or FAIL. Clients are asyncio coroutines speaking raw HTTP/1.1 on the
server's 2 cores: the numbers include their (small) CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# Run as a script, this file's directory heads sys.path, and benchmarks/service.py would
# hide the service package: the repository root takes its place.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import uvloop  # noqa: E402

from benchmarks.service import _request_bytes  # noqa: E402
from commandline.arguments import OneLineErrorParser, fail, number_in, positive_integer  # noqa: E402
from loadtest.server import add_service_options  # noqa: E402

PROG = "python benchmarks/overload.py"
PHASES = ("capacity", "overload", "big", "budget")
MAX_CONNECTIONS = 1024
LATE_S = 0.010  # an open-loop request written later than this after its time is late
DRAIN_S = 30.0  # after a load's last send, how long its answers may take
WINDOW_S = 1.0
RECOVERY_RATE = 0.5  # x capacity, after the overload
SMALL_CLIENTS, BIG_CLIENTS = 4, 2
BIG_INSTANCES, BIG_SAMPLES = 64, 1000
BUDGET_MS = 50.0
# statuses of requests without an HTTP answer
CONNECTION_ERROR, NOT_SENT, NO_ANSWER = 0, -1, -2
#: in the body of the door's 429 (service/door.py), not in the scheduler's
DOOR_REFUSAL = b"predictions are in flight"
CLASSES = ("200", "429", "503", "other_4xx", "5xx", "connection_error", "not_sent",
           "no_answer", "other")
COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "darkred", "black", "tab:pink",
          "tab:grey", "tab:olive")  # of CLASSES in the plot
# targets
GOODPUT_SHARE, RECOVERY_P99_FACTOR, RECOVERY_S = 0.9, 1.5, 5.0
RSS_GROWTH, BIG_P99_FACTOR, BUDGET_WITHIN, BUDGET_OK = 0.10, 5.0, 0.95, 0.90


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


# ---------------------------------------------------------------- one request


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class Connection:
    """A keep-alive HTTP/1.1 connection, opened when first needed and again after the
    server closed it (a close header, or its keep-alive timeout on an idle connection)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address, self.streams = address, None

    async def request(self, payload: bytes) -> tuple[bytes, bytes]:
        """Write one request, read its answer: (head, body). A request that finds a kept
        connection closed before any answer came is sent once more on a new one."""
        if self.streams and self.streams[0].at_eof():
            self.close()
        reused = self.streams is not None
        if not reused:
            self.streams = await asyncio.open_connection(*self.address)
        try:
            head, body = await self.exchange(payload)
        except (ConnectionResetError, asyncio.IncompleteReadError) as error:
            self.close()
            if not reused or getattr(error, "partial", b""):
                raise
            return await self.request(payload)
        if (_header(head, b"connection") or b"").lower() == b"close":
            self.close()
        return head, body

    async def exchange(self, payload: bytes) -> tuple[bytes, bytes]:
        reader, writer = self.streams
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        length = _header(head, b"content-length")
        if length is None:
            raise ConnectionError("an answer without Content-Length")
        return head, await reader.readexactly(int(length))

    def close(self) -> None:
        if self.streams:
            self.streams[1].close()
            self.streams = None


def answer(kind: str, sent: float, head: bytes, body: bytes, parse: bool) -> Answer:
    got = Answer(kind, sent, time.monotonic(), int(head[9:12]))
    if got.status == 200:
        if parse:
            got.picked = picked(body)
        return got
    try:
        got.error_body = "error" in json.loads(body)
    except (ValueError, TypeError):
        got.error_body = False
    if got.status == 429:
        got.retry_after = _seconds(_header(head, b"retry-after"))
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


# ---------------------------------------------------------------- loads


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


# ---------------------------------------------------------------- figures


def status_class(status: int) -> str:
    if status in (200, 429, 503):
        return str(status)
    named = {CONNECTION_ERROR: "connection_error", NOT_SENT: "not_sent",
             NO_ANSWER: "no_answer"}
    if status in named:
        return named[status]
    return "other_4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "other"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary(answers: list[Answer], start: float, end: float) -> dict:
    """Statuses and latencies of ``answers`` (sent from ``start`` to ``end``); the rates
    count those answered by ``end``."""
    ok = [a.ms for a in answers if a.status == 200]
    counts = Counter(status_class(a.status) for a in answers)
    retry = [a.retry_after for a in answers if a.status == 429]
    seconds = end - start
    return {
        "seconds": seconds, "requests": len(answers),
        "goodput_rps": sum(a.status == 200 and a.done < end for a in answers) / seconds,
        "answered_rps": sum(a.status > 0 and a.done < end for a in answers) / seconds,
        "statuses": {name: counts.get(name, 0) for name in CLASSES},
        "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
        "max_ms": max(ok, default=None),
        "p99_429_ms": percentile([a.ms for a in answers if a.status == 429], 99),
        "429_without_retry_after": sum(math.isnan(r) for r in retry),
        "429_at_door": sum(a.at_door for a in answers),
        "max_retry_after_s": max((r for r in retry if not math.isnan(r)), default=None),
        "errors_without_error_body": sum(a.status > 0 and not a.error_body for a in answers),
        "late": sum(a.lag > LATE_S for a in answers),
        "send_lag_p99_ms": percentile([a.lag * 1e3 for a in answers], 99),
    }


def p99_windows(answers: list[Answer], start: float, end: float) -> list[float]:
    """p99 (ms) of the 200s sent in each 1 s window from ``start``; inf when none."""
    count = max(1, math.ceil((end - start) / WINDOW_S - 1e-9))
    latencies: list[list[float]] = [[] for _ in range(count)]
    for a in answers:
        index = int((a.sent - start) / WINDOW_S)
        if a.status == 200 and 0 <= index < count:
            latencies[index].append(a.ms)
    return [percentile(values, 99) if values else math.inf for values in latencies]


def recovery(answers: list[Answer], start: float, end: float, capacity_p99: float) -> dict:
    """How the service came back after the overload (``start``: its end)."""
    ordered = sorted(answers, key=lambda a: a.sent)
    first = ordered[0]
    first_ok = min((a for a in ordered if a.status == 200), key=lambda a: a.done, default=None)
    bound = RECOVERY_P99_FACTOR * capacity_p99
    windows = p99_windows(answers, start, end)
    above = [i for i, p99 in enumerate(windows) if p99 > bound]
    if not above:
        back = 0.0
    elif above[-1] < len(windows) - 1:
        back = (above[-1] + 1) * WINDOW_S  # the end of the last window above the bound
    else:
        back = None  # not back by the end of the recovery phase
    return {
        "first_request": {"status": first.status, "latency_ms": first.ms,
                          "sent_after_s": first.sent - start},
        "first_200": None if first_ok is None else {
            "answered_after_s": first_ok.done - start, "latency_ms": first_ok.ms},
        "p99_bound_ms": bound, "p99_back_after_s": back,
        "window_p99_ms": [None if math.isinf(p99) else p99 for p99 in windows],
    }


def budget_figures(answers: list[Answer]) -> dict:
    """The share answered 200, the share of 200s within the budget, the N picked."""
    ok = [a for a in answers if a.status == 200]
    choices = [choice for a in ok for choice in a.picked or []]
    return {
        "share_200": len(ok) / max(1, len(answers)),
        "share_200_within_budget": sum(a.ms <= BUDGET_MS for a in ok) / max(1, len(ok)),
        "n_samples_picked": {str(n): count for n, count in
                             sorted(Counter(n for n, _ in choices).items())},
        "budget_limited_share": sum(limited for _, limited in choices) / max(1, len(choices)),
    }


def timeline(answers: list[Answer], phases: list[dict], t0: float,
             cpu: CpuSampler) -> list[dict]:
    """Per 1 s window of each phase: HTTP answers and 200s per second by answer time;
    requests per status class and the p99 of the 200s (big requests left out) by send
    time; the CPU cores this client and the server used."""
    rows = []
    for phase in phases:
        start, end = t0 + phase["start_s"], t0 + phase["end_s"]
        inside = [a for a in answers if start <= a.sent < end]
        p99s = p99_windows([a for a in inside if a.kind != "big"], start, end)
        sent = [Counter() for _ in p99s]
        for a in inside:
            sent[min(int((a.sent - start) / WINDOW_S), len(p99s) - 1)][
                status_class(a.status)] += 1
        served = [Counter() for _ in p99s]
        for a in answers:
            if start <= a.done < end and a.status > 0:
                served[min(int((a.done - start) / WINDOW_S), len(p99s) - 1)].update(
                    ["answered", *(["200"] if a.status == 200 else [])])
        rows += [{"t_s": phase["start_s"] + i * WINDOW_S, "phase": phase["name"],
                  "answered_per_s": done["answered"] / WINDOW_S,
                  "goodput_per_s": done["200"] / WINDOW_S,
                  **dict(zip(("client_cpu_cores", "server_cpu_cores"), map(nan_none, cpu.cores(
                      start + i * WINDOW_S, min(end, start + (i + 1) * WINDOW_S))), strict=True)),
                  "p99_ms": None if math.isinf(p99) else p99,
                  **{name: count.get(name, 0) for name in CLASSES}}
                 for i, (p99, count, done) in enumerate(zip(p99s, sent, served, strict=True))]
    return rows


# ---------------------------------------------------------------- the server


def metadata(url: str) -> dict:
    """The service's /metadata, with the fields this benchmark reads."""
    request = urllib.request.Request(f"{url}/metadata", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            meta = json.load(response)
    except OSError as error:
        raise RuntimeError(f"{url}/metadata: {getattr(error, 'reason', error)}") from None
    service = meta.get("service") or {}
    missing = [*({"model", "input_shape", "value_range"} - meta.keys()),
               *({"batch_max_latency_ms", "max_instances", "max_samples"} - service.keys())]
    if missing:
        raise RuntimeError(f"{url}/metadata lacks {', '.join(sorted(missing))}")
    return meta


def server_tree(port: int) -> list:
    """The processes of the server listening on ``port`` (psutil), or [] when they
    cannot be read."""
    import psutil  # a dependency of BentoML's

    try:
        pids = {c.pid for c in psutil.net_connections("tcp")
                if c.pid and c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        tree = set()
        for pid in pids:
            root = psutil.Process(pid)
            while root.parent() and "bentoml" in " ".join(root.parent().cmdline()):
                root = root.parent()
            tree |= {root, *root.children(recursive=True)}
        return sorted(tree, key=lambda process: process.pid)
    except (OSError, psutil.Error):
        return []


def worker_rss_mb(tree: list) -> float | None:
    """VmRSS of the largest process of the server: its worker."""
    import psutil

    sizes = []
    for process in tree:
        try:
            sizes.append(process.memory_info().rss / 2**20)
        except psutil.Error:
            pass
    return max(sizes, default=None)


class CpuSampler(threading.Thread):
    """Every 0.5 s: (monotonic s, this process's CPU s, the server's CPU s or nan)."""

    def __init__(self, tree: list) -> None:
        super().__init__(daemon=True)
        self.tree, self.samples, self.stopping = tree, [], threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.sample()

    def sample(self) -> None:
        import psutil

        try:
            server = sum(sum(p.cpu_times()[:2]) for p in self.tree) if self.tree else math.nan
        except psutil.Error:
            server = math.nan
        self.samples.append((time.monotonic(), time.process_time(), server))

    def cores(self, start: float, end: float) -> tuple[float, float]:
        """(this client's, the server's) mean CPU use from ``start`` to ``end``, in cores."""
        t, client, server = np.array(sorted(self.samples)).T
        return tuple(float(np.diff(np.interp([start, end], t, used))[0] / (end - start))
                     for used in (client, server))


def images(meta: dict, count: int = 256) -> tuple[np.ndarray, str]:
    """Test images of the served model's dataset, or random values in its range."""
    shape = tuple(meta["input_shape"])
    try:
        from training.data import load_dataset

        x = load_dataset(meta["dataset"]).x_test[:count]
        if x.shape[1:] == shape:
            return x, f"{meta['dataset']} test split"
    except Exception:  # noqa: BLE001 - any dataset trouble: random values do
        pass
    low, high = meta["value_range"]
    rng = np.random.default_rng(0)
    return rng.uniform(low, high, (count, *shape)).round(2), "random values in range"


def requests(path: str, bodies: list[dict]) -> list[bytes]:
    return [_request_bytes(path, json.dumps(body).encode()) for body in bodies]


def payloads(x: np.ndarray, meta: dict, n_samples: int) -> dict[str, list[bytes]]:
    service = meta["service"]
    size = min(BIG_INSTANCES, service["max_instances"], len(x))
    samples = min(BIG_SAMPLES, service["max_samples"])
    return {
        "batched": requests("/predict_batched", [
            {"items": [{"instance": image.tolist(), "n_samples": n_samples}]} for image in x]),
        "small": requests("/predict", [
            {"instances": [image.tolist()], "n_samples": n_samples} for image in x]),
        "big": requests("/predict", [
            {"instances": x[i : i + size].tolist(), "n_samples": samples}
            for i in range(0, len(x) - size + 1, size)]),
        "budget": requests("/predict_batched", [
            {"items": [{"instance": image.tolist(), "latency_budget_ms": BUDGET_MS}]}
            for image in x]),
    }


# ---------------------------------------------------------------- the phases


class Run:
    """The phases on one time line: answers, phase spans and results."""

    def __init__(self, address: tuple[str, int], args, bodies: dict[str, list[bytes]],
                 cpu: CpuSampler) -> None:
        self.address, self.args, self.bodies, self.cpu = address, args, bodies, cpu
        self.t0 = time.monotonic()
        self.answers: list[Answer] = []
        self.phases: list[dict] = []
        self.results: dict = {}

    def closed(self, name: str, loads: list[Load], seconds: float) -> list[Answer]:
        start = time.monotonic()
        got = run(closed_loop(self.address, loads, seconds))
        self.record(name, start, start + seconds, got)
        return got

    def record(self, name: str, start: float, end: float, got: list[Answer]) -> None:
        self.answers += got
        self.cpu.sample()
        client, server = self.cpu.cores(start, end)
        self.phases.append({"name": name, "start_s": start - self.t0, "end_s": end - self.t0,
                            "client_cpu_cores": client, "server_cpu_cores": nan_none(server)})
        print(f"  {name}: CPU cores used: this client {client:.2f}, the server "
              f"{fmt(nan_none(server), 2)}", flush=True)

    def summary(self, got: list[Answer], kind: str | None = None) -> dict:
        """The summary of the answers of ``kind`` (default: all) of the last phase."""
        phase = self.phases[-1]
        return summary([a for a in got if kind in (None, a.kind)],
                       self.t0 + phase["start_s"], self.t0 + phase["end_s"])

    def capacity(self) -> None:
        seconds = self.args.capacity_seconds
        print(f"capacity: {self.args.clients} clients on /predict_batched for {seconds:g} s",
              flush=True)
        got = self.closed("capacity", [Load("capacity", self.bodies["batched"],
                                            self.args.clients)], seconds)
        self.results["capacity"] = row = self.summary(got)
        if not row["goodput_rps"]:
            raise RuntimeError(f"the capacity phase got no 200 answer: {nonzero(row)}")
        print(f"  capacity {row['goodput_rps']:.0f} req/s, p50 {fmt(row['p50_ms'])} ms, "
              f"p99 {fmt(row['p99_ms'])} ms, statuses {nonzero(row)}", flush=True)

    def overload(self) -> None:
        capacity = self.results["capacity"]["goodput_rps"]
        rate, low = self.args.overload * capacity, RECOVERY_RATE * capacity
        over, rest = self.args.overload_seconds, self.args.recovery_seconds
        print(f"overload: {rate:.0f} req/s for {over:g} s, then {low:.0f} req/s for {rest:g} s "
              "(open loop)", flush=True)
        start, loop = time.monotonic(), OpenLoop(self.address, self.bodies["batched"])
        got = run(loop.run([("overload", rate, over), ("recovery", low, rest)]))
        self.record("overload", start, start + over,
                    [a for a in got if a.kind == "overload"])
        loaded = self.summary(got, "overload")
        loaded.update(rate_rps=rate, goodput_share=loaded["goodput_rps"] / capacity)
        self.record("recovery", start + over, start + over + rest,
                    [a for a in got if a.kind == "recovery"])
        after = self.summary(got, "recovery")
        after.update(recovery([a for a in got if a.kind == "recovery"], start + over,
                              start + over + rest, self.results["capacity"]["p99_ms"]))
        self.results["overload"], self.results["recovery"] = loaded, after
        print(f"  overload goodput {loaded['goodput_rps']:.0f} req/s "
              f"({loaded['goodput_share']:.0%} of capacity), p99 {fmt(loaded['p99_ms'])} ms, "
              f"statuses {nonzero(loaded)}, late {loaded['late']} (send lag p99 "
              f"{fmt(loaded['send_lag_p99_ms'])} ms)", flush=True)
        print(f"  recovery: first request {after['first_request']['status']} in "
              f"{after['first_request']['latency_ms']:.1f} ms, p99 back after "
              f"{seconds_or_never(after['p99_back_after_s'])}, statuses {nonzero(after)}",
              flush=True)

    def big(self) -> None:
        seconds, small = self.args.capacity_seconds, self.bodies["small"]
        print(f"big beside small: {SMALL_CLIENTS} small clients alone, then beside "
              f"{BIG_CLIENTS} big ones, {seconds:g} s each", flush=True)
        rows = {"idle": self.summary(self.closed("idle", [Load("idle", small, SMALL_CLIENTS)],
                                                 seconds))}
        both = self.closed("big beside small", [
            Load("small", small, SMALL_CLIENTS),
            Load("big", self.bodies["big"], BIG_CLIENTS, backoff=True)], seconds)
        rows.update(small=self.summary(both, "small"), big=self.summary(both, "big"))
        idle_p99, small_p99 = rows["idle"]["p99_ms"], rows["small"]["p99_ms"]
        rows["p99_ratio"] = small_p99 / idle_p99 if idle_p99 and small_p99 else None
        self.results["big"] = rows
        print(f"  small p99 alone {fmt(idle_p99)} ms, beside big {fmt(small_p99)} ms "
              f"({times(rows['p99_ratio'])}); big p50 {fmt(rows['big']['p50_ms'])} ms, "
              f"statuses {nonzero(rows['big'])}", flush=True)

    def budget(self) -> None:
        seconds = self.args.capacity_seconds
        print(f"budget: {self.args.clients} clients, latency_budget_ms {BUDGET_MS:g}, "
              f"{seconds:g} s", flush=True)
        got = self.closed("budget", [Load("budget", self.bodies["budget"], self.args.clients,
                                          parse=True)], seconds)
        self.results["budget"] = row = self.summary(got) | budget_figures(got)
        print(f"  {row['share_200']:.1%} answered 200, {row['share_200_within_budget']:.1%} of "
              f"them within {BUDGET_MS:g} ms; N picked {row['n_samples_picked']}, budget "
              f"limited {row['budget_limited_share']:.0%}; statuses {nonzero(row)}", flush=True)


def warm(address: tuple[str, int], bodies: dict[str, list[bytes]], chosen: set[str],
         clients: int) -> None:
    """Every path and program the chosen phases use, before anything is measured."""
    loads = []
    if chosen & {"capacity", "overload"}:
        loads.append(Load("warm", bodies["batched"], clients))
    if "big" in chosen:
        loads += [Load("warm", bodies["small"], SMALL_CLIENTS), Load("warm", bodies["big"], 1)]
    if "budget" in chosen:
        loads.append(Load("warm", bodies["budget"], clients))
    for load in loads:
        got = run(closed_loop(address, [load], 3.0))
        if not any(a.status == 200 for a in got):
            statuses = Counter(status_class(a.status) for a in got)
            raise RuntimeError(f"warm-up got no 200 answer: {dict(statuses)}")


def nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def seconds_or_never(value: float | None) -> str:
    return "not within the recovery phase" if value is None else f"{value:g} s"


def nonzero(row: dict) -> dict:
    return {name: count for name, count in row["statuses"].items() if count}


# ---------------------------------------------------------------- targets and reports


def targets(results: dict, limit_ms: float) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every phase that ran."""
    rows = []
    if "overload" in results:
        over, after = results["overload"], results["recovery"]
        fives = over["statuses"]["503"] + over["statuses"]["5xx"]
        first = after["first_request"]
        rows += [
            ("overload: no 5xx", f"{fives}", fives == 0),
            (f"overload: goodput >= {GOODPUT_SHARE:.0%} of capacity",
             f"{over['goodput_share']:.1%}", over["goodput_share"] >= GOODPUT_SHARE),
            (f"overload: p99 of 200s <= {limit_ms:g} ms (UQ_BATCH_MAX_LATENCY_MS)",
             f"{fmt(over['p99_ms'])} ms", over["p99_ms"] is not None
             and over["p99_ms"] <= limit_ms),
            ("overload: every 429 carries Retry-After",
             f"{over['429_without_retry_after']} of {over['statuses']['429']} without",
             over["429_without_retry_after"] == 0),
            (f"recovery: first request 200 within {limit_ms:g} ms",
             f"{first['status']} in {first['latency_ms']:.1f} ms",
             first["status"] == 200 and first["latency_ms"] <= limit_ms),
            (f"recovery: p99 within {RECOVERY_P99_FACTOR:g}x capacity's in {RECOVERY_S:g} s",
             seconds_or_never(after["p99_back_after_s"]), after["p99_back_after_s"] is not None
             and after["p99_back_after_s"] <= RECOVERY_S),
        ]
    rss = results.get("rss_mb", {})
    if rss.get("growth") is not None:
        rows.append((f"server RSS grows <= {RSS_GROWTH:.0%}", f"{rss['growth']:+.1%}",
                     rss["growth"] <= RSS_GROWTH))
    if "big" in results:
        ratio = results["big"]["p99_ratio"]
        rows.append((f"small p99 beside big <= {BIG_P99_FACTOR:g}x idle p99",
                     times(ratio), ratio is not None and ratio <= BIG_P99_FACTOR))
    if "budget" in results:
        budget = results["budget"]
        rows += [
            (f"budget {BUDGET_MS:g} ms: >= {BUDGET_WITHIN:.0%} of 200s within it",
             f"{budget['share_200_within_budget']:.1%}",
             budget["share_200_within_budget"] >= BUDGET_WITHIN),
            (f"budget {BUDGET_MS:g} ms: >= {BUDGET_OK:.0%} of requests answered 200",
             f"{budget['share_200']:.1%}", budget["share_200"] >= BUDGET_OK),
        ]
    return rows


def phase_rows(results: dict) -> list[tuple[str, dict]]:
    rows = [(name, results[name]) for name in ("capacity", "overload", "recovery")
            if name in results]
    if "big" in results:
        rows += [("small alone", results["big"]["idle"]),
                 ("small beside big", results["big"]["small"]), ("big", results["big"]["big"])]
    if "budget" in results:
        rows.append(("budget", results["budget"]))
    return rows


def table(results: dict) -> list[str]:
    head = ["| phase | requests | 200/s | p50 ms | p99 ms | 429 p99 ms | 429 at the door | "
            + " | ".join(CLASSES) + " | late | send lag p99 ms |",
            "|---" * (9 + len(CLASSES)) + "|"]
    return head + [
        f"| {name} | {row['requests']} | {row['goodput_rps']:.1f} | {fmt(row['p50_ms'])} "
        f"| {fmt(row['p99_ms'])} | {fmt(row['p99_429_ms'])} | {row['429_at_door']} | "
        + " | ".join(str(row["statuses"][c]) for c in CLASSES)
        + f" | {row['late']} | {fmt(row['send_lag_p99_ms'])} |"
        for name, row in phase_rows(results)]


def target_lines(rows: list[tuple[str, str, bool]]) -> list[str]:
    return ["| target | measured | |", "|---|---|---|"] + [
        f"| {name} | {measured} | {'PASS' if met else 'FAIL'} |" for name, measured, met in rows]


def markdown(report: dict, plot_path: Path) -> str:
    results = report["results"]
    lines = [f"# Overload and latency budgets: {report['model']}", "",
             f"Server `batch_max_latency_ms` {report['batch_max_latency_ms']}, N "
             f"{report['n_samples']}, {report['clients']} clients, images: {report['images']}.",
             ""]
    lines += table(results) + [""] + target_lines(report["targets"])
    if "recovery" in results:
        first_200 = results["recovery"]["first_200"] or {}
        lines += ["", f"Recovery: first 200 answered {fmt(first_200.get('answered_after_s'), 3)}"
                  " s after the overload; largest Retry-After under overload "
                  f"{fmt(results['overload']['max_retry_after_s'])} s."]
    if "budget" in results:
        lines += ["", f"Budget: N picked {results['budget']['n_samples_picked']}, budget "
                  f"limited {results['budget']['budget_limited_share']:.1%}."]
    lines += ["", "CPU cores used, this client / the server: " + ", ".join(
        f"{phase['name']} {phase['client_cpu_cores']:.2f} / "
        f"{fmt(phase['server_cpu_cores'], 2)}" for phase in report["phases"]) + "."]
    rss = results.get("rss_mb", {})
    lines += ["", f"Server RSS: {fmt(rss.get('before'))} MiB after the warm-up, "
              f"{fmt(rss.get('after'))} MiB at the end.", "", f"![timeline]({plot_path.name})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], phases: list[dict], capacity: float | None, limit_ms: float,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, statuses, p99, cores) = plt.subplots(
        4, 1, sharex=True, figsize=(12, 11), height_ratios=(3, 3, 3, 2))
    for number, phase in enumerate(phases):
        part = [r for r in rows if r["phase"] == phase["name"]]
        t = [r["t_s"] + WINDOW_S / 2 for r in part]
        first = number == 0
        rates.plot(t, [r["answered_per_s"] for r in part], color="tab:blue",
                   label="HTTP answers/s" if first else None)
        rates.plot(t, [r["goodput_per_s"] for r in part], color="tab:green",
                   label="goodput (200/s)" if first else None)
        statuses.stackplot(t, *[[r[c] for r in part] for c in CLASSES], colors=COLORS,
                           labels=CLASSES if first else ())
        p99.plot(t, [r["p99_ms"] if r["p99_ms"] is not None else math.nan for r in part],
                 color="tab:red", label="p99 of 200s (small requests)" if first else None)
        for name, color in (("server", "tab:brown"), ("client", "tab:cyan")):
            cores.plot(t, [r[f"{name}_cpu_cores"] if r[f"{name}_cpu_cores"] is not None
                           else math.nan for r in part], color=color,
                       label=f"{name} CPU (cores)" if first else None)
        for axis in (rates, statuses, p99, cores):
            axis.axvspan(phase["start_s"], phase["end_s"], color="grey",
                         alpha=0.04 + 0.06 * (number % 2))
        rates.text((phase["start_s"] + phase["end_s"]) / 2, 1.02, phase["name"], ha="center",
                   fontsize=8, transform=rates.get_xaxis_transform())
    if capacity:
        rates.axhline(capacity, color="grey", linestyle="--", label="capacity")
    p99.axhline(limit_ms, color="grey", linestyle="--", label="UQ_BATCH_MAX_LATENCY_MS")
    p99.set_yscale("log")
    rates.set(ylabel="per second, by answer time")
    statuses.set(ylabel="requests sent per second")
    p99.set(ylabel="ms, by send time")
    cores.set(ylabel="cores", xlabel="seconds (1 s windows)", ylim=(0, None))
    for axis in (rates, statuses, p99, cores):
        axis.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------- the run


def measure(url: str, args) -> dict:
    """The chosen phases against ``url``; returns the report."""
    parsed = urlparse(url)
    address = (parsed.hostname, parsed.port or 80)
    meta = metadata(url.rstrip("/"))
    limit_ms = meta["service"]["batch_max_latency_ms"]
    if args.n_samples > meta["service"]["max_samples"]:
        raise RuntimeError(f"--n-samples {args.n_samples} is above the service's max_samples "
                           f"({meta['service']['max_samples']})")
    x, source = images(meta)
    bodies = payloads(x, meta, args.n_samples)
    print(f"{meta['model']} at {url}; batch_max_latency_ms {limit_ms}; images: {source}; "
          f"about {planned_seconds(args):.0f} s of load", flush=True)
    warm(address, bodies, args.phases, args.clients)
    tree = server_tree(address[1])
    before, cpu = worker_rss_mb(tree), CpuSampler(tree)
    cpu.sample()
    cpu.start()
    session = Run(address, args, bodies, cpu)
    try:
        for name in PHASES:
            if name in args.phases:
                getattr(session, name)()
    finally:
        cpu.stopping.set()
    after = worker_rss_mb(tree)
    session.results["rss_mb"] = {"before": before, "after": after,
                                 "growth": after / before - 1 if before and after else None}
    return {"model": meta["model"], "url": url, "images": source, "n_samples": args.n_samples,
            "clients": args.clients, "batch_max_latency_ms": limit_ms,
            "phases_run": [p for p in PHASES if p in args.phases],
            "phases": session.phases, "results": session.results,
            "timeline": timeline(session.answers, session.phases, session.t0, cpu),
            "targets": targets(session.results, limit_ms)}


def write(report: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_path, summary_path = output.with_suffix(".png"), output.with_suffix(".md")
    capacity = report["results"].get("capacity", {}).get("goodput_rps")
    plot(report["timeline"], report["phases"], capacity, report["batch_max_latency_ms"],
         plot_path)
    summary_path.write_text(markdown(report, plot_path))
    report = {**report, "targets": [{"target": name, "measured": measured, "met": met}
                                    for name, measured, met in report["targets"]]}
    output.write_text(json.dumps(report, indent=2, allow_nan=False))
    print(f"\nwrote {output}, {summary_path.name} and {plot_path.name}")


def planned_seconds(args) -> float:
    """About how long the warm-up and the chosen phases take (without drains)."""
    closed = args.capacity_seconds * (("capacity" in args.phases) + 2 * ("big" in args.phases)
                                      + ("budget" in args.phases))
    opened = (args.overload_seconds + args.recovery_seconds) * ("overload" in args.phases)
    return 3.0 * (len(args.phases) + 1) + closed + opened


#: Option types: seconds of a phase, and the overload's rate in multiples of capacity.
phase_seconds = number_in(0, 3600, "seconds")
overload_factor = number_in(1, 20, "x capacity")


def phase_set(text: str) -> set[str]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(PHASES)
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(PHASES)}, got {text!r}")
    return chosen | ({"capacity"} if "overload" in chosen else set())


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_service_options(parser)
    parser.add_argument("--n-samples", type=positive_integer, default=30,
                        help="N of the capacity, overload and small requests (default: 30)")
    parser.add_argument("--clients", type=positive_integer, default=32,
                        help="closed-loop clients of the capacity and budget phases "
                        "(default: %(default)s)")
    parser.add_argument("--capacity-seconds", type=phase_seconds, default=20.0,
                        help="seconds of each closed-loop load: capacity, small alone, small "
                        "beside big, budget (default: %(default)s)")
    parser.add_argument("--overload", type=overload_factor, default=3.0,
                        help="open-loop rate during the overload, x capacity (default: 3)")
    parser.add_argument("--overload-seconds", type=phase_seconds, default=60.0,
                        help="seconds of the overload (default: %(default)s)")
    parser.add_argument("--recovery-seconds", type=phase_seconds, default=20.0,
                        help=f"seconds at {RECOVERY_RATE:g}x capacity after the overload "
                        "(default: %(default)s)")
    parser.add_argument("--phases", type=phase_set, default=set(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (overload runs "
                        "capacity first); default: all")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/overload.json"),
                        help="JSON results; the .md summary and .png plot go beside it "
                        "(default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from loadtest.server import ServerError, against_service

    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.overload <= 20:
        parser.error(f"--overload must lie in (0, 20], got {args.overload:g}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        report = against_service(args.host, args.model, args.output.parent,
                                 lambda url: measure(url, args))
    except (ServerError, RuntimeError, OSError) as error:
        return fail(PROG, str(error))
    print()
    print("\n".join(table(report["results"])))
    print()
    print("\n".join(target_lines(report["targets"])))
    write(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
