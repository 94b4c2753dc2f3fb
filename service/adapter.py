"""Everything this service assumes about BentoML beyond its documented API.

A BentoML upgrade that changes one of these breaks this module alone, and
``tests/service/test_adapter.py`` has one test per assumption, named after it:

- an API method looked up on the service instance is wrapped anew each time
  (``inspect.signature`` included), so keeping the wrapper saves a tenth of the
  event loop's time (:func:`keep_api_wrappers`);
- ``output_spec.media_type`` decides the response's media type, and BentoML
  derives it per response from the output schema unless it is set
  (:func:`declare_json_outputs`);
- an API method that returns a starlette ``Response`` has it sent as it is
  (:func:`answers_service_errors`, :func:`json_list_response`), while its annotation
  still states the output schema;
- a list output is serialized by dumping it to Python objects twice and encoding them
  with the standard library's ``json`` (:func:`json_list_response` is pydantic's Rust
  serializer instead);
- error bodies: a pydantic ``ValidationError`` becomes ``{"error", "detail":
  [pydantic errors]}``, a 4xx ``BentoMLException`` a one-element list
  ``[{"error": message}]``, a 5xx a generic message (:func:`error_message`);
- multipart bodies are parsed with Starlette's ``Request.form()`` (its default
  limits), whose refusals (no boundary, a body that is not multipart, a part over
  1 MB, ...) BentoML answers with a 500; a multipart value field that holds a file
  is taken as a value (its bytes parsed as the field's type); a file field that
  holds a value is fetched as a URL (an outbound request); and each value is read
  with ``json.loads``, whose errors other than ``JSONDecodeError`` (an integer of
  over 4300 digits, deep nesting) are a 500: :func:`form_problem` parses the body
  as BentoML will and refuses all of these first;
- BentoML logs a traceback for every rejected request on the logger
  ``bentoml._internal.server.http_app`` (:func:`quiet_client_error_tracebacks`);
- a Starlette app mounted at ``/`` comes after BentoML's own routes and answers
  only the paths its routes match: other paths get BentoML's 404 as before
  (:func:`mount_at_root`);
- ``bentoml.monitor``'s default monitor writes each record as a JSON line to
  ``<log_path>/<name>/data/data.<worker>.log``, adds columns ``timestamp``,
  ``request_id`` and ``trace_id`` of its own (a column of ours by those names would be
  renamed), takes the columns logged in its first ``with`` as the schema (warning on
  every repeated column there, so the first ``with`` holds one record), writes one
  record per value of each column of a later ``with`` (many records in one), breaks
  the next ``with`` after an empty one, works outside a request (a thread of ours),
  and configures one fixed pair of loggers for every default monitor of a process, so
  a second monitor's files would take over the first's (:func:`write_monitor_records`).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import TypeAdapter
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

HTTP_APP_LOGGER = "bentoml._internal.server.http_app"


class BadRequest(bentoml.exceptions.InvalidArgument):
    """400: the request names a field and what was expected of it."""


class NotFound(bentoml.exceptions.NotFound):
    """404: the route exists but what it serves does not (no generator configured)."""


class TooManyRequests(BentoMLException):
    """429: the service is overloaded; the answer carries ``Retry-After``."""

    error_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after = whole_seconds(retry_after_seconds)


def current_service() -> Any:
    """The service instance this process serves, once BentoML has created it."""
    return bentoml.get_current_service()


def whole_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1 (HTTP's Retry-After takes an
    integer)."""
    return max(1, math.ceil(seconds))


def keep_api_wrappers(service: Any, names: tuple[str, ...]) -> None:
    """Look each named API method up once and keep the wrapper on the instance."""
    for name in names:
        setattr(service, name, getattr(service, name))


def declare_json_outputs(service_class: Any) -> None:
    """Every API answers JSON: spare BentoML deriving the media type per response
    (40% of the batched path's CPU for a list output)."""
    for api in service_class.apis.values():
        api.output_spec.media_type = "application/json"


