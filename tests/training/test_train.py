import csv
import json
import subprocess
import sys

import bentoml
import keras
import numpy as np
import pytest

from training.config import TrainConfig
from training.data import load_dataset
from training.schedules import learning_rate_and_callbacks, make_optimizer
from training.train import main, parse_config, train

TINY = ["--dataset", "digits", "--hidden-units", "64", "--batch-size", "64", "--n-samples", "8",
        "--learning-rate", "0.01"]


def stored(name: str) -> list[str]:
    return [str(model.tag) for model in bentoml.models.list() if model.tag.name == name]


def test_uq_train_end_to_end_on_digits(tmp_path, capsys):
    code = main([*TINY, "--epochs", "4", "--model-name", "uq-e2e",
                 "--output-dir", str(tmp_path), "--risk-target-error", "0.1"])
    assert code == 0
    [tag] = stored("uq-e2e")
    out = capsys.readouterr().out
    assert f"saved {tag}" in out and "MC (N=8)" in out
    card = bentoml.models.get(tag).info.metadata
    assert card["dataset"] == "digits" and card["input_shape"] == [8, 8]
    assert card["value_range"] == [0.0, 16.0] and card["default_n_samples"] == 8
    assert card["architecture"] == "mlp" and card["training"]["preset"] == "mlp"
    assert set(card["dropout_rates"].values()) == {0.1, 0.4}
    assert card["risk_policy"]["metric"] in card["risk_policy"]["aurc_by_metric"]
    assert 0 < card["conformal_quantile"] <= 1
    # calibrated at the default grid and the default N, each with its own thresholds
    assert [c["n_samples"] for c in card["calibrations"]] == [1, 5, 8, 10, 20, 30, 50, 100]
    at_default = card["calibrations"][2]
    assert at_default["risk_policy"] == card["risk_policy"]
    assert at_default["novelty_policy"]["metric"] == "mutual_information"
    assert at_default["novelty_policy"]["false_alarm_rate"] == 0.03
    # one sample has no disagreement to measure: novelty is off (MI never exceeds ln 10)
    assert card["calibrations"][0]["novelty_policy"]["threshold"] == pytest.approx(np.log(10))
    mc = card["test_metrics"]["mc"]
    assert mc["accuracy"] > 0.85  # 4 epochs on digits
    assert mc["selective_error"] <= mc["accuracy"] and 0 <= mc["flagged_fraction"] <= 1
    for name in ("metrics.json", "reliability.png", "risk_coverage.png",
                 "training_curves.png", "history.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["tag"] == tag
    assert not (tmp_path / "backup").exists()  # removed once training completes


def test_a_validation_split_too_small_to_certify_a_threshold_is_a_warning(tmp_path, capsys):
    # digits: 144 validation rows; an error of at most 2% takes at least 297
    assert main([*TINY, "--epochs", "1", "--model-name", "uq-train-too-few", "--output-dir",
                 str(tmp_path), "--risk-target-error", "0.02", "--calibration-samples", "1"]) == 0
    err = capsys.readouterr().err
    [warning] = [line for line in err.splitlines() if "warning" in line]
    assert warning == (
        "uq-train: warning: no threshold certifies an error of at most 0.02 among unflagged "
        "answers (that needs at least 297 calibration rows, all predicted correctly, and 821 "
        "when their scores all differ, as they do at N > 1; 144 rows are too few): the saved "
        "model will flag every answer; hold out more rows with --validation-fraction, or "
        "allow a larger --risk-target-error")


class StopAfterSecondEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    config = parse_config([*TINY, "--epochs", "4", "--model-name", "uq-resume",
                           "--output-dir", str(tmp_path), "--patience", "10"])
    dataset = load_dataset("digits")
    with pytest.raises(KeyboardInterrupt):
        train(config, dataset, callbacks=(StopAfterSecondEpoch(),))
    assert stored("uq-resume") == []
    assert (tmp_path / "backup").exists()
    train(config, dataset)
    with open(tmp_path / "history.csv") as file:
        epochs = [int(row["epoch"]) for row in csv.DictReader(file)]
    assert epochs == [0, 1, 2, 3]  # two before the interruption, two after, none repeated
    assert len(stored("uq-resume")) == 1


def test_the_cnn_preset_trains_a_conv_net_on_shifted_images(tmp_path):
    code = main(["--preset", "cnn", *TINY, "--conv-filters", "8,16", "--epochs", "4",
                 "--model-name", "uq-cnn", "--output-dir", str(tmp_path)])
    assert code == 0
    [tag] = stored("uq-cnn")
    card = bentoml.models.get(tag).info.metadata
    assert card["architecture"] == "cnn" and card["training"]["augment"]
    assert card["training"]["model"]["conv_filters"] == [8, 16]
    # dropout on the conv features and after the dense layer: the sampled head
    assert card["dropout_rates"] == {"input_dropout": 0.25, "dropout_0": 0.4}
    assert card["test_metrics"]["mc"]["accuracy"] > 0.7  # 4 epochs of shifted 8x8 digits


def test_presets_start_every_option_and_flags_override_them():
    # the default, mlp, is the configuration uq-train trained before presets
    assert parse_config([]) == parse_config(["--preset", "mlp"]) == TrainConfig()
    cnn = parse_config(["--preset", "cnn"])
    assert cnn.preset == "cnn" and cnn.augment and cnn.epochs == 24 and cnn.model.batch_norm
    assert cnn.model.architecture == "cnn" and cnn.model.conv_filters == (32, 64, 128)
    tuned = parse_config(["--preset", "cnn", "--no-augment", "--hidden-units", "128"])
    assert not tuned.augment and tuned.model.hidden_units == (128,) and tuned.preset == "cnn"
    assert tuned.model.architecture == "cnn" and tuned.epochs == 24


def test_toml_config_with_flags_winning(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "digits"\nepochs = 7\nhidden-units = [64, 32]\n'
                    'max_norm = 2.5\nschedule = "piecewise"\n')
    config = parse_config(["--config", str(path), "--epochs", "2"])
    assert config.dataset == "digits" and config.epochs == 2 and config.preset == "mlp"
    assert config.model.hidden_units == (64, 32) and config.model.max_norm_value == 2.5
    assert config.schedule == "piecewise"
    path.write_text('preset = "cnn"\nepochs = 7\n')
    config = parse_config(["--config", str(path)])
    assert config.preset == "cnn" and config.model.architecture == "cnn" and config.epochs == 7


@pytest.mark.parametrize("schedule", ["onecycle", "exponential", "piecewise", "plateau"])
@pytest.mark.parametrize("optimizer", ["nadam", "sgd"])
def test_every_schedule_and_optimizer_trains(tmp_path, schedule, optimizer):
    config = TrainConfig(schedule=schedule, optimizer=optimizer, epochs=2)
    rate, callbacks = learning_rate_and_callbacks(config, steps_per_epoch=5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(make_optimizer(config, rate), "sparse_categorical_crossentropy")
    x, y = keras.random.normal((20, 3)), keras.ops.arange(20) % 2
    history = model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=4, verbose=0,
                        callbacks=callbacks)
    assert all(loss == loss for loss in history.history["loss"])  # finite, not NaN


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--dataset", "npz:/nonexistent.npz"], "cannot read /nonexistent.npz"),
        ([*TINY, "--input-dropout", "1.0"], "input_dropout must lie in [0, 1)"),
        ([*TINY, "--hidden-dropout", "-0.5"], "hidden_dropout must lie in [0, 1)"),
        ([*TINY, "--max-norm", "0"], "max_norm_value must be > 0"),
        ([*TINY, "--epochs", "0"], "epochs must be >= 1"),
        ([*TINY, "--model-name", "Bad Name!"], "not a valid BentoML name"),
        ([*TINY, "--epochs", "many"], "invalid int value: 'many'"),
        ([*TINY, "--architecture", "cnn", "--dataset", "npz:{flat}"], "cnn architecture needs"),
        ([*TINY, "--preset", "cnn", "--dataset", "npz:{flat}"], "use --preset mlp"),
        ([*TINY, "--augment", "--dataset", "npz:{flat}"], "--augment needs"),
        ([*TINY, "--preset", "vgg"], "invalid choice: 'vgg'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_stored(tmp_path, capsys, argv, message):
    flat = tmp_path / "flat.npz"
    np.savez(flat, x_train=np.zeros((20, 5)), y_train=np.arange(20) % 2)
    argv = [arg.replace("{flat}", str(flat)) for arg in argv]
    if "--model-name" not in argv:
        argv += ["--model-name", "uq-bad"]
    before = len(bentoml.models.list())
    try:
        code = main([*argv, "--output-dir", str(tmp_path)])
    except SystemExit as exit:  # argparse's own type errors
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert len(bentoml.models.list()) == before


def test_console_script_exits_2_with_one_line_before_loading_tensorflow(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--dataset", "digits", "--max-norm", "-1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "uq-train: error: max_norm_value must be > 0, got -1.0\n"
