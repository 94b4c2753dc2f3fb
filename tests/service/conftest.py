"""Service tests: the service in this process behind TestClient; the real server is
tests/conftest.py's ``server``."""

import pytest

from tests.conftest import wait_ready


@pytest.fixture(scope="session")
def client(classifier_tag, generator_tag):
    """The service in this process, behind starlette's TestClient."""
    from starlette.testclient import TestClient

    from service.service import UQService  # reads the served card: once the model is stored

    with TestClient(UQService.to_asgi()) as test_client:
        wait_ready(test_client.get)
        yield test_client


