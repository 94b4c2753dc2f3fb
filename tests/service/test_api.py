"""Schemas and validation, against the service in this process."""

import io
import json
import struct
import zlib

import bentoml
import numpy as np
import pytest
from PIL import Image

from service.adapter import current_service
from service.door import Door
from service.predictor import Predictor
from tests.conftest import assert_error
from training.config import ModelConfig, TrainConfig
from training.data import load_dataset
from training.train import train

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


def test_flat_shaped_and_integer_instances_read_alike(client):
    """Instances of numbers are read straight into an array; a request that mixes flat
    and shaped instances, or integers and floats, is read the slow way: same answer."""
    shaped = np.reshape(DIGIT, (8, 8)).tolist()
    integers = [int(v) for v in DIGIT]

    def probabilities(instances):
        response = post(client, "/predict", {"instances": instances, "n_samples": 5, "seed": 4})
        assert response.status_code == 200, response.text
        return [p["probabilities"] for p in response.json()["predictions"]]

    fast = probabilities([DIGIT, DIGIT])
    assert probabilities([shaped, shaped]) == fast
    assert probabilities([DIGIT, shaped]) == fast
    assert probabilities([integers, DIGIT]) == fast
    [item] = post(client, "/predict_batched",
                  {"items": [{"instance": shaped, "n_samples": 5}]}).json()
    assert item["n_samples"] == 5


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
        ({"instances": 5}, ["instances: expected a list of instances, got a number"]),
        ({"instances": "abc"}, ["instances: expected a list of instances, got a string"]),
        ({"instances": [5]}, ["instances: instance 0: expected 64 numbers", "got a number"]),
        ({"instances": [DIGIT] * 17}, ["instances", "at most 16 items"]),
        ({"instances": [DIGIT], "n_samples": 0}, ["n_samples", "greater than or equal to 1"]),
        ({"instances": [DIGIT], "n_samples": 201}, ["n_samples", "less than or equal to 200"]),
        ({"instances": [DIGIT], "n_samples": "30"}, ["n_samples", "valid integer"]),
        ({"instances": [DIGIT], "n_samples": 2.5}, ["n_samples", "valid integer"]),
        ({"instances": [DIGIT], "seed": -3}, ["seed"]),
        ({"instances": [DIGIT], "risk_threshold": -1}, ["risk_threshold"]),
        ({"instances": [DIGIT], "temperature": 2}, ["temperature", "Extra inputs"]),
        ({"n_samples": 3}, ["instances", "Field required"]),
        ({"instances": [DIGIT[:63] + [10**400]]},  # pydantic reads it, numpy cannot
         ["instances: instance 0: values must be finite numbers, got an integer too large"]),
        ([DIGIT], ["request body: Input should be an object"]),
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
    assert_error(client.get("/predict"), 405, "GET is not allowed on /predict; use POST")
    assert_error(post(client, "/no_such_route", {}), 404, "no route at /no_such_route; "
                 "/docs.json lists the routes")
    assert_error(client.get("/ui/no_such_file.js"), 404, "no route at /ui/no_such_file.js")


def test_oversized_body_gets_413(client):
    huge = {"instances": [DIGIT] * 16, "padding": "x" * 300_000}
    assert_error(post(client, "/predict", huge), 413, "exceeds 200000 bytes")


def test_bad_batched_items_are_refused_per_request(client):
    response = post(client, "/predict_batched",
                    {"items": [{"instance": DIGIT}, {"instance": DIGIT[:5], "n_samples": 0}]})
    assert_error(response, 400, "items.1.instance", "got shape 5", "items.1.n_samples")
    assert_error(post(client, "/predict_batched", {"items": []}), 400, "items")
    assert_error(post(client, "/predict_batched", {"items": [{"instance": [10**400] * 64}]}), 400,
                 "items.0.instance: values must be finite numbers, got an integer too large")
    response = post(client, "/predict_batched", {"items": [{"instance": "x"}]})
    assert_error(response, 400, "items.0.instance: expected 64 numbers", "got a string")
    assert response.json()["error"].count("items.0.instance") == 1  # one message, one place
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


