import json
import re

import numpy as np
import pytest

from artifacts.store import load_classifier
from training import evaluation as evaluation_module
from training.data import load_dataset
from training.evaluate import main
from training.evaluation import (
    grouped_quality,
    mc_samples,
    near_best,
    nested_mc_draw,
    plateau,
    quality_noise,
    total_variation,
)
from training.ood import ood_sets, upscaled_digits
from uncertainty.calibration import DEFAULT_NOVELTY_FALSE_ALARM_RATE
from uncertainty.mc import MCEngine
from uncertainty.summary import summarize

CALIBRATED = [1, 5, 8, 10, 20, 30, 50, 100]  # the classifier_tag card's grid
OFF_GRID = [3, 15, 40, 75, 200]  # uq-evaluate's default


def test_uq_evaluate_end_to_end(classifier_tag, tmp_path, capsys):
    argv = ["--model", classifier_tag, "--samples", "1,4,2", "--output-dir", str(tmp_path),
            "--reference-samples", "50", "--reference-rows", "100", "--drift-replay"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["command"] == " ".join(["uq-evaluate", *argv])
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", report["commit"])
    assert report["date"].startswith("20") and "cores" in report["machine"]
    assert report["model"] == classifier_tag and report["model_dataset"] == "digits"
    rows = report["by_n_samples"]
    assert [row["n_samples"] for row in rows] == [1, 2, 4, 8]  # and the default N
    for row in rows:
        for key in ("accuracy", "nll", "brier", "ece", "aurc", "selective_error",
                    "flagged_fraction", "conformal_coverage", "conformal_mean_set_size",
                    "accuracy_shortfall", "nll_excess"):
            assert np.isfinite(row[key]), key
        for key in ("accuracy_shortfall", "nll_excess"):
            low, high = row[f"{key}_interval"]
            assert low <= row[key] <= high, key
    # more samples, closer to the 50-sample reference
    assert rows[0]["estimator_error"] > rows[2]["estimator_error"] > 0
    assert report["plateau_n_samples"] in (1, 2, 4, 8)
    assert report["deterministic"]["accuracy"] > 0.8
    assert set(report["ood_auroc"]) == {"gaussian_noise", "inverted"}  # 8x8: no digits set
    for aurocs in report["ood_auroc"].values():
        assert set(aurocs) == {"predicted_class_std", "predictive_entropy",
                               "mutual_information", "one_minus_confidence"}
        assert all(0 <= value <= 1 for value in aurocs.values())
    for name in ("quality_vs_samples.png", "reliability.png", "risk_coverage.png",
                 "guarantees_vs_samples.png", "drift_replay.png"):
        assert (tmp_path / name).stat().st_size > 0
    replayed = report["drift_replay"]
    assert (replayed["n_samples"], replayed["shifted_set"]) == (8, "gaussian_noise")
    assert replayed["test_rows"] == 360 and replayed["detection_delay"] <= replayed["window"]
    output = capsys.readouterr().out
    assert "stop improving at N=" in output and "guarantees on the test split" in output
    assert "drift replay at N=8" in output
    check_guarantees(report["guarantees"])


def check_guarantees(rows):
    """A row per calibrated and off-grid N, under the calibration a request for N uses."""
    assert [row["n_samples"] for row in rows] == sorted(CALIBRATED + OFF_GRID)
    for row in rows:
        n_samples = row["n_samples"]
        assert row["calibrated"] == (n_samples in CALIBRATED)
        assert row["calibrated_n_samples"] == max(n for n in CALIBRATED if n <= n_samples)
        assert row["selective_error"] <= row["selective_error_upper_bound"] <= 1
        assert row["target_error"] == 0.1
        assert row["conformal_coverage_target"] == pytest.approx(0.9)
        assert row["novelty_false_alarm_target"] == DEFAULT_NOVELTY_FALSE_ALARM_RATE
        for key in ("coverage", "conformal_coverage", "novelty_fraction", "flagged_fraction"):
            assert 0 <= row[key] <= 1, key
        assert row["novelty_false_alarm_rate"] <= row["novelty_fraction"]
        assert set(row["holds"]) == {"selective_error", "conformal_coverage",
                                     "novelty_false_alarms"}
        assert set(row["shifted"]) == {"gaussian_noise", "inverted"}
        for fractions in row["shifted"].values():
            assert set(fractions) == {"flagged_fraction", "error_risk_fraction",
                                      "novelty_fraction"}
            assert max(fractions["error_risk_fraction"], fractions["novelty_fraction"]) \
                <= fractions["flagged_fraction"]


def test_nested_draws_see_every_n_through_the_same_samples(classifier_tag, monkeypatch):
    model, _, _ = load_classifier(classifier_tag)
    engine = MCEngine(model)
    dataset = load_dataset("digits")
    x, labels = dataset.x_test[:150], dataset.y_test[:150]
    monkeypatch.setattr(evaluation_module, "ROWS_PER_SAMPLING_BATCH", 64)  # three row blocks
    nested = nested_mc_draw(engine, x, [3, 6], seed=5, labels=labels)
    draw = mc_samples(engine, x, 6, seed=5)  # [6, 150, classes]
    # an N-sample prediction: the first N of the one draw
    np.testing.assert_array_equal(nested.summaries[3].mean, summarize(draw[:3]).mean)
    np.testing.assert_array_equal(nested.summaries[6].mutual_information,
                                  summarize(draw).mutual_information)
    # expected quality at N: over the disjoint N-sample groups, here both halves
    halves = [draw[:3].mean(axis=0, dtype=np.float64), draw[3:].mean(axis=0, dtype=np.float64)]
    np.testing.assert_allclose(  # halves: [150, classes] each
        nested.quality[3].correct, np.mean([half.argmax(axis=1) == labels for half in halves],
                                           axis=0))
    whole = draw.mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(nested.quality[6].nll, -np.log(whole[np.arange(150), labels]))


def test_grouped_quality_leaves_over_samples_out():
    samples = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.6, 0.4]]])  # [3, 1 row, 2]
    quality = grouped_quality(samples, np.array([0]), 2)  # one group: the first two
    np.testing.assert_allclose(quality.correct, [1.0])  # mean [0.55, 0.45]
    np.testing.assert_allclose(quality.nll, [-np.log(0.55)])


