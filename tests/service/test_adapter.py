"""One test per assumption service/adapter.py makes about BentoML beyond its documented
API. A failure here after a BentoML upgrade names the assumption that broke: fix
service/adapter.py, nowhere else.

They run against a bare probe service (no middleware of ours), so that what they
see is BentoML's own behaviour."""

import asyncio
import json
import logging
from pathlib import Path

import bentoml
import pytest
from pydantic import BaseModel, TypeAdapter
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service import adapter


class Item(BaseModel):
    value: int


ITEMS = TypeAdapter(list[Item])


@bentoml.service
class Probe:
    @bentoml.api
    def echo(self, item: Item) -> list[Item]:
        if item.value < 0:
            raise adapter.BadRequest("value: expected a non-negative number")
        return [item]

    @bentoml.api
    @adapter.answers_service_errors
    def shaped(self, item: Item) -> Item:
        if item.value < 0:
            raise adapter.BadRequest("value: expected a non-negative number")
        return item

    @bentoml.api
    def listed(self, item: Item) -> list[Item]:
        return adapter.json_list_response(ITEMS, [item])

    @bentoml.api
    def upload(self, value: int = 0) -> int:
        return value

    @bentoml.api
    def picture(self, image: Path, value: int = 0) -> int:
        return value


async def _mounted(request):
    return PlainTextResponse(f"mounted {request.path_params.get('name', request.url.path)}")


async def _mounted_404(request, error):
    return PlainTextResponse("the mounted app's 404", status_code=404)


# beside Probe's routes; one of its paths would shadow /echo if the mount came first
adapter.mount_at_root(Probe, Starlette(
    routes=[Route("/mounted/{name}", _mounted), Route("/echo", _mounted, methods=["POST"])],
    exception_handlers={404: _mounted_404},
))


@pytest.fixture(scope="module")
def probe():
    from _bentoml_impl.server.app import ServiceAppFactory

    # Probe.to_asgi(), but without BentoML's metrics middleware: its metric names
    # would clash with those of the service's app in this process
    Probe.inject_config()
    with TestClient(ServiceAppFactory(Probe, is_main=True, enable_metrics=False)()) as client:
        yield client


def post(client, path, body):
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def test_assumption_validation_errors_are_an_error_and_a_list_of_pydantic_details(probe):
    response = post(probe, "/echo", {"item": {"value": "x"}})
    assert response.status_code == 400
    body = response.json()
    assert isinstance(body, dict) and isinstance(body["detail"], list), body
    assert adapter.error_message(response.content).startswith("item.value: ")


def test_assumption_a_raised_4xx_exception_is_a_one_element_list(probe):
    response = post(probe, "/echo", {"item": {"value": -1}})
    assert response.status_code == 400
    assert response.json() == [{"error": "value: expected a non-negative number"}]
    assert adapter.error_message(response.content) == "value: expected a non-negative number"


def test_assumption_a_returned_response_is_sent_as_it_is(probe):
    response = post(probe, "/shaped", {"item": {"value": -1}})
    assert response.status_code == 400
    assert response.json() == {"error": "value: expected a non-negative number"}
    assert post(probe, "/shaped", {"item": {"value": 3}}).json() == {"value": 3}


def test_assumption_a_list_output_is_encoded_by_the_standard_json_module(probe):
    """BentoML's body for a list output has ``json.dumps``' separators; the body of
    json_list_response is pydantic's compact JSON of the same values, and the route
    still documents its output schema."""
    theirs = post(probe, "/echo", {"item": {"value": 1}})
    ours = post(probe, "/listed", {"item": {"value": 1}})
    assert theirs.text == '[{"value": 1}]' and ours.text == '[{"value":1}]'
    assert ours.json() == theirs.json()
    assert ours.headers["content-type"] == "application/json"
    document = probe.get("/docs.json").json()
    def output(path):
        return document["paths"][path]["post"]["responses"]["200"]["content"]
    assert output("/listed") == output("/echo")


def test_assumption_output_media_type_is_read_from_the_output_spec(probe):
    adapter.declare_json_outputs(Probe)
    assert all(api.output_spec.media_type == "application/json" for api in Probe.apis.values())
    response = post(probe, "/echo", {"item": {"value": 1}})
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == [{"value": 1}]


def test_assumption_api_lookups_wrap_anew_and_a_kept_wrapper_is_used(probe):
    service = adapter.current_service()
    # BentoML calls the `.local` of a fresh lookup per request
    assert service.echo.local is not service.echo.local
    adapter.keep_api_wrappers(service, ("echo",))
    assert service.echo.local is service.echo.local
    assert post(probe, "/echo", {"item": {"value": 2}}).json() == [{"value": 2}]


def form_problem(body: bytes, content_type: bytes = b"multipart/form-data; boundary=b"):
    return asyncio.run(adapter.form_problem(body, content_type, "image", ("value",)))


def test_assumption_a_file_in_a_value_field_is_taken_as_its_value(probe):
    files = {"value": ("v.bin", b"3", "application/octet-stream")}
    assert probe.post("/upload", files=files).json() == 3
    body = (b'--b\r\nContent-Disposition: form-data; name="value"; filename="v.bin"\r\n\r\n'
            b"\x89\x00\r\n--b--\r\n")
    assert form_problem(body) == "value: expected a form value, got a file"


