"""uq-loadtest: what each extra MC sample costs in latency and throughput.

    uq-loadtest --host http://127.0.0.1:3000 --samples 1,10,30 --duration 30 --users 32 \\
        --evaluation reports/evaluate/evaluation.json --output-dir reports/loadtest
    uq-loadtest --serve --samples 1,10,30     # starts the service itself, then stops it
    uq-loadtest --serve --samples 10,50,auto  # "auto": the adaptive sample count

For each path (/predict, /predict_batched) and each N, locust runs headless for
``--duration`` seconds with ``--users`` users posting real test images of the
served model's dataset. The report (tradeoff.csv, tradeoff.md, tradeoff.png, and
tradeoff.json: the rows and the recommendation with the command, commit, date and
machine that measured them) puts latency and throughput (200 answers per second; a
refusal, 429, is a failure and counted apart) beside uq-evaluate's quality figures for
the same N, and recommends the smallest N whose quality is within tolerance of the best
and whose p95 fits ``--latency-budget-ms``. ``auto`` in ``--samples`` adds a row for
``n_samples: "auto"``, with the mean N its predictions used during the run (from the
service's ``uq_n_samples`` histogram; every row has it). Only loopback hosts are
accepted.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from commandline.arguments import OneLineErrorParser, fail, sample_counts
from commandline.provenance import provenance
from loadtest.report import write_report
from loadtest.server import ServerError, check_loopback, served
from loadtest.service_metrics import histogram_change, n_samples_histogram
from training.data import load_dataset

AUTO = "auto"

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PATHS = ("/predict", "/predict_batched")
MAX_USERS = 256
MAX_DURATION_SECONDS = 3600
IMAGES = 500


class LoadTestError(Exception):
    """A problem to report in one line (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="uq-loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", help="service URL on loopback, e.g. http://127.0.0.1:3000 "
                        "(not with --serve)")
    parser.add_argument("--serve", action="store_true",
                        help="start `bentoml serve` on a free loopback port for the run")
    parser.add_argument("--model", default="uq-classifier:latest",
                        help="tag to serve with --serve (default: %(default)s)")
    parser.add_argument("--samples", type=counts_or_auto, default=(1, 10, 30),
                        help='comma-separated N to sweep, and "auto" for the adaptive sample '
                        "count (default: 1,10,30)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated API paths to sweep (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds per (path, N) run (default: %(default)s)")
    parser.add_argument("--users", type=int, default=32,
                        help="concurrent locust users (default: %(default)s)")
    parser.add_argument("--evaluation", type=Path,
                        help="uq-evaluate's evaluation.json, for the quality columns")
    parser.add_argument("--latency-budget-ms", type=float, default=100.0,
                        help="p95 a recommended N must fit (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=Path("reports/loadtest"),
                        help="where the tradeoff files go (default: %(default)s)")
    return parser


def counts_or_auto(text: str) -> tuple[int | str, ...]:
    """``--samples``: sample counts as commandline.arguments.sample_counts, and "auto" (last)."""
    parts = text.split(",")
    counts = [part for part in parts if part.strip() != AUTO]
    return ((sample_counts(",".join(counts)) if counts else ())
            + ((AUTO,) if len(counts) < len(parts) else ()))


def check_arguments(args: argparse.Namespace) -> tuple[str, ...]:
    """The API paths to sweep; raises LoadTestError for anything out of bounds."""
    if args.serve == bool(args.host):
        raise LoadTestError("give exactly one of --host URL and --serve")
    if args.host:
        check_loopback(args.host)
    if not 1 <= args.users <= MAX_USERS:
        raise LoadTestError(f"--users must lie in [1, {MAX_USERS}], got {args.users}")
    if not 1 <= args.duration <= MAX_DURATION_SECONDS:
        raise LoadTestError(
            f"--duration must lie in [1, {MAX_DURATION_SECONDS}] seconds, got {args.duration}"
        )
    paths = tuple(p if p.startswith("/") else f"/{p}" for p in args.paths.split(","))
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise LoadTestError(f"unknown path {unknown[0]!r}; expected {', '.join(PATHS)}")
    if args.evaluation is not None and not args.evaluation.is_file():
        raise LoadTestError(f"--evaluation {args.evaluation} is not a file")
    return paths


