"""Schemas and validation, against the service in this process."""

import io
import json

import bentoml
import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_error

DIGIT = [float(v % 17) for v in range(64)]  # a valid 8 x 8 instance in [0, 16]


def post(client, path, body, content_type="application/json"):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, content=data, headers={"content-type": content_type})


def test_a_valid_request_answers_the_contract(client):
    response = post(client, "/predict", {"instances": [DIGIT], "n_samples": 5, "seed": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"].startswith("uq-test-digits:") and body["n_samples"] == 5
    [prediction] = body["predictions"]
    assert set(prediction) >= {
        "label", "class_name", "confidence", "probabilities", "std", "predictive_entropy",
        "mutual_information", "risk", "prediction_set",
    }
    risk = prediction["risk"]
    assert set(risk) == {"flagged", "reasons", "metric", "score", "threshold", "novelty",
                         "calibrated_n_samples"}
    assert prediction["n_samples"] == 5 and risk["calibrated_n_samples"] == 5
    assert risk["flagged"] == bool(risk["reasons"])


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"instances": [DIGIT[:63]]},
         ["instances", "instance 0", "64 numbers or a 8 x 8 nested list", "got shape 63"]),
        ({"instances": [[DIGIT[:8]] * 7 + [DIGIT[:7]]]}, ["instance 0", "ragged nesting"]),
        ({"instances": [DIGIT[:63] + ["x"]]}, ["instance 0", "got a string"]),
        ({"instances": [DIGIT[:63] + [True]]}, ["got a boolean"]),
        ({"instances": [DIGIT[:63] + [17]]}, ["range [0, 16]"]),
        ({"instances": []}, ["instances", "at least 1 item"]),
        ({"instances": [DIGIT] * 17}, ["instances", "at most 16 items"]),
        ({"instances": [DIGIT], "n_samples": 0}, ["n_samples", "greater than or equal to 1"]),
        ({"instances": [DIGIT], "n_samples": 201}, ["n_samples", "less than or equal to 200"]),
        ({"instances": [DIGIT], "n_samples": "30"}, ["n_samples", "valid integer"]),
        ({"instances": [DIGIT], "n_samples": 2.5}, ["n_samples", "valid integer"]),
        ({"instances": [DIGIT], "seed": -3}, ["seed"]),
        ({"instances": [DIGIT], "risk_threshold": -1}, ["risk_threshold"]),
        ({"instances": [DIGIT], "temperature": 2}, ["temperature", "Extra inputs"]),
        ({"n_samples": 3}, ["instances", "Field required"]),
        ([DIGIT], ["object"]),
    ],
)
def test_bad_predict_bodies_name_the_field(client, body, fragments):
    assert_error(post(client, "/predict", body), 400, *fragments)


def test_nan_and_infinity_literals_are_refused(client):
    text = json.dumps({"instances": [DIGIT]}).replace("0.0", "NaN", 1)
    assert_error(post(client, "/predict", text), 400, "instance 0", "NaN or Infinity")


def test_malformed_json_wrong_content_type_and_wrong_method(client):
    assert_error(post(client, "/predict", '{"instances": [['), 400, "Invalid JSON")
    assert_error(post(client, "/predict", {"instances": [DIGIT]}, "text/plain"), 415,
                 "Content-Type must be application/json")
    assert_error(client.get("/predict"), 405)
    assert_error(post(client, "/no_such_route", {}), 404, "Not Found")


def test_oversized_body_gets_413(client):
    huge = {"instances": [DIGIT] * 16, "padding": "x" * 300_000}
    assert_error(post(client, "/predict", huge), 413, "exceeds 200000 bytes")


def test_bad_batched_items_are_refused_per_request(client):
    response = post(client, "/predict_batched",
                    {"items": [{"instance": DIGIT}, {"instance": DIGIT[:5], "n_samples": 0}]})
    assert_error(response, 400, "items.1.instance", "got shape 5", "items.1.n_samples")
    assert_error(post(client, "/predict_batched", {"items": []}), 400, "items")
    assert_error(post(client, "/predict_batched", {"items": [{"instance": DIGIT, "seed": 1}]}),
                 400, "items.0.seed", "Extra inputs")


def test_unreadable_image_and_missing_field(client):
    files = {"image": ("x.png", b"definitely not a png", "image/png")}
    assert_error(client.post("/predict_image", files=files), 400, "image", "not a readable")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    files = {"picture": ("x.png", buffer.getvalue(), "image/png")}
    assert_error(client.post("/predict_image", files=files), 400, "unknown form field 'picture'")
    files = {"image": ("x.png", buffer.getvalue(), "image/png"),
             "n_samples": ("n.bin", b"\x89\x00", "application/octet-stream")}
    assert_error(client.post("/predict_image", files=files), 400, "n_samples", "got a file")
    assert_error(client.post("/predict_image", files={"n_samples": (None, "3")}), 400, "image")
    assert_error(post(client, "/predict_image", {"image": "x"}), 415, "multipart/form-data")


def test_the_service_keeps_serving_after_bad_input(client):
    for _ in range(3):
        post(client, "/predict", '{"instances": [[')
    assert post(client, "/predict", {"instances": [DIGIT]}).status_code == 200


def test_apis_answer_503_until_the_model_is_loaded(client, monkeypatch):
    monkeypatch.setattr(bentoml.get_current_service(), "predictor", None)
    assert_error(post(client, "/predict", {"instances": [DIGIT]}), 503, "still loading")
    assert client.get("/livez").status_code == 200


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"count": 0}, ["count", "greater than or equal to 1"]),
        ({"count": 17}, ["count", "less than or equal to 16"]),
        ({"count": "3"}, ["count", "valid integer"]),
        ({"count": 2.5}, ["count", "valid integer"]),
        ({"count": 2, "n_samples": 0}, ["n_samples"]),
        ({"count": 2, "temperature": 1}, ["temperature", "Extra inputs"]),
    ],
)
def test_bad_generate_requests_name_the_field(client, body, fragments):
    assert_error(post(client, "/generate", body), 400, *fragments)


def test_generate_without_a_generator_is_404(client, monkeypatch):
    monkeypatch.setattr(bentoml.get_current_service(), "sampler", None)
    assert_error(post(client, "/generate", {"count": 2}), 404, "UQ_GENERATOR")


def test_return_samples_is_bounded(client, monkeypatch):
    import service.service

    monkeypatch.setattr(service.service, "MAX_RETURNED_SAMPLES", 5)
    response = post(client, "/predict", {"instances": [DIGIT], "n_samples": 6,
                                         "return_samples": True})
    assert_error(response, 400, "return_samples", "at most 5 samples", "n_samples is 6")
    assert_error(post(client, "/predict", {"instances": [DIGIT], "return_samples": "yes"}), 400,
                 "return_samples")
