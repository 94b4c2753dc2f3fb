"""uq-calibrate: calibrate a classifier's uncertainty at every N, and store it with its card.

    uq-calibrate --model uq-classifier:latest --samples 1,5,10,20,30,50,100
    uq-calibrate --model uq-classifier:latest --risk-target-error 0.01 --data npz:new.npz
    uq-calibrate --keras-model mine.keras --data npz:mine.npz --model-name my-classifier

The story: load the classifier (a stored one, or a ``.keras`` file trained
elsewhere) and the calibration data -> check they fit (dropout to sample, a
softmax output, the input shape, the number of classes) -> sample the
calibration rows at every N of the grid and fit the risk threshold, conformal
quantile and novelty threshold at each -> measure the default N on the test
split -> save the model with the new card to the store, as a new version.

Data: without ``--data``, a stored model's own dataset, whose validation split
(held out from train with the seed and fraction uq-train used) calibrates and
whose test split judges. ``--data`` gives a stored model other data in the same
way: its validation split (``--validation-fraction`` of ``x_train``, seeded)
calibrates, its test split judges. A model trained elsewhere (``--keras-model``)
calibrates on every row of the data's ``x_train``, which must be rows it was not
trained on, and is judged on ``x_test`` (without one, on a seeded fifth of
``x_train`` held out first). Nothing is written to the store unless every step
succeeds.

A calibration whose rows are too few, or too often wrong among the most certain,
certifies no threshold: the saved model then flags every answer at that N. The
command says so in one line, with the fewest rows a threshold needs
(uncertainty.risk.fewest_rows_to_certify), and still saves the model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from artifacts.cards import ModelCard
from artifacts.store import DEFAULT_CLASSIFIER_NAME, MODEL_FILE, save_classifier
from commandline.arguments import (
    OneLineErrorParser,
    fail,
    open_fraction,
    positive_integer,
    sample_counts,
)
from training.config import check_model_name
from training.data import Dataset, DatasetError, load_dataset
from training.evaluation import evaluate_and_calibrate, uncertified_warning
from uncertainty.calibration import (
    DEFAULT_GRID,
    DEFAULT_NOVELTY_FALSE_ALARM_RATE,
    calibration_grid,
)
from uncertainty.sequential import DEFAULT_MAX_AUTO_SAMPLES

PROG = "uq-calibrate"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a classifier tag in the model store")
    source.add_argument("--keras-model", type=Path,
                        help="a .keras classifier trained elsewhere, to import (needs --data): "
                        "it calibrates on every row of the data's x_train and is judged on "
                        "x_test (without one, on a seeded fifth of x_train held out first)")
    parser.add_argument("--data", help="calibration data: a dataset name or npz:PATH "
                        "(default for --model: the model's own dataset)")
    parser.add_argument("--model-name", help="store name to save under (default: the "
                        "model's name, or uq-classifier for --keras-model)")
    parser.add_argument("--samples", type=sample_counts, default=DEFAULT_GRID,
                        help="the N to calibrate at, besides --n-samples "
                        "(default: 1,5,10,20,30,50,100)")
    parser.add_argument("--n-samples", type=positive_integer,
                        help="the default N of the service (default: the card's, or 30)")
    parser.add_argument("--risk-target-error", type=open_fraction,
                        help="error allowed among unflagged predictions (default: the card's, "
                        "or 0.02)")
    parser.add_argument("--conformal-alpha", type=open_fraction,
                        help="prediction sets miss the true class at most this often "
                        "(default: the card's, or 0.1)")
    parser.add_argument("--novelty-false-alarm-rate", type=open_fraction,
                        default=DEFAULT_NOVELTY_FALSE_ALARM_RATE,
                        help="share of in-distribution inputs flagged as novel "
                        "(default: %(default)s)")
    parser.add_argument("--max-auto-samples", type=positive_integer,
                        default=DEFAULT_MAX_AUTO_SAMPLES,
                        help='most samples of n_samples "auto", calibrated as its own N '
                        "(default: %(default)s)")
    parser.add_argument("--validation-fraction", type=open_fraction,
                        help="--model only: share of the data's x_train that calibrates "
                        "(default: the card's)")
    parser.add_argument("--seed", type=int, help="(default: the card's, or 0)")
    return parser


def stored_model(tag: str) -> tuple[Any, dict[str, Any], str]:
    """The Keras model, its card as stored (any version of the card) and the full tag."""
    import bentoml
    import keras

    try:
        model_ref = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise ValueError(f"model {tag!r} is not in the store ('bentoml models list' shows "
                         "what is)") from None
    model = keras.saving.load_model(model_ref.path_of(MODEL_FILE), compile=False)
    return model, dict(model_ref.info.metadata), str(model_ref.tag)


def keras_file(path: Path) -> Any:
    import keras

    if path.suffix != ".keras" or not path.is_file():
        raise ValueError(f"--keras-model must be an existing .keras file, got {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a bad archive
        raise ValueError(f"cannot load {path}: {error}") from None


def check_fits(model: Any, dataset: Dataset) -> None:
    """Raises ValueError unless ``dataset``'s rows and labels are ``model``'s input and
    output, and the engine can sample the model (dropout, a softmax output)."""
    from uncertainty.mc import MCEngine  # imports TensorFlow, once main has quieted its logs

    input_shape = tuple(model.inputs[0].shape[1:])
    if input_shape != dataset.input_shape:
        raise ValueError(f"the data's rows have shape {dataset.input_shape} but the model "
                         f"takes {input_shape}")
    classes = int(model.outputs[0].shape[-1])
    if classes != dataset.num_classes:
        raise ValueError(f"the data has {dataset.num_classes} classes but the model "
                         f"outputs {classes}")
    MCEngine(model)  # refuses, naming the layer, what it cannot sample


def dropout_rates(model: Any) -> dict[str, float]:
    import keras

    return {layer.name: float(layer.rate) for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.Dropout | keras.layers.AlphaDropout)}


def max_norm_value(model: Any) -> float:
    """The largest MaxNorm constraint on the model's kernels, 0 when there is none."""
    import keras

    values = [layer.kernel_constraint.max_value for layer in model._flatten_layers()
              if isinstance(getattr(layer, "kernel_constraint", None), keras.constraints.MaxNorm)]
    return float(max(values, default=0.0))


