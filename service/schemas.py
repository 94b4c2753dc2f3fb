"""Request and response schemas: the structure of the JSON, and the instance checks.

Instances are checked against the served model's input spec (shape, value range):
:func:`request_schemas` builds the bodies that carry instances from the served card
when the service starts. Each failed check raises ``ValueError`` with a message that
names what was expected; pydantic prefixes the field's location. Whether the served
card is calibrated for n_samples "auto" is the service's to check, with its predictor.

The OpenAPI document (/docs.json, OpenAPI 3.0 written by BentoML) states the
constraints too, so that clients and fuzzers build requests that reach the checks:
the instance shape and value range, and the ranges of the other fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import core_schema

from artifacts.inputs import InputSpec, json_type
from service.settings import settings

Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
#: The most samples a response may carry with ``return_samples``.
MAX_RETURNED_SAMPLES = 200
#: The request field ``return_samples``, on /predict and on each /predict_batched item.
RETURN_SAMPLES = Field(False, description="include every sample's probabilities (at most "
                       f"{MAX_RETURNED_SAMPLES} samples)")
NSamples = Annotated[StrictInt, Field(ge=1, le=settings.max_samples)]
#: n_samples "auto": the adaptive sample count (uncertainty.sequential)
AUTO = "auto"
_N_SAMPLES = TypeAdapter(NSamples)


def _count_or_auto(value: Any, handler: ValidatorFunctionWrapHandler) -> int | str:
    """An NSamples, or exactly "auto"; one message that says both."""
    if isinstance(value, str) and value == AUTO:
        return AUTO
    try:
        return _N_SAMPLES.validate_python(value)
    except ValidationError as error:
        problem = error.errors()[0]["msg"]
        raise ValueError(f'{problem}; expected an integer from 1 to {settings.max_samples} '
                         f'or "auto", got {value!r}') from None


#: One ``oneOf`` in the OpenAPI document: BentoML keeps only the first member of a
#: top-level field's ``anyOf``, which would drop "auto".
_N_SAMPLES_OR_AUTO_SCHEMA = {"oneOf": [
    {"type": "integer", "minimum": 1, "maximum": settings.max_samples},
    {"type": "string", "enum": [AUTO]},
]}
NSamplesOrAuto = Annotated[NSamples | Literal["auto"], WrapValidator(_count_or_auto),
                           WithJsonSchema(_N_SAMPLES_OR_AUTO_SCHEMA)]


#: An N in an answer: a count, or "auto" as the request asked (a ``oneOf`` for the same
#: reason).
SampleCount = Annotated[int | Literal["auto"], WithJsonSchema({"oneOf": [
    {"type": "integer"}, {"type": "string", "enum": [AUTO]}]})]


def _openapi_30_exclusive_minimum(schema: dict[str, Any]) -> None:
    """``gt`` as OpenAPI 3.0 states it (BentoML's document is 3.0): ``minimum`` with
    ``exclusiveMinimum: true``. pydantic writes JSON Schema's numeric
    ``exclusiveMinimum``, which 3.0 tools (schemathesis) refuse."""
    if "exclusiveMinimum" in schema:
        schema["minimum"] = schema.pop("exclusiveMinimum")
        schema["exclusiveMinimum"] = True


LatencyBudget = Annotated[float, Field(
    gt=0, le=600_000, allow_inf_nan=False,
    description="milliseconds the answer must arrive within; without n_samples, the service "
    "picks the largest calibrated N that fits (never below min_samples), else 429",
    json_schema_extra=_openapi_30_exclusive_minimum,
)]
MinSamples = Annotated[StrictInt, Field(
    ge=1, le=settings.max_samples,
    description="with latency_budget_ms: the fewest samples the service may pick (default 1)",
)]


class SampleChoice(BaseModel):
    """The fields that choose N: ``n_samples``, or ``latency_budget_ms`` (with
    ``min_samples``) for the service to pick it."""

    n_samples: NSamplesOrAuto | None = Field(
        None, description='MC samples, or "auto": as many as the answer needs (default: the '
        "card's, or the budget's pick)"
    )
    latency_budget_ms: LatencyBudget | None = None
    min_samples: MinSamples | None = None

    @model_validator(mode="after")
    def _min_samples_fits(self):
        if self.min_samples is None or self.n_samples is None:
            return self
        if self.n_samples == AUTO:
            raise ValueError('min_samples: n_samples "auto" picks its own N; give min_samples '
                             "only with an integer n_samples or none")
        if self.min_samples > self.n_samples:
            raise ValueError(f"min_samples: {self.min_samples} is above n_samples "
                             f"({self.n_samples}); expected at most n_samples")
        return self


def instance_json_schema(spec: InputSpec) -> dict[str, Any]:
    """One instance: ``spec.size`` numbers, or nested lists shaped ``spec.input_shape``,
    each within the value range."""
    low, high = spec.value_range
    number = {"type": "number", "minimum": low, "maximum": high}
    description = f"{spec.describe()}, each value in [{low:g}, {high:g}]"
    flat = _fixed_length_array(number, spec.size)
    if len(spec.input_shape) == 1:
        return {**flat, "description": description}
    shaped = number
    for length in reversed(spec.input_shape):
        shaped = _fixed_length_array(shaped, length)
    return {"oneOf": [flat, shaped], "description": description}


def _fixed_length_array(items: dict[str, Any], length: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": length, "maxItems": length}


def _nested_numbers(depth: int) -> core_schema.CoreSchema:
    """JSON numbers (not booleans, strings or null), finite, in lists nested ``depth``
    deep, read fail-fast: a body nested otherwise is given up at its first value."""
    schema = core_schema.float_schema(strict=True, allow_inf_nan=False)
    for _ in range(depth):
        schema = core_schema.list_schema(schema, fail_fast=True)
    return schema


def _as_array(numbers: list[Any]) -> np.ndarray | list[Any]:
    """Numbers of a regular nesting as one float64 array; a ragged nesting as it is."""
    try:
        return np.asarray(numbers, dtype=np.float64)
    except ValueError:
        return numbers


class _ReadAsNumbers:
    """Read a value in the first of these ways that fits: as numbers nested as deep as
    one of ``depths`` (in order), checked in pydantic's Rust core as it reads the JSON and
    made one array, which is faster than reading every value as a Python object and
    checking them one instance at a time; else as it is, for the instance checks to
    explain. The last way takes any value, so that an error has one location and says
    what was expected. A core schema of its own: BentoML rewrites the annotations of its
    inputs, and would disorder the metadata of nested ones."""

    def __init__(self, *depths: int) -> None:
        self.depths = depths

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        ways = [core_schema.no_info_after_validator_function(_as_array, _nested_numbers(depth))
                for depth in self.depths]
        return core_schema.union_schema([*ways, core_schema.any_schema()], mode="left_to_right")


class RequestSchemas(NamedTuple):
    """The request bodies that carry instances, for one served model."""

    predict_request: type[SampleChoice]
    batch_item: type[SampleChoice]


def request_schemas(spec: InputSpec) -> RequestSchemas:
    """The bodies that carry instances of ``spec``, the served card's: checked against it
    and described by it in the OpenAPI document."""
    instance_schema = instance_json_schema(spec)

    def state_instance(schema: dict[str, Any]) -> None:
        """One instance's schema in place of the ways it is read (:class:`_ReadAsNumbers`)."""
        schema.pop("anyOf", None)
        schema.update(instance_schema)

    def state_instances(schema: dict[str, Any]) -> None:
        schema.pop("anyOf", None)
        schema.update({"type": "array", "items": dict(instance_schema), "minItems": 1,
                       "maxItems": settings.max_instances})

    def checked_instance(raw: np.ndarray | Any) -> np.ndarray:
        return spec.parse_numbers(raw) if isinstance(raw, np.ndarray) else spec.parse(raw)

    def checked_instances(raw: np.ndarray | Any) -> np.ndarray:
        if not isinstance(raw, np.ndarray | list):
            raise ValueError(f"expected a list of instances, got {json_type(raw)}")
        if not 1 <= len(raw) <= settings.max_instances:
            raise ValueError(f"expected at least 1 item and at most {settings.max_instances} "
                             f"items (instances), got {len(raw)}")
        return spec.parse_batch(raw) if isinstance(raw, np.ndarray) else spec.parse_all(raw)

    class PredictRequest(SampleChoice):
        """``POST /predict``: only ``instances`` is required."""

        model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

        instances: Annotated[
            list[Any],
            _ReadAsNumbers(3, 2, 4),  # instances shaped in 2-D, flat, shaped in 3-D
            Field(description="raw pixel values, each instance flat or shaped",
                  json_schema_extra=state_instances),
            AfterValidator(checked_instances),
        ]
        seed: Seed | None = Field(None, description="the same seed gives the same answer")
        risk_threshold: float | None = Field(
            None, ge=0, allow_inf_nan=False, description="override the card's risk threshold"
        )
        return_samples: StrictBool = RETURN_SAMPLES

    class BatchItem(SampleChoice):
        """One item of ``POST /predict_batched``."""

        model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

        instance: Annotated[list[Any], _ReadAsNumbers(2, 1, 3),
                            Field(json_schema_extra=state_instance),
                            AfterValidator(checked_instance)]
        return_samples: StrictBool = RETURN_SAMPLES

    return RequestSchemas(PredictRequest, BatchItem)


class GenerateRequest(BaseModel):
    """``POST /generate``: images from the GAN generator, each with its prediction."""

    model_config = ConfigDict(extra="forbid")

    count: Annotated[StrictInt, Field(ge=1, le=settings.max_instances)] = 8
    n_samples: NSamplesOrAuto | None = None
    seed: Seed | None = Field(None, description="the same seed gives the same response")


class Novelty(BaseModel):
    """The epistemic score against the threshold calibrated for a stated false-alarm rate."""

    metric: str
    score: float
    threshold: float
    calibrated_n_samples: SampleCount


class Risk(BaseModel):
    """``flagged`` when any reason holds: ``error_risk`` (``score`` of ``metric`` above
    ``threshold``) or ``novelty`` (``novelty.score`` above ``novelty.threshold``)."""

    flagged: bool
    reasons: list[Literal["error_risk", "novelty"]]
    metric: str
    score: float
    threshold: float
    novelty: Novelty
    calibrated_n_samples: SampleCount


class Prediction(BaseModel):
    n_samples: int  # the samples this prediction used (with "auto", its own)
    budget_limited: bool = False  # latency_budget_ms picked fewer than the largest calibrated N
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
    samples: list[list[float]] | None = Field(  # [n_samples, classes], on request only
        None, exclude_if=lambda samples: samples is None
    )
    feedback_token: str | None = Field(  # service/feedback.py; for POST /feedback
        None, exclude_if=lambda token: token is None
    )


class PredictResponse(BaseModel):
    request_id: str
    model: str
    n_samples: SampleCount
    predictions: list[Prediction]


class GeneratedSample(BaseModel):
    image: list[Any]  # shaped like the classifier's input, raw pixel values
    prediction: Prediction


class GenerateResponse(BaseModel):
    request_id: str
    generator: str
    model: str
    n_samples: SampleCount
    seed: int
    samples: list[GeneratedSample]


class FeedbackBody(RootModel[Annotated[Any, WithJsonSchema({"oneOf": [
        {"type": "object"}, {"type": "array", "items": {"type": "object"}}]})]]):
    """``POST /feedback``: ``{"token": ..., "label": ...}`` or a list of them. The body and
    its items are checked by service/feedback.py, which names and counts each problem
    (pydantic's union would name its members' types instead)."""


class FeedbackResult(BaseModel):
    """One counted feedback item: the prediction its token describes against the label."""

    prediction_id: str
    n_samples: int
    predicted_label: int
    label: int
    correct: bool
    covered: bool
    reasons: list[Literal["error_risk", "novelty"]]


class FeedbackResponse(BaseModel):
    request_id: str
    model: str
    accepted: int
    results: list[FeedbackResult]
