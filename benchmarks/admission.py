"""Admission at normal load and latency budgets, through HTTP, with two clients, in one run.

A real ``bentoml serve`` on loopback; then, in each of R rounds:

1. in-process: ``MCEngine.sample`` on batches of B images at N: images per second (the
   floor the service is compared with), measured when the round starts and after each
   throughput load;
2. C clients (``--clients``, 4) each posting B images at N, closed loop, to /predict
   (JSON) and to the Open Inference Protocol's ``/v2/models/{name}/infer`` with binary
   tensor data: images per second in 200 answers, as a ratio to the mean of the engine's
   measurements on either side of the load (a budget load may run between the one
   before and the load); every other answer (a 429 too) is a failure;
3. ``--budget-clients`` (32) closed-loop clients posting one image with
   ``latency_budget_ms`` (50) and no N to /predict_batched: the share of ALL requests
   answered 200 within the budget as the client measured it, the 429s, and the 200s that
   came late.

Every load runs twice, with the raw-socket client (benchmarks.load_client) and with
aiohttp (an ordinary HTTP client, which takes more of the CPU it shares with the server).
A client answered 429 waits the answer's Retry-After before its next request, as the
service asks. The targets are judged on the medians over the rounds, and every round is
printed with the spread (min to max) in the summary: this shared machine's speed drifts.

    python -m benchmarks.admission --model uq-classifier:latest --rounds 3 \\
        --output benchmarks/results/admission.json
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from benchmarks.http_service import InProcessEngine, stored_test_images
from benchmarks.load_client import Connection, header, request_bytes, status
from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from loadtest.server import served

REFUSED = 429
CLIENT_KINDS = ("raw", "aiohttp")
#: the targets: images/s against the in-process engine, the share within the budget
PREDICT_RATIO, V2_RATIO, BUDGET_WITHIN = 0.9, 0.95, 0.95

Request = tuple[bytes, dict[str, str]]  # body, headers
Send = Callable[[Request], Awaitable[tuple[int, float]]]  # status, Retry-After seconds


def engine_images_per_second(engine: InProcessEngine, x: np.ndarray, n_samples: int,
                             seconds: float = 3.0) -> float:
    """Images per second of ``MCEngine.sample`` on ``x`` ``[batch, *input_shape]``."""
    engine.engine.sample(x, n_samples)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine.engine.sample(x, n_samples)
        calls += 1
    return calls * len(x) / (time.perf_counter() - started)


def predict_requests(images: np.ndarray, batch: int, n_samples: int) -> list[Request]:
    """/predict JSON bodies of ``batch`` images each."""
    return [(json.dumps({"instances": images[i:i + batch].tolist(), "n_samples": n_samples})
             .encode(), {"Content-Type": "application/json"})
            for i in range(0, len(images) - batch + 1, batch)]


def v2_binary_requests(images: np.ndarray, batch: int, n_samples: int) -> list[Request]:
    """V2 inference bodies of ``batch`` images each: a JSON header, then the FP32 tensor."""
    requests = []
    for i in range(0, len(images) - batch + 1, batch):
        data = np.ascontiguousarray(images[i:i + batch], np.float32).tobytes()
        head = json.dumps({
            "inputs": [{"name": "input", "shape": [batch, *images.shape[1:]],
                        "datatype": "FP32", "parameters": {"binary_data_size": len(data)}}],
            "parameters": {"n_samples": n_samples}}).encode()
        requests.append((head + data, {"Content-Type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(head))}))
    return requests


def budget_requests(images: np.ndarray, budget_ms: float) -> list[Request]:
    """/predict_batched bodies of one image each, with a latency budget and no N."""
    return [(json.dumps({"items": [{"instance": image.tolist(), "latency_budget_ms": budget_ms}]})
             .encode(), {"Content-Type": "application/json"}) for image in images]


def retry_seconds(value: bytes | str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def raw_sender(port: int, path: str) -> tuple[Send, Callable[[], None]]:
    """A keep-alive raw-socket connection: (send, close)."""
    connection = Connection(("127.0.0.1", port))

    async def send(request: Request) -> tuple[int, float]:
        body, headers = request
        head, _ = await connection.request(request_bytes(path, body, headers))
        return status(head), retry_seconds(header(head, b"retry-after"))

    return send, connection.close


def aiohttp_sender(session, url: str) -> Send:
    async def send(request: Request) -> tuple[int, float]:
        body, headers = request
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status, retry_seconds(response.headers.get("Retry-After"))

    return send


async def closed_client(send: Send, requests: list[Request], first: int, step: int,
                        stop: float, out: list[tuple[int, float]]) -> None:
    """Requests back to back until ``stop`` (monotonic s): (status, ms) of each; after a
    429, its Retry-After (or what is left of the load) passes first."""
    index = first
    while time.monotonic() < stop:
        started = time.perf_counter()
        code, retry_after = await send(requests[index % len(requests)])
        out.append((code, (time.perf_counter() - started) * 1e3))
        if code == REFUSED:
            await asyncio.sleep(min(retry_after, max(0.0, stop - time.monotonic())))
        index += step


async def load(kind: str, port: int, path: str, requests: list[Request], clients: int,
               seconds: float) -> tuple[list[tuple[int, float]], float]:
    """``clients`` closed-loop clients of ``kind`` for ``seconds``: the answers, and the
    seconds they took."""
    import aiohttp  # installed with BentoML

    out: list[tuple[int, float]] = []
    started = time.monotonic()
    stop = started + seconds
    if kind == "raw":
        senders = [raw_sender(port, path) for _ in range(clients)]
        await asyncio.gather(*(closed_client(send, requests, i, clients, stop, out)
                               for i, (send, _) in enumerate(senders)))
        for _, close in senders:
            close()
    else:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            send = aiohttp_sender(session, f"http://127.0.0.1:{port}{path}")
            await asyncio.gather(*(closed_client(send, requests, i, clients, stop, out)
                                   for i in range(clients)))
    return out, time.monotonic() - started


def throughput_row(answers: list[tuple[int, float]], seconds: float, batch: int,
                   engine_ips: float) -> dict:
    ok = sum(code == 200 for code, _ in answers)
    images_per_second = ok * batch / seconds
    return {"requests": len(answers), "ok": ok, "refused": sum(c == REFUSED for c, _ in answers),
            "failures": len(answers) - ok, "images_per_s": images_per_second,
            "engine_images_per_s": engine_ips, "ratio": images_per_second / engine_ips,
            "p99_ms": float(np.percentile([ms for c, ms in answers if c == 200] or [np.nan], 99))}


def budget_row(answers: list[tuple[int, float]], budget_ms: float) -> dict:
    total = max(1, len(answers))
    within = sum(code == 200 and ms <= budget_ms for code, ms in answers)
    refused = sum(code == REFUSED for code, _ in answers)
    late = sum(code == 200 and ms > budget_ms for code, ms in answers)
    return {"requests": len(answers), "share_within": within / total,
            "share_refused": refused / total, "late_200": late,
            "other": len(answers) - within - refused - late}


def one_round(port: int, loads: dict, engine_ips: Callable[[], float], args) -> dict:
    """Every load with every client kind; each throughput row against the mean of the
    engine's images/s measured last before its load and just after it: this machine's
    speed drifts within a round."""
    row: dict = {}
    engine = [engine_ips()]
    for kind in CLIENT_KINDS:
        for name, (path, requests) in loads.items():
            clients = args.budget_clients if name == "budget" else args.clients
            answers, seconds = asyncio.run(load(kind, port, path, requests, clients,
                                                args.duration))
            if name == "budget":
                row[f"{name}/{kind}"] = budget_row(answers, args.budget_ms)
                continue
            engine.append(engine_ips())
            row[f"{name}/{kind}"] = throughput_row(answers, seconds, args.batch,
                                                   statistics.mean(engine[-2:]))
    row["engine_images_per_s"] = statistics.mean(engine)
    return row


def describe(row: dict) -> str:
    parts = [f"engine {row['engine_images_per_s']:.0f} img/s"]
    for key, value in row.items():
        if key.startswith("budget/"):
            parts.append(f"{key} {value['share_within']:.1%} within, {value['share_refused']:.1%}"
                         f" 429, {value['late_200']} late 200s, {value['other']} other")
        elif isinstance(value, dict):
            parts.append(f"{key} {value['ratio']:.2f}x ({value['images_per_s']:.0f} img/s, "
                         f"{value['failures']} failures of {value['requests']})")
    return "; ".join(parts)


def summary(rounds: list[dict], key: str, field: str) -> dict:
    values = [r[key][field] for r in rounds]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def targets(rounds: list[dict]) -> list[tuple[str, bool]]:
    rows = []
    for kind in CLIENT_KINDS:
        for name, least in (("predict", PREDICT_RATIO), ("v2_binary", V2_RATIO)):
            key = f"{name}/{kind}"
            ratio = summary(rounds, key, "ratio")
            failures = sum(r[key]["failures"] for r in rounds)
            rows += [(f"{key}: {ratio['median']:.2f}x the engine (min {ratio['min']:.2f}, max "
                      f"{ratio['max']:.2f}) >= {least}x", ratio["median"] >= least),
                     (f"{key}: {failures} answers other than 200 (0)", failures == 0)]
        key = f"budget/{kind}"
        within = summary(rounds, key, "share_within")
        rows += [(f"{key}: {within['median']:.1%} of all requests 200 within the budget (min "
                  f"{within['min']:.1%}, max {within['max']:.1%}) >= {BUDGET_WITHIN:.0%}",
                  within["median"] >= BUDGET_WITHIN)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.admission",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--n-samples", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="images per throughput request")
    parser.add_argument("--clients", type=int, default=4, help="clients of the throughput loads")
    parser.add_argument("--budget-clients", type=int, default=32)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/admission.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if min(args.rounds, args.clients, args.budget_clients, args.batch) < 1 or args.duration <= 0:
        parser.error("--rounds, --clients, --budget-clients and --batch must be at least 1, "
                     "--duration positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    try:
        images = stored_test_images(args.model, 8 * args.batch)
    except ValueError as error:
        return fail(parser.prog, str(error))
    engine = InProcessEngine(args.model)
    loads = {
        "predict": ("/predict", predict_requests(images, args.batch, args.n_samples)),
        "v2_binary": (f"/v2/models/{args.model.split(':')[0]}/infer",
                      v2_binary_requests(images, args.batch, args.n_samples)),
        "budget": ("/predict_batched", budget_requests(images, args.budget_ms)),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rounds = []
    with served(args.model, args.output.parent) as url:
        port = int(url.rsplit(":", 1)[1])
        for path, requests in loads.values():  # warm every path
            asyncio.run(load("raw", port, path, requests, args.clients, 3.0))
        for number in range(1, args.rounds + 1):
            rounds.append(one_round(port, loads, lambda: engine_images_per_second(
                engine, images[:args.batch], args.n_samples), args))
            print(f"round {number}: {describe(rounds[-1])}", flush=True)
    checked = targets(rounds)
    print()
    for name, met in checked:
        print(f"{'PASS' if met else 'FAIL'}  {name}")
    args.output.write_text(json.dumps({
        **origin, "model": args.model, "n_samples": args.n_samples, "batch": args.batch,
        "clients": args.clients, "budget_clients": args.budget_clients,
        "budget_ms": args.budget_ms, "duration_s": args.duration, "rounds": rounds,
        "targets": [{"target": name, "met": met} for name, met in checked],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
