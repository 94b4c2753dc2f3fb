"""Shared test set-up: quiet TensorFlow, a private BentoML store, seeded Keras."""

import os
import tempfile

# before anything imports BentoML, prometheus_client or TensorFlow: they read these at import
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="uq-test-bentoml-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="uq-test-prometheus-")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
