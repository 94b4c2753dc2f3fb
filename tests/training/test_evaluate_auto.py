"""uq-evaluate's row for n_samples "auto", and uq-calibrate's calibration of it."""

import json

import bentoml
import numpy as np
import pytest

from artifacts.store import read_card
from training.calibrate import main as calibrate
from training.evaluate import main
from training.evaluate_auto import n_samples_figures, paired_differences
from training.evaluation import RowQuality


def test_uq_evaluate_has_an_auto_row(classifier_tag, tmp_path, capsys):
    code = main(["--model", classifier_tag, "--samples", "1,4,30", "--output-dir",
                 str(tmp_path), "--reference-samples", "50", "--reference-rows", "100",
                 "--off-grid-samples", "3"])
    assert code == 0
    auto = json.loads((tmp_path / "evaluation.json").read_text())["auto"]
    assert auto["n_samples"] == "auto" and auto["schedule"] == [8, 16, 32, 64, 100]
    assert 8 <= auto["mean_n_samples"] <= 100
    assert sum(auto["n_samples_distribution"].values()) == pytest.approx(1.0)
    for key in ("accuracy", "nll", "ece", "selective_error", "conformal_coverage",
                "estimator_error", "accuracy_shortfall", "nll_excess"):
        assert np.isfinite(auto[key]), key
    assert set(auto["versus"]) == {"1", "4", "8", "30"}
    for versus in auto["versus"].values():
        low, high = versus["nll_difference_interval"]
        assert low <= versus["nll_difference"] <= high
    guarantees = auto["guarantees"]
    assert guarantees["target_error"] == 0.1  # the test classifier's
    assert set(guarantees["holds"]) == {"selective_error", "conformal_coverage",
                                        "novelty_false_alarms"}
    assert set(auto["shifted"]) == {"gaussian_noise", "inverted"}
    for figures in auto["shifted"].values():
        assert 0 <= figures["flagged_fraction"] <= 1 and figures["mean_n_samples"] >= 8
    output = capsys.readouterr().out
    assert "\n auto " in output and "auto used N = " in output and "auto against N=30" in output
    assert (tmp_path / "auto_vs_fixed.png").stat().st_size > 0


def test_paired_differences_against_fixed_n_by_hand():
    labels = np.array([0, 1, 0, 1])
    mean = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5]])  # wrong on row 2
    quality = {5: RowQuality(correct=np.array([1.0, 1.0, 1.0, 0.5]),
                             nll=np.full(4, 0.1)),
               10: RowQuality(correct=np.ones(4), nll=np.full(4, 0.2))}
    figures = paired_differences(mean, labels, quality, resamples=200)
    auto_nll = -np.log([0.9, 0.8, 0.4, 0.5]).mean()
    assert figures["versus"]["5"]["nll_difference"] == pytest.approx(auto_nll - 0.1)
    assert figures["versus"]["10"]["accuracy_difference"] == pytest.approx(0.5 - 1.0)
    # the most accurate N is 10, the N of lowest NLL 5
    assert figures["accuracy_shortfall"] == pytest.approx(0.5)
    assert figures["nll_excess"] == pytest.approx(auto_nll - 0.1)
    low, high = figures["accuracy_shortfall_interval"]
    assert low <= 0.5 <= high
    shares = n_samples_figures(np.array([8, 8, 16, 100]), (8, 16, 32, 64, 100))
    assert shares["mean_n_samples"] == 33 and shares["n_samples_distribution"] == {
        "8": 0.5, "16": 0.25, "32": 0.0, "64": 0.0, "100": 0.25}


def test_uq_calibrate_stores_auto_with_its_cap(classifier_tag, capsys):
    assert calibrate(["--model", classifier_tag, "--max-auto-samples", "32", "--model-name",
                      "uq-test-auto-cap"]) == 0
    assert " auto " in capsys.readouterr().out
    card = read_card(bentoml.models.get("uq-test-auto-cap:latest"))
    assert card.auto_calibration.schedule == (8, 16, 32)
    assert card.auto_calibration.stopping_n_samples == 30  # the largest N up to the cap
    assert calibrate(["--model", classifier_tag, "--max-auto-samples", "1"]) == 2
    assert "--max-auto-samples must be >= 2" in capsys.readouterr().err
