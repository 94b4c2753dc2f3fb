"""uq-train: train the dropout + max-norm classifier, calibrate its risk policy, store it.

    uq-train                                  # Fashion-MNIST, the default MLP
    uq-train --dataset digits --epochs 5 --model-name uq-digits
    uq-train --config my_run.toml --epochs 50  # flags override the TOML file

The story: load the dataset (a seeded validation split held out from train) ->
build the model (preprocessing inside) -> fit with early stopping, best-weight
restore and BackupAndRestore (an interrupted run resumes where it stopped) ->
evaluate on the test split, deterministically and with MC dropout through the
engine the service uses -> calibrate the risk threshold and the conformal
quantile on the validation split -> save model.keras and its card to the
BentoML model store -> write reports (metrics JSON, plots, history CSV).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.cards import ModelCard, training_record
from artifacts.store import save_classifier
from commandline.arguments import OneLineErrorParser, fail, integers, sample_counts
from training import plots
from training.config import (
    ACTIVATIONS,
    ARCHITECTURES,
    DEFAULT_PRESET,
    OPTIMIZERS,
    PRESET_NAMES,
    PRESETS,
    SCHEDULES,
    ModelConfig,
    TrainConfig,
)
from training.data import DATASET_NAMES, Dataset, DatasetError, load_dataset
from training.evaluation import (
    evaluate_and_calibrate,
    risk_coverage_curves,
    uncertified_warning,
)
from uncertainty.metrics import reliability_bins


@dataclasses.dataclass(frozen=True)
class TrainResult:
    tag: str
    card: ModelCard
    report_path: Path


def build_parser() -> argparse.ArgumentParser:
    """uq-train's options; the defaults shown are the default preset's."""
    defaults, model_defaults = TrainConfig(), ModelConfig()
    parser = OneLineErrorParser(
        prog="uq-train", description="Train, calibrate and store the MC dropout classifier."
    )
    add = parser.add_argument
    add("--preset", choices=PRESET_NAMES, default=None,
        help=f"the starting point of every other option: mlp, the classic MLP on pixels, "
        f"or cnn, a conv net with a sampled dense head trained on shifted images "
        f"(default: {DEFAULT_PRESET}; the defaults shown below are its values)")
    add("--config", type=Path, help="TOML file of option values (flag names, - or _); "
        "flags given on the command line win")
    add("--dataset", default=defaults.dataset,
        help=f"one of {', '.join(DATASET_NAMES)} (default: %(default)s)")
    add("--model-name", default=defaults.model_name, help="store name (default: %(default)s)")
    add("--epochs", type=int, default=defaults.epochs, help="(default: %(default)s)")
    add("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    add("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS,
        help="sgd uses Nesterov momentum 0.9 (default: %(default)s)")
    add("--learning-rate", type=float, default=defaults.learning_rate,
        help="peak rate for onecycle (default: %(default)s)")
    add("--schedule", default=defaults.schedule, choices=SCHEDULES,
        help="learning-rate schedule (default: %(default)s)")
    add("--label-smoothing", type=float, default=defaults.label_smoothing,
        help="(default: %(default)s)")
    add("--patience", type=int, default=defaults.patience,
        help="early-stopping patience in epochs on validation loss (default: %(default)s)")
    add("--validation-fraction", type=float, default=defaults.validation_fraction,
        help="share of train held out for validation and calibration (default: %(default)s)")
    add("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    add("--n-samples", type=int, default=defaults.n_samples,
        help="MC samples for evaluation, calibration and the served default "
        "(default: %(default)s)")
    add("--calibration-samples", type=sample_counts, default=defaults.calibration_samples,
        help="the N to calibrate the risk flag, conformal sets and novelty at, besides "
        "--n-samples (default: 1,5,10,20,30,50,100)")
    add("--novelty-false-alarm-rate", type=float, default=defaults.novelty_false_alarm_rate,
        help="share of in-distribution inputs flagged as novel (default: %(default)s)")
    add("--risk-target-error", type=float, default=defaults.risk_target_error,
        help="error allowed among unflagged predictions (default: %(default)s)")
    add("--conformal-alpha", type=float, default=defaults.conformal_alpha,
        help="prediction sets miss the true class at most this often (default: %(default)s)")
    add("--output-dir", type=Path, default=defaults.output_dir,
        help="reports and the resumable backup (default: %(default)s)")
    add("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment,
        help="train on images shifted at random by up to 2 pixels in 28 (default: "
        "%(default)s)")
    add("--architecture", default=model_defaults.architecture, choices=ARCHITECTURES,
        help="(default: %(default)s)")
    add("--hidden-units", type=integers, default=model_defaults.hidden_units,
        help="comma-separated Dense sizes (default: 1024,1024; cnn: 256)")
    add("--activation", default=model_defaults.activation, choices=ACTIVATIONS,
        help="selu uses LeCun initialisation and AlphaDropout (default: %(default)s)")
    add("--input-dropout", type=float, default=model_defaults.input_dropout,
        help="(default: %(default)s)")
    add("--hidden-dropout", type=float, default=model_defaults.hidden_dropout,
        help="(default: %(default)s)")
    add("--max-norm", type=float, default=model_defaults.max_norm_value,
        help="MaxNorm constraint c on every kernel (default: %(default)s)")
    add("--batch-norm", action=argparse.BooleanOptionalAction,
        default=model_defaults.batch_norm, help="(default: off)")
    add("--conv-filters", type=integers, default=model_defaults.conv_filters,
        help="cnn: filters per conv block (the cnn preset: 32,64,128)")
    add("--conv-dropout", type=float, default=model_defaults.conv_dropout,
        help="cnn: SpatialDropout2D rate (default: %(default)s)")
    parser.set_defaults(**PRESETS[DEFAULT_PRESET])
    return parser


def parse_config(argv: list[str] | None) -> TrainConfig:
    """Flags over TOML over the preset over defaults. Raises ValueError with a one-line
    message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = {} if args.config is None else _read_toml(args.config, parser)
    preset = args.preset or from_file.pop("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}, got {preset!r}")
    parser.set_defaults(**{**_option_values(TrainConfig()), **PRESETS[preset], **from_file})
    args = parser.parse_args(argv)
    model = ModelConfig(
        architecture=args.architecture,
        hidden_units=tuple(args.hidden_units),
        activation=args.activation,
        input_dropout=args.input_dropout,
        hidden_dropout=args.hidden_dropout,
        max_norm_value=args.max_norm,
        batch_norm=args.batch_norm,
        conv_filters=tuple(args.conv_filters),
        conv_dropout=args.conv_dropout,
    )
    return TrainConfig(
        dataset=args.dataset, model_name=args.model_name, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.learning_rate, schedule=args.schedule,
        label_smoothing=args.label_smoothing, patience=args.patience,
        validation_fraction=args.validation_fraction, seed=args.seed,
        n_samples=args.n_samples, calibration_samples=args.calibration_samples,
        risk_target_error=args.risk_target_error, conformal_alpha=args.conformal_alpha,
        novelty_false_alarm_rate=args.novelty_false_alarm_rate, output_dir=args.output_dir,
        augment=args.augment, preset=preset, model=model,
    )


