"""Where a request's CPU goes: the event loop's and the other threads' CPU per answer of
each route, against a BentoML service that predicts nothing, in one run.

Two servers on loopback: the service (``bentoml serve``) and benchmarks.noop_service
(the same routes, the bodies read as BentoML reads any JSON body, a fixed answer). In each
of R rounds:

1. for each route (/predict with one image and with 64, /predict_batched with one image,
   the Open Inference Protocol's infer with JSON and with binary data): closed-loop
   keep-alive clients (C, or ``--big-clients`` for 64 images) post the same bodies to the
   service, then to the no-op service, each for ``--seconds``. The worker's threads' CPU
   time (Linux's per-thread counters) is read before and after: the event loop's thread
   (the worker's main thread) and all the others (the engine thread, TensorFlow's, the
   monitoring thread), each divided by the 200 answers;
2. in-process, just before and just after /predict_batched's load on the service:
   ``MCEngine.sample`` on a batch of C images at N, images per second (their mean), the
   most the service could answer C one-image clients with.

Targets, on the medians over the rounds of the ratios measured within each round (every
round and the spread are printed): single-image /predict_batched costs the event loop at
most 1.5x the no-op service's CPU per answer, and answers at least 0.55x the in-process
engine's images per second. Throughput counts 200 answers only: a refusal (429) is a
failure, charged its CPU, and counted in the row.

    python -m benchmarks.loop_cost --model uq-classifier:latest --rounds 3 \\
        --output benchmarks/results/loop_cost.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.admission import (
    engine_images_per_second,
    predict_requests,
    v2_binary_requests,
)
from benchmarks.http_service import InProcessEngine, stored_test_images, v2_request_bodies
from benchmarks.load_client import concurrent
from benchmarks.server_processes import server_tree
from commandline.arguments import OneLineErrorParser, fail, positive_integer
from commandline.provenance import provenance
from loadtest.contract import request_bodies
from loadtest.server import served

NOOP_SERVICE = "benchmarks.noop_service:NoopService"
#: the targets: the loop's CPU per answer against the no-op service's, images/s against
#: the in-process engine's (single-image /predict_batched)
LOOP_RATIO, ENGINE_RATIO = 1.5, 0.55
BATCHED = "batched"


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the main thread's, every other thread's) CPU seconds in process ``pid`` so far."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if int(task.name) == pid:
            main += seconds
        else:
            others += seconds
    return main, others


def worker_pid(port: int) -> int:
    """The BentoML worker of the server on ``port``: its largest process."""
    return max(server_tree(port), key=lambda process: process.memory_info().rss).pid


def measured_load(port: int, pid: int, route: dict, clients: int, seconds: float) -> dict:
    """One closed-loop load: the load client's row, with the worker's CPU per 200 answer
    on its event loop and off it, in microseconds."""
    before = thread_cpu_seconds(pid)
    row = concurrent(port, route["path"], route["bodies"], clients, seconds,
                     route.get("headers"))
    after = thread_cpu_seconds(pid)
    answered = max(row["requests"] - row["failures"], 1)
    loop, others = (b - a for a, b in zip(before, after, strict=True))
    return {**row, "images_per_s": row["rps"] * route["images"],
            "loop_us": loop / answered * 1e6, "other_us": others / answered * 1e6}


def routes(images: np.ndarray, model: str, n_samples: int) -> dict[str, dict]:
    """Each measured route: its path, bodies, headers and images per request."""
    v2_path = f"/v2/models/{model.split(':')[0]}/infer"
    binary = v2_binary_requests(images, 1, n_samples)
    return {
        "predict_1": {"path": "/predict", "images": 1,
                      "bodies": request_bodies(images, "/predict", n_samples)},
        "predict_64": {"path": "/predict", "images": 64, "big": True, "bodies": [
            body for body, _ in predict_requests(images, 64, n_samples)]},
        BATCHED: {"path": "/predict_batched", "images": 1,
                  "bodies": request_bodies(images, "/predict_batched", n_samples)},
        "v2_json": {"path": v2_path, "images": 1, "bodies": v2_request_bodies(images, n_samples)},
        "v2_binary": {"path": v2_path, "images": 1, "bodies": [body for body, _ in binary],
                      "headers": [headers for _, headers in binary]},
    }


def one_round(ports: dict[str, tuple[int, int]], table: dict[str, dict],
              engine_ips: Callable[[], float], args) -> dict:
    """Every route on the service, then on the no-op service: rows and ratios; the engine's
    images/s measured just before and just after /predict_batched's load (their mean), as
    this machine's speed drifts within a round."""
    rows, engine = {}, []
    for name, route in table.items():
        clients = args.big_clients if route.get("big") else args.clients
        if name == BATCHED:
            engine.append(engine_ips())
        service = measured_load(*ports["service"], route, clients, args.seconds)
        if name == BATCHED:
            engine.append(engine_ips())
        noop = measured_load(*ports["noop"], route, clients, args.seconds)
        rows[name] = {"service": service, "noop": noop,
                      "loop_ratio": service["loop_us"] / noop["loop_us"]}
    engine_mean = statistics.mean(engine)
    return {"engine_images_per_s": engine_mean, "routes": rows,
            "engine_ratio": rows[BATCHED]["service"]["images_per_s"] / engine_mean}


