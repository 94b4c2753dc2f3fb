"""uq-evaluate: what each extra MC sample buys, whether the card's guarantees hold
at every N, and how well the uncertainty scores tell shifted inputs apart.

    uq-evaluate --model uq-classifier:latest --samples 1,5,30 --output-dir reports/evaluate

Every figure comes from one draw per input row of M samples, the largest N
needed, seen at each N through the same draws (common random numbers), so that
differences between N are not Monte Carlo noise of separate draws: an N-sample
prediction is the first N samples; accuracy and NLL are expected over the
floor(M / N) disjoint N-sample groups, which leaves little Monte Carlo noise in
them at small N.

Quality, on the test split of the model's own dataset, for each N of
``--samples`` and the card's default N: accuracy, NLL, Brier, ECE; AURC, selective
error and flagged fraction under the calibration a request for N uses; coverage
and mean size of the conformal sets; the MC estimator error (the mean
total-variation distance between the N-sample mean probabilities and an
independent reference with many samples); and paired-bootstrap intervals of the
accuracy shortfall and NLL excess to the best N, from which the N where quality
stops improving follows (training.evaluation.near_best). The deterministic
(weight-scaling) prediction is the baseline.

Guarantees, at every calibrated N of the card and at N off the grid (which use
the calibration of the largest calibrated N at or below): the error among
predictions not flagged for error risk and its upper bound against the target,
conformal coverage against 1 - alpha, the share of test rows that novelty alone
flags (and of those flagged as novel at all) against the stated false-alarm rate,
and the flagged fraction of each shifted set, by reason (training.ood, and
generated images with ``--generator``).

With a card calibrated for ``n_samples: "auto"``, an "auto" row beside the fixed N:
the adaptive procedure as the service runs it, the mean and distribution of the N it
used, its quality paired against every N, and its guarantees (training.evaluate_auto).

Then the AUROC of every uncertainty score at telling test images from each shifted
set at the default N. Writes evaluation.json (headed by the command, commit, date and
machine that measured it) and PNG plots. With ``--drift-replay``,
the test split and then a shifted set stream through the service's drift detector
(training.drift_replay): drift_replay.png and "drift_replay" in evaluation.json.
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

from artifacts.generation import generated_images
from artifacts.store import load_classifier, load_generator
from commandline.arguments import OneLineErrorParser, fail, sample_counts
from commandline.provenance import provenance
from training import evaluate_auto, plots
from training.data import DatasetError, load_dataset
from training.drift_replay import replay
from training.evaluation import (
    ACCURACY_TOLERANCE,
    BOOTSTRAP_RESAMPLES,
    INTERVAL_LEVEL,
    NLL_TOLERANCE,
    classification_metrics,
    flag_fractions,
    guarantee_figures,
    mc_summary,
    near_best,
    nested_mc_draw,
    plateau,
    quality_noise,
    risk_coverage_curves,
    selective_metrics,
    total_variation,
)
from training.ood import ood_sets
from training.plots import Panel, marked_against_samples
from uncertainty import metrics
from uncertainty.calibration import decide
from uncertainty.risk import RISK_DELTA, risk_scores

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = (1, 2, 5, 10, 20, 30, 50, 100)
DEFAULT_OFF_GRID_SAMPLES = (3, 15, 40, 75, 200)
#: Seeds of independent draws (test split, reference, each shifted set) lie this far apart.
SEED_STRIDE = 10**6


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="uq-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="uq-classifier:latest", help="classifier tag")
    parser.add_argument("--samples", type=sample_counts, default=DEFAULT_SAMPLES,
                        help="comma-separated N to measure quality at, beside the card's "
                        "default N (default: 1,2,5,10,20,30,50,100)")
    parser.add_argument("--off-grid-samples", type=sample_counts,
                        default=DEFAULT_OFF_GRID_SAMPLES,
                        help="comma-separated N off the card's calibration grid to measure "
                        "the guarantees at, beside every calibrated N (default: 3,15,40,75,200)")
    parser.add_argument("--output-dir", type=Path, default=Path("reports/evaluate"),
                        help="where evaluation.json and the plots go (default: %(default)s)")
    parser.add_argument("--reference-samples", type=int, default=1000,
                        help="N of the reference for the estimator error (default: %(default)s)")
    parser.add_argument("--reference-rows", type=int, default=2000,
                        help="test rows the reference covers (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the MC draws (default: %(default)s)")
    parser.add_argument("--generator", help="a GAN generator tag: its images join the report "
                        "as a shifted set (flagged fraction and uncertainty against real ones)")
    parser.add_argument("--generated-images", type=int, default=2000,
                        help="how many images the generator makes (default: %(default)s)")
    parser.add_argument("--drift-replay", action="store_true",
                        help="stream the test split, then a shifted set, through the drift "
                        "detector at the default N and plot it (drift_replay.png)")
    return parser


def evaluate(model, card, dataset, *, samples, off_grid_samples, reference_samples,
             reference_rows, seed, generated=None) -> dict:
    """Every figure of evaluation.json, plus the arrays the plots need under "_plots".
    ``generated``: (generator tag, its images ``[count, *input_shape]``), a shifted set."""
    from uncertainty.mc import MCEngine  # imports TensorFlow, once main has quieted its logs

    engine = MCEngine(model)
    x_test, y_test = dataset.x_test, dataset.y_test
    default_n = card.default_n_samples
    quality_counts = sorted({*samples, default_n})
    guarantee_counts = sorted({*card.calibrated_n_samples, *off_grid_samples})
    test_draw = draw(engine, "test split", x_test,
                     sorted({*quality_counts, *guarantee_counts}), seed, labels=y_test)
    test = test_draw.summaries
    shifted_inputs = ood_sets(dataset, rows=len(x_test), seed=seed)
    if generated is not None:
        generator_tag, shifted_inputs["generated"] = generated
    shifted = {name: draw(engine, name, inputs, guarantee_counts,
                          seed + index * SEED_STRIDE).summaries
               for index, (name, inputs) in enumerate(shifted_inputs.items(), start=2)}
    reference_rows = min(reference_rows, len(x_test))
    logger.info("reference: %d samples on %d test rows", reference_samples, reference_rows)
    reference = mc_summary(engine, x_test[:reference_rows], reference_samples,
                           seed + SEED_STRIDE).mean  # [reference_rows, classes]
    by_n_samples, noise = quality_rows(card, test_draw, quality_counts, y_test, reference)
    deterministic = model.predict(x_test, batch_size=1024, verbose=0)
    report = {
        "model_dataset": dataset.name,
        "test_rows": len(x_test),
        "by_n_samples": by_n_samples,
        "deterministic": classification_metrics(deterministic, y_test),
        "reference": {"n_samples": reference_samples, "rows": reference_rows},
        "plateau_n_samples": plateau(by_n_samples),
        "tolerances": {"accuracy": ACCURACY_TOLERANCE, "nll": NLL_TOLERANCE},
        "quality_noise": {
            "method": "accuracy and NLL expected over the disjoint N-sample groups of one "
                      "draw per test row; paired bootstrap over test rows",
            "draw_n_samples": max(test), "resamples": BOOTSTRAP_RESAMPLES,
            "level": INTERVAL_LEVEL,
            "best_accuracy_n_samples": noise.best_accuracy_n_samples,
            "best_nll_n_samples": noise.best_nll_n_samples,
        },
        "guarantees": guarantee_rows(card, guarantee_counts, test, y_test, shifted),
        "ood_n_samples": default_n,
        "ood_auroc": {name: ood_aurocs(test[default_n], shifted[name][default_n])
                      for name in shifted if name != "generated"},
        "_plots": {
            "deterministic": deterministic,
            "test_summary": test[default_n],
            "curves": risk_coverage_curves(test[default_n], y_test),
            "shifted_summaries": {name: summaries[default_n]
                                  for name, summaries in shifted.items() if name != "generated"},
        },
    }
    if generated is not None:
        report["generated"] = generated_report(card, generator_tag, test[default_n],
                                               shifted["generated"][default_n])
    auto = evaluate_auto.auto_report(engine, card, x_test, y_test,
                       {n: test_draw.quality[n] for n in quality_counts}, reference,
                       shifted_inputs, seed, SEED_STRIDE)
    if auto is not None:  # n_samples "auto", when the card is calibrated for it
        report["auto"] = auto
    return report


def draw(engine, name: str, x: np.ndarray, counts: list[int], seed: int,
         labels: np.ndarray | None = None):
    """training.evaluation.nested_mc_draw, logged."""
    started = time.perf_counter()
    nested = nested_mc_draw(engine, x, counts, seed, labels)
    logger.info("%s: %d rows x %d samples, seen at N = %s, in %.1f s", name, len(x),
                max(counts), ",".join(map(str, counts)), time.perf_counter() - started)
    return nested


def quality_rows(card, test, counts: list[int], labels: np.ndarray,
                 reference: np.ndarray) -> tuple[list[dict[str, Any]], Any]:
    """One by_n_samples row per N of ``counts`` (ascending) from the test split's
    NestedDraw ``test``: accuracy and NLL expected of an N-sample prediction, with
    the intervals of their distance to the best N; the other figures of one
    N-sample prediction per row (the first N samples). And the QualityNoise."""
    noise = quality_noise({n: test.quality[n] for n in counts})
    rows = []
    for n_samples in counts:
        summary = test.summaries[n_samples]
        row = {
            "n_samples": n_samples,
            **classification_metrics(summary.mean, labels),
            **noise.by_n_samples[n_samples],  # expected accuracy and NLL replace the above
            **selective_metrics(summary, labels, card.calibration_for(n_samples)),
            "estimator_error": float(
                total_variation(summary.mean[: len(reference)], reference).mean()
            ),
        }
        rows.append(row)
        logger.info("N=%d: accuracy %.4f, NLL %.4f, ECE %.4f, estimator error %.4f", n_samples,
                    row["accuracy"], row["nll"], row["ece"], row["estimator_error"])
    return rows, noise


def guarantee_rows(card, counts: list[int], test: dict, labels: np.ndarray,
                   shifted: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per N of ``counts``: what the calibration a request for N uses does on
    the test split (N -> summary in ``test``) and on each shifted set."""
    rows = []
    for n_samples in counts:
        calibration = card.calibration_for(n_samples)
        row = {
            "n_samples": n_samples,
            "calibrated": n_samples in card.calibrated_n_samples,
            "calibrated_n_samples": calibration.n_samples,
            **guarantee_figures(test[n_samples], labels, calibration, card.conformal_alpha),
            "shifted": {name: flag_fractions(summaries[n_samples], calibration)
                        for name, summaries in shifted.items()},
        }
        rows.append(row)
        logger.info("guarantees at N=%d: selective error %.4f (bound %.4f, target %.4f), "
                    "set coverage %.3f, novelty false alarms %.3f", n_samples,
                    row["selective_error"], row["selective_error_upper_bound"],
                    row["target_error"], row["conformal_coverage"],
                    row["novelty_false_alarm_rate"])
    return rows


