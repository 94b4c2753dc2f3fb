"""Compare uq-train's presets in one run: each trained on the same split, calibrated the
same way, then served and judged through HTTP by the same code.

    python -m benchmarks.models --output docs/results/models/comparison.json

For each preset (``--presets``, default cnn then mlp):

1. ``uq-train --preset P --model-name uq-preset-P`` in a subprocess, timed: training
   plus calibration, as a user runs it (the model store is BENTOML_HOME's).
2. The model served (``bentoml serve``, one worker), and through ``POST /predict``
   (requests of 64 instances, seeded): the test split at N = 10, 30, 100 and "auto"
   — accuracy, NLL, ECE and Brier of the mean probabilities, the unflagged share and
   the error among unflagged (with its 99% upper bound), the coverage and mean size of
   the prediction sets, the mean N used — and each shifted set of ``training.ood`` at
   N = 30: the share flagged and the AUROC of each served score at telling it from the
   test split.
3. Speed at N = 30, ``--rounds`` rounds: images/s of 4 closed-loop clients sending 64
   instances each to ``/predict`` for ``--duration`` seconds (a refusal counts as a
   failure, not as throughput), and the p50 of one image, one client.

Writes the JSON (headed by its command, commit, date and machine) and, beside it,
risk_coverage.png: the error among the answers kept against the share kept, at N = 30,
for each preset, ranking by the score its risk policy uses.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.admission import predict_requests
from benchmarks.load_client import concurrent, sequential
from commandline.arguments import OneLineErrorParser, fail, integer_at_least
from commandline.provenance import provenance
from loadtest.guarantees import judged
from loadtest.server import ServerError, served
from training.data import load_dataset
from training.ood import ood_sets
from uncertainty import metrics

PROG = "python -m benchmarks.models"
PRESETS = ("cnn", "mlp")
SAMPLE_COUNTS: tuple[int | str, ...] = (10, 30, 100, "auto")
SPEED_N = 30
BATCH = 64  # instances per request when judging a split (the most a request may hold)
LOAD_INSTANCES, LOAD_CLIENTS = 64, 4
SHIFTED_ROWS = 2000
SCORES = ("mutual_information", "predictive_entropy", "one_minus_confidence")


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", type=lambda text: tuple(text.split(",")), default=PRESETS,
                        help="comma-separated uq-train presets (default: cnn,mlp)")
    parser.add_argument("--rounds", type=integer_at_least(1), default=3,
                        help="rounds of each speed measurement (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each load round (default: %(default)s)")
    parser.add_argument("--output", type=Path,
                        default=Path("docs/results/models/comparison.json"))
    return parser


def train(preset: str, work: Path) -> tuple[str, float]:
    """Run uq-train for ``preset``; (the stored tag, wall seconds)."""
    name = f"uq-preset-{preset}"
    started = time.perf_counter()
    log = work / f"train-{preset}.log"
    with open(log, "w") as output:
        code = subprocess.call(
            [sys.executable, "-m", "training.train", "--preset", preset, "--model-name", name,
             "--output-dir", str(work / f"train-{preset}")],
            stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"uq-train --preset {preset} failed; see {log}")
    return f"{name}:latest", time.perf_counter() - started


def answers(client, images: np.ndarray, n_samples: int | str) -> list[dict]:
    """The service's predictions for ``images`` ``[rows, *input_shape]``, in order."""
    found = []
    for number, start in enumerate(range(0, len(images), BATCH)):
        body = {"instances": images[start : start + BATCH].tolist(), "n_samples": n_samples,
                "seed": number}
        found += answered(client, body)["predictions"]
    return found


def answered(client, body: dict, attempts: int = 20) -> dict:
    """The 200 answer of ``POST /predict`` for ``body``, waiting as a refusal's
    Retry-After says (a busy machine may refuse now and then)."""
    for _ in range(attempts):
        response = client.post("/predict", json=body)
        if response.status_code != 429:
            break
        time.sleep(float(response.headers.get("Retry-After", 1)))
    if response.status_code != 200:
        raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:200]}")
    return response.json()


