"""ASGI middleware in front of every route: request ids, readiness, body limits,
content types, the door, error shape and request counts. It wraps BentoML's whole
app (service/service.py's service class), so that what it answers itself never
reaches BentoML's per-request work.

- Every response but the probes' carries ``X-Request-ID``: the caller's, or a new
  one (service/request_ids.py), which the routes also put in their bodies.

- API routes answer 503 until the worker has loaded the model.
- Bodies over ``max_body_bytes`` get 413 before anything parses them.
- An error answered before the body is read (413, 415, 503) waits until the body is
  read and dropped (up to :func:`drain_limit`), so that a client still sending reads
  it rather than a reset connection.
- JSON routes need ``application/json``, ``/predict_image`` ``multipart/form-data``
  (415 otherwise), whose body must parse, with known fields, a file where the file
  belongs and values elsewhere (400 otherwise: service/adapter.py's
  ``form_problem``).
- Prediction requests pass the service's door (service/door.py): past its bound on
  requests in flight, 429 with ``Retry-After`` before BentoML parses the body.
- ``GET /metrics`` first has the service record every prediction answered so far
  (its metrics are recorded off the request's path: service/monitoring.py).
- Every 4xx body, BentoML's own validation errors and 404s included, becomes
  ``{"error": "<field>: <what was expected>"}``; the probes and /metrics pass as
  they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from service import metrics, request_ids
from service.adapter import error_message, form_problem, whole_seconds

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_ROUTES = ("/predict", "/predict_batched", "/metadata", "/generate", "/feedback", "/drift")
METRICS_ROUTE = "/metrics"
PROBE_ROUTES = ("/livez", "/readyz", "/healthz", METRICS_ROUTE)
#: The Open Inference Protocol app (service/oip/) checks and shapes its own requests.
OWN_CHECKS_PREFIX = "/v2"
MULTIPART_ROUTES = ("/predict_image",)
PREDICTION_ROUTES = ("/predict", "/predict_batched", "/predict_image", "/generate")
IMAGE_FORM_FILE, IMAGE_FORM_VALUES = "image", ("n_samples", "seed", "return_samples")
#: A body is still read and dropped before an error answered without it (413, 415, 503),
#: up to this many times the limit and at least DRAIN_AT_LEAST bytes (:func:`drain_limit`).
DRAIN_FACTOR, DRAIN_AT_LEAST = 4, 16 * 2**20


class ServiceMiddleware:
    """``service()`` returns the service instance: its readiness, its door, its loop lag
    and its metrics."""

    def __init__(self, app, max_body_bytes: int, service: Callable[[], Any]) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.drain_limit = drain_limit(max_body_bytes)

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if path == METRICS_ROUTE:
            self.service().settle_metrics()
        if scope["type"] != "http" or path in PROBE_ROUTES:
            await self.app(scope, receive, send)
            return
        request_id = request_ids.from_headers(scope.get("headers") or [])
        context = request_ids.set_current(request_id, self._arrival())
        send = _with_request_id(send, request_id.encode())
        try:
            if path.startswith(OWN_CHECKS_PREFIX):
                await self.app(scope, receive, send)
                return
            responder = _Responder(send, scope["method"], path)
            if path not in JSON_ROUTES + MULTIPART_ROUTES:  # /docs.json, unknown paths (404)
                await self.app(scope, receive, responder)
                return
            try:
                await self._handle(scope, receive, responder, path)
            finally:
                metrics.count_request(path.lstrip("/"), responder.outcome, responder.overloaded)
        finally:
            request_ids.reset_current(context)

    def _arrival(self) -> float:
        """``time.perf_counter()`` when the request reached the service, about: now, less
        the event loop's lag, which is about what it waited before the loop ran this."""
        return time.perf_counter() - self.service().lag.seconds

    async def _handle(
        self, scope: dict, receive: Receive, responder: _Responder, path: str
    ) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, responder)
            return
        if not self.service().__is_ready__():
            await self._refuse(receive, responder, 503, "the model is still loading; retry "
                               "once /readyz answers 200")
            return
        headers = dict(scope.get("headers") or [])
        problem = self._content_type_problem(path, headers.get(b"content-type", b""))
        if problem:
            await self._refuse(receive, responder, 415, problem)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.drain_limit:
            await responder.error(413, self._too_large())  # too large to read even to drop it
            return
        body = await read_body(receive, self.max_body_bytes, self.drain_limit)
        if body is None:  # the client left
            return
        if len(body) > self.max_body_bytes:
            await responder.error(413, self._too_large())
            return
        if path in MULTIPART_ROUTES:
            problem = await form_problem(body, headers.get(b"content-type", b""),
                                         IMAGE_FORM_FILE, IMAGE_FORM_VALUES)
            if problem:
                await responder.error(400, problem)
                return
        if path not in PREDICTION_ROUTES:
            await self.app(scope, _replay(body, receive), responder)
            return
        door = self.service().door
        refusal = door.refusal()
        if refusal:  # before BentoML parses the body: a tenth of the cost of a late refusal
            retry_after = whole_seconds(door.retry_after())
            await responder.error(429, refusal, [(b"retry-after", str(retry_after).encode())])
            return
        door.enter()
        try:
            await self.app(scope, _replay(body, receive), responder)
        finally:
            door.leave()

    async def _refuse(self, receive: Receive, responder: _Responder, status: int,
                      message: str) -> None:
        """Answer an error without reading the body: once it is read and dropped (up to
        :func:`drain_limit`, which says why)."""
        await _drop(receive, self.drain_limit)
        await responder.error(status, message)

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


