"""Benchmark uq-score: local throughput against the engine in-process, a Ray run against
the local run, and the local run's peak memory, in one run.

Set-up: a temporary model store (BENTOML_HOME) holding a tiny digits classifier trained
as the tests train theirs (one hidden layer of 64, 4 epochs, N = 8), ROWS rows (200,000)
of scikit-learn's 8x8 digits with Gaussian noise in an npz file, and a local Ray cluster
of 2 CPUs (started once, before the rounds: a real cluster is up before a job comes).
Then (interleaved, since this shared machine's speed drifts by a factor of two
within minutes):

1. R rounds in-process, at the same N and engine batch: ``MCEngine.sample`` over every
   row, held in memory, a batch at a time; the local runner (``scoring.local.run_local``)
   over the npz into a fresh folder; the engine again. A round's ratio is the runner's
   rate over the mean of the two engine rates around it. CPU seconds are recorded too.
2. C rounds of commands: ``uq-score`` in a subprocess, locally (wall time, peak RSS
   from /proc), then ``uq-score --ray-address`` on the cluster (wall time, rows/s);
   the Ray run's scores must equal the local run's bit for bit.

3. with --wide-rows, step 1 again for a wider digits model, Dense(512, 512), whose
   engine work per row is ~60x the tiny one's, while the runner's own work per row
   (decoding, summaries, risk decisions, Parquet) stays the same: context, not a target.

With ``--model TAG`` (a model in the store BENTOML_HOME names, the default classifier say)
the same steps measure that model instead of the tiny one, on its dataset's test images
repeated to ROWS rows (MODEL_ROWS by default), at its default N; the wide model is then
skipped.

Targets, judged on the medians over the rounds: local rate >= 0.8 x the engine's; the
Ray run's time <= 2 x the local run's; the local run's peak RSS <= 2 GB.

    python -m benchmarks.scoring --output benchmarks/results/scoring.json
    BENTOML_HOME=... python -m benchmarks.scoring --model uq-classifier:latest --output ...
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from artifacts.store import load_classifier
from commandline.arguments import OneLineErrorParser, positive_integer
from commandline.provenance import provenance
from scoring.output import read_scores
from scoring.sources import open_source
from training.config import ModelConfig, TrainConfig
from training.data import load_dataset
from training.train import train

ROWS = 200_000
MODEL_ROWS = 50_000
MODEL_NAME = "uq-bench-digits"
TARGET_LOCAL_VS_ENGINE = 0.8
TARGET_RAY_VS_LOCAL_TIME = 2.0
TARGET_PEAK_RSS_GB = 2.0


def train_digits_model(folder: Path, name: str = MODEL_NAME,
                       hidden_units: tuple[int, ...] = (64,)) -> str:
    """The tests' tiny digits classifier (or a wider one), in the current store; its tag."""

    config = TrainConfig(
        dataset="digits", model_name=name, epochs=4, batch_size=64, learning_rate=0.01,
        n_samples=8, risk_target_error=0.1, output_dir=folder,
        model=ModelConfig(hidden_units=hidden_units),
    )
    return train(config, load_dataset("digits")).tag


def noisy_digits(rows: int, seed: int = 0):
    """float32 ``[rows, 8, 8]``: digits picked at random, plus noise, clipped to [0, 16]."""
    import numpy as np
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    images = load_digits().images.astype(np.float32)
    picked = images[rng.integers(0, len(images), rows)]
    return np.clip(picked + rng.normal(0, 1.5, picked.shape), 0, 16).astype(np.float32)


def dataset_test_images(dataset: str, rows: int):
    """float32 ``[rows, *input_shape]``: the dataset's test images, repeated."""
    import numpy as np

    images = load_dataset(dataset).x_test.astype(np.float32)
    return images[np.arange(rows) % len(images)]


def timed(function, rows: int) -> dict:
    """rows/s of ``function()`` and its CPU seconds (all threads) per 1000 rows."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows_per_second": rows / wall, "cpu_ms_per_1000_rows": cpu / rows * 1e6}


def engine_rate(engine, x, n_samples: int, batch: int) -> dict:
    """``MCEngine.sample`` over ``x`` in batches of ``batch`` rows."""
    def run():
        for first in range(0, len(x), batch):
            engine.sample(x[first:first + batch], n_samples, seed=first)
    return timed(run, len(x))


def local_rate(scorer, source, folder: Path, chunk_rows: int) -> dict:
    """The local runner over ``source`` into a fresh ``folder``."""
    from scoring.local import run_local  # imports TensorFlow

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "scores").mkdir(parents=True)
    return timed(lambda: run_local(scorer, source, folder, chunk_rows, progress=False),
                 source.rows)


def in_process_rounds(scorer, x, source, folder: Path, chunk_rows: int, rounds: int,
                      label: str) -> list[dict]:
    """Rounds of engine, local runner, engine, after a warm-up that compiles every program
    both use; each round's ratio is the runner's rate over the mean of the engines'."""
    n_samples, batch = scorer.n_samples, scorer.batch_size
    engine_rate(scorer.engine, x, n_samples, batch)
    local_rate(scorer, source, folder, chunk_rows)
    results = []
    for number in range(1, rounds + 1):
        before = engine_rate(scorer.engine, x, n_samples, batch)
        local = local_rate(scorer, source, folder, chunk_rows)
        after = engine_rate(scorer.engine, x, n_samples, batch)
        engine = (before["rows_per_second"] + after["rows_per_second"]) / 2
        results.append({"engine_before": before, "local": local, "engine_after": after,
                        "local_vs_engine": local["rows_per_second"] / engine})
        print(f"{label} round {number}: engine {before['rows_per_second']:,.0f} and "
              f"{after['rows_per_second']:,.0f} rows/s, local runner "
              f"{local['rows_per_second']:,.0f} rows/s ({results[-1]['local_vs_engine']:.2f}x); "
              f"CPU ms per 1000 rows: engine {before['cpu_ms_per_1000_rows']:.1f}, runner "
              f"{local['cpu_ms_per_1000_rows']:.1f}", flush=True)
    return results


