"""What one instance of a stored model must look like, from its card, and the checks
that turn JSON instances, uploaded images and scored rows into arrays.

The spec comes from the model card (input shape, value range); the predictor
holds it once the model is loaded. Each failed check raises ``ValueError`` with
a message that names what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Annotated, Any

import numpy as np
from pydantic import AllowInfNan, Strict, TypeAdapter, ValidationError

from artifacts.cards import image_shape


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one instance must look like: from the model card."""

    input_shape: tuple[int, ...]
    value_range: tuple[float, float]

    @property
    def size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """The shape an uploaded image is read at (artifacts.cards.image_shape), or None."""
        return image_shape(self.input_shape)

    def describe(self) -> str:
        if len(self.input_shape) == 1:
            return f"{self.size} numbers"
        return f"{self.size} numbers or a {' x '.join(map(str, self.input_shape))} nested list"

    def parse(self, raw: Any) -> np.ndarray:
        """One instance, flat or shaped, as float32 ``input_shape``; raises ValueError."""
        return parse_instance(raw, self)

    def parse_all(self, raw: list[Any]) -> np.ndarray:
        """Every instance of a list, as float32 ``[len(raw), *input_shape]``; the error
        names the index."""
        checked = []
        for index, instance in enumerate(raw):
            try:
                checked.append(parse_instance(instance, self))
            except ValueError as error:
                raise ValueError(f"instance {index}: {error}") from None
        return np.stack(checked)

    def parse_batch(self, numbers: np.ndarray) -> np.ndarray:
        """Instances already read as one array of numbers (finite, regular nesting), flat
        ``[batch, size]`` or shaped ``[batch, *input_shape]``, as float32 ``[batch,
        *input_shape]``; any other shape, or a value out of range, goes through
        :meth:`parse_all`, whose error names the instance."""
        if self._fits(numbers.shape[1:], numbers):
            return numbers.reshape(len(numbers), *self.input_shape).astype(np.float32)
        return self.parse_all(numbers.tolist())

    def parse_numbers(self, numbers: np.ndarray) -> np.ndarray:
        """One instance already read as an array of numbers, as :meth:`parse_batch`
        takes a batch."""
        if self._fits(numbers.shape, numbers):
            return numbers.reshape(self.input_shape).astype(np.float32)
        return self.parse(numbers.tolist())

    def _fits(self, shape: tuple[int, ...], numbers: np.ndarray) -> bool:
        low, high = self.value_range
        return (shape in (self.input_shape, (self.size,)) and numbers.size > 0
                and low <= numbers.min() and numbers.max() <= high)


def json_type(value: Any) -> str:
    """How a JSON value's type is named in error messages."""
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
    return "a number"


#: JSON numbers only (no booleans, strings or null), finite; checked in pydantic's
#: Rust core, several times faster than a Python loop over the values.
_Number = Annotated[float, Strict(), AllowInfNan(False)]
_FLAT_NUMBERS = TypeAdapter(list[_Number])
_NESTED_NUMBERS = TypeAdapter(list[list[_Number]])


def parse_instance(raw: Any, spec: InputSpec) -> np.ndarray:
    """One instance, flat or shaped, as float32 ``spec.input_shape``; raises ValueError."""
    expected = spec.describe()
    if not isinstance(raw, list):
        raise ValueError(f"expected {expected}, got {json_type(raw)}")
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
        raise ValueError(f"expected {expected}, got {json_type(bad[0])} among the values")
    try:
        array = values.astype(np.float64)
    except OverflowError:  # an integer beyond float64's range
        raise ValueError("values must be finite numbers, got an integer too large for a "
                         "64-bit float") from None
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite numbers, got NaN or Infinity")
    return array


IMAGE_FORMATS = ("PNG", "JPEG")
#: What Pillow's decoders raise for a malformed file: their words are not for the caller.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error,
                           IndexError, TypeError)


def parse_image(path: str, spec: InputSpec) -> np.ndarray:
    """An uploaded PNG or JPEG as one instance: read at the spec's image shape (grayscale
    or RGB as its channels, resized to its height and width), 0..255 mapped onto the
    card's value range. Raises ValueError with a message for the caller, whatever
    Pillow raised."""
    from PIL import Image

    shape = spec.image_shape
    if shape is None:
        raise ValueError(f"this model takes {spec.describe()} and has no image shape; send "
                         "the numbers to /predict")
    height, width = shape[:2]
    grayscale = len(shape) == 2 or shape[2] == 1
    try:
        with Image.open(path) as image:
            image_format = image.format
            if image_format in IMAGE_FORMATS:
                converted = image.convert("L" if grayscale else "RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                pixels = np.asarray(converted, dtype=np.float32)
    except Image.DecompressionBombError:
        raise ValueError(f"expected at most {2 * Image.MAX_IMAGE_PIXELS} pixels, got a larger "
                         "image") from None
    except UNREADABLE_IMAGE_ERRORS:
        raise ValueError("not a readable PNG or JPEG image") from None
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"expected a PNG or JPEG image, got {image_format}")
    low, high = spec.value_range
    return (low + pixels * ((high - low) / 255.0)).reshape(spec.input_shape).astype(np.float32)
