"""Benchmark n_samples "auto" (the adaptive sample count) against fixed N at its own cost
through HTTP: fixed N = auto's mean N rounded up.

A real ``bentoml serve`` on loopback; then, in each of R rounds, every load in turn
for D seconds, first at "auto", then at fixed N = ceil(the mean N "auto" used in that
load in that round), so that the machine's drift reaches both alike:

1. compute-bound: ``/predict`` with 64 instances per request from 4 clients;
2. per-request-bound: 32 clients posting one image each to ``/predict_batched``
   (the scheduler merges them into engine rounds).

The mean N that "auto" used comes from the service's ``uq_n_samples`` histogram.
Throughput counts 200 answers only: a refusal (429) is a failure, counted beside each
rate. A load meets its target when the median over the rounds of each round's ratio
(auto's images/s over fixed N's) is at least ``TARGET`` and neither side was refused
in any round; the ratios' spread over the rounds is printed beside it. Beside images/s,
images per CPU second of the service (its processes' user and system time): on a shared
machine, outside load moves wall-clock rates far more than the service's own CPU cost.

    python -m benchmarks.adaptive --model uq-classifier:latest --duration 8 --rounds 3 \\
        --output benchmarks/results/adaptive.json

Clients are benchmarks.load_client's raw HTTP/1.1 coroutines, on the same 2-core machine
as the server: the numbers include the clients' own (small) CPU use.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import psutil

from artifacts.store import stored_card
from benchmarks.load_client import concurrent
from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from loadtest.server import served
from loadtest.service_metrics import histogram_change, n_samples_histogram
from training.data import load_dataset

AUTO = "auto"
#: (name, path, instances per request, clients)
LOADS = (("predict_64x4", "/predict", 64, 4), ("batched_1x32", "/predict_batched", 1, 32))
#: auto's images/s over those of fixed N = ceil(auto's mean N), on every load
TARGET = 0.95
#: the key of the fixed-N baseline among a round's loads (its N varies with the round)
FIXED = "ceil(auto)"


def bodies(images: np.ndarray, path: str, instances: int, n_samples: int | str) -> list[bytes]:
    """Request bodies cycling through ``images``: ``instances`` images per /predict body,
    one item per /predict_batched body."""
    if path == "/predict_batched":
        return [json.dumps({"items": [{"instance": image.tolist(), "n_samples": n_samples}]})
                .encode() for image in images]
    starts = range(0, len(images) - instances + 1, max(1, instances // 2))
    return [json.dumps({"instances": images[start : start + instances].tolist(),
                        "n_samples": n_samples}).encode() for start in starts]


def server_cpu_seconds() -> float:
    """CPU seconds (user and system) of this process's descendants: the served service."""
    seconds = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds += times.user + times.system
    return seconds


