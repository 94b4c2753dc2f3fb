"""The benchmarks' load client against the real server and against a server that only
refuses: throughput counts 200 answers, and refusals (429) are counted beside it."""

import json

import pytest

from benchmarks.bare_refusal import bare_server
from benchmarks.load_client import concurrent, sequential
from loadtest.server import free_port


def one_image_bodies(n_samples: int) -> list[bytes]:
    from training.data import load_dataset

    images = load_dataset("digits").x_test[:4]
    return [json.dumps({"instances": [image.tolist()], "n_samples": n_samples}).encode()
            for image in images]


def test_answers_of_the_real_server_are_throughput(server):
    port = int(server.rsplit(":", 1)[1])
    row = concurrent(port, "/predict", one_image_bodies(2), clients=2, seconds=1.0)
    assert row["requests"] > 0 and row["failures"] == row["refused"] == 0
    assert row["rps"] > 0 and row["p50_ms"] <= row["p99_ms"]
    bad = sequential(port, "/predict", [b'{"instances": []}'], requests=3)
    assert (bad["failures"], bad["refused"], bad["p50_ms"]) == (3, 0, None)


@pytest.fixture
def refusing_port():
    port = free_port()
    process = bare_server(port)
    yield port
    process.terminate()
    process.wait()


def test_refusals_are_failures_and_no_throughput(refusing_port):
    row = concurrent(refusing_port, "/predict", [b"{}"], clients=2, seconds=0.5)
    assert row["requests"] > 0 and row["refused"] == row["failures"] == row["requests"]
    assert row["rps"] == 0 and row["p99_ms"] is None