def _option_values(config: TrainConfig) -> dict[str, Any]:
    """uq-train's option values (by dest) that ``config`` holds."""
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    model = dataclasses.asdict(config.model)
    model["max_norm"] = model.pop("max_norm_value")
    values.pop("model")
    values.pop("preset")
    return {**values, **model}


def _read_toml(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        values = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read config {path}: {error}") from None
    known = {action.dest: action for action in parser._actions if action.dest != "help"}
    converted = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in known or dest == "config":
            raise ValueError(f"config {path}: unknown option {key!r}")
        if (dest in ("hidden_units", "conv_filters", "calibration_samples")
                and isinstance(value, list)):
            value = tuple(value)
        elif dest == "output_dir":
            value = Path(value)
        converted[dest] = value
    return converted



def train(config: TrainConfig, dataset: Dataset, callbacks: tuple = ()) -> TrainResult:
    """Fit, evaluate, calibrate, store and report. ``callbacks`` are extra Keras callbacks."""
    import keras

    # import TensorFlow: uq-train's arguments are checked first
    from training.augment import augmented_batches
    from training.models import TRAIN_WITH_XLA, build_model
    from training.schedules import learning_rate_and_callbacks, make_optimizer

    keras.utils.set_random_seed(config.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes,
                        dataset.x_train, dataset.value_range)
    steps_per_epoch = math.ceil(len(dataset.x_train) / config.batch_size)
    learning_rate, schedule_callbacks = learning_rate_and_callbacks(config, steps_per_epoch)
    model.compile(
        optimizer=make_optimizer(config, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        jit_compile=TRAIN_WITH_XLA[config.model.architecture],
    )
    one_hot = np.eye(dataset.num_classes, dtype=np.float32)
    started = time.perf_counter()
    if config.augment:
        training_data = {"x": augmented_batches(dataset.x_train, one_hot[dataset.y_train],
                                                config.batch_size, dataset.value_range[0],
                                                config.seed),
                         "shuffle": False}  # the dataset shuffles itself
    else:
        training_data = {"x": dataset.x_train, "y": one_hot[dataset.y_train],
                         "batch_size": config.batch_size}
    model.fit(
        **training_data,
        validation_data=(dataset.x_val, one_hot[dataset.y_val]),
        epochs=config.epochs,
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(config.output_dir / "backup")),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True
            ),
            keras.callbacks.CSVLogger(str(config.output_dir / "history.csv"), append=True),
            *schedule_callbacks,
            *callbacks,
        ],
    )
    fit_seconds = time.perf_counter() - started
    served = _without_optimizer(model)
    evaluation = evaluate_and_calibrate(
        served, dataset.x_val, dataset.y_val, dataset.x_test, dataset.y_test,
        n_samples=config.n_samples, calibration_grid=config.calibration_grid,
        risk_target_error=config.risk_target_error, conformal_alpha=config.conformal_alpha,
        novelty_false_alarm_rate=config.novelty_false_alarm_rate, seed=config.seed,
    )
    card = ModelCard(
        dataset=dataset.name,
        class_names=list(dataset.class_names),
        input_shape=list(dataset.input_shape),
        value_range=dataset.value_range,
        architecture=config.model.architecture,
        max_norm_value=config.model.max_norm_value,
        dropout_rates={
            layer.name: float(layer.rate)
            for layer in served.layers
            if isinstance(layer, keras.layers.Dropout | keras.layers.AlphaDropout)
        },
        default_n_samples=config.n_samples,
        test_metrics=evaluation.test_metrics,
        conformal_alpha=config.conformal_alpha,
        calibrations=evaluation.calibrations,
        training={**training_record(config), "fit_seconds": round(fit_seconds, 1)},
        auto_calibration=evaluation.auto_calibration,
    )
    tag = save_classifier(served, card, config.model_name)
    report_path = write_reports(config.output_dir, card, evaluation, tag)
    return TrainResult(tag=tag, card=card, report_path=report_path)