def quality(found: list[dict], labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Quality and the guarantees' figures of the answers for the test split."""
    probabilities = np.array([answer["probabilities"] for answer in found])  # [rows, classes]
    return {
        "accuracy": metrics.accuracy(probabilities, labels),
        "nll": metrics.nll(probabilities, labels),
        "ece": metrics.ece(probabilities, labels),
        "brier": metrics.brier(probabilities, labels),
        "mean_n_samples": float(np.mean([answer["n_samples"] for answer in found])),
        **judged(found, labels, class_names),
    }


def scores(found: list[dict]) -> dict[str, np.ndarray]:
    """Each served uncertainty score ``[rows]``, higher meaning less sure."""
    return {
        "mutual_information": np.array([a["mutual_information"] for a in found]),
        "predictive_entropy": np.array([a["predictive_entropy"] for a in found]),
        "one_minus_confidence": np.array([1 - a["confidence"] for a in found]),
    }


def judge(url: str, dataset, shifted: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every figure of step 2 for the model served at ``url``."""
    import httpx

    with httpx.Client(base_url=url, timeout=600) as client:
        card = client.post("/metadata", json={}).json()
        names = card["class_names"]
        by_n, test_at_speed_n = [], None
        for n_samples in SAMPLE_COUNTS:
            found = answers(client, dataset.x_test, n_samples)
            by_n.append({"n_samples": n_samples, **quality(found, dataset.y_test, names)})
            print(f"  N={n_samples}: " + ", ".join(
                f"{key} {by_n[-1][key]:.4f}" for key in
                ("accuracy", "nll", "ece", "selective_error", "flagged_fraction")), flush=True)
            if n_samples == SPEED_N:
                test_at_speed_n = found
        inside = scores(test_at_speed_n)
        shifted_rows = {}
        for name, images in shifted.items():
            found = answers(client, images, SPEED_N)
            outside = scores(found)
            shifted_rows[name] = {
                **judged(found, None, names),
                "auroc": {score: metrics.ood_auroc(inside[score], outside[score])
                          for score in SCORES},
            }
            print(f"  {name}: flagged {shifted_rows[name]['flagged_fraction']:.3f}, AUROC "
                  f"{shifted_rows[name]['auroc']}", flush=True)
    errors = np.array([a["label"] for a in test_at_speed_n]) != dataset.y_test
    policy_metric = card["risk_policy"]["metric"]
    ranking = inside.get(policy_metric, inside["one_minus_confidence"])  # [rows]
    curve = metrics.risk_coverage_curve(ranking, errors)
    return {"by_n_samples": by_n, "shifted": shifted_rows, "risk_metric": policy_metric,
            "risk_coverage": {"coverage": curve.coverage.tolist()[::20],
                              "risk": curve.risk.tolist()[::20]}}


def speed(url: str, images: np.ndarray, rounds: int, seconds: float) -> dict[str, Any]:
    """Step 3: images/s under load and one image's p50, over ``rounds`` rounds."""
    port = int(url.rsplit(":", 1)[1])
    load_bodies = [body for body, _ in predict_requests(images, LOAD_INSTANCES, SPEED_N)]
    one_bodies = [json.dumps({"instances": [image.tolist()], "n_samples": SPEED_N}).encode()
                  for image in images[:100]]
    concurrent(port, "/predict", load_bodies, LOAD_CLIENTS, 3.0)  # warm the path
    loads, singles = [], []
    for _ in range(rounds):
        loads.append(concurrent(port, "/predict", load_bodies, LOAD_CLIENTS, seconds))
        singles.append(sequential(port, "/predict", one_bodies, requests=200))
    images_per_second = [row["rps"] * LOAD_INSTANCES for row in loads]
    p50s = [row["p50_ms"] for row in singles]
    print(f"  {LOAD_CLIENTS} clients x {LOAD_INSTANCES} images: "
          f"{statistics.median(images_per_second):.0f} images/s; one image p50 "
          f"{statistics.median(p50s):.2f} ms", flush=True)
    return {
        "images_per_second": statistics.median(images_per_second),
        "images_per_second_range": [min(images_per_second), max(images_per_second)],
        "failures": sum(row["failures"] for row in loads),
        "one_image_p50_ms": statistics.median(p50s),
        "one_image_p50_ms_range": [min(p50s), max(p50s)],
    }


def compare(presets: tuple[str, ...], rounds: int, seconds: float, work: Path) -> dict:
    dataset = load_dataset("fashion_mnist")
    shifted = {name: images[:SHIFTED_ROWS] for name, images in
               ood_sets(dataset, rows=SHIFTED_ROWS).items()}
    results = {}
    for preset in presets:
        print(f"{preset}: training and calibrating (uq-train --preset {preset})", flush=True)
        tag, train_seconds = train(preset, work)
        print(f"  {train_seconds / 60:.1f} min; serving {tag}", flush=True)
        with served(tag, work) as url:
            results[preset] = {"tag": tag, "train_and_calibrate_seconds": train_seconds,
                               **judge(url, dataset, shifted),
                               "speed": speed(url, dataset.x_test[:2048], rounds, seconds)}
    return {"test_rows": len(dataset.x_test), "shifted_rows": SHIFTED_ROWS,
            "speed_n_samples": SPEED_N, "load": f"{LOAD_CLIENTS} clients x {LOAD_INSTANCES} "
            "instances on /predict", "presets": results}


def at(result: dict, n_samples: int | str) -> dict:
    """The test split's figures of ``result`` at ``n_samples``."""
    return next(row for row in result["by_n_samples"] if row["n_samples"] == n_samples)


def best_auroc(result: dict, shifted: str) -> float:
    return max(result["shifted"][shifted]["auroc"].values())


def targets(presets: dict) -> list[dict]:
    """The default (cnn) preset's targets, judged against the mlp preset of the same run."""
    cnn, mlp = presets["cnn"], presets["mlp"]
    at_n = at(cnn, SPEED_N)
    kept = max(row["selective_error"] for row in cnn["by_n_samples"])
    unflagged = 1 - at_n["flagged_fraction"]  # flagged for neither error risk nor novelty
    checks = [
        (f"unflagged at N={SPEED_N} >= 0.85 (error among the answers not flagged for error "
         "risk <= 0.02)", unflagged, unflagged >= 0.85 and at_n["selective_error"] <= 0.02),
        ("error among the answers not flagged for error risk <= 0.02 at every N and auto",
         kept, kept <= 0.02),
        (f"MC accuracy at N={SPEED_N} >= 0.93", at_n["accuracy"], at_n["accuracy"] >= 0.93),
        (f"NLL at N={SPEED_N} <= 0.20", at_n["nll"], at_n["nll"] <= 0.20),
        (f"ECE at N={SPEED_N} <= 0.01", at_n["ece"], at_n["ece"] <= 0.01),
        ("set coverage >= 0.90", at_n["conformal_coverage"], at_n["conformal_coverage"] >= 0.90),
        ("mean set size < the mlp's", at_n["conformal_mean_set_size"],
         at_n["conformal_mean_set_size"] < at(mlp, SPEED_N)["conformal_mean_set_size"]),
        ("upscaled digits flagged >= 0.97", cnn["shifted"]["upscaled_digits"]["flagged_fraction"],
         cnn["shifted"]["upscaled_digits"]["flagged_fraction"] >= 0.97),
        ("inverted images: best AUROC >= the mlp's + 0.02", best_auroc(cnn, "inverted"),
         best_auroc(cnn, "inverted") >= best_auroc(mlp, "inverted") + 0.02),
        ("training and calibration <= 10 min", cnn["train_and_calibrate_seconds"] / 60,
         cnn["train_and_calibrate_seconds"] <= 600),
        (f"served images/s at N={SPEED_N} >= the mlp's", cnn["speed"]["images_per_second"],
         cnn["speed"]["images_per_second"] >= mlp["speed"]["images_per_second"]),
        ('"auto" mean N <= 12', at(cnn, "auto")["mean_n_samples"],
         at(cnn, "auto")["mean_n_samples"] <= 12),
    ]
    return [{"target": name, "value": value, "met": bool(met)} for name, value, met in checks]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for preset, result in report["presets"].items():
        curve = result["risk_coverage"]
        axis.step(curve["coverage"], curve["risk"], where="post",
                  label=f"{preset} (ranked by {result['risk_metric']})")
    axis.axhline(0.02, color="grey", linestyle=":", label="target error 0.02")
    axis.set(xlabel="share of answers kept (not flagged)", ylabel="error among those kept",
             title=f"Risk-coverage on the test split, N={SPEED_N}", xlim=(0, 1))
    axis.set_ylim(0, 0.12)
    axis.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    origin = provenance(None if argv is None else [PROG, *argv])  # before the run
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown or args.duration <= 0:
        return fail(PROG, f"--presets takes {', '.join(PRESETS)} (got {', '.join(unknown)})"
                    if unknown else "--duration must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="uq-bench-models-"))  # logs and uq-train's reports
    print(f"logs in {work}", flush=True)
    try:
        report = compare(args.presets, args.rounds, args.duration, work)
    except (RuntimeError, ServerError) as error:
        return fail(PROG, str(error))
    if {"cnn", "mlp"} <= set(report["presets"]):
        report["targets"] = targets(report["presets"])
        for target in report["targets"]:
            print(f"{'PASS' if target['met'] else 'FAIL'}  {target['target']}: "
                  f"{target['value']:.4g}")
    args.output.write_text(json.dumps({**origin, **report}, indent=2))
    plot(report, args.output.parent / "risk_coverage.png")
    print(f"wrote {args.output} and risk_coverage.png beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