def ood_aurocs(inside, outside) -> dict[str, float]:
    """Per uncertainty score: the AUROC of telling ``outside`` rows from ``inside`` ones."""
    inside_scores, outside_scores = risk_scores(inside), risk_scores(outside)
    return {name: metrics.ood_auroc(inside_scores[name], outside_scores[name])
            for name in inside_scores}


def generated_report(card, generator_tag: str, test_summary,
                     generated_summary) -> dict[str, Any]:
    """The classifier on generated images against real test images at the default N:
    flagged fraction, mean uncertainty scores and the AUROC of telling them apart."""
    real_scores, fake_scores = risk_scores(test_summary), risk_scores(generated_summary)
    calibration = card.calibration_for(card.default_n_samples)
    return {
        "generator": generator_tag,
        "images": len(generated_summary.label),
        "flagged_fraction": {
            "generated": float(decide(generated_summary, calibration).flagged.mean()),
            "test": float(decide(test_summary, calibration).flagged.mean()),
        },
        "mean_scores": {name: {"generated": float(fake_scores[name].mean()),
                               "test": float(real_scores[name].mean())}
                        for name in real_scores},
        "auroc": ood_aurocs(test_summary, generated_summary),
    }


def write_plots(report: dict[str, Any], labels: np.ndarray, output_dir: Path) -> None:
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
        {"deterministic": metrics.reliability_bins(extra["deterministic"], labels),
         f"MC dropout (N={report['ood_n_samples']})":
             metrics.reliability_bins(extra["test_summary"].mean, labels)},
        output_dir / "reliability.png",
    )
    at_default = next(r for r in rows if r["n_samples"] == report["ood_n_samples"])
    plots.risk_coverage_plot(
        extra["curves"], output_dir / "risk_coverage.png",
        operating_point=(at_default["coverage"], at_default["selective_error"]),
    )
    write_guarantees_plot(report, output_dir / "guarantees_vs_samples.png")
    if "auto" in report:
        evaluate_auto.write_plot(report, output_dir / "auto_vs_fixed.png")