def measure(url: str, path: str, payloads: list[bytes], clients: int, instances: int,
            seconds: float) -> dict:
    """One load for ``seconds``: the client's figures, images/s, images per CPU second of
    the service (which outside load on a shared machine disturbs far less than images/s)
    and the N the service used."""
    port = int(url.rsplit(":", 1)[1])
    before, cpu_before = n_samples_histogram(url), server_cpu_seconds()
    row = concurrent(port, path, payloads, clients, seconds)
    cpu = server_cpu_seconds() - cpu_before
    used = histogram_change(before, n_samples_histogram(url))
    images = (row["requests"] - row["failures"]) * instances
    return {**row, "images_per_s": row["rps"] * instances,
            "images_per_cpu_s": images / max(cpu, 1e-9),
            "mean_n_samples": used.get("mean_n_samples"),
            "n_samples_shares": used.get("n_samples_shares")}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.adaptive",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-max-latency-ms", type=int,
                        help="UQ_BATCH_MAX_LATENCY_MS of the server (default: the service's)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/adaptive.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if args.rounds < 1 or not 0 < args.duration <= 600:
        parser.error("--rounds must be >= 1, --duration in (0, 600]")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.batch_max_latency_ms:  # the served process inherits it
        os.environ["UQ_BATCH_MAX_LATENCY_MS"] = str(args.batch_max_latency_ms)

    try:
        card = stored_card(args.model)
    except ValueError as error:
        return fail(parser.prog, str(error))
    if card.auto_calibration is None:
        return fail(parser.prog, f'{args.model} has no calibration of "auto": run '
                    f"uq-calibrate --model {args.model}")
    images = load_dataset(card.dataset).x_test[:256]
    payloads: dict[tuple[str, int | str], list[bytes]] = {}

    def payloads_of(name: str, path: str, instances: int, n: int | str) -> list[bytes]:
        if (name, n) not in payloads:
            payloads[name, n] = bodies(images, path, instances, n)
        return payloads[name, n]

    args.output.parent.mkdir(parents=True, exist_ok=True)
    rounds = []
    with served(args.model, args.output.parent) as url:
        warm_n = math.ceil(card.auto_calibration.mean_n_samples)
        for name, path, instances, clients in LOADS:  # warm every program and path
            for n in (AUTO, warm_n):
                measure(url, path, payloads_of(name, path, instances, n), clients, instances,
                        3.0)
        for number in range(1, args.rounds + 1):
            measured, ratios, cpu_ratios = {}, {}, {}
            for name, path, instances, clients in LOADS:
                auto = measure(url, path, payloads_of(name, path, instances, AUTO), clients,
                               instances, args.duration)
                n = math.ceil(auto["mean_n_samples"] or card.auto_calibration.mean_n_samples)
                fixed = measure(url, path, payloads_of(name, path, instances, n), clients,
                                instances, args.duration)
                measured[f"{name} N={AUTO}"] = auto
                measured[f"{name} N={FIXED}"] = {**fixed, "n_samples": n}
                ratios[name] = auto["images_per_s"] / max(fixed["images_per_s"], 1e-9)
                cpu_ratios[name] = auto["images_per_cpu_s"] / fixed["images_per_cpu_s"]
            refused = {key: value["refused"] for key, value in measured.items()}
            rounds.append({"loads": measured, "ratios": ratios, "cpu_ratios": cpu_ratios,
                           "refused": refused})
            print(f"round {number}: " + "; ".join(
                f"{name}: auto {measured[f'{name} N={AUTO}']['images_per_s']:.0f} images/s "
                f"(mean N {measured[f'{name} N={AUTO}']['mean_n_samples']:.2f}, "
                f"{measured[f'{name} N={AUTO}']['refused']} refused), "
                f"N={measured[f'{name} N={FIXED}']['n_samples']} "
                f"{measured[f'{name} N={FIXED}']['images_per_s']:.0f} images/s "
                f"({measured[f'{name} N={FIXED}']['refused']} refused): {ratios[name]:.3f}x, "
                f"per service CPU second {cpu_ratios[name]:.3f}x"
                for name, *_ in LOADS), flush=True)

    keys = list(rounds[0]["loads"])
    median = {key: {field: statistics.median(r["loads"][key][field] for r in rounds)
                    for field in ("images_per_s", "images_per_cpu_s", "rps", "p50_ms",
                                  "p95_ms", "p99_ms", "mean_n_samples")}
              for key in keys}
    for key in keys:
        for count in ("failures", "refused"):
            median[key][count] = sum(r["loads"][key][count] for r in rounds)
    ratios, cpu_ratios = ({name: {"median": statistics.median(r[kind][name] for r in rounds),
                                  "min": min(r[kind][name] for r in rounds),
                                  "max": max(r[kind][name] for r in rounds)}
                           for name, *_ in LOADS} for kind in ("ratios", "cpu_ratios"))
    targets = []
    for name, *_ in LOADS:
        auto, fixed, ratio = median[f"{name} N={AUTO}"], median[f"{name} N={FIXED}"], ratios[name]
        met = ratio["median"] >= TARGET and auto["refused"] == fixed["refused"] == 0
        targets.append((f"{name}: auto {ratio['median']:.3f}x (rounds {ratio['min']:.3f} to "
                        f"{ratio['max']:.3f}) fixed N = ceil(auto's mean N "
                        f"{auto['mean_n_samples']:.2f})'s images/s (>= {TARGET}x, none refused; "
                        f"refused over the rounds: "
                        f"auto {auto['refused']}, fixed {fixed['refused']}); per service CPU "
                        f"second {cpu_ratios[name]['median']:.3f}x (rounds "
                        f"{cpu_ratios[name]['min']:.3f} to {cpu_ratios[name]['max']:.3f})", met))
    print(f"\nmedians over {args.rounds} rounds of {args.duration:g} s per load")
    print("\n| load | N | mean N used | images/s | images/CPU s | p50 ms | p95 ms | p99 ms "
          "| refused | failures |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        load, n = key.split(" N=")
        figures = median[key]
        print(f"| {load} | {n} | {figures['mean_n_samples']:.2f} | {figures['images_per_s']:.0f} "
              f"| {figures['images_per_cpu_s']:.0f} "
              f"| {figures['p50_ms']:.1f} | {figures['p95_ms']:.1f} | {figures['p99_ms']:.1f} "
              f"| {figures['refused']} | {figures['failures']} |")
    print()
    for text, met in targets:
        print(f"{'PASS' if met else 'FAIL'}  {text}")
    args.output.write_text(json.dumps({
        **origin, "model": args.model, "auto_schedule": list(card.auto_calibration.schedule),
        "batch_max_latency_ms": os.environ.get("UQ_BATCH_MAX_LATENCY_MS", "default"),
        "duration_s": args.duration, "rounds": rounds, "median": median, "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "targets": [{"target": text, "met": met} for text, met in targets],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
