"""Check the service's promises through HTTP, at every calibrated N and a few off the grid.

    python -m loadtest.guarantees --serve --model uq-classifier:latest \\
        --output docs/results/http_guarantees.json
    python -m loadtest.guarantees --host http://127.0.0.1:3000 --off-grid 3,15,40

For each N, the model's test split and its shifted sets (training.ood) go to
``POST /predict`` in requests of ``--batch`` instances, seeded, and the answers
are judged as the README states the promises: the error among predictions not
flagged for error risk against the card's target (with its Clopper-Pearson
bound), conformal coverage against 1 - alpha, the novelty false-alarm rate on
the test split against the stated rate, and the flagged fraction of each
shifted set (with what novelty adds). Only loopback hosts are accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from commandline.arguments import OneLineErrorParser, fail, sample_counts
from commandline.provenance import provenance
from loadtest.server import ServerError, add_service_options, against_service
from training.data import load_dataset
from training.evaluation import decision_metrics
from training.ood import ood_sets

PROG = "python -m loadtest.guarantees"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_service_options(parser)
    parser.add_argument("--off-grid", type=sample_counts, default=(3, 15, 40, 75, 200),
                        help="N off the calibration grid to check too (default: 3,15,40,75,200)")
    parser.add_argument("--shifted-rows", type=int, default=2000,
                        help="rows of each shifted set (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64,
                        help="instances per request, at most the service's UQ_MAX_INSTANCES "
                        "(default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("reports/http_guarantees.json"))
    return parser


def predictions(client, images: np.ndarray, n_samples: int, batch: int) -> list[dict]:
    """The service's predictions for ``images`` ``[rows, *input_shape]``, in order."""
    answers = []
    for number, start in enumerate(range(0, len(images), batch)):
        body = {"instances": images[start : start + batch].tolist(), "n_samples": n_samples,
                "seed": number}
        response = client.post("/predict", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:200]}")
        answers += response.json()["predictions"]
    return answers


def judged(answers: list[dict], labels: np.ndarray | None, class_names: list[str]) -> dict:
    """The guarantees' figures of ``answers``; without labels, only how often each
    reason flags."""
    error_risk = np.array(["error_risk" in a["risk"]["reasons"] for a in answers])
    novel = np.array(["novelty" in a["risk"]["reasons"] for a in answers])
    if labels is None:
        return {"flagged_fraction": float((error_risk | novel).mean()),
                "error_risk_fraction": float(error_risk.mean()),
                "novelty_fraction": float(novel.mean())}
    errors = np.array([a["label"] for a in answers]) != labels
    covered = np.array([class_names[y] in a["prediction_set"] for a, y in zip(
        answers, labels, strict=True)])
    set_sizes = np.array([len(a["prediction_set"]) for a in answers])
    return decision_metrics(errors, error_risk, novel, covered, set_sizes)


def check(host: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=host, timeout=300) as client:
        card = client.post("/metadata", json={}).json()
        dataset = load_dataset(card["dataset"], card["training"].get("validation_fraction", 0.1),
                               card["training"].get("seed", 0))
        shifted = ood_sets(dataset, rows=args.shifted_rows)
        target = card["risk_policy"]["target_error"]
        rows = []
        for n_samples in sorted({*card["calibrated_n_samples"], *args.off_grid}):
            test = predictions(client, dataset.x_test, n_samples, args.batch)
            row = {"n_samples": n_samples,
                   "calibrated": n_samples in card["calibrated_n_samples"],
                   "calibrated_n_samples": test[0]["risk"]["calibrated_n_samples"],
                   "novelty_calibrated_n_samples":
                       test[0]["risk"]["novelty"]["calibrated_n_samples"],
                   **judged(test, dataset.y_test, card["class_names"]),
                   "shifted": {name: judged(predictions(client, images, n_samples, args.batch),
                                            None, card["class_names"])
                               for name, images in shifted.items()}}
            rows.append(row)
            print(f"N={n_samples:>4}: error among unflagged {row['selective_error']:.4f} "
                  f"(bound {row['selective_error_upper_bound']:.4f}, target {target}), "
                  f"coverage {row['conformal_coverage']:.3f}, novelty adds "
                  f"{row['novelty_added_fraction']:.3f}, flagged {row['flagged_fraction']:.3f}; "
                  + ", ".join(f"{name} flagged {figures['flagged_fraction']:.3f}"
                              for name, figures in row["shifted"].items()), flush=True)
    return {"model": card["model"], "target_error": target,
            "conformal_alpha": card["conformal_alpha"],
            "novelty_false_alarm_rate": card["calibrations"][0]["novelty_policy"][
                "false_alarm_rate"],
            "test_rows": len(dataset.x_test), "shifted_rows": args.shifted_rows, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table, one row per N (off-grid N in italics)."""
    shifted = list(report["rows"][0]["shifted"])
    header = ["N", "calibration N", "novelty's N", "error among unflagged", "99% bound",
              "set coverage", "novelty adds", "flagged", *(f"{name} flagged" for name in shifted)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        n = str(row["n_samples"]) if row["calibrated"] else f"*{row['n_samples']}*"
        cells = [n, str(row["calibrated_n_samples"]), str(row["novelty_calibrated_n_samples"]),
                 f"{row['selective_error']:.4f}",
                 f"{row['selective_error_upper_bound']:.4f}", f"{row['conformal_coverage']:.3f}",
                 f"{row['novelty_added_fraction']:.3f}", f"{row['flagged_fraction']:.3f}",
                 *(f"{row['shifted'][name]['flagged_fraction']:.3f}" for name in shifted)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # before the run: the tree it measures
    origin = provenance(None if argv is None else [PROG, *argv])
    try:
        report = against_service(args.host, args.model, args.output.parent,
                                 lambda url: check(url, args))
    except (ServerError, RuntimeError, ValueError) as error:
        return fail(PROG, str(error))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {**origin, **report}
    args.output.write_text(json.dumps(report, indent=2))
    args.output.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
