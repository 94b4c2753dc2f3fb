"""Training configuration: plain frozen dataclasses, validated on construction.

No Keras import here, so that bad flags fail fast with a one-line message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from artifacts.store import DEFAULT_CLASSIFIER_NAME
from uncertainty.calibration import DEFAULT_GRID, DEFAULT_NOVELTY_FALSE_ALARM_RATE, calibration_grid

ARCHITECTURES = ("mlp", "cnn")
ACTIVATIONS = ("elu", "selu", "relu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str = "mlp"
    hidden_units: tuple[int, ...] = (1024, 1024)
    activation: str = "elu"  # selu switches to LeCun initialisation and AlphaDropout
    input_dropout: float = 0.1  # on the dense layers' input: pixels (mlp), conv features (cnn)
    hidden_dropout: float = 0.4
    max_norm_value: float = 3.0
    batch_norm: bool = False
    conv_filters: tuple[int, ...] = (32, 64)  # cnn only: one conv block per entry
    conv_dropout: float = 0.1  # cnn only: SpatialDropout2D after each conv block

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got "
                f"{self.architecture!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        for name in ("input_dropout", "hidden_dropout", "conv_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {rate}")
        if not self.max_norm_value > 0:
            raise ValueError(f"max_norm_value must be > 0, got {self.max_norm_value}")
        if not self.hidden_units or any(units < 1 for units in self.hidden_units):
            raise ValueError(f"hidden_units must be positive integers, got {self.hidden_units}")
        if any(filters < 1 for filters in self.conv_filters):
            raise ValueError(f"conv_filters must be positive integers, got {self.conv_filters}")


OPTIMIZERS = ("nadam", "adam", "sgd")
PRESET_NAMES = ("cnn", "mlp")
DEFAULT_PRESET = "mlp"
SCHEDULES = ("onecycle", "exponential", "piecewise", "plateau")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = "fashion_mnist"
    model_name: str = DEFAULT_CLASSIFIER_NAME
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "nadam"
    learning_rate: float = 1e-3
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    patience: int = 10
    validation_fraction: float = 0.1
    seed: int = 0
    n_samples: int = 30
    calibration_samples: tuple[int, ...] = DEFAULT_GRID
    risk_target_error: float = 0.02
    conformal_alpha: float = 0.1
    novelty_false_alarm_rate: float = DEFAULT_NOVELTY_FALSE_ALARM_RATE
    output_dir: Path = Path("reports/train")
    augment: bool = False  # random shifts of training images (training/augment.py)
    preset: str = "mlp"  # the name of the preset the other values started from
    model: ModelConfig = ModelConfig()

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 <= self.label_smoothing < 1,
             f"label_smoothing must lie in [0, 1), got {self.label_smoothing}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (0 < self.validation_fraction < 1,
             f"validation_fraction must lie in (0, 1), got {self.validation_fraction}"),
            (self.n_samples >= 1, f"n_samples must be >= 1, got {self.n_samples}"),
            (min(self.calibration_samples) >= 1,
             f"calibration_samples must be >= 1, got {self.calibration_samples}"),
            (0 < self.novelty_false_alarm_rate < 1,
             f"novelty_false_alarm_rate must lie in (0, 1), got {self.novelty_false_alarm_rate}"),
            (0 < self.risk_target_error < 1,
             f"risk_target_error must lie in (0, 1), got {self.risk_target_error}"),
            (0 < self.conformal_alpha < 1,
             f"conformal_alpha must lie in (0, 1), got {self.conformal_alpha}"),
            (self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES,
             f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.preset in PRESET_NAMES,
             f"preset must be one of {', '.join(PRESET_NAMES)}, got {self.preset!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_model_name(self.model_name)

    @property
    def calibration_grid(self) -> tuple[int, ...]:
        """The calibrated N: ``calibration_samples`` and the default N."""
        return calibration_grid(self.calibration_samples, self.n_samples)


#: uq-train's starting points, as option values over the defaults above. ``mlp`` (the
#: default): the classic dropout + max-norm MLP on pixels, every layer sampled. ``cnn``:
#: three conv blocks computed once per input, then a dense head whose dropout the engine
#: samples, trained on shifted images (docs/training.md compares the two).
PRESETS: dict[str, dict[str, object]] = {
    "mlp": {},
    "cnn": {
        "epochs": 24, "augment": True, "architecture": "cnn", "conv_filters": (32, 64, 128),
        "conv_dropout": 0.0, "batch_norm": True, "hidden_units": (256,),
        "input_dropout": 0.25, "hidden_dropout": 0.4,
    },
}


def check_model_name(name: str) -> None:
    import bentoml

    try:
        bentoml.Tag(name)
    except ValueError as error:
        raise ValueError(f"model_name {name!r} is not a valid BentoML name: {error}") from None