def write_guarantees_plot(report: dict[str, Any], path: Path) -> None:
    """The guarantee rows against N, each promise beside its measurement."""
    rows = report["guarantees"]

    def column(name: str) -> list[float]:
        return [row[name] for row in rows]

    shifted = {name: [row["shifted"][name]["flagged_fraction"] for row in rows]
               for name in rows[0]["shifted"]}
    marked_against_samples(
        column("n_samples"), column("calibrated"),
        [Panel("error among not flagged",
               {"selective error": column("selective_error"),
                "upper bound": column("selective_error_upper_bound")},
               {"target": column("target_error")}),
         Panel("conformal coverage", {"coverage": column("conformal_coverage")},
               {"1 - alpha": column("conformal_coverage_target")}),
         Panel("novelty on the test split",
               {"false alarms (novelty alone)": column("novelty_false_alarm_rate"),
                "flagged as novel": column("novelty_fraction")},
               {"stated rate": column("novelty_false_alarm_target")}),
         Panel("flagged fraction, shifted sets", shifted)],
        path, title=f"Guarantees against N ({report['model']})",
    )


def summary_table(report: dict[str, Any]) -> str:
    lines = [f"{'N':>5} {'accuracy':>9} {'NLL':>7} {'Brier':>7} {'ECE':>7} {'AURC':>7} "
             f"{'flagged':>8} {'sel.err':>8} {'set cov':>8} {'est.err':>8} "
             f"{'acc. shortfall (95%)':>22} {'NLL excess (95%)':>22}"]
    for row in report["by_n_samples"]:
        marker = " near best" if near_best(row, report["by_n_samples"]) else ""
        lines.append(
            f"{row['n_samples']:>5} {row['accuracy']:>9.4f} {row['nll']:>7.4f} "
            f"{row['brier']:>7.4f} {row['ece']:>7.4f} {row['aurc']:>7.4f} "
            f"{row['flagged_fraction']:>8.3f} {row['selective_error']:>8.4f} "
            f"{row['conformal_coverage']:>8.3f} {row['estimator_error']:>8.4f} "
            f"{_interval(row['accuracy_shortfall_interval']):>22} "
            f"{_interval(row['nll_excess_interval']):>22}{marker}"
        )
    if "auto" in report:
        lines.append(evaluate_auto.table_line(report["auto"],
                                              near_best(report["auto"], report["by_n_samples"])))
    deterministic = report["deterministic"]
    lines.append(f"{'det.':>5} {deterministic['accuracy']:>9.4f} {deterministic['nll']:>7.4f} "
                 f"{deterministic['brier']:>7.4f} {deterministic['ece']:>7.4f}")
    noise = report["quality_noise"]
    lines.append(f"accuracy and NLL stop improving at N={report['plateau_n_samples']}: the "
                 f"smallest N not shown ({noise['level']:.0%} paired bootstrap) to fall more "
                 f"than {ACCURACY_TOLERANCE:.1%} accuracy short of N="
                 f"{noise['best_accuracy_n_samples']} or {NLL_TOLERANCE} NLL above N="
                 f"{noise['best_nll_n_samples']}")
    lines += guarantees_table(report["guarantees"])
    if "auto" in report:
        lines += evaluate_auto.summary_lines(report["auto"])
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


