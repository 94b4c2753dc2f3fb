"""Benchmark the HTTP service against the engine called in-process, in one run.

1. In-process: ``MCEngine.sample`` for one image at N (the floor for /predict).
2. A real ``bentoml serve`` on loopback, then:
   - sequential /predict, one image at N: latency percentiles;
   - C concurrent clients for D seconds on /predict, then on /predict_batched
     (one image per request, N samples): throughput and latency percentiles.

    python benchmarks/service.py --model uq-classifier:latest --n-samples 30 \\
        --concurrency 32 --duration 20 --output benchmarks/results/service.json

Clients are asyncio coroutines on keep-alive connections speaking raw HTTP/1.1,
on the same 2-core machine as the server: the numbers include the client's own
(small) CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms)
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


def engine_milliseconds(tag: str, image: np.ndarray, n_samples: int) -> float:
    """Median in-process time of one MCEngine.sample call for one image."""
    from uncertainty.artifact import load_classifier
    from uncertainty.engine import MCEngine, configure_tensorflow_threads

    configure_tensorflow_threads()
    model, _, _ = load_classifier(tag)
    engine = MCEngine(model)
    x = image[None]
    for _ in range(20):
        engine.sample(x, n_samples)
    times = []
    for _ in range(500):
        start = time.perf_counter()
        engine.sample(x, n_samples)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _request_bytes(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _client(port: int, requests: list[bytes], first: int, step: int, stop: float,
                  latencies: list[float], failures: list[int], count: int | None = None) -> None:
    """One keep-alive connection sending ``requests[first::step]`` (cycling) until
    ``stop`` (monotonic seconds) or ``count`` requests; raw HTTP/1.1, so that the
    client spends as little CPU as it can on this machine the server shares."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index, sent = first, 0
    while time.monotonic() < stop and (count is None or sent < count):
        started = time.perf_counter()
        writer.write(requests[index % len(requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        if head[9:12] == b"200":
            latencies.append((time.perf_counter() - started) * 1e3)
        else:
            failures.append(int(head[9:12]))
        index, sent = index + step, sent + 1
    writer.close()


def sequential(port: int, path: str, bodies: list[bytes], requests: int) -> dict:
    payloads = [_request_bytes(path, body) for body in bodies]
    latencies: list[float] = []
    failures: list[int] = []
    asyncio.run(_client(port, payloads, 0, 1, float("inf"), [], [], count=20))  # warm
    asyncio.run(_client(port, payloads, 0, 1, float("inf"), latencies, failures, count=requests))
    return {"path": path, "clients": 1, "requests": requests, "failures": len(failures),
            **percentiles(latencies)}


def concurrent(port: int, path: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    payloads = [_request_bytes(path, body) for body in bodies]
    latencies: list[float] = []
    failures: list[int] = []

    async def run() -> float:
        started = time.monotonic()
        stop = started + seconds
        await asyncio.gather(*(
            _client(port, payloads, i, clients, stop, latencies, failures)
            for i in range(clients)
        ))
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    return {
        "path": path, "clients": clients, "requests": len(latencies) + len(failures),
        "failures": len(failures), "rps": len(latencies) / elapsed, **percentiles(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--n-samples", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load phase")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/service.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import bentoml

    from loadtest.sweep import served
    from training.data import load_dataset
    from uncertainty.artifact import read_card

    card = read_card(bentoml.models.get(args.model))
    images = load_dataset(card.dataset).x_test[:200]
    engine_ms = engine_milliseconds(args.model, images[0], args.n_samples)
    print(f"in-process engine, one image, N={args.n_samples}: {engine_ms:.3f} ms", flush=True)

    predict_bodies = [json.dumps({"instances": [image.tolist()], "n_samples": args.n_samples})
                      .encode() for image in images]
    batched_bodies = [json.dumps({"items": [{"instance": image.tolist(),
                                             "n_samples": args.n_samples}]}).encode()
                      for image in images]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with served(args.model, args.output.parent) as url:
        port = int(url.rsplit(":", 1)[1])
        single = sequential(port, "/predict", predict_bodies, requests=500)
        print(f"sequential /predict: p50 {single['p50_ms']:.2f} ms", flush=True)
        loads = []
        for path, bodies in (("/predict", predict_bodies), ("/predict_batched", batched_bodies)):
            concurrent(port, path, bodies, args.concurrency, 3.0)  # warm the path
            loads.append(concurrent(port, path, bodies, args.concurrency, args.duration))
            print(f"{args.concurrency} clients {path}: {loads[-1]['rps']:.0f} req/s, "
                  f"p99 {loads[-1]['p99_ms']:.1f} ms, {loads[-1]['failures']} failures",
                  flush=True)

    predict_load, batched_load = loads
    speedup = batched_load["rps"] / predict_load["rps"]
    targets = [
        (f"/predict p50 {single['p50_ms']:.2f} ms <= engine {engine_ms:.2f} ms + 3 ms",
         single["p50_ms"] <= engine_ms + 3),
        (f"/predict_batched throughput {speedup:.2f}x /predict (>= 3x)", speedup >= 3),
        (f"/predict_batched p99 {batched_load['p99_ms']:.1f} ms <= 150 ms",
         batched_load["p99_ms"] <= 150),
    ]
    print("\n| path | clients | req/s | p50 ms | p95 ms | p99 ms | failures |")
    print("|---|---|---|---|---|---|---|")
    for row in (single, *loads):
        print(f"| {row['path']} | {row['clients']} | {row.get('rps', float('nan')):.0f} "
              f"| {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['p99_ms']:.2f} "
              f"| {row.get('failures', 0)} |")
    print()
    for name, met in targets:
        print(f"{'PASS' if met else 'FAIL'}  {name}")
    args.output.write_text(json.dumps({
        "model": args.model, "n_samples": args.n_samples, "engine_ms": engine_ms,
        "sequential": single, "concurrent": loads,
        "targets": [{"target": name, "met": met} for name, met in targets],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
