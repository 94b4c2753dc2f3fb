"""The benchmarks' load client: asyncio coroutines speaking raw HTTP/1.1 on keep-alive
connections, so that the client takes as little as it can of the CPU it shares with the
server, and the figures of what they were answered.

    row = concurrent(port, "/predict", bodies, clients=32, seconds=10)
    row["rps"], row["refused"]   # 200s per second; 429s, counted apart

Only 200 answers count as throughput: a refusal (429) is a failure, and every row
records how many there were beside its rate.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np

REFUSED = 429


def request_bytes(path: str, body: bytes,
                  headers: dict[str, str] | None = None) -> bytes:
    """A whole ``POST path`` request to 127.0.0.1, ready to write; ``headers`` default to
    a JSON Content-Type."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in
                    (headers or {"Content-Type": "application/json"}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in an answer's ``head``, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def status(head: bytes) -> int:
    return int(head[9:12])


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
        if (header(head, b"connection") or b"").lower() == b"close":
            self.close()
        return head, body

    async def exchange(self, payload: bytes) -> tuple[bytes, bytes]:
        reader, writer = self.streams
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        length = header(head, b"content-length")
        if length is None:
            raise ConnectionError("an answer without Content-Length")
        return head, await reader.readexactly(int(length))

    def close(self) -> None:
        if self.streams:
            self.streams[1].close()
            self.streams = None


async def keep_alive_client(port: int, requests: list[bytes], first: int, step: int,
                            stop: float, latencies_ms: list[float], failed_statuses: list[int],
                            count: int | None = None) -> None:
    """One connection sending ``requests[first::step]`` (cycling) until ``stop``
    (monotonic seconds) or ``count`` requests: the latency of each 200 goes to
    ``latencies_ms``, the status of every other answer to ``failed_statuses``."""
    connection, index, sent = Connection(("127.0.0.1", port)), first, 0
    while time.monotonic() < stop and (count is None or sent < count):
        started = time.perf_counter()
        head, _ = await connection.request(requests[index % len(requests)])
        if status(head) == 200:
            latencies_ms.append((time.perf_counter() - started) * 1e3)
        else:
            failed_statuses.append(status(head))
        index, sent = index + step, sent + 1
    connection.close()


def percentiles(latencies_ms: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of the 200s; None when no request was answered 200."""
    if not latencies_ms:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms"))
    values = np.asarray(latencies_ms)
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


def failure_counts(failed_statuses: list[int]) -> dict[str, int]:
    """``failures`` (every answer but a 200) and, among them, ``refused`` (429)."""
    return {"failures": len(failed_statuses),
            "refused": sum(code == REFUSED for code in failed_statuses)}


def sequential(port: int, path: str, bodies: list[bytes], requests: int) -> dict:
    """One client, ``requests`` requests back to back (after 20 to warm): latencies."""
    payloads = [request_bytes(path, body) for body in bodies]
    latencies: list[float] = []
    failed: list[int] = []
    asyncio.run(keep_alive_client(port, payloads, 0, 1, float("inf"), [], [], count=20))
    asyncio.run(keep_alive_client(port, payloads, 0, 1, float("inf"), latencies, failed,
                                  count=requests))
    return {"path": path, "clients": 1, "requests": requests, **failure_counts(failed),
            **percentiles(latencies)}


def concurrent(port: int, path: str, bodies: list[bytes], clients: int, seconds: float,
               headers: list[dict[str, str]] | None = None) -> dict:
    """``clients`` closed-loop clients for ``seconds``: ``rps`` counts the 200s only.
    ``headers``: each body's (default: a JSON Content-Type)."""
    payloads = [request_bytes(path, body, headers[i] if headers else None)
                for i, body in enumerate(bodies)]
    latencies: list[float] = []
    failed: list[int] = []

    async def run() -> float:
        started = time.monotonic()
        stop = started + seconds
        await asyncio.gather(*(
            keep_alive_client(port, payloads, i, clients, stop, latencies, failed)
            for i in range(clients)
        ))
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    return {"path": path, "clients": clients, "requests": len(latencies) + len(failed),
            **failure_counts(failed), "rps": len(latencies) / elapsed, **percentiles(latencies)}


def median_row(rows: list[dict]) -> dict:
    """One row of medians, field by field, over the rounds' rows of one load; request,
    failure and refusal counts are summed."""
    merged = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            merged[key] = statistics.median(row[key] for row in rows)
        elif key in ("requests", "failures", "refused"):
            merged[key] = sum(row[key] for row in rows)
    return merged
