"""Benchmark n_samples "auto" (the adaptive sample count) against fixed N through HTTP.

A real ``bentoml serve`` on loopback; then, in each of R rounds, every load in turn
for D seconds (interleaved, so that this shared machine's drift reaches every
configuration alike):

1. compute-bound: ``/predict`` with 64 instances per request from 4 clients, at fixed
   N (``--fixed``, 50 and 10 by default) and at "auto": images per second;
2. per-request-bound: 32 clients posting one image each to ``/predict_batched``
   (the scheduler merges them into engine rounds), at the same N and "auto".

The mean N that "auto" used in each load comes from the service's ``uq_n_samples``
histogram. Throughput counts 200 answers only: a refusal (429, when the service refuses
work it cannot answer within ``UQ_BATCH_MAX_LATENCY_MS``) is a failure, and every
round records each load's refusals beside its rate and beside the ratios, since a
refused request is work the baseline did not do. Under heavy outside load,
``--batch-max-latency-ms`` gives the server a wider bound so that refusals do not
distort the ratios. The targets ("auto" at least 3x fixed N=50's images/s on the
first load, 1.7x on the second) are judged on the median over the rounds of each
round's ratio.

    python -m benchmarks.adaptive --model uq-classifier:latest --duration 10 --rounds 3 \\
        --output benchmarks/results/adaptive.json

Clients are benchmarks.load_client's raw HTTP/1.1 coroutines, on the same 2-core machine
as the server: the numbers include the clients' own (small) CPU use.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from artifacts.store import read_card
from benchmarks.load_client import concurrent
from commandline.arguments import OneLineErrorParser, fail
from commandline.provenance import provenance
from loadtest.server import served
from loadtest.service_metrics import histogram_change, n_samples_histogram
from training.data import load_dataset

AUTO = "auto"
#: (name, path, instances per request, clients)
LOADS = (("predict_64x4", "/predict", 64, 4), ("batched_1x32", "/predict_batched", 1, 32))
TARGETS = {"predict_64x4": 3.0, "batched_1x32": 1.7}  # auto / fixed N=50, images per second
BASELINE = 50


def bodies(images: np.ndarray, path: str, instances: int, n_samples: int | str) -> list[bytes]:
    """Request bodies cycling through ``images``: ``instances`` images per /predict body,
    one item per /predict_batched body."""
    if path == "/predict_batched":
        return [json.dumps({"items": [{"instance": image.tolist(), "n_samples": n_samples}]})
                .encode() for image in images]
    starts = range(0, len(images) - instances + 1, max(1, instances // 2))
    return [json.dumps({"instances": images[start : start + instances].tolist(),
                        "n_samples": n_samples}).encode() for start in starts]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.adaptive",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--fixed", default="50,10",
                        help="comma-separated fixed N to compare with (default: %(default)s; "
                        f"{BASELINE} is the targets' baseline)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-max-latency-ms", type=int,
                        help="UQ_BATCH_MAX_LATENCY_MS of the server (default: the service's)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/adaptive.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    try:
        fixed = sorted({int(n) for n in args.fixed.split(",")} | {BASELINE}, reverse=True)
    except ValueError:
        parser.error(f"--fixed: expected comma-separated integers, got {args.fixed!r}")
    if args.rounds < 1 or not 0 < args.duration <= 600 or min(fixed) < 1:
        parser.error("--rounds must be >= 1, --duration in (0, 600], --fixed N >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.batch_max_latency_ms:  # the served process inherits it
        os.environ["UQ_BATCH_MAX_LATENCY_MS"] = str(args.batch_max_latency_ms)

    import bentoml

    try:
        card = read_card(bentoml.models.get(args.model))
    except bentoml.exceptions.NotFound:
        return fail(parser.prog, f"model {args.model!r} is not in the store")
    if card.auto_calibration is None:
        return fail(parser.prog, f'{args.model} has no calibration of "auto": run '
                    f"uq-calibrate --model {args.model}")
    images = load_dataset(card.dataset).x_test[:256]
    counts: list[int | str] = [*fixed, AUTO]
    payloads = {(name, n): bodies(images, path, instances, n)
                for name, path, instances, _ in LOADS for n in counts}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rounds = []
    with served(args.model, args.output.parent) as url:
        port = int(url.rsplit(":", 1)[1])
        for name, path, _, clients in LOADS:  # warm every program and path
            for n in counts:
                concurrent(port, path, payloads[name, n], clients, 3.0)
        for number in range(1, args.rounds + 1):
            measured = {}
            for name, path, instances, clients in LOADS:
                for n in counts:
                    before = n_samples_histogram(url)
                    row = concurrent(port, path, payloads[name, n], clients, args.duration)
                    used = histogram_change(before, n_samples_histogram(url))
                    measured[f"{name} N={n}"] = {
                        **row, "images_per_s": row["rps"] * instances,
                        "mean_n_samples": used.get("mean_n_samples"),
                        "n_samples_shares": used.get("n_samples_shares")}
            ratios = {name: measured[f"{name} N={AUTO}"]["images_per_s"]
                      / measured[f"{name} N={BASELINE}"]["images_per_s"]
                      for name, *_ in LOADS}
            refused = {key: value["refused"] for key, value in measured.items()}
            rounds.append({"loads": measured, "ratios": ratios, "refused": refused})
            print(f"round {number}: " + "; ".join(
                f"{key}: {value['images_per_s']:.0f} images/s, {value['refused']} refused"
                + (f" (mean N {value['mean_n_samples']:.1f})" if key.endswith(AUTO) else "")
                for key, value in measured.items())
                + " | auto/N=50: " + ", ".join(f"{name} {ratio:.2f}x"
                                               for name, ratio in ratios.items()), flush=True)

    keys = list(rounds[0]["loads"])
    median = {key: {field: statistics.median(r["loads"][key][field] for r in rounds)
                    for field in ("images_per_s", "rps", "p50_ms", "p95_ms", "p99_ms")}
              for key in keys}
    for key in keys:
        if key.endswith(AUTO):
            median[key]["mean_n_samples"] = statistics.median(
                r["loads"][key]["mean_n_samples"] for r in rounds)
        for count in ("failures", "refused"):
            median[key][count] = sum(r["loads"][key][count] for r in rounds)
    ratios = {name: statistics.median(r["ratios"][name] for r in rounds) for name, *_ in LOADS}
    targets = [(f"{name}: auto {ratios[name]:.2f}x fixed N={BASELINE}'s images/s "
                f"(>= {target}x; refused over the rounds: auto "
                f"{median[f'{name} N={AUTO}']['refused']}, N={BASELINE} "
                f"{median[f'{name} N={BASELINE}']['refused']})", ratios[name] >= target)
               for name, target in TARGETS.items()]
    print(f"\nmedians over {args.rounds} rounds of {args.duration:g} s per load")
    print("\n| load | N | mean N used | images/s | p50 ms | p95 ms | p99 ms | refused "
          "| failures |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        load, n = key.split(" N=")
        figures = median[key]
        mean_n = figures.get("mean_n_samples") or (float(n) if n != AUTO else float("nan"))
        print(f"| {load} | {n} | {mean_n:.1f} | {figures['images_per_s']:.0f} "
              f"| {figures['p50_ms']:.1f} | {figures['p95_ms']:.1f} | {figures['p99_ms']:.1f} "
              f"| {figures['refused']} | {figures['failures']} |")
    print()
    for text, met in targets:
        print(f"{'PASS' if met else 'FAIL'}  {text}")
    args.output.write_text(json.dumps({
        **origin, "model": args.model, "auto_schedule": list(card.auto_calibration.schedule),
        "batch_max_latency_ms": os.environ.get("UQ_BATCH_MAX_LATENCY_MS", "default"),
        "duration_s": args.duration, "rounds": rounds, "median": median, "ratios": ratios,
        "targets": [{"target": text, "met": met} for text, met in targets],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