def fetch_card(host: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{host.rstrip('/')}/metadata", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise LoadTestError(f"cannot read {host}/metadata: {error}") from None


def run_locust(host: str, path: str, n_samples: int, users: int, duration: float,
               images: Path, work_dir: Path) -> dict[str, Any]:
    """One headless locust run; the row of the tradeoff table: ``rps`` counts the 200s
    only, ``failures`` every other answer, ``refused`` the 429s among them. Statistics start
    once every user has spawned: the first requests of a run took up to 1.8 s
    on locust's side (the server answered them in 0.2 s), and made the p99 of
    rows with few requests."""
    prefix = work_dir / f"{path.strip('/')}_{n_samples}"
    env = {**os.environ, "UQ_LOADTEST_IMAGES": str(images), "UQ_LOADTEST_PATH": path,
           "UQ_LOADTEST_N_SAMPLES": str(n_samples)}
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--host", host, "-u", str(users), "-r", str(users), "-t", f"{duration:g}s",
               "--csv", str(prefix), "--only-summary", "--reset-stats", "--stop-timeout", "5",
               "--loglevel", "WARNING"]
    before = n_samples_histogram(host)
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            timeout=duration + 120)
    used = histogram_change(before, n_samples_histogram(host))
    stats_path = Path(f"{prefix}_stats.csv")
    if not stats_path.is_file():
        raise LoadTestError(f"locust wrote no statistics: {result.stderr.strip()[-300:]}")
    with open(stats_path, newline="") as file:
        stats = next((row for row in csv.DictReader(file) if row["Name"] == path), None)
    if stats is None or int(stats["Request Count"]) == 0:
        raise LoadTestError(f"locust sent no request to {path}: {result.stderr.strip()[-300:]}")
    return {
        "path": path, "n_samples": n_samples, "users": users,
        "requests": int(stats["Request Count"]),
        "p50_ms": float(stats["50%"]), "p95_ms": float(stats["95%"]),
        "p99_ms": float(stats["99%"]),
        "rps": float(stats["Requests/s"]) - float(stats["Failures/s"]),
        "failures": int(stats["Failure Count"]),
        "refused": refusals(Path(f"{prefix}_failures.csv"), path),
        **used,
    }


def refusals(failures_path: Path, path: str) -> int:
    """How many requests to ``path`` the service refused with 429, from locust's failures
    CSV (the locustfile names the status in each failure)."""
    if not failures_path.is_file():
        return 0
    with open(failures_path, newline="") as file:
        return sum(int(row["Occurrences"]) for row in csv.DictReader(file)
                   if row["Name"] == path and "HTTP 429" in row["Error"])


def sweep(host: str, args: argparse.Namespace, paths: tuple[str, ...]) -> list[dict[str, Any]]:
    card = fetch_card(host)
    images = load_dataset(card["dataset"]).x_test[:IMAGES]
    rows = []
    with tempfile.TemporaryDirectory(prefix="uq-loadtest-") as work:
        image_path = Path(work) / "images.npy"
        np.save(image_path, images)
        for path in paths:
            for n_samples in args.samples:
                row = run_locust(host, path, n_samples, args.users, args.duration,
                                 image_path, Path(work))
                print(f"{path} N={n_samples}: {row['rps']:.1f} req/s, p50 {row['p50_ms']:.0f} ms,"
                      f" p95 {row['p95_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
                      f"{row['failures']} failures"
                      + (f", mean N {row['mean_n_samples']:.2f}" if n_samples == AUTO
                         and "mean_n_samples" in row else ""), flush=True)
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # before the run: the tree it measures
    origin = provenance(None if argv is None else ["uq-loadtest", *argv])
    try:
        paths = check_arguments(args)
        evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
        args.output_dir.mkdir(parents=True, exist_ok=True)
        if args.serve:
            with served(args.model, args.output_dir) as host:
                rows = sweep(host, args, paths)
        else:
            rows = sweep(args.host, args, paths)
    except (LoadTestError, ServerError, ValueError) as error:
        return fail("uq-loadtest", str(error))

    write_report(rows, evaluation, args.latency_budget_ms, args.output_dir, origin)
    print((args.output_dir / "tradeoff.md").read_text())
    print(f"wrote {args.output_dir}/tradeoff.csv, tradeoff.md, tradeoff.png and tradeoff.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
