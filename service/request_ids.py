"""Request ids: the caller's ``X-Request-ID`` when it is a usable one, else a new one.

The middleware sets the id of each request in a context variable before the
request reaches BentoML, and adds the ``X-Request-ID`` header to every response;
the routes put it in their JSON object bodies (``request_id``). A caller's id is
kept when it is 1 to :data:`MAX_LENGTH` visible ASCII characters; anything else
(too long, spaces, control or non-ASCII bytes) is replaced by a generated id,
never refused: the header is for tracing, not a reason to fail a prediction.
"""

from __future__ import annotations

import contextvars
import os
import re
import time

HEADER = b"x-request-id"
MAX_LENGTH = 128
_USABLE = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("uq_request_id",
                                                                      default=None)
#: ``time.perf_counter()`` when the request reached the service (service/middleware.py)
_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar("uq_request_started",
                                                                       default=None)


def new_request_id() -> str:
    """32 hex digits (128 random bits)."""
    return os.urandom(16).hex()


def from_headers(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id from its ASGI headers: the caller's ``X-Request-ID`` when usable."""
    for name, value in headers:
        if name == HEADER:  # ASGI servers lower-case header names
            if _USABLE.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def set_current(request_id: str, arrived: float) -> tuple[contextvars.Token, contextvars.Token]:
    """The request being served from now: its id, and the ``time.perf_counter()`` it
    arrived at."""
    return _CURRENT.set(request_id), _STARTED.set(arrived)


def reset_current(tokens: tuple[contextvars.Token, contextvars.Token]) -> None:
    _CURRENT.reset(tokens[0])
    _STARTED.reset(tokens[1])


def started() -> float:
    """``time.perf_counter()`` when the current request arrived (now, outside a request):
    latency budgets count from there."""
    return _STARTED.get() or time.perf_counter()


def current() -> str | None:
    """The id of the request being served (None outside a request)."""
    return _CURRENT.get()


def current_or_new() -> str:
    """The current request's id; a new one outside a request (a direct Python call)."""
    return _CURRENT.get() or new_request_id()
