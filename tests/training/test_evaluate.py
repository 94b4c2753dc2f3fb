import json

import numpy as np
import pytest

from training.data import load_dataset
from training.evaluate import main
from training.evaluation import plateau, total_variation
from training.ood import ood_sets, upscaled_digits


def test_uq_evaluate_end_to_end(classifier_tag, tmp_path, capsys):
    code = main(["--model", classifier_tag, "--samples", "1,4,2", "--output-dir", str(tmp_path),
                 "--reference-samples", "50", "--reference-rows", "100"])
    assert code == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["model"] == classifier_tag and report["model_dataset"] == "digits"
    rows = report["by_n_samples"]
    assert [row["n_samples"] for row in rows] == [1, 2, 4]
    for row in rows:
        for key in ("accuracy", "nll", "brier", "ece", "aurc", "selective_error",
                    "flagged_fraction", "conformal_coverage", "conformal_mean_set_size"):
            assert np.isfinite(row[key]), key
    # more samples, closer to the 50-sample reference
    assert rows[0]["estimator_error"] > rows[2]["estimator_error"] > 0
    assert report["plateau_n_samples"] in (1, 2, 4)
    assert report["deterministic"]["accuracy"] > 0.8
    assert set(report["ood_auroc"]) == {"gaussian_noise", "inverted"}  # 8x8: no digits set
    for aurocs in report["ood_auroc"].values():
        assert set(aurocs) == {"predicted_class_std", "predictive_entropy",
                               "mutual_information", "one_minus_confidence"}
        assert all(0 <= value <= 1 for value in aurocs.values())
    for name in ("quality_vs_samples.png", "reliability.png", "risk_coverage.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "stop improving at N=" in capsys.readouterr().out


def test_unknown_model_is_one_line_exit_2(tmp_path, capsys):
    assert main(["--model", "uq-nowhere:latest", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not in the store" in err and "\n" not in err


def test_bad_sample_list_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--samples", "0,5"])
    assert exit_info.value.code == 2
    assert "sample counts must be >= 1" in capsys.readouterr().err


def test_plateau_is_the_first_n_within_tolerance_of_the_best():
    rows = [
        {"n_samples": 1, "accuracy": 0.880, "nll": 0.40},
        {"n_samples": 10, "accuracy": 0.899, "nll": 0.284},
        {"n_samples": 30, "accuracy": 0.9005, "nll": 0.281},
        {"n_samples": 100, "accuracy": 0.9010, "nll": 0.280},
    ]
    # N=10: accuracy 0.899 is 0.002 below the best, so not yet; N=30 is within both
    assert plateau(rows) == 30


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
