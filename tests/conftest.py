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


#: The session classifier's default n_samples.
DEFAULT_SAMPLES = 8


@pytest.fixture(scope="session")
def classifier_tag(tmp_path_factory) -> str:
    """A tiny digits classifier in the test store, trained once per session."""
    from training.config import ModelConfig, TrainConfig
    from training.data import load_dataset
    from training.train import train

    config = TrainConfig(
        dataset="digits", model_name="uq-test-digits", epochs=4, batch_size=64,
        learning_rate=0.01, n_samples=DEFAULT_SAMPLES, risk_target_error=0.1,
        output_dir=tmp_path_factory.mktemp("classifier"),
        model=ModelConfig(hidden_units=(64,)),
    )
    return train(config, load_dataset("digits")).tag
