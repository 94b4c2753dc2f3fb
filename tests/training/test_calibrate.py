"""uq-calibrate: recalibrating a stored classifier, importing one trained elsewhere, and
refusing what it cannot calibrate without writing to the store."""

import re

import bentoml
import keras
import numpy as np
import pytest

from artifacts.store import load_classifier, read_card
from training.calibrate import main
from training.data import load_dataset
from uncertainty.risk import FLAG_EVERYTHING, fewest_rows_to_certify


def versions(name: str) -> list[str]:
    return sorted(str(m.tag) for m in bentoml.models.list() if m.tag.name == name)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    digits = load_dataset("digits")
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=np.concatenate([digits.x_train, digits.x_val]).astype(np.uint8),
             y_train=np.concatenate([digits.y_train, digits.y_val]),
             x_test=digits.x_test.astype(np.uint8), y_test=digits.y_test)
    return path


def test_recalibrating_a_stored_model_saves_a_new_version(classifier_tag, capsys):
    before = versions("uq-test-digits")
    assert main(["--model", classifier_tag, "--samples", "2,4", "--risk-target-error", "0.2",
                 "--model-name", "uq-test-digits"]) == 0
    [new_tag] = sorted(set(versions("uq-test-digits")) - set(before))
    assert f"saved {new_tag}" in capsys.readouterr().out
    _, card, _ = load_classifier(new_tag)
    assert card.calibrated_n_samples == [2, 4, 8]  # the grid and the card's default N
    assert card.risk_policy.target_error == 0.2
    assert card.training["calibrated_from"] == classifier_tag
    model_before, _, _ = load_classifier(classifier_tag)
    model_after, _, _ = load_classifier(new_tag)
    np.testing.assert_array_equal(model_before.get_weights()[0], model_after.get_weights()[0])
    # the original version is untouched
    assert read_card(bentoml.models.get(classifier_tag)).calibrated_n_samples[0] == 1


def test_importing_a_keras_file_with_npz_data(classifier_tag, digits_npz, tmp_path, capsys):
    model, _, _ = load_classifier(classifier_tag)
    path = tmp_path / "mine.keras"
    model.save(path)
    assert main(["--keras-model", str(path), "--data", f"npz:{digits_npz}",
                 "--model-name", "uq-imported", "--n-samples", "10", "--samples", "1,10"]) == 0
    [tag] = versions("uq-imported")
    _, card, _ = load_classifier(tag)
    rows = len(np.load(digits_npz)["x_train"])  # all of them: the model was trained on none
    assert f"on {rows} rows of npz:" in capsys.readouterr().out
    assert [c.reference.rows for c in card.calibrations] == [rows, rows]
    assert card.dataset == f"npz:{digits_npz}" and card.input_shape == [8, 8]
    assert card.value_range == (0.0, 255.0)  # uint8 arrays
    assert card.calibrated_n_samples == [1, 10] and card.default_n_samples == 10
    assert card.max_norm_value == 3.0 and set(card.dropout_rates.values()) == {0.1, 0.4}
    assert card.test_metrics["mc"]["accuracy"] > 0.5


def test_an_import_too_small_to_certify_a_threshold_says_what_the_model_will_do(
        classifier_tag, digits_npz, tmp_path, capsys):
    model, _, _ = load_classifier(classifier_tag)
    path = tmp_path / "mine.keras"
    model.save(path)
    arrays = dict(np.load(digits_npz))
    small = tmp_path / "small.npz"
    np.savez(small, **{**arrays, "x_train": arrays["x_train"][:120],
                       "y_train": arrays["y_train"][:120]})
    assert main(["--keras-model", str(path), "--data", f"npz:{small}", "--model-name",
                 "uq-too-few", "--samples", "1,4", "--n-samples", "4",
                 "--risk-target-error", "0.02"]) == 0
    captured = capsys.readouterr()
    [warning] = captured.err.strip().splitlines()
    assert warning == (
        "uq-calibrate: warning: no threshold certifies an error of at most 0.02 among "
        f"unflagged answers (that needs at least {fewest_rows_to_certify(0.02)} calibration "
        "rows, all predicted correctly, and "
        f"{fewest_rows_to_certify(0.02, distinct_scores=True)} when their scores all differ, "
        "as they do at N > 1; 120 rows are too few): the saved model will flag every "
        "answer; calibrate on more rows, or allow a larger --risk-target-error")
    [tag] = versions("uq-too-few")
    assert f"saved {tag}" in captured.out
    _, card, _ = load_classifier(tag)
    assert {c.risk_policy.threshold for c in card.calibrations} == {FLAG_EVERYTHING}
    assert card.auto_calibration.risk_policy.threshold == FLAG_EVERYTHING


def small_model(dropout: bool = True, softmax: bool = True, classes: int = 10) -> keras.Model:
    layers = [keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(16, "relu")]
    layers += [keras.layers.Dropout(0.3)] if dropout else []
    layers += [keras.layers.Dense(classes, "softmax" if softmax else None)]
    return keras.Sequential(layers)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (small_model(dropout=False), "no Dropout"),
        (small_model(softmax=False), "softmax"),
        (small_model(classes=3), "the data has 10 classes but the model outputs 3"),
        (keras.Sequential([keras.Input((64,)), keras.layers.Dropout(0.2),
                           keras.layers.Dense(10, "softmax")]),
         r"the data's rows have shape \(8, 8\) but the model takes \(64,\)"),
    ],
)
def test_a_model_that_does_not_fit_is_one_line_exit_2_and_stores_nothing(
        model, message, digits_npz, tmp_path, capsys):
    path = tmp_path / "bad.keras"
    model.save(path)
    before = versions("uq-refused")
    assert main(["--keras-model", str(path), "--data", f"npz:{digits_npz}",
                 "--model-name", "uq-refused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uq-calibrate: error: ") and "\n" not in err
    assert re.search(message, err), err
    assert versions("uq-refused") == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keras-model", "missing.keras", "--data", "digits"], "must be an existing .keras"),
        (["--keras-model", "x.keras"], "--keras-model needs --data"),
        (["--model", "uq-no-such:latest"], "is not in the store"),
        (["--keras-model", "x.keras", "--data", "digits", "--validation-fraction", "0.5"],
         "--validation-fraction applies to --model only"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --model --keras-model is required"),
        (["--model", "m", "--conformal-alpha", "1.5"], "must lie in (0, 1), got 1.5"),
        (["--model", "m", "--n-samples", "0"], "--n-samples: must be >= 1"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