def calibrate_and_save(args: argparse.Namespace) -> tuple[str, Any, int]:
    """Everything after parsing: the saved tag, its card and the number of calibration
    rows; raises ValueError or DatasetError with one line."""
    if args.max_auto_samples < 2:
        raise ValueError(f"--max-auto-samples must be >= 2 (a standard error needs two "
                         f"samples), got {args.max_auto_samples}")
    if args.model:
        model, stored, tag = stored_model(args.model)
        name = args.model_name or tag.split(":")[0]
    else:
        if not args.data:
            raise ValueError("--keras-model needs --data: the rows to calibrate on")
        if args.validation_fraction is not None:
            raise ValueError("--validation-fraction applies to --model only: an imported "
                             "model calibrates on every row of the data's x_train")
        model, stored, tag = keras_file(args.keras_model), {}, str(args.keras_model)
        name = args.model_name or DEFAULT_CLASSIFIER_NAME
    check_model_name(name)
    training = stored.get("training", {})
    options = {
        "n_samples": _given(args.n_samples, stored.get("default_n_samples", 30)),
        "risk_target_error": _given(args.risk_target_error,
                                    stored.get("risk_policy", {}).get("target_error", 0.02)),
        "conformal_alpha": _given(args.conformal_alpha, stored.get("conformal_alpha", 0.1)),
        "validation_fraction": _given(args.validation_fraction,
                                      training.get("validation_fraction", 0.1)),
        "seed": _given(args.seed, training.get("seed", 0)),
    }
    data = args.data or stored["dataset"]
    dataset = load_dataset(data, options["validation_fraction"], options["seed"])
    check_fits(model, dataset)
    x_calibration, y_calibration = calibration_rows(dataset, imported=not args.model)
    grid = calibration_grid(args.samples, options["n_samples"])
    print(f"calibrating {tag} on {len(x_calibration)} rows of {data} at N = "
          f"{', '.join(map(str, grid))}", flush=True)
    evaluation = evaluate_and_calibrate(
        model, x_calibration, y_calibration, dataset.x_test, dataset.y_test,
        n_samples=options["n_samples"], calibration_grid=grid,
        risk_target_error=options["risk_target_error"],
        conformal_alpha=options["conformal_alpha"],
        novelty_false_alarm_rate=args.novelty_false_alarm_rate, seed=options["seed"],
        max_auto_samples=args.max_auto_samples,
    )
    card = ModelCard(
        dataset=dataset.name,
        class_names=list(dataset.class_names),
        input_shape=list(dataset.input_shape),
        value_range=stored.get("value_range", dataset.value_range),
        architecture=stored.get("architecture", "imported"),
        max_norm_value=stored.get("max_norm_value", max_norm_value(model)),
        dropout_rates=stored.get("dropout_rates") or dropout_rates(model),
        default_n_samples=options["n_samples"],
        test_metrics=evaluation.test_metrics,
        conformal_alpha=options["conformal_alpha"],
        calibrations=evaluation.calibrations,
        training={**training, "calibrated_from": tag, "calibration_data": data},
        auto_calibration=evaluation.auto_calibration,
    )
    return save_classifier(model, card, name), card, len(x_calibration)