def describe(name: str, row: dict) -> str:
    service, noop = row["service"], row["noop"]
    return (f"  {name}: loop {service['loop_us']:.0f} us/answer vs no-op {noop['loop_us']:.0f}"
            f" ({row['loop_ratio']:.2f}x), other threads {service['other_us']:.0f} us; "
            f"{service['images_per_s']:.0f} images/s, p99 {service['p99_ms'] or 0:.0f} ms, "
            f"refused {service['refused']}, failures {service['failures']}")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summary(rounds: list[dict]) -> dict:
    """Per route: the medians and spreads of the loop's CPU per answer and its ratio."""
    names = rounds[0]["routes"]
    return {
        "engine_images_per_s": spread([r["engine_images_per_s"] for r in rounds]),
        "engine_ratio": spread([r["engine_ratio"] for r in rounds]),
        "routes": {name: {
            key: spread([r["routes"][name][side][field] for r in rounds])
            for key, side, field in (
                ("loop_us", "service", "loop_us"), ("noop_loop_us", "noop", "loop_us"),
                ("other_us", "service", "other_us"), ("images_per_s", "service", "images_per_s"))
        } | {"loop_ratio": spread([r["routes"][name]["loop_ratio"] for r in rounds]),
             "refused": sum(r["routes"][name]["service"]["refused"] for r in rounds),
             "failures": sum(r["routes"][name]["service"]["failures"] for r in rounds)}
            for name in names},
    }


def targets(medians: dict) -> list[tuple[str, bool]]:
    batched = medians["routes"][BATCHED]
    loop, engine = batched["loop_ratio"], medians["engine_ratio"]
    return [
        (f"/predict_batched event-loop CPU per answer {loop['median']:.2f}x the no-op "
         f"service's (<= {LOOP_RATIO}x; rounds {loop['min']:.2f}-{loop['max']:.2f})",
         loop["median"] <= LOOP_RATIO),
        (f"/predict_batched images/s {engine['median']:.2f}x the in-process engine's "
         f"(>= {ENGINE_RATIO}x; rounds {engine['min']:.2f}-{engine['max']:.2f}), "
         f"{batched['refused']} refused", engine["median"] >= ENGINE_RATIO),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.loop_cost",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--n-samples", type=positive_integer, default=30)
    parser.add_argument("--clients", type=positive_integer, default=32,
                        help="clients of the one-image routes")
    parser.add_argument("--big-clients", type=positive_integer, default=4,
                        help="clients of /predict with 64 images")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per load")
    parser.add_argument("--rounds", type=positive_integer, default=3)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/loop_cost.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    try:
        images = stored_test_images(args.model, 256)
    except ValueError as error:
        return fail(parser.prog, str(error))
    engine = InProcessEngine(args.model)
    table = routes(images, args.model, args.n_samples)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rounds = []
    with served(args.model, args.output.parent) as url, \
            served(args.model, args.output.parent, NOOP_SERVICE) as noop_url:
        ports = {}
        for side, address in (("service", url), ("noop", noop_url)):
            port = int(address.rsplit(":", 1)[1])
            ports[side] = (port, worker_pid(port))
            for route in table.values():  # warm every path
                concurrent(port, route["path"], route["bodies"], 4, 1.0, route.get("headers"))
        batch = images[:args.clients]
        for number in range(1, args.rounds + 1):
            rounds.append(one_round(
                ports, table, lambda: engine_images_per_second(engine, batch, args.n_samples),
                args))
            print(f"round {number}: engine {rounds[-1]['engine_images_per_s']:.0f} images/s, "
                  "/predict_batched "
                  f"{rounds[-1]['engine_ratio']:.2f}x of it", flush=True)
            for name, row in rounds[-1]["routes"].items():
                print(describe(name, row), flush=True)
    medians = summary(rounds)
    met = targets(medians)
    print(f"\nmedians over {args.rounds} rounds (min-max)\n")
    print("| route | loop us/answer | no-op loop us | ratio | other threads us | images/s "
          "| refused |")
    print("|---|---|---|---|---|---|---|")
    for name, row in medians["routes"].items():
        print(f"| {name} | {row['loop_us']['median']:.0f} | {row['noop_loop_us']['median']:.0f} "
              f"| {row['loop_ratio']['median']:.2f} ({row['loop_ratio']['min']:.2f}-"
              f"{row['loop_ratio']['max']:.2f}) | {row['other_us']['median']:.0f} "
              f"| {row['images_per_s']['median']:.0f} | {row['refused']} |")
    print()
    for name, ok in met:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    args.output.write_text(json.dumps({
        **origin, "model": args.model, "n_samples": args.n_samples, "clients": args.clients,
        "big_clients": args.big_clients, "seconds": args.seconds, "rounds": rounds,
        "median": medians, "targets": [{"target": name, "met": ok} for name, ok in met],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
