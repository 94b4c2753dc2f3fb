"""The Open Inference Protocol's types: its JSON objects, the output tensors this server
answers, and its error. See ``service.oip`` for the protocol as served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    ValidationError,
)
from starlette.responses import JSONResponse

from service.schemas import SampleChoice, Seed

SERVER_NAME = "uq-serving"
PLATFORM = "keras"
#: The input tensor's name in the model metadata (a request may name it as it likes).
INPUT_NAME = "input"
EXTENSIONS = ("classification", "binary_tensor_data", "parameters")
#: The binary tensor data extension: the JSON header's length in the HTTP body.
HEADER_LENGTH = "Inference-Header-Content-Length"

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

#: Request parameters that clients of other servers send and this one does not
#: read (Triton's reserved ones, MLServer's codec hint): accepted and ignored.
IGNORED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers", "content_type")
IGNORED_PREFIX = "triton_"


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


def bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def validation_message(error: ValidationError, prefix: str = "", limit: int = 3) -> str:
    """Pydantic's first errors as ``field.path: what was expected``."""
    parts = []
    for detail in error.errors(include_url=False)[:limit]:
        parts_of_location = (*prefix.split("."), *detail["loc"])
        location = ".".join(str(part) for part in parts_of_location if part != "")
        message = detail["msg"].removeprefix("Value error, ")
        parts.append(f"{location or 'request body'}: {message}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")

