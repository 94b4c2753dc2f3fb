"""ASGI middleware in front of every route: request ids, readiness, body limits,
content types, error shape and request counts.

- Every response but the probes' carries ``X-Request-ID``: the caller's, or a new
  one (service/request_ids.py), which the routes also put in their bodies.

- API routes answer 503 until the worker has loaded the model.
- Bodies over ``max_body_bytes`` get 413 before anything parses them.
- JSON routes need ``application/json``, ``/predict_image`` ``multipart/form-data``
  (415 otherwise).
- Every 4xx body, BentoML's own validation errors and 404s included, becomes
  ``{"error": "<field>: <what was expected>"}``; the probes and /metrics pass as
  they are.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml

from service import metrics, request_ids
from service.adapter import SHED_STATUS, error_message, form_problem

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_ROUTES = ("/predict", "/predict_batched", "/metadata", "/generate", "/feedback", "/drift")
PROBE_ROUTES = ("/livez", "/readyz", "/healthz", "/metrics")
#: The Open Inference Protocol app (service/oip.py) checks and shapes its own requests.
OWN_CHECKS_PREFIX = "/v2"
MULTIPART_ROUTES = ("/predict_image",)
IMAGE_FORM_FILE, IMAGE_FORM_VALUES = "image", ("n_samples", "seed", "return_samples")


class ServiceMiddleware:
    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path in PROBE_ROUTES:
            await self.app(scope, receive, send)
            return
        request_id = request_ids.from_headers(scope.get("headers") or [])
        context = request_ids.set_current(request_id)
        send = _with_request_id(send, request_id.encode())
        try:
            if path.startswith(OWN_CHECKS_PREFIX):
                await self.app(scope, receive, send)
                return
            responder = _Responder(send)
            if path not in JSON_ROUTES + MULTIPART_ROUTES:  # /docs.json, unknown paths (404)
                await self.app(scope, receive, responder)
                return
            try:
                await self._handle(scope, receive, responder, path)
            finally:
                endpoint = path.lstrip("/")
                metrics.REQUESTS.labels(endpoint, responder.outcome).inc()
                if responder.overloaded:
                    metrics.OVERLOADED.labels(endpoint).inc()
        finally:
            request_ids.reset_current(context)

    async def _handle(
        self, scope: dict, receive: Receive, responder: _Responder, path: str
    ) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, responder)
            return
        if not bentoml.get_current_service().__is_ready__():
            await responder.error(503, "the model is still loading; retry once /readyz "
                                  "answers 200")
            return
        headers = dict(scope.get("headers") or [])
        problem = self._content_type_problem(path, headers.get(b"content-type", b""))
        if problem:
            await responder.error(415, problem)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await responder.error(413, self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await responder.error(413, self._too_large())
                return
            if not message.get("more_body"):
                break
        problem = (form_problem(bytes(body), IMAGE_FORM_FILE, IMAGE_FORM_VALUES)
                   if path in MULTIPART_ROUTES else None)
        if problem:  # BentoML would take a file's bytes as a value
            await responder.error(400, problem)
            return
        await self.app(scope, _replay(bytes(body), receive), responder)

    def _too_large(self) -> str:
        return f"request body exceeds {self.max_body_bytes} bytes (UQ_MAX_BODY_BYTES)"

    @staticmethod
    def _content_type_problem(path: str, content_type: bytes) -> str | None:
        media_type = content_type.split(b";")[0].strip().lower().decode("latin-1")
        expected = "multipart/form-data" if path in MULTIPART_ROUTES else "application/json"
        if media_type != expected:
            got = media_type or "none"
            return f"Content-Type must be {expected} for {path}, got {got}"
        return None


def _with_request_id(send: Send, request_id: bytes) -> Send:
    """``send`` with the X-Request-ID header added to the response start."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()),
                                               (b"x-request-id", request_id)]}
        await send(message)

    return send_with_id


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


OVERLOADED = ("the adaptive-batching queue cannot meet its latency budget "
              "(UQ_BATCH_MAX_LATENCY_MS); retry later")


class _Responder:
    """The app's ``send``: remembers the outcome (ok, client_error, server_error),
    rewrites a 4xx body into ``{"error": message}``, and BentoML's generic 503
    (load shed by adaptive batching) into one that says so."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.outcome = "ok"
        self.overloaded = False  # 429, or BentoML's 503 for shed load
        self.start: Message | None = None  # a held-back 4xx or 503 start
        self.chunks: list[bytes] = []

    async def error(self, status: int, message: str) -> None:
        self.outcome = "server_error" if status >= 500 else "client_error"
        self.overloaded = status == 429
        await send_error(self.send, status, message)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            self.outcome = ("server_error" if status >= 500 else
                            "client_error" if status >= 400 else "ok")
            self.overloaded = status in (429, SHED_STATUS)
            if 400 <= status < 500 or status == SHED_STATUS:
                self.start = message
                return
        if self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            status = self.start["status"]
            text = OVERLOADED if status == SHED_STATUS else error_message(b"".join(self.chunks))
            await send_error(self.send, status, text)


async def send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