def one_part_body(headers: str, content: str) -> str:
    """A multipart body (boundary ``b``) of one part."""
    return f"--b\r\n{headers}\r\n\r\n{content}\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("content_type", "body", "fragments"),
    [
        ("multipart/form-data", "abc", ["unreadable multipart/form-data body",
                                        "Missing boundary", "expected a boundary"]),
        ("multipart/form-data; boundary=b", "not multipart at all",
         ["unreadable multipart/form-data body"]),
        ("multipart/form-data; boundary=b", one_part_body("Content-Disposition: form-data", "3"),
         ["unreadable multipart/form-data body", '"name" must be provided']),
        ("multipart/form-data; boundary=b",  # truncated: no closing boundary
         '--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\nab',
         ["image"]),
        # BentoML would fetch a value in the file field as a URL
        ("multipart/form-data; boundary=b",
         one_part_body('Content-Disposition: form-data; name="image"', "http://example.com/x.png"),
         ["image: expected a file upload, got a form value"]),
        # json.loads, which BentoML reads each value with, fails on these
        ("multipart/form-data; boundary=b",
         one_part_body('Content-Disposition: form-data; name="n_samples"', "1" * 5000),
         ["n_samples: unreadable value (5000 characters)"]),
        ("multipart/form-data; boundary=b",
         one_part_body('Content-Disposition: form-data; name="seed"', "[" * 100_000),
         ["seed: unreadable value"]),
    ],
)
def test_malformed_multipart_bodies_are_400_naming_what_was_expected(client, content_type,
                                                                     body, fragments):
    response = client.post("/predict_image", content=body.encode(),
                           headers={"content-type": content_type})
    assert_error(response, 400, *fragments)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` gray pixels (no data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_an_image_too_large_to_decode_is_400(client):
    files = {"image": ("bomb.png", png_claiming(20_000, 20_000), "image/png")}
    assert_error(client.post("/predict_image", files=files), 400, "image", "expected at most",
                 "pixels")


def test_a_wrong_method_is_405_with_the_allowed_ones(client):
    response = client.get("/predict")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_the_service_keeps_serving_after_bad_input(client):
    for _ in range(3):
        post(client, "/predict", '{"instances": [[')
    assert post(client, "/predict", {"instances": [DIGIT]}).status_code == 200


def test_apis_answer_503_until_the_model_is_loaded(client, monkeypatch):
    monkeypatch.setattr(current_service(), "predictor", None)
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
    monkeypatch.setattr(current_service(), "sampler", None)
    assert_error(post(client, "/generate", {"count": 2}), 404, "UQ_GENERATOR")


def test_return_samples_is_bounded(client, monkeypatch):
    import service.service  # reads the served card: once the model is stored

    monkeypatch.setattr(service.service, "MAX_RETURNED_SAMPLES", 5)
    response = post(client, "/predict", {"instances": [DIGIT], "n_samples": 6,
                                         "return_samples": True})
    assert_error(response, 400, "return_samples", "at most 5 samples", "n_samples is 6")
    assert_error(post(client, "/predict", {"instances": [DIGIT], "return_samples": "yes"}), 400,
                 "return_samples")


def test_a_batched_item_returns_its_own_samples(client, monkeypatch):
    items = [{"instance": DIGIT, "n_samples": 7, "return_samples": True},
             {"instance": DIGIT, "n_samples": 3}]
    with_samples, without = post(client, "/predict_batched", {"items": items}).json()
    assert np.shape(with_samples["samples"]) == (7, 10)
    assert np.allclose(np.mean(with_samples["samples"], axis=0), with_samples["probabilities"],
                       atol=1e-5)
    assert without.get("samples") is None

    import service.service  # reads the served card: once the model is stored

    monkeypatch.setattr(service.service, "MAX_RETURNED_SAMPLES", 5)
    response = post(client, "/predict_batched", {"items": [
        {"instance": DIGIT, "n_samples": 3}, {"instance": DIGIT, "n_samples": 6,
                                              "return_samples": True}]})
    assert_error(response, 400, "items.1.return_samples", "at most 5 samples")


def test_a_budget_picks_the_largest_calibrated_n_that_fits_and_reports_it(client):
    card_ns = current_service().predictor.card.calibrated_n_samples
    largest = max(n for n in card_ns if n <= 200)  # UQ_MAX_SAMPLES in the tests
    response = post(client, "/predict", {"instances": [DIGIT], "latency_budget_ms": 60000})
    assert response.status_code == 200, response.text
    body = response.json()
    [prediction] = body["predictions"]
    assert body["n_samples"] == prediction["n_samples"] == largest
    assert prediction["budget_limited"] is False
    response = post(client, "/predict_batched", {"items": [
        {"instance": DIGIT, "latency_budget_ms": 60000, "min_samples": 150},
        {"instance": DIGIT, "n_samples": 3}]})
    assert [(p["n_samples"], p["budget_limited"]) for p in response.json()] == [(150, False),
                                                                                 (3, False)]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/predict", {"instances": [DIGIT], "latency_budget_ms": 0.001}),
     ("/predict", {"instances": [DIGIT], "n_samples": 5, "latency_budget_ms": 0.001}),
     ("/predict_batched", {"items": [{"instance": DIGIT},
                                     {"instance": DIGIT, "latency_budget_ms": 0.001}]})],
)
def test_a_budget_that_cannot_be_met_is_429_at_once_with_retry_after(client, path, body):
    response = post(client, path, body)
    assert_error(response, 429, "latency_budget_ms: 0.001 ms", "retry later")
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("item", "fragments"),
    [({"latency_budget_ms": 0}, ["latency_budget_ms", "greater than 0"]),
     ({"latency_budget_ms": -5}, ["latency_budget_ms", "greater than 0"]),
     ({"latency_budget_ms": "fast"}, ["latency_budget_ms", "valid number"]),
     ({"latency_budget_ms": None, "min_samples": 0}, ["min_samples", "greater than or equal"]),
     ({"min_samples": 201}, ["min_samples", "less than or equal to 200"]),
     ({"min_samples": 2.5}, ["min_samples", "valid integer"]),
     ({"n_samples": 10, "min_samples": 11}, ["min_samples", "above n_samples (10)"]),
     ({"n_samples": "auto", "min_samples": 2}, ["min_samples", '"auto" picks its own N'])],
)
def test_bad_budget_fields_are_400_naming_the_field(client, item, fragments):
    assert_error(post(client, "/predict", {"instances": [DIGIT], **item}), 400, *fragments)
    assert_error(post(client, "/predict_batched", {"items": [{"instance": DIGIT, **item}]}),
                 400, *fragments)


def test_an_overloaded_service_refuses_at_the_door_with_retry_after(client, monkeypatch):
    monkeypatch.setattr(Door, "limit", 0)  # as if every request in flight were one too many
    for path, body in (("/predict", {"instances": [DIGIT]}),
                       ("/predict_batched", {"items": [{"instance": DIGIT}]})):
        response = post(client, path, body)
        assert_error(response, 429, "overloaded", "in flight", "UQ_BATCH_MAX_LATENCY_MS",
                     "retry later")
        assert int(response.headers["retry-after"]) >= 1
    assert post(client, "/metadata", {}).status_code == 200  # not a prediction route


@pytest.fixture(scope="module")
def flat_tags(tmp_path_factory) -> dict[int, str]:
    """Tiny classifiers of digits given as flat rows, by row size: all 64 pixels (a square
    size, read from an image at 8 x 8) and the first 5 (no image shape)."""
    digits = load_dataset("digits")
    tags = {}
    for size in (64, 5):
        path = tmp_path_factory.mktemp("flat") / f"flat{size}.npz"
        np.savez(path, x_train=digits.x_train.reshape(-1, 64)[:, :size],
                 y_train=digits.y_train, x_test=digits.x_test.reshape(-1, 64)[:, :size],
                 y_test=digits.y_test)
        config = TrainConfig(dataset=f"npz:{path}", model_name=f"uq-test-flat{size}", epochs=1,
                             n_samples=4, calibration_samples=(4,),
                             output_dir=tmp_path_factory.mktemp("train"),
                             model=ModelConfig(hidden_units=(16,)))
        tags[size] = train(config, load_dataset(config.dataset)).tag
    return tags


@pytest.fixture
def serve_flat(client, flat_tags, monkeypatch):
    """Serve one of ``flat_tags``' models in place of the test run's: ``serve_flat(size)``."""
    service = current_service()

    def serve(size: int) -> None:
        predictor = Predictor.load(bentoml.models.get(flat_tags[size]), None, warm_up_batch=1)
        monkeypatch.setattr(service, "predictor", predictor)
        monkeypatch.setattr(service.scheduler, "predictor", predictor)

    return serve


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_flat_model_of_a_square_size_reads_images_at_that_square(client, serve_flat):
    serve_flat(64)
    assert post(client, "/metadata", {}).json()["image_shape"] == [8, 8]
    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    files = {"image": ("x.png", png(pixels), "image/png"), "seed": (None, "3")}
    from_image = client.post("/predict_image", files=files)
    assert from_image.status_code == 200, from_image.text
    values = pixels.reshape(1, 64) * np.float32(16 / 255)  # 0..255 onto the card's [0, 16]
    predictor = current_service().predictor  # the flat model: /predict still reads the 8 x 8 card's
    [expected] = predictor.predict(values, n_samples=predictor.default_samples, seed=3)
    [answer] = from_image.json()["predictions"]
    assert np.allclose(answer["probabilities"], expected.probabilities, atol=1e-5)


def test_a_flat_model_without_an_image_shape_says_so(client, serve_flat):
    serve_flat(5)
    assert post(client, "/metadata", {}).json()["image_shape"] is None
    files = {"image": ("x.png", png(np.zeros((8, 8), np.uint8)), "image/png")}
    assert_error(client.post("/predict_image", files=files), 400,
                 "image: this model takes 5 numbers and has no image shape; send the numbers "
                 "to /predict")


def test_metadata_names_the_image_shape_of_uploads(client):
    assert post(client, "/metadata", {}).json()["image_shape"] == [8, 8]
