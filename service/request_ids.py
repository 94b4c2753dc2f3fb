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

HEADER = b"x-request-id"
MAX_LENGTH = 128
_USABLE = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("uq_request_id",
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


def set_current(request_id: str) -> contextvars.Token:
    return _CURRENT.set(request_id)


def reset_current(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


def current() -> str | None:
    """The id of the request being served (None outside a request)."""
    return _CURRENT.get()


def current_or_new() -> str:
    """The current request's id; a new one outside a request (a direct Python call)."""
    return _CURRENT.get() or new_request_id()
