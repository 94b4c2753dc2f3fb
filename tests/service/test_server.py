"""Against a real ``bentoml serve`` process on loopback."""

import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import bentoml
import numpy as np
import pytest
import requests
from PIL import Image

from loadtest.contract_check import without_ids
from loadtest.server import ServerError, served
from tests.conftest import DEFAULT_SAMPLES, SERVICE_ENV
from training.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").x_test[:6]


def predict(http, instances, **options):
    response = http.post("/predict", json={"instances": np.asarray(instances).tolist(), **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_readiness_liveness_and_metadata(http, classifier_tag):
    assert http.get("/readyz").status_code == 200
    assert http.get("/livez").status_code == 200
    assert "/predict_batched" in http.get("/docs.json").json()["paths"]
    card = http.post("/metadata", json={}).json()
    assert card["model"] == classifier_tag
    assert card["input_shape"] == [8, 8] and card["default_n_samples"] == DEFAULT_SAMPLES


def test_predictions_are_consistent(http, digits):
    body = predict(http, digits)
    assert body["n_samples"] == DEFAULT_SAMPLES and len(body["predictions"]) == len(digits)
    for prediction in body["predictions"]:
        probabilities = np.array(prediction["probabilities"])
        assert prediction["label"] == int(probabilities.argmax())
        assert prediction["class_name"] == str(prediction["label"])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert prediction["confidence"] == pytest.approx(probabilities.max())
        assert prediction["class_name"] in prediction["prediction_set"]
        risk, novelty = prediction["risk"], prediction["risk"]["novelty"]
        assert risk["reasons"] == [reason for reason, holds in (
            ("error_risk", risk["score"] > risk["threshold"]),
            ("novelty", novelty["score"] > novelty["threshold"])) if holds]
        assert risk["flagged"] == bool(risk["reasons"])
        assert novelty["score"] == prediction["mutual_information"]
        assert prediction["n_samples"] == risk["calibrated_n_samples"] == DEFAULT_SAMPLES
        assert prediction["mutual_information"] <= prediction["predictive_entropy"] + 1e-9


def test_a_seed_gives_identical_responses(http, digits):
    first = predict(http, digits[:2], n_samples=20, seed=11)
    again = predict(http, digits[:2], n_samples=20, seed=11)
    assert without_ids(again) == without_ids(first)
    assert again["request_id"] != first["request_id"]
    assert without_ids(predict(http, digits[:2], n_samples=20, seed=12)) != without_ids(first)
    assert without_ids(predict(http, digits[:2], n_samples=20)) != without_ids(
        predict(http, digits[:2], n_samples=20))


def test_one_sample_has_zero_spread(http, digits):
    for prediction in predict(http, digits, n_samples=1)["predictions"]:
        assert prediction["std"] == [0.0] * 10
        assert prediction["mutual_information"] == pytest.approx(0.0, abs=1e-9)


def test_risk_threshold_override(http, digits):
    body = predict(http, digits, risk_threshold=1e9)
    assert not any("error_risk" in p["risk"]["reasons"] for p in body["predictions"])
    assert {p["risk"]["threshold"] for p in body["predictions"]} == {1e9}


@pytest.mark.parametrize(("n_samples", "calibrated", "novelty_calibrated"),
                         [(1, 1, 1), (3, 1, 5), (5, 5, 5), (9, 8, 10), (30, 30, 30),
                          (150, 100, 100)])
def test_each_n_uses_its_calibration_or_the_safe_neighbours_off_the_grid(
        http, digits, n_samples, calibrated, novelty_calibrated):
    card = http.post("/metadata", json={}).json()
    assert card["calibrated_n_samples"] == [1, 5, 8, 10, 20, 30, 50, 100]
    by_n = {c["n_samples"]: c for c in card["calibrations"]}
    [prediction] = predict(http, digits[:1], n_samples=n_samples)["predictions"]
    risk, novelty = prediction["risk"], prediction["risk"]["novelty"]
    assert prediction["n_samples"] == n_samples and risk["calibrated_n_samples"] == calibrated
    assert risk["metric"] == by_n[calibrated]["risk_policy"]["metric"]
    assert risk["threshold"] == by_n[calibrated]["risk_policy"]["threshold"]
    assert novelty["calibrated_n_samples"] == novelty_calibrated
    assert novelty["threshold"] == by_n[novelty_calibrated]["novelty_policy"]["threshold"]
    [batched] = http.post("/predict_batched", json={"items": [
        {"instance": digits[0].tolist(), "n_samples": n_samples}]}).json()
    assert batched["risk"]["calibrated_n_samples"] == calibrated


def test_an_uncalibrated_default_n_stops_start_up_in_one_line(classifier_tag, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("UQ_DEFAULT_SAMPLES", "7")
    with pytest.raises(ServerError, match=r"UQ_DEFAULT_SAMPLES=7 is not a calibrated N .*"
                       r"\(1, 5, 8, 10, 20, 30, 50, 100\)"):
        with served(classifier_tag, tmp_path):
            pass


def test_batched_path_merges_concurrent_requests_with_mixed_n_samples(http, digits):
    def one(index):
        item = {"instance": digits[index % len(digits)].tolist(), "n_samples": 1 + index % 5}
        return index, http.post("/predict_batched", json={"items": [item, item]})

    items_before, calls_before = batch_size_metric(http, "sum"), batch_size_metric(http, "count")
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(48)))
    for index, response in results:
        assert response.status_code == 200, response.text
        first, second = response.json()
        assert first["label"] == int(np.argmax(first["probabilities"]))
        if 1 + index % 5 == 1:
            assert first["std"] == [0.0] * 10
    assert batch_size_metric(http, "sum") - items_before == 96  # 96 items ...
    assert batch_size_metric(http, "count") - calls_before < 48  # ... in fewer engine calls


def test_refusals_are_429_with_retry_after_and_counted_and_budgets_pick_n(http, digits):
    def overloaded_count() -> float:
        prefix = 'uq_overloaded_requests_total{endpoint="predict_batched"} '
        lines = [line for line in http.get("/metrics").text.splitlines()
                 if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = overloaded_count()
    instance = digits[0].tolist()
    refused = http.post("/predict_batched",
                        json={"items": [{"instance": instance, "latency_budget_ms": 0.001}]})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert set(refused.json()) == {"error"} and "latency_budget_ms" in refused.json()["error"]
    assert overloaded_count() == before + 1
    answered = http.post("/predict_batched",
                         json={"items": [{"instance": instance, "latency_budget_ms": 30000}]})
    [prediction] = answered.json()
    assert prediction["n_samples"] == 100 and prediction["budget_limited"] is False


def batch_size_metric(http, suffix: str) -> float:
    name = f"uq_batch_size_{suffix} "
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(name)]
    return float(lines[0].split()[-1]) if lines else 0.0


def image_upload(array: np.ndarray, image_format: str) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    kind = image_format.lower()
    return {"image": (f"x.{kind}", buffer.getvalue(), f"image/{kind}")}


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_image_upload(http, digits, image_format):
    pixels = (digits[0] * (255 / 16)).astype(np.uint8)
    response = http.post("/predict_image", files=image_upload(pixels, image_format),
                         data={"n_samples": "4", "seed": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["n_samples"] == 4 and len(body["predictions"]) == 1


def test_metrics_count_requests_outcomes_and_flags(http, digits):
    predict(http, digits[:1])
    http.post("/predict", json={"instances": [[1, 2]]})
    metrics = http.get("/metrics").text
    assert 'uq_requests_total{endpoint="predict",outcome="ok"}' in metrics
    assert 'uq_requests_total{endpoint="predict",outcome="client_error"}' in metrics
    for name in ("uq_flagged_predictions_total", "uq_flag_reasons_total", "uq_n_samples_bucket",
                 "uq_batch_size_bucket",
                 "bentoml_service_request_duration_seconds", "uq_engine_seconds_bucket",
                 "uq_risk_score_bucket"):
        assert name in metrics


def test_metrics_count_every_prediction_answered_before_they_are_asked(http, digits):
    """Predictions are recorded in the metrics off the request's path; /metrics still
    counts every one answered before it."""
    def predictions_counted() -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith('uq_predictions_total{endpoint="predict"} '):
                return float(line.split()[-1])
        return 0.0

    before = predictions_counted()
    predict(http, digits[:3])
    assert predictions_counted() == before + 3


def test_the_middleware_answers_before_bentoml_sees_the_request(http):
    """What the middleware answers itself (here a 415) is counted in uq_requests_total
    and never reaches BentoML's app: its request metrics do not see it."""
    def counts() -> tuple[float, list[str]]:
        lines = http.get("/metrics").text.splitlines()
        ours = [line for line in lines if line.startswith(
            'uq_requests_total{endpoint="predict",outcome="client_error"} ')]
        bentoml_seen = [line for line in lines if line.startswith("bentoml_service_request_total")
                        and 'endpoint="/predict"' in line and 'http_response_code="415"' in line]
        return (float(ours[0].split()[-1]) if ours else 0.0), bentoml_seen

    before, _ = counts()
    response = http.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "Content-Type" in response.json()["error"]
    after, bentoml_seen = counts()
    assert after == before + 1 and bentoml_seen == []
    assert any(line.startswith("bentoml_service_request_total")
               for line in http.get("/metrics").text.splitlines())  # BentoML counts the rest


def test_python_client(server, digits):
    with bentoml.SyncHTTPClient(server) as client:
        body = client.predict({"instances": digits[:1].tolist(), "seed": 3})
    assert body["predictions"][0]["class_name"] in [str(i) for i in range(10)]


def test_generate_is_seeded_and_shaped_like_the_classifier_input(http, generator_tag,
                                                                 classifier_tag):
    request = {"count": 3, "n_samples": 5, "seed": 4}
    first = http.post("/generate", json=request)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["generator"], body["model"]) == (generator_tag, classifier_tag)
    assert body["seed"] == 4 and body["n_samples"] == 5 and len(body["samples"]) == 3
    for sample in body["samples"]:
        image = np.asarray(sample["image"])
        assert image.shape == (8, 8) and 0 <= image.min() and image.max() <= 16
        prediction = sample["prediction"]
        assert prediction["label"] == int(np.argmax(prediction["probabilities"]))
        assert prediction["risk"]["calibrated_n_samples"] == 5
    assert without_ids(http.post("/generate", json=request).json()) == without_ids(body)
    assert without_ids(http.post("/generate", json={**request, "seed": 5}).json()) != \
        without_ids(body)
    assert http.post("/metadata", json={}).json()["generator"]["tag"] == generator_tag


def test_return_samples_gives_every_sample_and_their_mean(http, digits):
    body = predict(http, digits[:2], n_samples=12, seed=5, return_samples=True)
    for prediction in body["predictions"]:
        samples = np.asarray(prediction["samples"])
        assert samples.shape == (12, 10)
        np.testing.assert_allclose(samples.mean(axis=0), prediction["probabilities"], atol=1e-6)
        np.testing.assert_allclose(samples.std(axis=0), prediction["std"], atol=1e-6)
    assert "samples" not in predict(http, digits[:1], n_samples=12)["predictions"][0]
    pixels = (digits[0] * (255 / 16)).astype(np.uint8)
    response = http.post("/predict_image", files=image_upload(pixels, "PNG"),
                         data={"n_samples": "3", "return_samples": "true"})
    assert np.asarray(response.json()["predictions"][0]["samples"]).shape == (3, 10)


BODY_LIMIT = int(SERVICE_ENV["UQ_MAX_BODY_BYTES"])


def urllib_post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    """POST with the standard library, which asks the server to close the connection
    after the answer (``Connection: close``). Answered before its body was read, such
    a request had its connection reset while the client was still sending (each of 10
    bodies of 30 times the limit, measured), until the service read the body first."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(("path", "content_type", "status", "fragment"), [
    ("/predict", "application/json", 413, f"exceeds {BODY_LIMIT} bytes"),
    ("/predict_image", "application/json", 415, "must be multipart/form-data"),
    ("/v2/models/{name}/infer", "application/json", 413, f"exceeds {BODY_LIMIT} bytes"),
])
def test_a_client_still_sending_reads_an_error_answered_before_the_body(
        server, classifier_tag, path, content_type, status, fragment):
    url = server + path.format(name=classifier_tag.partition(":")[0])
    body = b"[" + b"1," * (15 * BODY_LIMIT) + b"1]"  # 30 times the limit
    for _ in range(3):  # before the body was read on, each was reset here
        answered, error = urllib_post(url, body, content_type)
        assert answered == status and fragment in error["error"], error
    # requests keeps the connection alive (uvicorn drops the rest of the body itself)
    response = requests.post(url, data=body[:3 * BODY_LIMIT], timeout=60,
                             headers={"Content-Type": content_type})
    assert response.status_code == status and fragment in response.json()["error"]