def guarantees_table(rows: list[dict[str, Any]]) -> list[str]:
    """Promise against measurement per N; "!" where the test rows show it broken."""
    shifted = list(rows[0]["shifted"])
    lines = ["guarantees on the test split (* off the grid: the calibration of cal.N applies; "
             f"! the rows show the promise broken at {1 - RISK_DELTA:.0%} confidence)",
             f"{'N':>6} {'cal.N':>5} {'sel.err':>8} {'bound':>7} {'target':>7} "
             f"{'set cov':>8} {'1-alpha':>7} {'nov.FA':>7} {'stated':>7}  flagged: "
             + " ".join(shifted)]
    for row in rows:
        holds = row["holds"]
        flagged = " ".join(f"{row['shifted'][name]['flagged_fraction']:>{len(name)}.3f}"
                           for name in shifted)
        lines.append(
            f"{row['n_samples']:>5}{' ' if row['calibrated'] else '*'} "
            f"{row['calibrated_n_samples']:>5} "
            f"{row['selective_error']:>7.4f}{_broken(holds['selective_error'])} "
            f"{row['selective_error_upper_bound']:>7.4f} {row['target_error']:>7.4f} "
            f"{row['conformal_coverage']:>7.3f}{_broken(holds['conformal_coverage'])} "
            f"{row['conformal_coverage_target']:>7.3f} "
            f"{row['novelty_false_alarm_rate']:>6.3f}{_broken(holds['novelty_false_alarms'])} "
            f"{row['novelty_false_alarm_target']:>7.3f}           {flagged}"
        )
    return lines