def answers_service_errors(method: Callable) -> Callable:
    """Decorate an API method (under ``@bentoml.api``) so that a BentoML exception it
    raises is answered as ``{"error": message}`` with the exception's status, instead
    of BentoML's list-shaped body. Not for batchable APIs: they return items."""

    def response(error: BentoMLException) -> JSONResponse:
        retry_after = getattr(error, "retry_after", None)
        return error_response(error.error_code.value, error.message,
                              {"Retry-After": str(retry_after)} if retry_after else None)

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def wrapper(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except BentoMLException as error:
                return response(error)
    else:
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except BentoMLException as error:
                return response(error)
    return wrapper


def json_list_response(items: TypeAdapter, values: list[Any]) -> Response:
    """A list output (``items`` its TypeAdapter) serialized in one pass by pydantic, for an
    API method to return as it is: BentoML's own path for a list output took 10% of the
    batched route's samples in a profile (py-spy) under load."""
    return Response(items.dump_json(values), media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    """``{"error": message}`` with ``status``, for an API method (under
    :func:`answers_service_errors`) to return as it is."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def error_message(body: bytes) -> str:
    """One line from a BentoML error body (the shapes in the module docstring), or
    from a body that is already ``{"error": message}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or "bad request"
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("detail"), list) and data["detail"]:
        return "; ".join(_pydantic_error(detail) for detail in data["detail"])
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return str(data)


def _pydantic_error(detail: dict) -> str:
    location = ".".join(str(part) for part in detail.get("loc", ()) if part != "body")
    message = str(detail.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{location or 'request body'}: {message}"


async def form_problem(body: bytes, content_type: bytes, file_field: str,
                       value_fields: tuple[str, ...]) -> str | None:
    """What BentoML would fail on (500) or misread in a multipart body, or None: a body
    its parser refuses, an unknown field, a value where the file belongs, a file where
    a value belongs, or a value ``json.loads`` cannot read."""
    expected = f"the file {file_field!r} and optional values {', '.join(value_fields)}"
    try:
        form = await _parsed_form(body, content_type)
    except MultiPartException as error:
        return (f"unreadable multipart/form-data body: {error.message.rstrip('.')}; expected "
                f"a boundary in the Content-Type and parts holding {expected}")
    try:
        for field, value in form.multi_items():
            problem = _form_field_problem(field, value, file_field, value_fields, expected)
            if problem:
                return problem
        return None
    finally:
        await form.close()


async def _parsed_form(body: bytes, content_type: bytes) -> FormData:
    """The form as BentoML's ``Request.form()`` will parse it (outside an app, Starlette
    raises its MultiPartException rather than an HTTPException)."""
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await Request(scope, receive).form()


def _form_field_problem(field: str, value: Any, file_field: str,
                        value_fields: tuple[str, ...], expected: str) -> str | None:
    is_file = isinstance(value, UploadFile)
    if field == file_field:
        return None if is_file else f"{field}: expected a file upload, got a form value"
    if field not in value_fields:
        return f"unknown form field {field!r}; expected {expected}"
    if is_file:
        return f"{field}: expected a form value, got a file"
    try:
        json.loads(value)
    except json.JSONDecodeError:
        pass  # BentoML takes it as a string
    except (ValueError, RecursionError):
        return f"{field}: unreadable value ({len(value)} characters); expected a short JSON value"
    return None


class _DropClientErrorTracebacks(logging.Filter):
    """A rejected request is not a server fault: no traceback for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            return False
        return not (isinstance(error, BentoMLException) and 400 <= error.error_code < 500)


def quiet_client_error_tracebacks() -> None:
    logging.getLogger(HTTP_APP_LOGGER).addFilter(_DropClientErrorTracebacks())


def skip_uvicorn_access_log() -> None:
    """uvicorn formats an access-log call for every response when its ``uvicorn.access``
    logger has handlers, its ancestors' included: BentoML's root handler, whose level
    (WARNING) then drops the INFO record. Without propagation it has none, and uvicorn
    skips the call (benchmarks/refusal_cost.py: a refusal 90 -> 81 us of CPU).
    BentoML's access log (UQ_ACCESS_LOG) is its own logger, not this one."""
    logging.getLogger("uvicorn.access").propagate = False


#: Monitor names whose first record (the schema) this process has written.
_MONITORS_STARTED: set[str] = set()


def write_monitor_records(name: str, records: Iterable[Sequence[tuple[Any, str, str, str]]]
                          ) -> None:
    """Write records through ``bentoml.monitor(name)``, each a sequence of (value, column,
    role, type), all with the same columns: the first record of the process alone (its
    columns are the schema), the others of a call in one ``with`` (entering a monitor
    costs about 0.1 ms). One name per process."""
    records = iter(records)
    if name not in _MONITORS_STARTED:
        first = next(records, None)
        if first is None:
            return
        _log_records(name, [first])
        _MONITORS_STARTED.add(name)
    batch = list(records)
    if batch:  # never an empty ``with``
        _log_records(name, batch)


def _log_records(name: str, records: Sequence[Sequence[tuple[Any, str, str, str]]]) -> None:
    with bentoml.monitor(name) as monitor:
        for record in records:
            for value, column, role, kind in record:
                monitor.log(value, column, role, kind)


def mount_at_root(service_class: Any, app: Any) -> None:
    """Mount a Starlette ``app`` whose routes carry their full paths (``/v2``, and
    ``/v2/...`` below it: a mount at ``/v2`` would redirect ``GET /v2`` to ``/v2/``)
    beside the service's own routes, which keep precedence."""
    service_class.mount_asgi_app(app, path="/")
