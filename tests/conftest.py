"""Shared test set-up: quiet TensorFlow, a private BentoML store, seeded Keras, the
test run's tiny classifier and the one real ``bentoml serve`` on loopback."""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

# before anything imports BentoML, prometheus_client or TensorFlow: they read these at import
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="uq-test-bentoml-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="uq-test-prometheus-")
# the prediction log (bentoml.monitor) of the in-process and the real service, not in the
# working directory as by default
MONITORING_DIR = tempfile.mkdtemp(prefix="uq-test-monitoring-")
os.environ["BENTOML_CONFIG_OVERRIDES"] = json.dumps(
    {"services": {"UQService": {"monitoring": {"options": {"log_path": MONITORING_DIR}}}}})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# the service reads its settings once, at import: set them before any test imports it
SERVICE_ENV = {
    "UQ_MODEL": "uq-test-digits:latest",  # the classifier_tag fixture's
    "UQ_GENERATOR": "uq-test-generator:latest",  # the generator_tag fixture's
    "UQ_MAX_INSTANCES": "16",
    "UQ_MAX_SAMPLES": "200",
    "UQ_BATCH_MAX_SIZE": "8",
    "UQ_BATCH_MAX_LATENCY_MS": "20000",  # generous: a test must not see load shedding
    "UQ_MAX_BODY_BYTES": "200000",
}
os.environ.update(SERVICE_ENV)
REPOSITORY = Path(__file__).resolve().parents[1]

import absl.logging  # noqa: E402
import httpx  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402

from loadtest.server import served  # noqa: E402
from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.train import train  # noqa: E402
from training.train_gan import GanConfig, train_gan  # noqa: E402

# TensorFlow's absl log handler writes to the sys.stderr of its import: here pytest's
# capture file. Configuring logging again closes every handler, and absl's closes its
# stream unless it is sys.stderr at that moment; BentoML's prediction log configures
# logging from the service's monitoring thread, at any moment, also while pytest has
# its capture swapped out: pytest then died writing to its closed capture file ("lost
# sys.stderr"). The process's own stderr is one absl never closes.
absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)


#: The test classifier's default n_samples.
DEFAULT_SAMPLES = 8


@pytest.fixture(scope="session")
def classifier_tag(tmp_path_factory) -> str:
    """A tiny digits classifier in the test store, trained once per test run."""
    config = TrainConfig(
        dataset="digits", model_name="uq-test-digits", epochs=4, batch_size=64,
        learning_rate=0.01, n_samples=DEFAULT_SAMPLES, risk_target_error=0.1,
        output_dir=tmp_path_factory.mktemp("classifier"),
        model=ModelConfig(hidden_units=(64,)),
    )
    return train(config, load_dataset("digits")).tag


@pytest.fixture(scope="session")
def generator_tag(tmp_path_factory) -> str:
    """A tiny dense GAN generator for the digits classifier, trained once per test run."""
    config = GanConfig(
        dataset="digits", model_name="uq-test-generator", epochs=1, latent_dim=8,
        output_dir=tmp_path_factory.mktemp("generator"),
    )
    return train_gan(config, load_dataset("digits")).tag


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
def server_log(tmp_path_factory) -> Path:
    """The real server's output."""
    return tmp_path_factory.mktemp("server") / "serve.log"


@pytest.fixture(scope="session")
def server(classifier_tag, generator_tag, server_log) -> str:
    """Base URL of a real ``bentoml serve`` on loopback (its output: ``server_log``)."""
    with served(classifier_tag, server_log.parent) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    """An HTTP client of the real server."""
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def assert_error(response, status: int, *fragments: str) -> None:
    """``response`` has ``status`` and an ``{"error"}`` body holding every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
