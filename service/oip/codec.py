"""The Open Inference Protocol's codec: request bodies (JSON, or a JSON header and binary
tensor data) to checked arrays, and predictions to output tensors (JSON or binary)."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import AllowInfNan, Field, Strict, TypeAdapter, ValidationError
from pydantic_core import to_json

from artifacts.inputs import InputSpec
from service.oip.types import (
    CLASSIFIABLE,
    HEADER_LENGTH,
    IGNORED_PARAMETERS,
    IGNORED_PREFIX,
    INPUT_NAME,
    NUMERIC_DATATYPES,
    OUTPUT_DTYPES,
    OUTPUTS,
    PLATFORM,
    InferenceParameters,
    InferenceRequest,
    ModelMetadataResponse,
    OutputParameters,
    RequestInput,
    RequestOutput,
    TensorMetadata,
    bad,
    validation_message,
)
from service.schemas import SampleCount

if TYPE_CHECKING:
    from service.predictor import Predictor
    from service.schemas import Prediction

_FIELDS: dict[str, Callable[[Prediction], Any]] = {
    **{name: attrgetter(name) for name in OUTPUTS},
    "risk_score": attrgetter("risk.score"),
    "flagged": attrgetter("risk.flagged"),
}


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
            raise bad(f"{HEADER_LENGTH}: expected the JSON header's length in bytes, at "
                      f"most the body's {len(body)}, got {header_length!r}")
        body, binary = body[:int(digits)], body[int(digits):]
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as error:
        raise bad(validation_message(error)) from None
    try:
        parameters = InferenceParameters.model_validate(request.parameters or {})
    except ValidationError as error:
        raise bad(validation_message(error, "parameters")) from None
    unknown = [key for key in parameters.model_extra or {}
               if key not in IGNORED_PARAMETERS and not key.startswith(IGNORED_PREFIX)]
    if unknown:
        raise bad(f"parameters.{unknown[0]}: unknown parameter; this server reads "
                   f"{', '.join(InferenceParameters.model_fields)}")
    if len(request.inputs) != 1:
        raise bad(f"inputs: this model takes one input tensor ({INPUT_NAME!r}), got "
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
        raise bad(f"{where}.datatype: expected a numeric datatype "
                   f"({', '.join(NUMERIC_DATATYPES)}), got {tensor.datatype!r}")
    shape = tuple(tensor.shape)
    instance_shapes = {spec.input_shape, (spec.size,)}
    if len(shape) < 2 or shape[1:] not in instance_shapes:
        expected = " or ".join(str(["batch", *s]).replace("'", "") for s in sorted(instance_shapes))
        raise bad(f"{where}.shape: expected {expected}, got {list(shape)}")
    batch = shape[0]
    if not 1 <= batch <= max_instances:
        raise bad(f"{where}.shape: the batch must be 1 to {max_instances} instances "
                   f"(UQ_MAX_INSTANCES), got {batch}")
    count = batch * spec.size
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        values = _binary_values(tensor, binary, binary_size, count, where)
    elif tensor.data is None:
        raise bad(f"{where}.data: required (or binary data and "
                   "parameters.binary_data_size)")
    else:
        if binary:
            raise bad(f"{HEADER_LENGTH}: binary data follows the JSON header, but no input "
                       "has parameters.binary_data_size")
        values = _json_values(tensor.data, tensor.datatype, shape, count, where)
    low, high = spec.value_range
    if values.min() < low or values.max() > high:
        raise bad(f"{where}.data: values must lie in the model's range [{low:g}, {high:g}], "
                   f"got [{values.min():g}, {values.max():g}]")
    return values.astype(np.float32).reshape((batch, *spec.input_shape))


def _binary_values(tensor: RequestInput, binary: bytes, size: Any, count: int,
                   where: str) -> np.ndarray:
    dtype = np.dtype(NUMERIC_DATATYPES[tensor.datatype])
    if tensor.data is not None:
        raise bad(f"{where}: give data or parameters.binary_data_size, not both")
    if type(size) is not int or size < 0:
        raise bad(f"{where}.parameters.binary_data_size: expected a byte count, got {size!r}")
    if size != count * dtype.itemsize or len(binary) != size:
        raise bad(f"{where}.parameters.binary_data_size: shape {list(tensor.shape)} of "
                   f"{tensor.datatype} takes {count * dtype.itemsize} bytes; "
                   f"binary_data_size says {size}, the body holds {len(binary)}")
    values = np.frombuffer(binary, dtype=dtype)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise bad(f"{where}: values must be finite numbers, got NaN or Infinity")
    return values.astype(np.float64)


def _json_values(data: list[Any], datatype: str, shape: tuple[int, ...], count: int,
                 where: str) -> np.ndarray:
    depth, first = 1, data
    while first and isinstance(first[0], list):
        depth, first = depth + 1, first[0]
    if depth not in (1, len(shape)):
        raise bad(f"{where}.data: nested {depth} deep; give the values flat, or nested as "
                   f"the shape {list(shape)}")
    try:
        checked = _values_adapter(datatype, depth).validate_python(data)
    except ValidationError as error:
        raise bad(validation_message(error, f"{where}.data")) from None
    try:
        values = np.asarray(checked, dtype=np.float64)
    except ValueError:  # ragged nesting
        raise bad(f"{where}.data: ragged nesting; nest the values as the shape "
                   f"{list(shape)}, or give them flat") from None
    if depth == 1 and values.size != count:
        raise bad(f"{where}.data: shape {list(shape)} takes {count} values, got {values.size}")
    if depth > 1 and values.shape != shape:
        raise bad(f"{where}.data: nested as {list(values.shape)}, but the shape is "
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
            raise bad(f"{where}.name: unknown output {output.name!r}; this model has "
                       f"{', '.join(OUTPUTS)}")
        if output.name in seen:
            raise bad(f"{where}.name: {output.name!r} is requested twice")
        seen.add(output.name)
        try:
            parameters = OutputParameters.model_validate(output.parameters or {})
        except ValidationError as error:
            raise bad(validation_message(error, f"{where}.parameters")) from None
        if any(key.startswith("shared_memory") for key in parameters.model_extra or {}):
            raise bad(f"{where}.parameters: shared memory is not supported; ask for the "
                       "data in the response (JSON or binary_data)")
        if parameters.classification is not None and output.name not in CLASSIFIABLE:
            raise bad(f"{where}.parameters.classification: applies to "
                       f"{' and '.join(CLASSIFIABLE)}, not {output.name!r}")
        binary = binary_default if parameters.binary_data is None else parameters.binary_data
        requested.append(RequestedOutput(output.name, binary, parameters.classification))
    return requested


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