def _without_optimizer(model):
    """An uncompiled copy with the trained weights: a smaller artifact that loads
    without the training code's custom objects."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def write_reports(output_dir: Path, card: ModelCard, evaluation, tag: str) -> Path:
    """metrics.json, reliability.png, risk_coverage.png and training_curves.png."""
    import csv

    summary, labels = evaluation.test_summary, evaluation.test_labels
    plots.reliability_diagram(
        {"deterministic": reliability_bins(evaluation.deterministic_probabilities, labels),
         f"MC dropout (N={card.default_n_samples})": reliability_bins(summary.mean, labels)},
        output_dir / "reliability.png",
    )
    mc = card.test_metrics["mc"]
    plots.risk_coverage_plot(
        risk_coverage_curves(summary, labels),
        output_dir / "risk_coverage.png",
        operating_point=(mc["coverage"], mc["selective_error"]),
    )
    with open(output_dir / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    history = {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}
    plots.training_curves(history, output_dir / "training_curves.png")
    report_path = output_dir / "metrics.json"
    report_path.write_text(json.dumps({"tag": tag, "card": card.model_dump(mode="json")},
                                      indent=2))
    return report_path


def summary_table(tag: str, card: ModelCard) -> str:
    deterministic, mc = card.test_metrics["deterministic"], card.test_metrics["mc"]
    policy = card.risk_policy
    lines = [
        f"{'test split':<22}{'deterministic':>14}{f'MC (N={card.default_n_samples})':>14}",
        *(f"{name:<22}{deterministic[name]:>14.4f}{mc[name]:>14.4f}"
          for name in ("accuracy", "nll", "brier", "ece", "aurc")),
        f"error risk: {policy.metric} > {policy.threshold:.4g} flags "
        f"{mc['error_risk_fraction']:.1%} of test; error among the rest "
        f"{mc['selective_error']:.4f} (target {policy.target_error})"
        + ("" if policy.calibration_coverage > 0 else
           " - no threshold met the target on validation, so every prediction is flagged"),
        f"novelty: adds {mc['novelty_added_fraction']:.1%} of test to the flagged; flagged "
        f"for any reason {mc['flagged_fraction']:.1%}",
        f"prediction sets (alpha={card.conformal_alpha}): coverage "
        f"{mc['conformal_coverage']:.3f}, mean size {mc['conformal_mean_set_size']:.2f}",
        f"calibrated at N = {', '.join(map(str, card.calibrated_n_samples))} and auto",
        *auto_summary_lines(card),
        f"saved {tag}",
    ]
    return "\n".join(lines)


def auto_summary_lines(card: ModelCard) -> list[str]:
    """What n_samples "auto" did on the test split, when the card has it."""
    auto = card.test_metrics.get("auto")
    if card.auto_calibration is None or auto is None:
        return []
    return [f"auto (rounds {', '.join(map(str, card.auto_calibration.schedule))}): mean N "
            f"{auto['mean_n_samples']:.1f}, accuracy {auto['accuracy']:.4f}, NLL "
            f"{auto['nll']:.4f}, ECE {auto['ece']:.4f}, error among unflagged "
            f"{auto['selective_error']:.4f}"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv)
        dataset = load_dataset(config.dataset, config.validation_fraction, config.seed)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if len(dataset.input_shape) not in (2, 3):
            if config.model.architecture == "cnn":
                raise ValueError(
                    f"the cnn architecture needs images, {config.dataset} rows have shape "
                    f"{dataset.input_shape}: use --preset mlp"
                )
            if config.augment:
                raise ValueError(f"--augment needs images, {config.dataset} rows have shape "
                                 f"{dataset.input_shape}")
        print(f"{dataset.name}: {len(dataset.x_train)} train, {len(dataset.x_val)} validation, "
              f"{len(dataset.x_test)} test rows of shape {dataset.input_shape}", flush=True)
        result = train(config, dataset)
    except (ValueError, DatasetError) as error:
        return fail("uq-train", str(error))
    except KeyboardInterrupt:
        print("uq-train: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary_table(result.tag, result.card))
    print(f"reports in {result.report_path.parent}")
    warning = uncertified_warning(result.card, len(dataset.x_val))
    if warning:
        print(f"uq-train: warning: {warning}; hold out more rows with --validation-fraction, "
              "or allow a larger --risk-target-error", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
