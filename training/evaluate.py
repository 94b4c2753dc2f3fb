"""uq-evaluate: what each extra MC sample buys, and how well the uncertainty
scores tell shifted inputs apart.

    uq-evaluate --model uq-classifier:latest --samples 1,5,30 --output-dir reports/evaluate

On the test split of the model's own dataset, for each N: accuracy, NLL,
Brier, ECE; AURC, selective error and flagged fraction at the card's risk
threshold; coverage and mean size of the conformal sets; and the MC estimator
error, the mean total-variation distance between the N-sample mean
probabilities and a reference with many samples. The deterministic
(weight-scaling) prediction is the baseline. Then the AUROC of every
uncertainty score at telling test images from shifted or out-of-distribution
inputs (training.ood). Writes evaluation.json and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.cli import OneLineErrorParser, fail, sample_counts
from training.data import DatasetError, load_dataset
from training.evaluation import (
    ACCURACY_TOLERANCE,
    NLL_TOLERANCE,
    classification_metrics,
    mc_summary,
    plateau,
    risk_coverage_curves,
    selective_metrics,
    total_variation,
)

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = (1, 2, 5, 10, 20, 30, 50, 100)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="uq-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--samples", type=sample_counts, default=DEFAULT_SAMPLES,
                        help="comma-separated N to evaluate (default: 1,2,5,10,20,30,50,100)")
    parser.add_argument("--output-dir", type=Path, default=Path("reports/evaluate"),
                        help="where evaluation.json and the plots go (default: %(default)s)")
    parser.add_argument("--reference-samples", type=int, default=1000,
                        help="N of the reference for the estimator error (default: %(default)s)")
    parser.add_argument("--reference-rows", type=int, default=2000,
                        help="test rows the reference covers (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--generator", help="a GAN generator tag: its images join the report "
                        "as a shifted set (flagged fraction and uncertainty against real ones)")
    parser.add_argument("--generated-images", type=int, default=2000,
                        help="how many images the generator makes (default: %(default)s)")
    return parser


def evaluate(model, card, dataset, samples, reference_samples, reference_rows, seed) -> dict:
    """Every figure of evaluation.json, plus the arrays the plots need under "_plots"."""
    from training.ood import ood_sets
    from uncertainty import metrics
    from uncertainty.engine import MCEngine
    from uncertainty.risk import risk_scores

    engine = MCEngine(model)
    x_test, y_test = dataset.x_test, dataset.y_test
    reference_rows = min(reference_rows, len(x_test))
    logger.info("reference: %d samples on %d test rows", reference_samples, reference_rows)
    reference = mc_summary(engine, x_test[:reference_rows], reference_samples, seed).mean
    by_n_samples, summaries = [], {}
    for n_samples in samples:
        started = time.perf_counter()
        summary = mc_summary(engine, x_test, n_samples, seed + n_samples)
        seconds = time.perf_counter() - started
        summaries[n_samples] = summary
        row = {
            "n_samples": n_samples,
            **classification_metrics(summary.mean, y_test),
            **selective_metrics(summary, y_test, card.calibration_for(n_samples)),
            "estimator_error": float(
                total_variation(summary.mean[:reference_rows], reference).mean()
            ),
            "engine_seconds_per_1000_rows": seconds / len(x_test) * 1000,
        }
        by_n_samples.append(row)
        logger.info("N=%d: accuracy %.4f, NLL %.4f, ECE %.4f, estimator error %.4f", n_samples,
                    row["accuracy"], row["nll"], row["ece"], row["estimator_error"])
    deterministic = model.predict(x_test, batch_size=1024, verbose=0)
    ood_n = card.default_n_samples
    test_summary = summaries.get(ood_n) or mc_summary(engine, x_test, ood_n, seed + ood_n)
    inside = risk_scores(test_summary)
    ood = {}
    for name, inputs in ood_sets(dataset, rows=len(x_test), seed=seed).items():
        outside = risk_scores(mc_summary(engine, inputs, ood_n, seed + 7))
        ood[name] = {score: metrics.ood_auroc(inside[score], outside[score]) for score in inside}
    return {
        "model_dataset": dataset.name,
        "test_rows": len(x_test),
        "by_n_samples": by_n_samples,
        "deterministic": classification_metrics(deterministic, y_test),
        "reference": {"n_samples": reference_samples, "rows": reference_rows},
        "plateau_n_samples": plateau(by_n_samples),
        "tolerances": {"accuracy": ACCURACY_TOLERANCE, "nll": NLL_TOLERANCE},
        "ood_n_samples": ood_n,
        "ood_auroc": ood,
        "_plots": {
            "deterministic": deterministic,
            "test_summary": test_summary,
            "curves": risk_coverage_curves(test_summary, y_test),
        },
    }


def generated_report(engine, card, generator, generator_card, generator_tag: str,
                     test_summary, count: int, seed: int) -> dict[str, Any]:
    """The classifier on generated images against real test images: flagged
    fraction, mean uncertainty scores and the AUROC of telling them apart."""
    from artifacts.generation import generated_images
    from uncertainty import metrics
    from uncertainty.calibration import decide
    from uncertainty.risk import risk_scores

    images = generated_images(generator, generator_card, count, seed)  # [count, *input_shape]
    generated = mc_summary(engine, images, card.default_n_samples, seed)
    real_scores, fake_scores = risk_scores(test_summary), risk_scores(generated)
    calibration = card.calibration_for(card.default_n_samples)
    return {
        "generator": generator_tag,
        "images": count,
        "flagged_fraction": {
            "generated": float(decide(generated, calibration).flagged.mean()),
            "test": float(decide(test_summary, calibration).flagged.mean()),
        },
        "mean_scores": {name: {"generated": float(fake_scores[name].mean()),
                               "test": float(real_scores[name].mean())}
                        for name in real_scores},
        "auroc": {name: metrics.ood_auroc(real_scores[name], fake_scores[name])
                  for name in real_scores},
    }


def write_plots(report: dict[str, Any], card, labels: np.ndarray, output_dir: Path) -> None:
    from training import plots
    from uncertainty.metrics import reliability_bins

    rows = report["by_n_samples"]
    plots.lines_against(
        [row["n_samples"] for row in rows],
        {name: [row[name] for row in rows]
         for name in ("accuracy", "nll", "ece", "estimator_error", "flagged_fraction")},
        output_dir / "quality_vs_samples.png", xlabel="MC samples N",
        title=f"Quality against N ({report['model']})", log_x=True,
    )
    extra = report["_plots"]
    plots.reliability_diagram(
        {"deterministic": reliability_bins(extra["deterministic"], labels),
         f"MC dropout (N={report['ood_n_samples']})":
             reliability_bins(extra["test_summary"].mean, labels)},
        output_dir / "reliability.png",
    )
    at_default = next((r for r in rows if r["n_samples"] == report["ood_n_samples"]), None)
    plots.risk_coverage_plot(
        extra["curves"], output_dir / "risk_coverage.png",
        operating_point=(at_default["coverage"], at_default["selective_error"])
        if at_default else None,
    )


def summary_table(report: dict[str, Any]) -> str:
    lines = [f"{'N':>5} {'accuracy':>9} {'NLL':>7} {'Brier':>7} {'ECE':>7} {'AURC':>7} "
             f"{'flagged':>8} {'sel.err':>8} {'set cov':>8} {'est.err':>8}"]
    for row in report["by_n_samples"]:
        lines.append(
            f"{row['n_samples']:>5} {row['accuracy']:>9.4f} {row['nll']:>7.4f} "
            f"{row['brier']:>7.4f} {row['ece']:>7.4f} {row['aurc']:>7.4f} "
            f"{row['flagged_fraction']:>8.3f} {row['selective_error']:>8.4f} "
            f"{row['conformal_coverage']:>8.3f} {row['estimator_error']:>8.4f}"
        )
    deterministic = report["deterministic"]
    lines.append(f"{'det.':>5} {deterministic['accuracy']:>9.4f} {deterministic['nll']:>7.4f} "
                 f"{deterministic['brier']:>7.4f} {deterministic['ece']:>7.4f}")
    lines.append(f"accuracy and NLL stop improving at N={report['plateau_n_samples']} "
                 f"(within {ACCURACY_TOLERANCE:.1%} and {NLL_TOLERANCE} of the best)")
    for name, aurocs in report["ood_auroc"].items():
        best = max(aurocs, key=aurocs.get)
        lines.append(f"OOD {name}: best score {best} AUROC {aurocs[best]:.3f} ("
                     + ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items()) + ")")
    if "generated" in report:
        generated = report["generated"]
        flagged = generated["flagged_fraction"]
        lines.append(f"generated by {generated['generator']}: {flagged['generated']:.1%} flagged "
                     f"(real test images: {flagged['test']:.1%}); mutual information "
                     f"{generated['mean_scores']['mutual_information']['generated']:.3f} against "
                     f"{generated['mean_scores']['mutual_information']['test']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if min(args.reference_samples, args.reference_rows, args.generated_images) < 1:
        return fail("uq-evaluate", "--reference-samples, --reference-rows and --generated-images "
                    "must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import bentoml

    from artifacts.store import load_classifier

    try:
        model_ref = bentoml.models.get(args.model)
    except bentoml.exceptions.NotFound:
        return fail("uq-evaluate", f"model {args.model!r} is not in the store "
                    "('bentoml models list' shows what is)")
    model, card, tag = load_classifier(model_ref)
    training = card.training
    try:
        dataset = load_dataset(card.dataset, training.get("validation_fraction", 0.1),
                               training.get("seed", 0))
    except DatasetError as error:
        return fail("uq-evaluate", str(error))
    if args.generator:
        from artifacts.store import load_generator

        try:
            generator, generator_card, generator_tag = load_generator(args.generator)
            generator_card.check_fits(generator_tag, card.input_shape, card.value_range)
        except (bentoml.exceptions.NotFound, ValueError) as error:
            return fail("uq-evaluate", str(error))
    report = {"model": tag, **evaluate(model, card, dataset, args.samples,
                                       args.reference_samples, args.reference_rows, args.seed)}
    if args.generator:
        from uncertainty.engine import MCEngine

        report["generated"] = generated_report(
            MCEngine(model), card, generator, generator_card, generator_tag,
            report["_plots"]["test_summary"], args.generated_images, args.seed,
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_plots(report, card, dataset.y_test, args.output_dir)
    del report["_plots"]
    (args.output_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    print(summary_table(report))
    print(f"wrote {args.output_dir / 'evaluation.json'} and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