@pytest.mark.parametrize(("content_type", "body"), [
    (b"multipart/form-data", b"abc"),  # no boundary
    (b"multipart/form-data; boundary=b", b"not multipart at all"),
    (b"multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\n3"),
])
def test_assumption_multipart_parse_errors_are_server_errors(probe, content_type, body):
    response = probe.post("/picture", content=body, headers={"content-type": content_type})
    assert response.status_code == 500  # Starlette's 400 HTTPException, answered as a 500
    assert form_problem(body, content_type).startswith("unreadable multipart/form-data body")


def test_assumption_a_value_in_a_file_field_is_fetched_as_a_url(probe, monkeypatch):
    import httpx

    fetched = []

    async def get(client, url, **kwargs):
        fetched.append(url)
        raise httpx.ConnectError("no network in the tests")

    monkeypatch.setattr(httpx.AsyncClient, "get", get)
    probe.post("/picture", files={"image": (None, "http://example.com/x.png")})
    assert fetched == ["http://example.com/x.png"]
    body = (b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
            b"http://example.com/x.png\r\n--b--\r\n")
    assert form_problem(body) == "image: expected a file upload, got a form value"


@pytest.mark.parametrize("value", ["1" * 5000, "[" * 100_000])
def test_assumption_form_values_are_read_with_json_loads_whose_other_errors_are_500(probe,
                                                                                    value):
    files = {"image": ("x.png", b"x", "image/png"), "value": (None, value)}
    assert probe.post("/picture", files=files).status_code == 500
    body = (b'--b\r\nContent-Disposition: form-data; name="value"\r\n\r\n'
            + value.encode() + b"\r\n--b--\r\n")
    assert form_problem(body).startswith("value: unreadable value")


def test_assumption_client_error_tracebacks_are_logged_on_the_http_app_logger(probe):
    # on the logger itself, with our filter lifted: whether the service was imported (it
    # adds the filter) or BentoML configured logging (propagation) before this test runs
    logger = logging.getLogger(adapter.HTTP_APP_LOGGER)
    ours = [f for f in logger.filters if isinstance(f, adapter._DropClientErrorTracebacks)]
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    level = logger.level
    for our_filter in ours:
        logger.removeFilter(our_filter)
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    try:
        post(probe, "/echo", {"item": {"value": -1}})
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
        for our_filter in ours:
            logger.addFilter(our_filter)
    assert records and records[0].exc_info, "BentoML no longer logs rejected requests there"
    assert not adapter._DropClientErrorTracebacks().filter(records[0])


def test_assumption_an_app_mounted_at_the_root_answers_only_its_own_paths_after_ours(probe):
    assert probe.get("/mounted/x").text == "mounted x"
    assert post(probe, "/echo", {"item": {"value": 4}}).json() == [{"value": 4}]
    response = probe.get("/elsewhere")
    assert response.status_code == 404 and response.text != "the mounted app's 404"


MONITOR_SCRIPT = """
import json, sys
import bentoml
from service import adapter

records = [[(7, "x", "feature", "numerical"), ("a", "request_id", "feature", "categorical")],
           [(8, "x", "feature", "numerical"), ("b", "request_id", "feature", "categorical")]]
adapter.write_monitor_records("first", records + records)  # the schema, then a batch
adapter.write_monitor_records("second", records[:1])
adapter.write_monitor_records("first", records[1:])  # after "second" configured its loggers
"""


def test_assumption_the_default_monitor_writes_json_lines_and_shares_its_loggers(tmp_path):
    # in a process of its own, with BentoML's default configuration: monitors reconfigure
    # logging for the whole process
    import os
    import subprocess
    import sys

    from tests.conftest import REPOSITORY

    env = {key: value for key, value in os.environ.items()
           if key != "BENTOML_CONFIG_OVERRIDES"}
    result = subprocess.run([sys.executable, "-c", MONITOR_SCRIPT], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(REPOSITORY)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    logs = tmp_path / "monitoring"  # the default log_path, under the working directory

    def lines(name):
        return [json.loads(line) for line in
                (logs / name / "data" / "data.0.log").read_text().splitlines()]

    first = lines("first")
    assert [record["x"] for record in first] == [7, 8, 7, 8]
    assert {"timestamp", "request_id", "trace_id", "request_id_"} <= set(first[0])
    assert first[0]["request_id_"] == "a"  # our column was renamed: BentoML's own wins
    schema = json.loads((logs / "first" / "schema" / "schema.0.log").read_text())
    assert [column["name"] for column in schema["columns"]] == ["x", "request_id_"]
    assert "Column name x is duplicated" not in result.stderr
    # the second monitor took over the loggers: the first one's last record went there
    assert [record["x"] for record in lines("second")] == [7, 8]
    assert [record["request_id_"] for record in first] == ["a", "b", "a", "b"]


def test_uvicorn_formats_no_access_log_record_for_bentoml_to_drop(monkeypatch):
    """uvicorn formats an access-log record for every response while ``uvicorn.access``
    has a handler, its ancestors' included; BentoML's root handler would drop them. In a
    worker the logger has no handlers of its own (in this process, tests that serve
    in-process leave pytest's capture handlers on it)."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    async def app(scope, receive, send):  # never called
        raise AssertionError

    monkeypatch.setattr(logging.getLogger("uvicorn.access"), "handlers", [])
    adapter.skip_uvicorn_access_log()
    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(Config(app, log_config=None), ServerState(), {}, _loop=loop)
    finally:
        loop.close()
    assert protocol.access_log is False
