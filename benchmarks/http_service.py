"""Benchmark the HTTP service against the engine called in-process, in one run.

A real ``bentoml serve`` on loopback; then, in each of R rounds:
1. in-process: ``MCEngine.sample`` for one image at N (the floor for /predict);
2. sequential /predict, one image at N: latency percentiles; then the same for the
   Open Inference Protocol's ``POST /v2/models/{name}/infer`` (JSON, every output);
3. C concurrent clients for D seconds on /predict, then on /predict_batched
   (one image per request, N samples): throughput and latency percentiles.
The targets are judged on the medians over the rounds (the speedup: the median
of the rounds' ratios), and every round is printed: this shared machine's speed
drifts by 10-20% within minutes, and interleaving puts the drift on both sides.

    python -m benchmarks.http_service --model uq-classifier:latest --n-samples 30 \\
        --concurrency 32 --duration 10 --rounds 5 --output benchmarks/results/service.json

Throughput counts 200 answers only: a refusal (429) is a failure, and every load's row
records its refusals beside its rate. Clients are benchmarks.load_client's coroutines,
on the same 2-core machine as the server: the numbers include the client's own (small)
CPU use.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from artifacts.store import load_classifier, stored_card
from benchmarks.load_client import concurrent, median_row, sequential
from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from loadtest.contract import request_bodies
from loadtest.server import served
from training.data import load_dataset


def stored_test_images(tag: str, rows: int) -> np.ndarray:
    """The first ``rows`` test images ``[rows, *input_shape]`` of the dataset the stored
    classifier ``tag`` was trained on; ValueError (one line) when the store has no such
    model."""
    return load_dataset(stored_card(tag).dataset).x_test[:rows]


class InProcessEngine:
    """The served model's engine in this process: the floor for /predict."""

    def __init__(self, tag: str) -> None:
        from uncertainty.mc import MCEngine, configure_tensorflow_threads  # imports TensorFlow

        configure_tensorflow_threads()
        model, _, _ = load_classifier(tag)
        self.engine = MCEngine(model)

    def milliseconds(self, image: np.ndarray, n_samples: int, calls: int = 500) -> float:
        """Median time of one ``MCEngine.sample`` call for one image."""
        x = image[None]
        for _ in range(20):
            self.engine.sample(x, n_samples)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            self.engine.sample(x, n_samples)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


def v2_request_bodies(images: np.ndarray, n_samples: int) -> list[bytes]:
    """One V2 inference request per image (flat FP32 data, every output as JSON)."""
    return [json.dumps({
        "inputs": [{"name": "input", "shape": [1, *image.shape], "datatype": "FP32",
                    "data": image.ravel().tolist()}],
        "parameters": {"n_samples": n_samples},
    }).encode() for image in images]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.http_service",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--n-samples", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of every measurement; the targets use their medians")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/service.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if args.rounds < 1 or args.duration <= 0 or args.concurrency < 1:
        parser.error("--rounds and --concurrency must be at least 1, --duration positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    try:
        images = stored_test_images(args.model, 200)
    except ValueError as error:
        return fail(parser.prog, str(error))
    engine = InProcessEngine(args.model)
    predict_bodies = request_bodies(images, "/predict", args.n_samples)
    v2_path = f"/v2/models/{args.model.split(':')[0]}/infer"
    v2_bodies = v2_request_bodies(images, args.n_samples)
    paths = (("/predict", predict_bodies),
             ("/predict_batched", request_bodies(images, "/predict_batched", args.n_samples)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rounds = []
    with served(args.model, args.output.parent) as url:
        port = int(url.rsplit(":", 1)[1])
        for path, bodies in paths:
            concurrent(port, path, bodies, args.concurrency, 3.0)  # warm the path
        for number in range(1, args.rounds + 1):
            # every measurement once per round, so that the machine's drift
            # during the run reaches the baselines and the paths alike
            engine_ms = engine.milliseconds(images[0], args.n_samples)
            single = sequential(port, "/predict", predict_bodies, requests=500)
            single_v2 = sequential(port, v2_path, v2_bodies, requests=500)
            loads = [concurrent(port, path, bodies, args.concurrency, args.duration)
                     for path, bodies in paths]
            rounds.append({"engine_ms": engine_ms, "sequential": single,
                           "sequential_v2": single_v2, "concurrent": loads,
                           "speedup": loads[1]["rps"] / loads[0]["rps"]})
            print(f"round {number}: engine {engine_ms:.2f} ms, /predict p50 "
                  f"{single['p50_ms']:.2f} ms, V2 infer p50 {single_v2['p50_ms']:.2f} ms; "
                  f"{args.concurrency} clients: /predict "
                  f"{loads[0]['rps']:.0f} req/s, /predict_batched {loads[1]['rps']:.0f} req/s "
                  f"(p99 {loads[1]['p99_ms']:.1f} ms, {rounds[-1]['speedup']:.2f}x); refused "
                  f"(429) {loads[0]['refused']} and {loads[1]['refused']}, failures in all "
                  f"{sum(load['failures'] for load in loads)}", flush=True)

    engine_ms = statistics.median(r["engine_ms"] for r in rounds)
    single = median_row([r["sequential"] for r in rounds])
    single_v2 = median_row([r["sequential_v2"] for r in rounds])
    loads = [median_row([r["concurrent"][i] for r in rounds]) for i in range(len(paths))]
    speedup = statistics.median(r["speedup"] for r in rounds)
    batched_load = loads[1]
    targets = [
        (f"/predict p50 {single['p50_ms']:.2f} ms <= engine {engine_ms:.2f} ms + 3 ms",
         single["p50_ms"] <= engine_ms + 3),
        (f"V2 infer p50 {single_v2['p50_ms']:.2f} ms <= /predict p50 "
         f"{single['p50_ms']:.2f} ms + 1 ms", single_v2["p50_ms"] <= single["p50_ms"] + 1),
        (f"/predict_batched throughput {speedup:.2f}x /predict (>= 3x)", speedup >= 3),
        (f"/predict_batched p99 {batched_load['p99_ms']:.1f} ms <= 150 ms",
         batched_load["p99_ms"] <= 150),
    ]
    print(f"\nmedians over {args.rounds} rounds; engine in-process {engine_ms:.2f} ms")
    print("\n| path | clients | 200s/s | p50 ms | p95 ms | p99 ms | refused | failures |")
    print("|---|---|---|---|---|---|---|---|")
    for row in (single, single_v2, *loads):
        print(f"| {row['path']} | {row['clients']} | {row.get('rps', float('nan')):.0f} "
              f"| {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['p99_ms']:.2f} "
              f"| {row['refused']} | {row['failures']} |")
    print()
    for name, met in targets:
        print(f"{'PASS' if met else 'FAIL'}  {name}")
    args.output.write_text(json.dumps({
        **origin, "model": args.model, "n_samples": args.n_samples, "rounds": rounds,
        "median": {"engine_ms": engine_ms, "sequential": single,
                   "sequential_v2": single_v2, "concurrent": loads, "speedup": speedup},
        "targets": [{"target": name, "met": met} for name, met in targets],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