def summarize_rounds(rounds: list[dict]) -> dict:
    def median(values):
        return statistics.median(list(values))

    return {
        "engine_rows_per_second": median(
            (r["engine_before"]["rows_per_second"] + r["engine_after"]["rows_per_second"]) / 2
            for r in rounds),
        "local_rows_per_second": median(r["local"]["rows_per_second"] for r in rounds),
        "local_vs_engine": median(r["local_vs_engine"] for r in rounds),
        "engine_cpu_ms_per_1000_rows": median(
            r["engine_before"]["cpu_ms_per_1000_rows"] for r in rounds),
        "local_cpu_ms_per_1000_rows": median(r["local"]["cpu_ms_per_1000_rows"] for r in rounds),
    }


def command_run(arguments: list[str], output: Path) -> dict:
    """``uq-score ARGUMENTS --output OUTPUT`` in a subprocess: wall seconds, peak RSS.

    The peak is the child's own high-water mark after exec (VmHWM in /proc, polled):
    ``wait4``'s ru_maxrss would also count this large process's pages, which the
    child shares between fork and exec."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "scoring.cli", *arguments, "--output", str(output),
               "--no-progress"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status_file, peak_kb = Path(f"/proc/{process.pid}/status"), 0
    while process.poll() is None:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError, IndexError):  # exiting, or no /proc here
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    error = process.stderr.read().decode()
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {error.strip()[-2000:]}")
    summary = json.loads((output / "summary.json").read_text())
    return {"seconds": seconds, "rows_per_second": summary["rows"] / seconds,
            "peak_rss_gb": peak_kb * 1024 / 1e9}


def same_scores(first: Path, second: Path) -> bool:

    return read_scores(first).sort_by("id").equals(read_scores(second).sort_by("id"))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.scoring",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="TAG",
                        help="measure this model of the store BENTOML_HOME names, on its "
                        "dataset's test images, instead of training the tiny digits model")
    parser.add_argument("--rows", type=positive_integer,
                        help=f"rows of input (default: {ROWS:,} of digits, {MODEL_ROWS:,} "
                        "with --model)")
    parser.add_argument("--rounds", type=positive_integer, default=5,
                        help="in-process rounds (engine, runner, engine); the target uses "
                        "their median ratio (default: %(default)s)")
    parser.add_argument("--command-rounds", type=positive_integer, default=3,
                        help="rounds of uq-score commands, local then Ray (default: "
                        "%(default)s)")
    parser.add_argument("--wide-rows", type=int, default=50_000,
                        help="rows for the same in-process comparison with a wider model, "
                        "Dense(512, 512), whose engine work per row is ~60x the tiny one's; "
                        "0 skips it (default: %(default)s)")
    parser.add_argument("--output", type=Path,
                        default=Path("benchmarks/results/scoring.json"))
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures

    args.rows = args.rows or (MODEL_ROWS if args.model else ROWS)
    work = Path(tempfile.mkdtemp(prefix="uq-bench-scoring-"))
    if not args.model:
        os.environ["BENTOML_HOME"] = str(work / "bentoml")  # before BentoML is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import numpy as np
    import ray

    from scoring.scorer import Scorer  # imports TensorFlow
    from uncertainty.mc import configure_tensorflow_threads  # imports TensorFlow

    configure_tensorflow_threads()
    try:
        model, card, tag = load_classifier(args.model or train_digits_model(work / "train"))
        x = dataset_test_images(card.dataset, args.rows) if args.model else noisy_digits(args.rows)
        np.savez(work / "rows.npz", x=x)
        n_samples = card.default_n_samples
        scorer = Scorer(model, card, tag, n_samples, seed=0)
        source = open_source(f"npz:{work / 'rows.npz'}", scorer.spec)
        chunk_rows = 16384
        rows_of = f"{card.dataset} test images" if args.model else "noisy digits"
        print(f"{args.rows:,} rows of {rows_of}, model {tag}, N = {n_samples}, engine "
              f"batch {scorer.batch_size}, chunks of {chunk_rows}", flush=True)
        rounds = in_process_rounds(scorer, x, source, work / "in-process", chunk_rows,
                                   args.rounds, "model" if args.model else "tiny model")
        context = ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        address = context.address_info["gcs_address"]
        common = ["--model", tag, "--input", f"npz:{work / 'rows.npz'}", "--seed", "0"]
        commands = []
        for number in range(1, args.command_rounds + 1):
            local_run = command_run(common, work / "local")
            ray_run = command_run([*common, "--ray-address", address], work / "ray")
            commands.append({
                "local": local_run, "ray": ray_run,
                "ray_vs_local_time": ray_run["seconds"] / local_run["seconds"],
                "identical": same_scores(work / "local", work / "ray")
                and same_scores(work / "local", work / "in-process"),
            })
            print(f"commands {number}: uq-score local {local_run['seconds']:.1f} s "
                  f"({local_run['rows_per_second']:,.0f} rows/s, peak RSS "
                  f"{local_run['peak_rss_gb']:.2f} GB), --ray-address {ray_run['seconds']:.1f} s "
                  f"({ray_run['rows_per_second']:,.0f} rows/s, "
                  f"{commands[-1]['ray_vs_local_time']:.2f}x the local time); bit-identical: "
                  f"{commands[-1]['identical']}", flush=True)
        ray.shutdown()
        wide = None
        if args.wide_rows > 0 and not args.model:
            wide_model, wide_card, wide_tag = load_classifier(train_digits_model(
                work / "train-wide", f"{MODEL_NAME}-wide", (512, 512)))
            wide_scorer = Scorer(wide_model, wide_card, wide_tag, n_samples, seed=0)
            np.savez(work / "wide.npz", x=x[:args.wide_rows])
            wide_source = open_source(f"npz:{work / 'wide.npz'}", wide_scorer.spec)
            wide_rounds = in_process_rounds(wide_scorer, x[:args.wide_rows], wide_source,
                                            work / "wide", chunk_rows, args.rounds,
                                            "wide model")
            wide = {"model": "digits, Dense(512, 512)", "rows": args.wide_rows,
                    "engine_batch": wide_scorer.batch_size, "rounds": wide_rounds,
                    "median": summarize_rounds(wide_rounds)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(values):
        return statistics.median(list(values))

    result = {
        **origin, "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "rows": args.rows,
        "model": f"{tag}, on {card.dataset} test images" if args.model
        else "digits, Dense(64), as tests/conftest.py's classifier_tag",
        "n_samples": n_samples, "engine_batch": scorer.batch_size, "chunk_rows": chunk_rows,
        "ray_cluster": {"cpus": 2, "note": "started before the rounds, as a real cluster "
                        "is up before a job comes"},
        "rounds": rounds,
        "commands": commands,
        "wide_model": wide,
        "median": {
            **summarize_rounds(rounds),
            "local_command_seconds": median(c["local"]["seconds"] for c in commands),
            "local_command_rows_per_second": median(
                c["local"]["rows_per_second"] for c in commands),
            "local_peak_rss_gb": max(c["local"]["peak_rss_gb"] for c in commands),
            "ray_command_seconds": median(c["ray"]["seconds"] for c in commands),
            "ray_command_rows_per_second": median(c["ray"]["rows_per_second"] for c in commands),
            "ray_vs_local_time": median(c["ray_vs_local_time"] for c in commands),
        },
    }
    m = result["median"]
    result["targets"] = [
        {"target": f"local {m['local_rows_per_second']:,.0f} rows/s >= "
                   f"{TARGET_LOCAL_VS_ENGINE} x engine {m['engine_rows_per_second']:,.0f} rows/s "
                   f"({m['local_vs_engine']:.2f}x)",
         "met": m["local_vs_engine"] >= TARGET_LOCAL_VS_ENGINE},
        {"target": f"Ray {m['ray_command_seconds']:.1f} s <= {TARGET_RAY_VS_LOCAL_TIME} x local "
                   f"{m['local_command_seconds']:.1f} s ({m['ray_vs_local_time']:.2f}x)",
         "met": m["ray_vs_local_time"] <= TARGET_RAY_VS_LOCAL_TIME},
        {"target": f"local peak RSS {m['local_peak_rss_gb']:.2f} GB <= {TARGET_PEAK_RSS_GB} GB "
                   f"for {args.rows:,} rows",
         "met": m["local_peak_rss_gb"] <= TARGET_PEAK_RSS_GB},
        {"target": "Ray, local and in-process scores bit-identical in every round",
         "met": all(c["identical"] for c in commands)},
    ]
    if wide:
        w = wide["median"]
        print(f"\nwide model: local {w['local_rows_per_second']:,.0f} rows/s, engine "
              f"{w['engine_rows_per_second']:,.0f} rows/s ({w['local_vs_engine']:.2f}x)")
    print(f"\nmedians over {args.rounds} in-process rounds and {args.command_rounds} rounds of "
          "commands:")
    for target in result["targets"]:
        print(f"  [{'met' if target['met'] else 'MISSED'}] {target['target']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