def _interval(ends: list[float]) -> str:
    return f"[{ends[0]:+.4f}, {ends[1]:+.4f}]"


def _broken(holds: bool) -> str:
    return " " if holds else "!"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # before the run: the tree it measures
    origin = provenance(None if argv is None else ["uq-evaluate", *argv])
    if min(args.reference_samples, args.reference_rows, args.generated_images) < 1:
        return fail("uq-evaluate", "--reference-samples, --reference-rows and --generated-images "
                    "must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import bentoml

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
    generated = None
    if args.generator:
        try:
            generator, generator_card, generator_tag = load_generator(args.generator)
            generator_card.check_fits(generator_tag, card.input_shape, card.value_range)
        except (bentoml.exceptions.NotFound, ValueError) as error:
            return fail("uq-evaluate", str(error))
        generated = (generator_tag, generated_images(generator, generator_card,
                                                     args.generated_images, args.seed))
    report = {"model": tag, **evaluate(
        model, card, dataset, samples=args.samples, off_grid_samples=args.off_grid_samples,
        reference_samples=args.reference_samples, reference_rows=args.reference_rows,
        seed=args.seed, generated=generated,
    )}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_plots(report, dataset.y_test, args.output_dir)
    if args.drift_replay:
        try:
            report["drift_replay"] = replay(card, report["_plots"]["test_summary"],
                                            report["_plots"]["shifted_summaries"],
                                            args.output_dir, args.seed)
        except ValueError as error:
            return fail("uq-evaluate", str(error))
    del report["_plots"]
    report = {**origin, **report}
    (args.output_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    print(summary_table(report))
    if "drift_replay" in report:
        replayed = report["drift_replay"]
        print(f"drift replay at N={replayed['n_samples']}: {replayed['false_alarms']} alarms "
              f"over {replayed['test_rows']} test predictions; {replayed['shifted_set']}: alarm "
              f"after {replayed['detection_delay']} predictions")
    print(f"wrote {args.output_dir / 'evaluation.json'} and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
