"""Request and response schemas, and the checks that turn JSON instances into arrays.

Instances are checked against the served model's card (input shape, value
range). The card is known only once the worker has loaded the model, so the
checks read it from ``ACTIVE_INPUT`` (set once by the worker); until then every
API answers 503. Each failed check raises ``ValueError`` with a message that
names what was expected; pydantic prefixes the field's location.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

from service.settings import settings

Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
NSamples = Annotated[StrictInt, Field(ge=1, le=settings.max_samples)]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one instance must look like: from the model card."""

    input_shape: tuple[int, ...]
    value_range: tuple[float, float]

    @property
    def size(self) -> int:
        return math.prod(self.input_shape)

    def describe(self) -> str:
        if len(self.input_shape) == 1:
            return f"{self.size} numbers"
        return f"{self.size} numbers or a {' x '.join(map(str, self.input_shape))} nested list"


class _ActiveInput:
    """The served model's InputSpec, set by the worker once the model is loaded."""

    def __init__(self) -> None:
        self.spec: InputSpec | None = None


ACTIVE_INPUT = _ActiveInput()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


#: JSON numbers only (no booleans, strings or null), finite; checked in pydantic's
#: Rust core, several times faster than a Python loop over the values.
_Number = Annotated[float, Strict(), AllowInfNan(False)]
_FLAT_NUMBERS = TypeAdapter(list[_Number])
_NESTED_NUMBERS = TypeAdapter(list[list[_Number]])


def parse_instance(raw: Any, spec: InputSpec) -> np.ndarray:
    """One instance, flat or shaped, as float32 ``spec.input_shape``; raises ValueError."""
    expected = spec.describe()
    if not isinstance(raw, list):
        raise ValueError(f"expected {expected}, got {_json_type(raw)}")
    adapter = _NESTED_NUMBERS if raw and isinstance(raw[0], list) else _FLAT_NUMBERS
    try:
        array = np.asarray(adapter.validate_python(raw), dtype=np.float64)
    except (ValidationError, ValueError):  # a bad value, deeper or ragged nesting
        array = _array_or_explanation(raw, expected)
    if array.size == 0:
        raise ValueError(f"expected {expected}, got an empty list")
    if array.shape == spec.input_shape:
        pass
    elif array.ndim == 1 and array.size == spec.size:
        array = array.reshape(spec.input_shape)
    else:
        got = " x ".join(map(str, array.shape))
        raise ValueError(f"expected {expected}, got shape {got}")
    low, high = spec.value_range
    if array.min() < low or array.max() > high:
        raise ValueError(
            f"values must lie in the model's range [{low:g}, {high:g}], got "
            f"[{array.min():g}, {array.max():g}]"
        )
    return array.astype(np.float32)


def _array_or_explanation(raw: list, expected: str) -> np.ndarray:
    """The slow path: a regular nesting of numbers as an array, or a ValueError
    that says what is wrong."""
    try:
        values = np.asarray(raw, dtype=object)
    except ValueError:  # numpy refuses some ragged nestings outright
        values = None
    bad = [v for v in (values.flat if values is not None else ()) if type(v) not in (float, int)]
    if values is None or any(isinstance(v, list) for v in bad):  # others it keeps as lists
        raise ValueError(
            f"ragged nesting: every row must have the same length; expected {expected}"
        )
    if bad:
        raise ValueError(f"expected {expected}, got {_json_type(bad[0])} among the values")
    array = values.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite numbers, got NaN or Infinity")
    return array


def _active_spec() -> InputSpec:
    if ACTIVE_INPUT.spec is None:  # the middleware answers 503 before this can happen
        raise ValueError("the model is still loading; retry once /readyz answers 200")
    return ACTIVE_INPUT.spec


def _checked_instance(raw: Any) -> np.ndarray:
    return parse_instance(raw, _active_spec())


def _checked_instances(raw: list[Any]) -> list[np.ndarray]:
    spec = _active_spec()
    checked = []
    for index, instance in enumerate(raw):
        try:
            checked.append(parse_instance(instance, spec))
        except ValueError as error:
            raise ValueError(f"instance {index}: {error}") from None
    return checked


class PredictRequest(BaseModel):
    """``POST /predict``: only ``instances`` is required."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    instances: Annotated[
        list[Any],
        Field(min_length=1, max_length=settings.max_instances,
              description="raw pixel values, each instance flat or shaped"),
        AfterValidator(_checked_instances),
    ]
    n_samples: NSamples | None = Field(None, description="MC samples (default: the card's)")
    seed: Seed | None = Field(None, description="the same seed gives the same answer")
    risk_threshold: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="override the card's risk threshold"
    )


class BatchItem(BaseModel):
    """One item of ``POST /predict_batched``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    instance: Annotated[list[Any], AfterValidator(_checked_instance)]
    n_samples: NSamples | None = None


class GenerateRequest(BaseModel):
    """``POST /generate``: images from the GAN generator, each with its prediction."""

    model_config = ConfigDict(extra="forbid")

    count: Annotated[StrictInt, Field(ge=1, le=settings.max_instances)] = 8
    n_samples: NSamples | None = None
    seed: Seed | None = Field(None, description="the same seed gives the same response")


class Risk(BaseModel):
    flagged: bool
    metric: str
    score: float
    threshold: float


class Prediction(BaseModel):
    label: int
    class_name: str
    confidence: float
    probabilities: list[float]
    std: list[float]
    predictive_entropy: float
    expected_entropy: float
    mutual_information: float
    risk: Risk
    prediction_set: list[str]


class PredictResponse(BaseModel):
    model: str
    n_samples: int
    predictions: list[Prediction]


def parse_image(path: str, spec: InputSpec) -> np.ndarray:
    """An uploaded PNG or JPEG as one instance: grayscale or RGB as the input's
    channels, resized to the input's height and width, 0..255 mapped onto the
    card's value range. Raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    height, width = spec.input_shape[:2]
    channels = spec.input_shape[2] if len(spec.input_shape) == 3 else 1
    if len(spec.input_shape) not in (2, 3) or channels not in (1, 3):
        raise ValueError(f"this model takes {spec.describe()}, not images")
    try:
        with Image.open(path) as image:
            if image.format not in ("PNG", "JPEG"):
                raise ValueError(f"expected a PNG or JPEG image, got {image.format}")
            converted = image.convert("L" if channels == 1 else "RGB").resize(
                (width, height), Image.Resampling.BILINEAR
            )
            pixels = np.asarray(converted, dtype=np.float32)
    except (UnidentifiedImageError, OSError):
        raise ValueError("not a readable PNG or JPEG image") from None
    low, high = spec.value_range
    return (low + pixels * ((high - low) / 255.0)).reshape(spec.input_shape).astype(np.float32)


class GeneratedSample(BaseModel):
    image: list[Any]  # shaped like the classifier's input, raw pixel values
    prediction: Prediction


class GenerateResponse(BaseModel):
    generator: str
    model: str
    n_samples: int
    seed: int
    samples: list[GeneratedSample]
