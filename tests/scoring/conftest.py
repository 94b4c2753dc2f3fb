"""uq-score test helpers: digits-like rows, inputs on disk, one-line error checks, and the
real local Ray cluster of the ``ray`` tests."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artifacts.store import load_classifier
from scoring.output import read_scores


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ray: starts a real local Ray cluster (about a minute; -m 'not ray' skips)"
    )


def digits_rows(rows: int, seed: int = 0) -> np.ndarray:
    """float32 ``[rows, 8, 8]``: scikit-learn's digits with noise, in the model's [0, 16]."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    images = load_digits().images.astype(np.float32)
    picked = images[rng.integers(0, len(images), rows)]
    return np.clip(picked + rng.normal(0, 1.5, picked.shape), 0, 16).astype(np.float32)


def write_npz(path: Path, x: np.ndarray, ids=None, compressed: bool = False) -> str:
    arrays = {"x": x} if ids is None else {"x": x, "ids": np.asarray(ids)}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return f"npz:{path}"


def write_images(folder: Path, x: np.ndarray) -> list[str]:
    """One PNG per row of ``x`` (values in [0, 16]), some in a subfolder; their ids."""
    ids = []
    for row, values in enumerate(x):
        name = f"sub/{row:03d}.png" if row % 3 == 0 else f"{row:03d}.png"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(values * 255 / 16).astype(np.uint8)).save(path)
        ids.append(name)
    return ids


def one_line_error(capsys) -> str:
    """The captured stderr, checked to be one ``uq-score: error:`` line and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("uq-score: error: "), err
    return lines[0]


def scores(output: Path):
    """The run's scores sorted by id (Ray writes them in its own order)."""
    return read_scores(output).sort_by("id")


def without_runner(summary: dict) -> dict:
    """summary.json without what depends on the runner, the time or the folder."""
    return {key: value for key, value in summary.items() if key not in ("runner", "scores")}


@pytest.fixture(scope="session")
def stored(classifier_tag):
    """The test run's classifier: (model, card, tag)."""
    return load_classifier(classifier_tag)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, no dashboard, no usage stats) whose workers see
    an empty model store, so that the model must travel with the job; its address."""
    import ray

    saved = {key: os.environ.get(key) for key in ("BENTOML_HOME", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="uq-test-ray-empty-store-")
    try:
        context = ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    finally:
        os.environ["BENTOML_HOME"] = saved["BENTOML_HOME"]
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
