"""Run the overload benchmark: ``python -m benchmarks.overload`` (see benchmarks.overload)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import benchmarks.overload
from benchmarks.overload.figures import timeline
from benchmarks.overload.phases import RECOVERY_RATE, Run, images, metadata, payloads, warm
from benchmarks.overload.report import table, target_lines, targets, write
from benchmarks.server_processes import CpuSampler, server_tree, worker_rss_mb
from commandline.arguments import OneLineErrorParser, fail, number_in, positive_integer
from commandline.provenance import provenance
from loadtest.server import ServerError, add_service_options, against_service

PROG = "python -m benchmarks.overload"
PHASES = ("capacity", "overload", "big", "budget")


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
    measured = Run(address, args, bodies, cpu)
    try:
        for name in PHASES:
            if name in args.phases:
                getattr(measured, name)()
    finally:
        cpu.stopping.set()
    after = worker_rss_mb(tree)
    measured.results["rss_mb"] = {"before": before, "after": after,
                                  "growth": after / before - 1 if before and after else None}
    return {"model": meta["model"], "url": url, "images": source,
            "n_samples": args.n_samples, "clients": args.clients, "batch_max_latency_ms": limit_ms,
            "phases_run": [p for p in PHASES if p in args.phases],
            "phases": measured.phases, "results": measured.results,
            "timeline": timeline(measured.answers, measured.phases, measured.t0, cpu),
            "targets": targets(measured.results, limit_ms)}


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
    parser = OneLineErrorParser(prog=PROG, description=benchmarks.overload.__doc__.split("\n\n")[0])
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

    parser = build_parser()
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    if not 0 < args.overload <= 20:
        parser.error(f"--overload must lie in (0, 20], got {args.overload:g}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        report = {**origin, **against_service(args.host, args.model, args.output.parent,
                                              lambda url: measure(url, args))}
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