def row_quality(probabilities, labels):
    """RowQuality of one prediction per row, ``probabilities`` ``[rows, classes]``."""
    return grouped_quality(probabilities[None], labels, 1)


def test_quality_noise_pairs_the_rows_of_every_n():
    labels = np.array([0, 1] * 200)
    truth = np.eye(2)[labels]  # [400, 2]
    sure, unsure = row_quality(0.9 * truth + 0.05, labels), row_quality(0.6 * truth + 0.2, labels)
    noise = quality_noise({1: unsure, 10: sure, 30: sure}, resamples=200)
    assert noise.best_accuracy_n_samples == 30 and noise.best_nll_n_samples == 30  # ties: largest
    same = noise.by_n_samples[10]
    assert same["accuracy_shortfall_interval"] == [0.0, 0.0]  # paired: identical rows
    assert same["nll_excess_interval"] == [0.0, 0.0]
    worse = noise.by_n_samples[1]
    assert worse["nll"] == pytest.approx(-np.log(0.8))
    assert worse["nll_excess"] == pytest.approx(np.log(0.95) - np.log(0.8))
    assert worse["nll_excess_interval"][0] == pytest.approx(worse["nll_excess"])


def quality_row(n_samples, accuracy, nll, shortfall=None, excess=None):
    row = {"n_samples": n_samples, "accuracy": accuracy, "nll": nll}
    if shortfall is not None:
        row |= {"accuracy_shortfall_interval": shortfall, "nll_excess_interval": excess}
    return row


def test_plateau_is_the_first_n_within_tolerance_of_the_best():
    rows = [
        quality_row(1, 0.880, 0.40),
        quality_row(10, 0.899, 0.284),
        quality_row(30, 0.9005, 0.281),
        quality_row(100, 0.9010, 0.280),
    ]
    # without intervals, point differences: N=10 is 0.002 below the best, so not yet
    assert plateau(rows) == 30


def test_plateau_counts_a_difference_within_the_noise_as_near_the_best():
    rows = [
        quality_row(1, 0.880, 0.40, [0.015, 0.026], [0.11, 0.13]),
        quality_row(10, 0.899, 0.284, [-0.001, 0.005], [0.001, 0.007]),
        quality_row(30, 0.9005, 0.281, [-0.002, 0.003], [-0.001, 0.003]),
        quality_row(100, 0.9010, 0.280, [0.0, 0.0], [0.0, 0.0]),
    ]
    # N=10 falls 0.002 short, but its interval reaches below the 0.001 tolerance
    assert near_best(rows[1], rows) and not near_best(rows[0], rows)
    assert plateau(rows) == 10
    # an NLL excess shown above 0.005 rules N=10 out
    rows[1]["nll_excess_interval"] = [0.006, 0.012]
    assert plateau(rows) == 30


def test_unknown_model_is_one_line_exit_2(tmp_path, capsys):
    assert main(["--model", "uq-nowhere:latest", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not in the store" in err and "\n" not in err


@pytest.mark.parametrize("option", ["--samples", "--off-grid-samples"])
def test_bad_sample_list_exits_2(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([option, "0,5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "sample counts must be >= 1" in err and "\n" not in err


def test_total_variation_by_hand():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_allclose(total_variation(p, q), [0.25, 0.0])


def test_upscaled_digits_and_ood_sets():
    digits = upscaled_digits((28, 28), (0.0, 255.0))
    assert digits.shape == (1797, 28, 28) and digits.min() >= 0 and digits.max() <= 255
    assert digits.max() > 200  # strokes stay bright
    dataset = load_dataset("digits")
    sets = ood_sets(dataset, rows=50)
    assert set(sets) == {"gaussian_noise", "inverted"}
    np.testing.assert_allclose(sets["inverted"], 16.0 - dataset.x_test[:50])
    assert sets["gaussian_noise"].shape == (50, 8, 8)


def test_generated_images_join_the_report(classifier_tag, generator_tag, tmp_path):
    code = main(["--model", classifier_tag, "--samples", "2", "--output-dir", str(tmp_path),
                 "--reference-samples", "10", "--reference-rows", "20",
                 "--generator", generator_tag, "--generated-images", "64"])
    assert code == 0
    generated = json.loads((tmp_path / "evaluation.json").read_text())["generated"]
    assert generated["generator"] == generator_tag and generated["images"] == 64
    assert set(generated["flagged_fraction"]) == {"generated", "test"}
    assert all(0 <= value <= 1 for value in generated["flagged_fraction"].values())
    assert set(generated["auroc"]) == set(generated["mean_scores"])


def test_unknown_generator_is_one_line_exit_2(classifier_tag, tmp_path, capsys):
    code = main(["--model", classifier_tag, "--generator", "uq-no-generator:latest",
                 "--output-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "uq-no-generator" in err and "\n" not in err
