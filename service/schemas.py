"""Request and response schemas: the structure of the JSON, and the instance checks.

Instances are checked against the served model's input spec (shape, value
range), which the loaded predictor holds: the validators ask the current
service for it. Until the model is loaded the middleware answers 503, so they
never run before it. Each failed check raises ``ValueError`` with a message that
names what was expected; pydantic prefixes the field's location.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    RootModel,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from service import request_ids
from service.inputs import InputSpec
from service.settings import settings

Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
#: The most samples a response may carry with ``return_samples``.
MAX_RETURNED_SAMPLES = 200
NSamples = Annotated[StrictInt, Field(ge=1, le=settings.max_samples)]
#: n_samples "auto": the adaptive sample count (uncertainty.sequential)
AUTO = "auto"
_N_SAMPLES = TypeAdapter(NSamples)


def _count_or_auto(value: Any, handler: ValidatorFunctionWrapHandler) -> int | str:
    """An NSamples, or exactly "auto" when the served card is calibrated for it; one
    message that says both."""
    if isinstance(value, str) and value == AUTO:
        if served_auto() is None:
            raise ValueError('"auto" needs a model card calibrated for it; recalibrate with '
                             "uq-calibrate --model TAG, or give an integer")
        return AUTO
    try:
        return _N_SAMPLES.validate_python(value)
    except ValidationError as error:
        problem = error.errors()[0]["msg"]
        raise ValueError(f'{problem}; expected an integer from 1 to {settings.max_samples} '
                         f'or "auto", got {value!r}') from None


NSamplesOrAuto = Annotated[NSamples | Literal["auto"], WrapValidator(_count_or_auto)]


def served_auto() -> Any:
    """The served card's calibration of "auto" (uncertainty.sequential.AutoCalibration),
    or None."""
    import bentoml

    predictor = bentoml.get_current_service().predictor
    return None if predictor is None else predictor.card.auto_calibration


def served_input() -> InputSpec:
    """The input spec of the model this process serves."""
    import bentoml  # here: locust's processes import these schemas, not the service

    predictor = bentoml.get_current_service().predictor
    if predictor is None:  # the middleware answers 503 before this can happen
        raise ValueError("the model is still loading; retry once /readyz answers 200")
    return predictor.spec


def _checked_instance(raw: Any) -> Any:
    return served_input().parse(raw)


def _checked_instances(raw: list[Any]) -> list[Any]:
    return served_input().parse_all(raw)


class PredictRequest(BaseModel):
    """``POST /predict``: only ``instances`` is required."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    instances: Annotated[
        list[Any],
        Field(min_length=1, max_length=settings.max_instances,
              description="raw pixel values, each instance flat or shaped"),
        AfterValidator(_checked_instances),
    ]
    n_samples: NSamplesOrAuto | None = Field(
        None, description='MC samples, or "auto": as many as the answer needs (default: the '
        "card's)"
    )
    seed: Seed | None = Field(None, description="the same seed gives the same answer")
    risk_threshold: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="override the card's risk threshold"
    )
    return_samples: StrictBool = Field(
        False, description=f"include every sample's probabilities (at most "
        f"{MAX_RETURNED_SAMPLES} samples)"
    )


class BatchItem(BaseModel):
    """One item of ``POST /predict_batched``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    instance: Annotated[list[Any], AfterValidator(_checked_instance)]
    n_samples: NSamplesOrAuto | None = None
    #: the id of the request the item came in (items of many requests share a batch)
    _request_id: str | None = PrivateAttr(default_factory=request_ids.current)


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
    calibrated_n_samples: int | Literal["auto"]


class Risk(BaseModel):
    """``flagged`` when any reason holds: ``error_risk`` (``score`` of ``metric`` above
    ``threshold``) or ``novelty`` (``novelty.score`` above ``novelty.threshold``)."""

    flagged: bool
    reasons: list[Literal["error_risk", "novelty"]]
    metric: str
    score: float
    threshold: float
    novelty: Novelty
    calibrated_n_samples: int | Literal["auto"]


class Prediction(BaseModel):
    n_samples: int  # the samples this prediction used (with "auto", its own)
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
    n_samples: int | Literal["auto"]
    predictions: list[Prediction]


class GeneratedSample(BaseModel):
    image: list[Any]  # shaped like the classifier's input, raw pixel values
    prediction: Prediction


class GenerateResponse(BaseModel):
    request_id: str
    generator: str
    model: str
    n_samples: int | Literal["auto"]
    seed: int
    samples: list[GeneratedSample]


class FeedbackBody(RootModel[dict[str, Any] | list[Any]]):
    """``POST /feedback``: ``{"token": ..., "label": ...}`` or a list of them. The items are
    checked by service/feedback.py, which names and counts each problem."""


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
