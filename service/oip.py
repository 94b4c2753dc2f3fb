"""The Open Inference Protocol (KServe V2 / Triton HTTP REST) under ``/v2``.

    GET  /v2                                              server metadata
    GET  /v2/health/live, /v2/health/ready                200; ready: 503 while loading
    GET  /v2/models/{name}[/versions/{version}]           model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready     200; 503 while loading
    POST /v2/models/{name}[/versions/{version}]/infer     MC dropout inference

The model name is the store name of the served tag (``uq-classifier``), the
version its store version; any other name or version: 404. One input tensor
(any name): a numeric datatype of the protocol, shape ``[batch, *input_shape]``
or ``[batch, size]``, data flat or nested in row-major order, or binary (the
binary tensor data extension). Output tensors are named as the prediction's
fields (:data:`OUTPUTS`, with the N each row used and each row's
``feedback_token``, which ``POST /feedback`` redeems); the request's ``outputs``
selects a subset, its ``parameters`` carry what ``/predict`` reads (``n_samples``, an
integer or "auto"; ``latency_budget_ms`` and ``min_samples``; ``seed``;
``risk_threshold``), and the response's ``parameters`` report the N used, whether a
budget lowered it, the model tag and the risk policy applied. The classification
extension (``"classification": k`` in an output's parameters) answers the top k
classes as BYTES ``"score:index:label"``.

Errors are ``{"error": message}``: 400 for a bad request (naming the field), 404
for an unknown model, version or V2 endpoint, 405, 413 for a body over
UQ_MAX_BODY_BYTES, 415 for an unknown Content-Encoding, 429 with Retry-After when
the service is overloaded or a latency budget cannot be met, 503 while the model loads.

A Starlette app of its own, mounted on the BentoML service (a route with path
parameters cannot be a ``@bentoml.api``). It reads the served predictor from the
service instance and imports no TensorFlow.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import to_json
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from service import metrics
from service.inputs import InputSpec
from service.middleware import drain_limit
from service.schemas import SampleChoice, SampleCount, Seed
from service.settings import settings

if TYPE_CHECKING:
    from service.predictor import Predictor
    from service.schemas import Prediction

logger = logging.getLogger(__name__)

SERVER_NAME = "uq-serving"
PLATFORM = "keras"
#: The input tensor's name in the model metadata (a request may name it as it likes).
INPUT_NAME = "input"
EXTENSIONS = ("classification", "binary_tensor_data", "parameters")
#: The binary tensor data extension: the JSON header's length in the HTTP body.
HEADER_LENGTH = "Inference-Header-Content-Length"
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Metrics label of the infer route (uq_requests, uq_predictions, ...).
ENDPOINT = "v2_infer"
#: (x [batch, *input_shape], the request's choice of N, seed, risk_threshold) -> one
#: prediction per row, and the N the response reports (an integer, or "auto")
Predict = Callable[[np.ndarray, SampleChoice, "int | None", "float | None"],
                   Awaitable[tuple[list["Prediction"], SampleCount]]]

#: The protocol's numeric datatypes, as little-endian numpy types (for binary data).
NUMERIC_DATATYPES = {
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
#: Output datatypes as numpy types.
OUTPUT_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "BOOL": np.dtype(bool),
                 "BYTES": np.dtype(object)}


@dataclass(frozen=True)
class OutputTensor:
    """One output: its datatype, and whether it has a class axis (``[B, classes]``)."""

    datatype: str
    per_class: bool


#: Output tensors by name, in the order of a response that selects none.
OUTPUTS = {
    "probabilities": OutputTensor("FP32", per_class=True),
    "std": OutputTensor("FP32", per_class=True),
    "label": OutputTensor("INT64", per_class=False),
    "confidence": OutputTensor("FP32", per_class=False),
    "predictive_entropy": OutputTensor("FP32", per_class=False),
    "expected_entropy": OutputTensor("FP32", per_class=False),
    "mutual_information": OutputTensor("FP32", per_class=False),
    "risk_score": OutputTensor("FP32", per_class=False),
    "flagged": OutputTensor("BOOL", per_class=False),
    "prediction_set": OutputTensor("BOOL", per_class=True),
    "n_samples": OutputTensor("INT64", per_class=False),
    "feedback_token": OutputTensor("BYTES", per_class=False),
}
#: The outputs the classification extension applies to (class scores).
CLASSIFIABLE = ("probabilities", "std")
_FIELDS: dict[str, Callable[[Prediction], Any]] = {
    **{name: attrgetter(name) for name in OUTPUTS},
    "risk_score": attrgetter("risk.score"),
    "flagged": attrgetter("risk.flagged"),
}

#: Request parameters that clients of other servers send and this one does not
#: read (Triton's reserved ones, MLServer's codec hint): accepted and ignored.
IGNORED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers", "content_type")
IGNORED_PREFIX = "triton_"


# --- the protocol's JSON objects -----------------------------------------------------

Parameters = dict[str, Any]  # $string | $number | $boolean values


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class InferenceParameters(SampleChoice):
    """The request parameters this server reads: the choice of N as on ``/predict``,
    and the rest; others are refused unless they are in :data:`IGNORED_PARAMETERS`."""

    model_config = ConfigDict(extra="allow")

    seed: Seed | None = None
    risk_threshold: Annotated[float, Strict(), AllowInfNan(False), Field(ge=0)] | None = None
    binary_data_output: StrictBool = False


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data: StrictBool | None = None
    classification: Annotated[StrictInt, Field(ge=1)] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str


class ProtocolError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status,
                            headers=self.headers)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _validation_message(error: ValidationError, prefix: str = "", limit: int = 3) -> str:
    """Pydantic's first errors as ``field.path: what was expected``."""
    parts = []
    for detail in error.errors(include_url=False)[:limit]:
        parts_of_location = (*prefix.split("."), *detail["loc"])
        location = ".".join(str(part) for part in parts_of_location if part != "")
        message = detail["msg"].removeprefix("Value error, ")
        parts.append(f"{location or 'request body'}: {message}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# --- requests -------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int | None  # top k, or None for the tensor itself


@dataclass(frozen=True)
class ParsedRequest:
    id: str | None
    x: np.ndarray  # [batch, *input_shape] float32
    parameters: InferenceParameters
    outputs: list[RequestedOutput]


def parse_infer_request(
    body: bytes, header_length: str | None, spec: InputSpec, max_instances: int
) -> ParsedRequest:
    """An inference request body (JSON, or a JSON header and binary tensor data) as
    checked arrays and options; raises ProtocolError (400)."""
    binary = b""
    if header_length is not None:
        digits = header_length.strip()
        if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
            raise _bad(f"{HEADER_LENGTH}: expected the JSON header's length in bytes, at "
                       f"most the body's {len(body)}, got {header_length!r}")
        body, binary = body[:int(digits)], body[int(digits):]
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as error:
        raise _bad(_validation_message(error)) from None
    try:
        parameters = InferenceParameters.model_validate(request.parameters or {})
    except ValidationError as error:
        raise _bad(_validation_message(error, "parameters")) from None
    unknown = [key for key in parameters.model_extra or {}
               if key not in IGNORED_PARAMETERS and not key.startswith(IGNORED_PREFIX)]
    if unknown:
        raise _bad(f"parameters.{unknown[0]}: unknown parameter; this server reads "
                   f"{', '.join(InferenceParameters.model_fields)}")
    if len(request.inputs) != 1:
        raise _bad(f"inputs: this model takes one input tensor ({INPUT_NAME!r}), got "
                   f"{len(request.inputs)}")
    x = input_array(request.inputs[0], binary, spec, max_instances)
    return ParsedRequest(request.id, x, parameters,
                         requested_outputs(request.outputs, parameters.binary_data_output))


def input_array(
    tensor: RequestInput, binary: bytes, spec: InputSpec, max_instances: int
) -> np.ndarray:
    """The input tensor as float32 ``[batch, *input_shape]``; raises ProtocolError."""
    where = "inputs.0"
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise _bad(f"{where}.datatype: expected a numeric datatype "
                   f"({', '.join(NUMERIC_DATATYPES)}), got {tensor.datatype!r}")
    shape = tuple(tensor.shape)
    instance_shapes = {spec.input_shape, (spec.size,)}
    if len(shape) < 2 or shape[1:] not in instance_shapes:
        expected = " or ".join(str(["batch", *s]).replace("'", "") for s in sorted(instance_shapes))
        raise _bad(f"{where}.shape: expected {expected}, got {list(shape)}")
    batch = shape[0]
    if not 1 <= batch <= max_instances:
        raise _bad(f"{where}.shape: the batch must be 1 to {max_instances} instances "
                   f"(UQ_MAX_INSTANCES), got {batch}")
    count = batch * spec.size
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        values = _binary_values(tensor, binary, binary_size, count, where)
    elif tensor.data is None:
        raise _bad(f"{where}.data: required (or binary data and "
                   "parameters.binary_data_size)")
    else:
        if binary:
            raise _bad(f"{HEADER_LENGTH}: binary data follows the JSON header, but no input "
                       "has parameters.binary_data_size")
        values = _json_values(tensor.data, tensor.datatype, shape, count, where)
    low, high = spec.value_range
    if values.min() < low or values.max() > high:
        raise _bad(f"{where}.data: values must lie in the model's range [{low:g}, {high:g}], "
                   f"got [{values.min():g}, {values.max():g}]")
    return values.astype(np.float32).reshape((batch, *spec.input_shape))


def _binary_values(tensor: RequestInput, binary: bytes, size: Any, count: int,
                   where: str) -> np.ndarray:
    dtype = np.dtype(NUMERIC_DATATYPES[tensor.datatype])
    if tensor.data is not None:
        raise _bad(f"{where}: give data or parameters.binary_data_size, not both")
    if type(size) is not int or size < 0:
        raise _bad(f"{where}.parameters.binary_data_size: expected a byte count, got {size!r}")
    if size != count * dtype.itemsize or len(binary) != size:
        raise _bad(f"{where}.parameters.binary_data_size: shape {list(tensor.shape)} of "
                   f"{tensor.datatype} takes {count * dtype.itemsize} bytes; "
                   f"binary_data_size says {size}, the body holds {len(binary)}")
    values = np.frombuffer(binary, dtype=dtype)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise _bad(f"{where}: values must be finite numbers, got NaN or Infinity")
    return values.astype(np.float64)


def _json_values(data: list[Any], datatype: str, shape: tuple[int, ...], count: int,
                 where: str) -> np.ndarray:
    depth, first = 1, data
    while first and isinstance(first[0], list):
        depth, first = depth + 1, first[0]
    if depth not in (1, len(shape)):
        raise _bad(f"{where}.data: nested {depth} deep; give the values flat, or nested as "
                   f"the shape {list(shape)}")
    try:
        checked = _values_adapter(datatype, depth).validate_python(data)
    except ValidationError as error:
        raise _bad(_validation_message(error, f"{where}.data")) from None
    try:
        values = np.asarray(checked, dtype=np.float64)
    except ValueError:  # ragged nesting
        raise _bad(f"{where}.data: ragged nesting; nest the values as the shape "
                   f"{list(shape)}, or give them flat") from None
    if depth == 1 and values.size != count:
        raise _bad(f"{where}.data: shape {list(shape)} takes {count} values, got {values.size}")
    if depth > 1 and values.shape != shape:
        raise _bad(f"{where}.data: nested as {list(values.shape)}, but the shape is "
                   f"{list(shape)}; nest the values as the shape, or give them flat")
    return values.ravel()


@functools.cache
def _values_adapter(datatype: str, depth: int) -> TypeAdapter:
    """Strict JSON values of ``datatype`` nested ``depth`` deep (no booleans, strings or
    null; integers in the type's range; finite floats), checked in pydantic's core."""
    if datatype.startswith("FP"):
        element: Any = Annotated[float, Strict(), AllowInfNan(False)]
    else:
        limits = np.iinfo(np.dtype(NUMERIC_DATATYPES[datatype]))
        element = Annotated[int, Strict(), Field(ge=int(limits.min), le=int(limits.max))]
    for _ in range(depth):
        element = list[element]
    return TypeAdapter(element)


def requested_outputs(
    outputs: list[RequestOutput] | None, binary_default: bool
) -> list[RequestedOutput]:
    """The outputs to answer, in order: all of them when the request names none."""
    if not outputs:
        return [RequestedOutput(name, binary_default, None) for name in OUTPUTS]
    requested, seen = [], set()
    for index, output in enumerate(outputs):
        where = f"outputs.{index}"
        if output.name not in OUTPUTS:
            raise _bad(f"{where}.name: unknown output {output.name!r}; this model has "
                       f"{', '.join(OUTPUTS)}")
        if output.name in seen:
            raise _bad(f"{where}.name: {output.name!r} is requested twice")
        seen.add(output.name)
        try:
            parameters = OutputParameters.model_validate(output.parameters or {})
        except ValidationError as error:
            raise _bad(_validation_message(error, f"{where}.parameters")) from None
        if any(key.startswith("shared_memory") for key in parameters.model_extra or {}):
            raise _bad(f"{where}.parameters: shared memory is not supported; ask for the "
                       "data in the response (JSON or binary_data)")
        if parameters.classification is not None and output.name not in CLASSIFIABLE:
            raise _bad(f"{where}.parameters.classification: applies to "
                       f"{' and '.join(CLASSIFIABLE)}, not {output.name!r}")
        binary = binary_default if parameters.binary_data is None else parameters.binary_data
        requested.append(RequestedOutput(output.name, binary, parameters.classification))
    return requested


# --- responses ------------------------------------------------------------------------

def output_array(name: str, predictions: Sequence[Prediction], class_names: list[str]
                 ) -> np.ndarray:
    """The output tensor ``name``: ``[batch, classes]`` or ``[batch]``."""
    if name == "prediction_set":
        index = {class_name: i for i, class_name in enumerate(class_names)}
        members = np.zeros((len(predictions), len(class_names)), dtype=bool)
        for row, prediction in enumerate(predictions):
            members[row, [index[class_name] for class_name in prediction.prediction_set]] = True
        return members
    getter = _FIELDS[name]
    return np.asarray([getter(p) for p in predictions], dtype=OUTPUT_DTYPES[OUTPUTS[name].datatype])


def classification(scores: np.ndarray, k: int, class_names: list[str]) -> np.ndarray:
    """The top ``k`` of ``scores`` ``[batch, classes]`` (all when k exceeds them), highest
    first, as ``"score:index:label"`` strings ``[batch, k]`` (the score as float32)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([[f"{scores[row, i]!s}:{i}:{class_names[i]}" for i in indices]
                     for row, indices in enumerate(top)], dtype=object)


def _binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":  # each element: its length (uint32, little-endian), its bytes
        encoded = [str(element).encode() for element in array.ravel()]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.ascontiguousarray(array, dtype=OUTPUT_DTYPES[datatype]).tobytes()


def infer_response(
    parsed: ParsedRequest, predictions: Sequence[Prediction], n_samples: SampleCount,
    tag: str, class_names: list[str],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    outputs, blobs = [], []
    for requested in parsed.outputs:
        array = output_array(requested.name, predictions, class_names)
        datatype = OUTPUTS[requested.name].datatype
        if requested.classification is not None:
            array, datatype = classification(array, requested.classification, class_names), "BYTES"
        output: dict[str, Any] = {"name": requested.name, "shape": list(array.shape),
                                  "datatype": datatype}
        if requested.binary:
            blob = _binary(array, datatype)
            blobs.append(blob)
            output["parameters"] = {"binary_data_size": len(blob)}
        else:
            output["data"] = array.ravel().tolist()
        outputs.append(output)
    first = predictions[0]
    parameters = {
        "n_samples": n_samples,
        "budget_limited": first.budget_limited,
        "model": tag,
        "risk_metric": first.risk.metric,
        "risk_threshold": first.risk.threshold,
        "calibrated_n_samples": first.risk.calibrated_n_samples,
    }
    if parsed.parameters.seed is not None:
        parameters["seed"] = parsed.parameters.seed
    name, _, version = tag.partition(":")
    response = {"model_name": name, "model_version": version}
    if parsed.id is not None:
        response["id"] = parsed.id
    # an InferenceResponse, as plain data: pydantic's model_construct per output took
    # more time than the rest of the response together
    header = to_json({**response, "parameters": parameters, "outputs": outputs})
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def model_metadata(predictor: Predictor) -> ModelMetadataResponse:
    name, _, version = predictor.tag.partition(":")
    classes = len(predictor.card.class_names)
    return ModelMetadataResponse(
        name=name, versions=[version], platform=PLATFORM,
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP32",
                               shape=[-1, *predictor.spec.input_shape])],
        outputs=[TensorMetadata(name=output_name, datatype=output.datatype,
                                shape=[-1, classes] if output.per_class else [-1])
                 for output_name, output in OUTPUTS.items()],
    )


# --- the app --------------------------------------------------------------------------

def served_predictor() -> Predictor | None:
    """The predictor of the service this process serves; None until it has loaded."""
    try:
        return bentoml.get_current_service().predictor
    except BentoMLException:  # the service is not instantiated yet
        return None


def _server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def served_predictions(
    x: np.ndarray, choice: SampleChoice, seed: int | None, risk_threshold: float | None
) -> tuple[list[Prediction], SampleCount]:
    """Predictions for ``x`` ``[batch, *input_shape]`` from the service this process serves,
    and the N they used ("auto": each row its own): through its scheduler (admission,
    batching, latency budgets) with metrics, as every route. Raises ProtocolError 429
    with Retry-After when the scheduler refuses the work."""
    from service.adapter import TooManyRequests

    service = bentoml.get_current_service()
    work = service.work(x, choice, seed=seed, risk_threshold=risk_threshold)
    try:
        [predictions] = await service.scheduled(ENDPOINT, [work])
    except TooManyRequests as refused:
        raise ProtocolError(429, refused.message,
                            {"Retry-After": str(refused.retry_after)}) from None
    return predictions, work.n_samples


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def _empty(status: int = 200) -> Response:
    return Response(status_code=status)


def _answers_errors(handler: Callable) -> Callable:
    @functools.wraps(handler)
    async def wrapper(self: OpenInferenceProtocol, request: Request) -> Response:
        try:
            return await handler(self, request)
        except ProtocolError as error:
            return error.response()
    return wrapper


class OpenInferenceProtocol:
    """The V2 endpoints over a predictor that ``get_predictor`` returns (None while it
    loads)."""

    NOT_READY = "the model is still loading; retry once /v2/health/ready answers 200"

    def __init__(
        self, get_predictor: Callable[[], Predictor | None], *, predict: Predict,
        max_body_bytes: int, max_instances: int,
    ) -> None:
        self.get_predictor = get_predictor
        self.predict = predict
        self.max_body_bytes = max_body_bytes
        self.max_instances = max_instances
        self.server_metadata_response = ServerMetadataResponse(
            name=SERVER_NAME, version=_server_version(), extensions=list(EXTENSIONS))

    def routes(self) -> list[Route]:
        model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            *(Route(path, self.model_metadata, methods=["GET"]) for path in model_paths),
            *(Route(f"{path}/ready", self.model_ready, methods=["GET"])
              for path in model_paths),
            *(Route(f"{path}/infer", self.infer, methods=["POST"]) for path in model_paths),
            Route("/v2/{rest:path}", self.unknown, methods=ANY_METHOD),  # last: the rest
        ]

    def _served(self, request: Request) -> Predictor:
        """The predictor the path names, or ProtocolError: 503 while loading, 404 for
        another model or version."""
        predictor = self.get_predictor()
        if predictor is None:
            raise ProtocolError(503, self.NOT_READY)
        name, _, version = predictor.tag.partition(":")
        asked_name = request.path_params["name"]
        asked_version = request.path_params.get("version")
        if asked_name != name:
            raise ProtocolError(404, f"unknown model {asked_name!r}; this server serves {name!r}")
        if asked_version is not None and asked_version != version:
            raise ProtocolError(404, f"model {name!r} has no version {asked_version!r}; this "
                                f"server serves version {version!r}")
        return predictor

    async def server_metadata(self, request: Request) -> Response:
        return _json(self.server_metadata_response)

    async def live(self, request: Request) -> Response:
        return _empty()

    async def ready(self, request: Request) -> Response:
        if self.get_predictor() is None:
            return ProtocolError(503, self.NOT_READY).response()
        return _empty()

    @_answers_errors
    async def model_metadata(self, request: Request) -> Response:
        return _json(model_metadata(self._served(request)))

    @_answers_errors
    async def model_ready(self, request: Request) -> Response:
        self._served(request)
        return _empty()

    async def infer(self, request: Request) -> Response:
        outcome, overloaded = "server_error", False  # unless it ends otherwise
        try:
            response = await self._infer(request)
            outcome = "ok"
            return response
        except ProtocolError as error:
            outcome = "server_error" if error.status >= 500 else "client_error"
            overloaded = error.status == 429
            return error.response()
        finally:
            metrics.count_request(ENDPOINT, outcome, overloaded)

    async def _infer(self, request: Request) -> Response:
        predictor = self._served(request)
        body = await self._body(request)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), predictor.spec,
                                     self.max_instances)
        parameters = parsed.parameters
        predictions, n_samples = await self.predict(
            parsed.x, parameters, parameters.seed, parameters.risk_threshold)
        content, header_length = infer_response(parsed, predictions, n_samples, predictor.tag,
                                                predictor.card.class_names)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(header_length)})

    async def _body(self, request: Request) -> bytes:
        """The request body, decompressed (gzip, deflate), at most max_body_bytes."""
        too_large = ProtocolError(413, f"request body exceeds {self.max_body_bytes} bytes "
                                       "(UQ_MAX_BODY_BYTES)")
        # past the limit the body is read on and dropped, so that the client can read the
        # 413 (service/middleware.py's drain_limit says why)
        most = drain_limit(self.max_body_bytes)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > most:
            raise too_large
        body, read = bytearray(), 0
        try:
            async for chunk in request.stream():
                read += len(chunk)
                if read > most:
                    break
                if read <= self.max_body_bytes:
                    body += chunk
        except ClientDisconnect:
            raise _bad("the client disconnected before the body ended") from None
        if read > self.max_body_bytes:
            raise too_large
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return bytes(body)
        if encoding not in ("gzip", "deflate"):
            raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported; send "
                                "gzip, deflate or an uncompressed body")
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
        try:
            content = decompressor.decompress(bytes(body), self.max_body_bytes + 1)
        except zlib.error:
            raise _bad(f"the body is not valid {encoding} data; send it compressed as its "
                       "Content-Encoding says, or uncompressed without one") from None
        if len(content) > self.max_body_bytes or decompressor.unconsumed_tail:
            raise too_large
        return content

    async def unknown(self, request: Request) -> Response:
        """Any other path under /v2: 405 if another method would do, else 404."""
        for route in request.app.router.routes:
            if route.endpoint != self.unknown and route.matches(request.scope)[0] == Match.PARTIAL:
                allowed = ", ".join(sorted(route.methods or ()))
                return JSONResponse(
                    {"error": f"{request.method} is not allowed on {request.url.path}; "
                              f"use {allowed}"},
                    status_code=405, headers={"Allow": allowed})
        return JSONResponse(
            {"error": f"no V2 endpoint at {request.url.path}; see /v2, /v2/health/ready, "
                      "/v2/models/{name}[/versions/{version}][/ready|/infer]"},
            status_code=404)


async def _http_error(request: Request, error: HTTPException) -> Response:
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                        headers=error.headers)


def create_app(
    get_predictor: Callable[[], Predictor | None] = served_predictor, *,
    predict: Predict = served_predictions, max_body_bytes: int | None = None,
    max_instances: int | None = None,
) -> Starlette:
    """The V2 endpoints as a Starlette app (its routes carry the full ``/v2/...`` paths:
    mount it at the root). Limits default to the UQ_ settings."""
    protocol = OpenInferenceProtocol(
        get_predictor, predict=predict,
        max_body_bytes=max_body_bytes or settings.max_body_bytes,
        max_instances=max_instances or settings.max_instances,
    )
    return Starlette(routes=protocol.routes(), exception_handlers={HTTPException: _http_error})