def calibration_rows(dataset: Dataset, imported: bool) -> tuple[Any, Any]:
    """The rows that calibrate ``[rows, *input_shape]`` and their labels: a stored model's
    validation split, held out from its training; for an imported model, trained on
    none of the data, every row of x_train."""
    import numpy as np

    if not imported:
        return dataset.x_val, dataset.y_val
    return (np.concatenate([dataset.x_train, dataset.x_val]),
            np.concatenate([dataset.y_train, dataset.y_val]))


def _given(value: Any, default: Any) -> Any:
    """A command-line value when given, else what the stored card says."""
    return default if value is None else value


def calibration_table(card: Any) -> str:
    lines = [f"{'N':>5} {'error-risk score':>22} {'threshold':>10} {'cal. coverage':>13} "
             f"{'conformal q':>11} {'novelty threshold':>17}"]
    for calibration in card.calibrations:
        policy = calibration.risk_policy
        lines.append(
            f"{calibration.n_samples:>5} {policy.metric:>22} {policy.threshold:>10.4g} "
            f"{policy.calibration_coverage:>13.3f} {calibration.conformal_quantile:>11.4f} "
            f"{calibration.novelty_policy.threshold:>17.4g}"
        )
    auto = card.auto_calibration
    if auto is not None:
        lines.append(
            f"{'auto':>5} {auto.risk_policy.metric:>22} {auto.risk_policy.threshold:>10.4g} "
            f"{auto.risk_policy.calibration_coverage:>13.3f} {auto.conformal_quantile:>11.4f} "
            f"{auto.novelty_policy.threshold:>17.4g}  (mean N {auto.mean_n_samples:.1f} of "
            f"at most {auto.max_samples}, stopping at the thresholds of N="
            f"{auto.stopping_n_samples})"
        )
    mc = card.test_metrics["mc"]
    lines.append(
        f"test split at N={card.default_n_samples}: accuracy {mc['accuracy']:.4f}, error among "
        f"unflagged {mc['selective_error']:.4f} (target {card.risk_policy.target_error}), "
        f"conformal coverage {mc['conformal_coverage']:.3f}, novelty adds "
        f"{mc['novelty_added_fraction']:.1%} flags"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        tag, card, rows = calibrate_and_save(args)
    except (ValueError, DatasetError) as error:
        return fail(PROG, str(error))
    print(calibration_table(card))
    print(f"saved {tag}")
    warning = uncertified_warning(card, rows)
    if warning:
        print(f"{PROG}: warning: {warning}; calibrate on more rows, or allow a larger "
              "--risk-target-error", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
