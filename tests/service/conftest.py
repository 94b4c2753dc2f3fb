"""Service tests: the service in-process (TestClient) and one real ``bentoml serve``
on loopback, both shared by the session, serving the session's tiny classifier."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# the service reads its settings once, at import: set them before any test imports it
SERVICE_ENV = {
    "UQ_MODEL": "uq-test-digits:latest",  # tests/conftest.py's classifier_tag
    "UQ_MAX_INSTANCES": "16",
    "UQ_MAX_SAMPLES": "200",
    "UQ_BATCH_MAX_SIZE": "8",
    "UQ_BATCH_MAX_LATENCY_MS": "20000",  # generous: a test must not see load shedding
    "UQ_MAX_BODY_BYTES": "200000",
}
os.environ.update(SERVICE_ENV)
REPOSITORY = Path(__file__).resolve().parents[2]


def wait_ready(get, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the service did not become ready")


@pytest.fixture(scope="session")
def client(classifier_tag):
    """The service in this process, behind starlette's TestClient."""
    from starlette.testclient import TestClient

    from service.service import UQService

    with TestClient(UQService.to_asgi()) as test_client:
        wait_ready(test_client.get)
        yield test_client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def server(classifier_tag, tmp_path_factory) -> str:
    """Base URL of a real ``bentoml serve`` on loopback."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as probe:
            try:
                wait_ready(probe.get)
            except TimeoutError:
                raise TimeoutError(f"bentoml serve never became ready:\n"
                                   f"{log_path.read_text()[-4000:]}") from None
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
