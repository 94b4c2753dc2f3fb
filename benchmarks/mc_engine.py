"""Benchmark the MC dropout engine against the naive loop and the machine's matmul peak.

For a 784-300-100-10 MLP (with and without dropout on the input), batch sizes
B in {1, 32, 256} and sample counts N in {1, 10, 30, 100} it times, in one run:

* naive:  ``np.stack([model(x, training=True) for _ in range(N)])``
* tiled:  one compiled call of ``model(repeat(x, N), training=True)``
* engine: ``MCEngine(model).sample(x, N)``

and reports the engine's speedups and its GFLOP/s (the dense-layer FLOPs it
actually performs: the prefix once per input, the rest once per sample) as a
fraction of the TensorFlow float32 matmul peak measured in the same run.

    python -m benchmarks.mc_engine --output benchmarks/results/mc_engine.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from commandline.arguments import OneLineErrorParser  # noqa: E402
from commandline.provenance import provenance  # noqa: E402
from uncertainty.mc import MCEngine, configure_tensorflow_threads  # noqa: E402

BATCH_SIZES = (1, 32, 256)
SAMPLE_COUNTS = (1, 10, 30, 100)
MIN_SECONDS_PER_CASE = 1.0


def build_mlp(input_dropout: bool) -> keras.Model:
    """The classic 784-300-100-10 MC dropout MLP (weights random: only speed matters)."""
    constraint = keras.constraints.MaxNorm(3.0)
    layers: list[keras.layers.Layer] = [keras.Input((784,))]
    if input_dropout:
        layers.append(keras.layers.Dropout(0.2))
    for units in (300, 100):
        layers += [
            keras.layers.Dense(units, activation="elu", kernel_initializer="he_normal",
                               kernel_constraint=constraint),
            keras.layers.Dropout(0.5),
        ]
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


def median_seconds(run: Callable[[], object], min_repeats: int = 3) -> float:
    """Median wall time of ``run`` after one warm-up call, repeated for about
    MIN_SECONDS_PER_CASE (at least ``min_repeats`` times)."""
    run()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    repeats = max(min_repeats, min(200, int(MIN_SECONDS_PER_CASE / max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops() -> float:
    """Best float32 GFLOP/s of a compiled square tf.matmul on this machine."""
    best = 0.0
    for size in (1024, 2048, 4096):
        a = tf.random.normal([size, size])
        b = tf.random.normal([size, size])
        matmul = tf.function(lambda a=a, b=b: tf.matmul(a, b))
        seconds = median_seconds(lambda matmul=matmul: matmul().numpy())
        best = max(best, 2 * size**3 / seconds / 1e9)
    return best


def dense_flops(layers: list[keras.layers.Layer]) -> int:
    """FLOPs per row of the Dense layers in ``layers`` (2 per multiply-add)."""
    return sum(
        2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        for layer in layers
        if isinstance(layer, keras.layers.Dense)
    )


def run_case(model: keras.Model, engine: MCEngine, tiled: Callable, batch: int,
             n_samples: int, rng: np.random.Generator) -> dict[str, float]:
    x = rng.uniform(0, 1, size=(batch, 784)).astype(np.float32)
    naive = median_seconds(
        lambda: np.stack([model(x, training=True).numpy() for _ in range(n_samples)]),
        min_repeats=2,
    )
    tiled_seconds = median_seconds(lambda: tiled(tf.constant(x), tf.constant(n_samples)).numpy())
    engine_seconds = median_seconds(lambda: engine.sample(x, n_samples))
    prefix_flops = dense_flops(engine.prefix_layers)
    suffix_flops = dense_flops(model.layers) - prefix_flops
    performed = batch * prefix_flops + batch * n_samples * suffix_flops
    return {
        "naive_ms": naive * 1e3,
        "tiled_ms": tiled_seconds * 1e3,
        "engine_ms": engine_seconds * 1e3,
        "speedup_vs_naive": naive / engine_seconds,
        "speedup_vs_tiled": tiled_seconds / engine_seconds,
        "engine_gflops": performed / engine_seconds / 1e9,
    }


def format_table(rows: list[dict]) -> str:
    header = (
        "| input dropout | B | N | naive ms | tiled ms | engine ms | x naive | x tiled "
        "| engine GFLOP/s | of peak |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {'yes' if r['input_dropout'] else 'no'} | {r['batch']} | {r['n_samples']} "
        f"| {r['naive_ms']:.2f} | {r['tiled_ms']:.3f} | {r['engine_ms']:.3f} "
        f"| {r['speedup_vs_naive']:.0f} | {r['speedup_vs_tiled']:.2f} "
        f"| {r['engine_gflops']:.1f} | {r['fraction_of_peak']:.0%} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def check_targets(rows: list[dict]) -> list[tuple[str, float, bool]]:
    def row(input_dropout: bool, batch: int, n_samples: int) -> dict:
        return next(
            r for r in rows
            if (r["input_dropout"], r["batch"], r["n_samples"]) == (input_dropout, batch, n_samples)
        )

    single = min(row(True, 1, 30)["speedup_vs_naive"], row(False, 1, 30)["speedup_vs_naive"])
    prefix = row(False, 32, 100)["speedup_vs_tiled"]
    peak = row(True, 256, 100)["fraction_of_peak"]
    return [
        ("B=1, N=30: engine / naive loop >= 150x (worse of the two models)", single,
         single >= 150),
        ("B=32, N=100, no input dropout: engine / tiled call >= 2.5x", prefix, prefix >= 2.5),
        ("B=256, N=100, input dropout: engine >= 40% of matmul peak", peak, peak >= 0.40),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.mc_engine",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/mc_engine.json"),
                        help="where to write the JSON results")
    args = parser.parse_args(argv)
    origin = provenance()  # before the run: the tree it measures
    configure_tensorflow_threads()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    peak = matmul_peak_gflops()
    print(f"TensorFlow float32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for input_dropout in (True, False):
        model = build_mlp(input_dropout)
        engine = MCEngine(model)
        tiled = tf.function(
            lambda x, n, model=model: model(tf.repeat(x, n, axis=0), training=True),
            input_signature=[tf.TensorSpec([None, 784]), tf.TensorSpec([], tf.int32)],
        )
        for batch in BATCH_SIZES:
            for n_samples in SAMPLE_COUNTS:
                result = run_case(model, engine, tiled, batch, n_samples, rng)
                result.update(input_dropout=input_dropout, batch=batch, n_samples=n_samples,
                              fraction_of_peak=result["engine_gflops"] / peak)
                rows.append(result)
                print(f"input_dropout={input_dropout} B={batch} N={n_samples}: engine "
                      f"{result['engine_ms']:.3f} ms, naive {result['naive_ms']:.1f} ms",
                      flush=True)
    print()
    print(format_table(rows))
    print()
    targets = check_targets(rows)
    for name, value, met in targets:
        print(f"{'PASS' if met else 'FAIL'}  {name}: {value:.3g}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        **origin, "tensorflow": tf.__version__,
        "matmul_peak_gflops": peak,
        "rows": rows,
        "targets": [{"target": n, "value": v, "met": m} for n, v, m in targets],
    }, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