def drain_limit(max_body_bytes: int) -> int:
    """The most bytes of a body read (and dropped) before an error answered without it.
    uvicorn reads and drops the rest of a body after the answer on a kept-alive
    connection anyway; on one the client asked to close (``Connection: close``: the
    standard library's urllib), closing with the body unread resets it, and the client,
    still sending, sees a broken pipe instead of the 413."""
    return max(DRAIN_FACTOR * max_body_bytes, DRAIN_AT_LEAST)


async def read_body(receive: Receive, limit: int, most: int) -> bytes | None:
    """The request body, or None if the client left. A body over ``limit`` is read on
    and dropped, up to ``most`` bytes in all (:func:`drain_limit`), and its first bytes
    returned (over ``limit``)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)
        if len(body) > limit:
            await _drop(receive, most - len(body))
            return bytes(body)


async def _drop(receive: Receive, limit: int) -> None:
    """Read the rest of a body without keeping it: until it ends, the client leaves or
    ``limit`` bytes."""
    while limit >= 0:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return
        limit -= len(message.get("body", b""))


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


#: Headers of an error response that its rewritten body keeps (429's Retry-After, and
#: 405's Allow, which HTTP requires).
KEPT_ERROR_HEADERS = (b"retry-after", b"allow")


class _Responder:
    """The app's ``send``: remembers the outcome (ok, client_error, server_error) and
    whether the request was refused for overload (429), and rewrites a 4xx body into
    ``{"error": message}``; a body that is only the status's reason phrase (Starlette's
    404 and 405) into one that says what was expected."""

    def __init__(self, send: Send, method: str, path: str) -> None:
        self.send = send
        self.method, self.path = method, path
        self.outcome = "ok"
        self.overloaded = False  # 429
        self.start: Message | None = None  # a held-back 4xx start
        self.chunks: list[bytes] = []

    async def error(self, status: int, message: str,
                    headers: list[tuple[bytes, bytes]] = ()) -> None:
        self.outcome = "server_error" if status >= 500 else "client_error"
        self.overloaded = status == 429
        await send_error(self.send, status, message, headers)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            self.outcome = ("server_error" if status >= 500 else
                            "client_error" if status >= 400 else "ok")
            self.overloaded = status == 429
            if 400 <= status < 500:
                self.start = message
                return
        if self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            status = self.start["status"]
            text = error_message(b"".join(self.chunks))
            kept = [(name, value) for name, value in self.start.get("headers", ())
                    if name.lower() in KEPT_ERROR_HEADERS]
            if text == HTTPStatus(status).phrase:
                text = self._explained(status, dict(kept).get(b"allow", b"").decode("latin-1"))
            await send_error(self.send, status, text, kept)

    def _explained(self, status: int, allowed: str) -> str:
        if status == 404:
            return (f"no route at {self.path}; /docs.json lists the routes, /v2 the Open "
                    "Inference Protocol's, and the web page is at /ui")
        if status == 405 and allowed:
            return f"{self.method} is not allowed on {self.path}; use {allowed}"
        return HTTPStatus(status).phrase


async def send_error(send: Send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})
