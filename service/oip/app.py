"""The Open Inference Protocol's REST app: the ``/v2`` routes over the served predictor,
as a Starlette app of its own."""

from __future__ import annotations

import functools
import importlib.metadata
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from service import metrics
from service.adapter import BadRequest, TooManyRequests
from service.middleware import drain_limit
from service.oip.codec import infer_response, model_metadata, parse_infer_request
from service.oip.types import (
    EXTENSIONS,
    HEADER_LENGTH,
    SERVER_NAME,
    ProtocolError,
    ServerMetadataResponse,
    bad,
)
from service.schemas import SampleChoice, SampleCount
from service.settings import settings

if TYPE_CHECKING:
    from service.predictor import Predictor
    from service.schemas import Prediction

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Metrics label of the infer route (uq_requests, uq_predictions, ...).
ENDPOINT = "v2_infer"
#: (x [batch, *input_shape], the request's choice of N, seed, risk_threshold) -> one
#: prediction per row, and the N the response reports (an integer, or "auto"); raises
#: BadRequest naming a parameter it cannot serve, TooManyRequests when it refuses the work
Predict = Callable[[np.ndarray, SampleChoice, "int | None", "float | None"],
                   Awaitable[tuple[list["Prediction"], SampleCount]]]


def _server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
        try:
            predictions, n_samples = await self.predict(
                parsed.x, parameters, parameters.seed, parameters.risk_threshold)
        except BadRequest as error:
            raise bad(f"parameters.{error.message}") from None
        except TooManyRequests as refused:
            raise ProtocolError(429, refused.message,
                                {"Retry-After": str(refused.retry_after)}) from None
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
            raise bad("the client disconnected before the body ended") from None
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
            raise bad(f"the body is not valid {encoding} data; send it compressed as its "
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
    get_predictor: Callable[[], Predictor | None], *, predict: Predict,
    max_body_bytes: int | None = None, max_instances: int | None = None,
) -> Starlette:
    """The V2 endpoints as a Starlette app (its routes carry the full ``/v2/...`` paths:
    mount it at the root). Limits default to the UQ_ settings."""
    protocol = OpenInferenceProtocol(
        get_predictor, predict=predict,
        max_body_bytes=max_body_bytes or settings.max_body_bytes,
        max_instances=max_instances or settings.max_instances,
    )
    return Starlette(routes=protocol.routes(), exception_handlers={HTTPException: _http_error})
