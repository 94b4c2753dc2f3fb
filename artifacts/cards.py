"""Model cards: what a stored classifier or generator needs to be served, and how it
was made. Plain pydantic models; the store keeps them in an entry's metadata."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field, model_validator

from uncertainty.calibration import Calibration, for_n_samples
from uncertainty.risk import RiskPolicy
from uncertainty.sequential import AutoCalibration


def image_shape(input_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The shape an uploaded image is read at for a model of ``input_shape``: the input
    shape itself for grayscale or RGB images (``[height, width]``, ``[height, width, 1 or
    3]``); a grayscale square for a flat input of a square size (64 -> ``[8, 8]``); None for
    any other input, which has no image shape."""
    if len(input_shape) == 2 or (len(input_shape) == 3 and input_shape[2] in (1, 3)):
        return tuple(input_shape)
    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side == input_shape[0]:
            return side, side
    return None


class ModelCard(BaseModel):
    """What a served classifier needs to judge its own answers, and how it was made."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    class_names: list[str]
    input_shape: list[int]  # one instance, without the batch axis
    value_range: tuple[float, float]  # raw pixel values the model expects
    architecture: str
    max_norm_value: float
    dropout_rates: dict[str, float]  # dropout layer name -> rate
    default_n_samples: int
    test_metrics: dict[str, dict[str, float]]  # "deterministic" and "mc" -> name -> value
    conformal_alpha: float
    calibrations: list[Calibration]  # one per calibrated N, ascending
    training: dict[str, Any]  # the training configuration, for the record
    #: n_samples "auto" (uncertainty.sequential): the procedure and its own calibration;
    #: None for cards calibrated before it existed (uq-calibrate adds it)
    auto_calibration: AutoCalibration | None = None

    @model_validator(mode="after")
    def _default_n_is_calibrated(self) -> ModelCard:
        counts = self.calibrated_n_samples
        if counts != sorted(set(counts)) or self.default_n_samples not in counts:
            raise ValueError(
                f"calibrations must ascend in N and include default_n_samples "
                f"{self.default_n_samples}, got N = {counts}"
            )
        return self

    @property
    def calibrated_n_samples(self) -> list[int]:
        return [calibration.n_samples for calibration in self.calibrations]

    def calibration_for(self, n_samples: int) -> Calibration:
        """The calibration a prediction with ``n_samples`` samples uses."""
        return for_n_samples(self.calibrations, n_samples)

    @computed_field
    @property
    def image_shape(self) -> list[int] | None:
        """What /predict_image reads an upload at: :func:`image_shape` of the input."""
        shape = image_shape(self.input_shape)
        return None if shape is None else list(shape)

    @computed_field
    @property
    def risk_policy(self) -> RiskPolicy:
        """The risk policy at the default N."""
        return self.calibration_for(self.default_n_samples).risk_policy

    @computed_field
    @property
    def conformal_quantile(self) -> float:
        """The conformal quantile at the default N."""
        return self.calibration_for(self.default_n_samples).conformal_quantile


class GeneratorCard(BaseModel):
    """What a served GAN generator needs: it maps standard-normal latent vectors
    ``[batch, latent_dim]`` to images ``[batch, *output_shape]`` in ``value_range``,
    the classifier's input for the same dataset."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    latent_dim: int
    output_shape: list[int]  # one image, without the batch axis: the classifier's input_shape
    value_range: tuple[float, float]  # raw pixel values, as the classifier expects them
    preset: str
    training: dict[str, Any]  # the training configuration, for the record
    metrics: dict[str, float]  # the last epoch's losses and discriminator accuracies

    def check_fits(
        self, tag: str, input_shape: list[int], value_range: tuple[float, float]
    ) -> None:
        """Raises ValueError unless this generator's images are a classifier's input."""
        if (list(self.output_shape) != list(input_shape)
                or tuple(self.value_range) != tuple(value_range)):
            raise ValueError(
                f"generator {tag} makes {list(self.output_shape)} images in "
                f"{list(self.value_range)}, but the classifier takes {list(input_shape)} in "
                f"{list(value_range)}"
            )


def training_record(config: Any) -> dict[str, Any]:
    """A training configuration (a dataclass) as plain JSON values, for a card."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
