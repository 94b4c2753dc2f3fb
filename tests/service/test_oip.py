"""The Open Inference Protocol (KServe V2) under /v2: tritonclient's HTTP client against
the test run's real ``bentoml serve``, raw HTTP for the error shapes, and the app alone
(in this process) for what the real server cannot show (a model still loading)."""

import gzip
import json

import numpy as np
import pytest
import tritonclient.http as triton
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service.adapter import current_service
from service.oip.app import create_app
from service.oip.types import OUTPUTS
from tests.conftest import DEFAULT_SAMPLES, assert_error
from training.data import load_dataset

FLAT_DIGIT = [float(v % 17) for v in range(64)]  # a valid 8 x 8 instance in [0, 16]
INTEGER_DIGIT = [v % 17 for v in range(64)]  # the same as JSON integers


@pytest.fixture(scope="module")
def v2(server):
    """tritonclient's HTTP client for the V2 endpoints (it takes host:port, no scheme)."""
    client = triton.InferenceServerClient(url=server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def model(classifier_tag):
    name, version = classifier_tag.split(":")
    return name, version


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").x_test[:4]  # [4, 8, 8] float32, integer values in [0, 16]


def image_input(images, datatype="FP32", binary=False):
    dtypes = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8,
              "INT64": np.int64}
    tensor = triton.InferInput("input", list(images.shape), datatype)
    tensor.set_data_from_numpy(np.asarray(images).astype(dtypes[datatype]), binary_data=binary)
    return tensor


def infer(client, name, images, *, outputs=None, binary=False, version="", **parameters):
    requested = None if outputs is None else [
        triton.InferRequestedOutput(output, binary_data=binary) for output in outputs]
    return client.infer(name, [image_input(images)], model_version=version, outputs=requested,
                        parameters=parameters or None)


def v2_body(data, shape, datatype="FP32", **parameters):
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}
    if parameters:
        body["parameters"] = parameters
    return body


def test_server_health_and_metadata(v2):
    assert v2.is_server_live() and v2.is_server_ready()
    metadata = v2.get_server_metadata()
    assert metadata["name"] == "uq-serving" and metadata["version"]
    assert {"classification", "binary_tensor_data"} <= set(metadata["extensions"])


def test_model_metadata_and_readiness(v2, model):
    name, version = model
    metadata = v2.get_model_metadata(name)
    assert v2.get_model_metadata(name, version) == metadata
    assert metadata["name"] == name and metadata["versions"] == [version]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {
        "probabilities": ("FP32", [-1, 10]), "std": ("FP32", [-1, 10]), "label": ("INT64", [-1]),
        "confidence": ("FP32", [-1]), "predictive_entropy": ("FP32", [-1]),
        "expected_entropy": ("FP32", [-1]), "mutual_information": ("FP32", [-1]),
        "risk_score": ("FP32", [-1]), "flagged": ("BOOL", [-1]),
        "prediction_set": ("BOOL", [-1, 10]), "n_samples": ("INT64", [-1]),
        "feedback_token": ("BYTES", [-1]),
    }
    assert v2.is_model_ready(name) and v2.is_model_ready(name, version)
    assert not v2.is_model_ready("no-such-model")
    assert not v2.is_model_ready(name, "no-such-version")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_returns_every_output_consistently(v2, model, digits, classifier_tag, binary):
    outputs = list(OUTPUTS) if not binary else None  # none named: tritonclient asks binary
    result = infer(v2, model[0], digits, outputs=outputs, binary=binary, seed=5)
    response = result.get_response()
    assert response["model_name"] == model[0] and response["model_version"] == model[1]
    assert [o["name"] for o in response["outputs"]] == list(OUTPUTS)
    assert ("data" in response["outputs"][0]) != binary
    parameters = response["parameters"]
    assert parameters["n_samples"] == DEFAULT_SAMPLES and parameters["model"] == classifier_tag
    assert parameters["budget_limited"] is False
    assert result.as_numpy("n_samples").tolist() == [DEFAULT_SAMPLES] * 4
    assert parameters["seed"] == 5 and isinstance(parameters["risk_threshold"], float)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert result.as_numpy("std").shape == (4, 10)
    label = result.as_numpy("label")
    assert label.dtype == np.int64 and (label == probabilities.argmax(axis=1)).all()
    assert np.allclose(result.as_numpy("confidence"), probabilities.max(axis=1))
    information = result.as_numpy("mutual_information")
    assert (information <= result.as_numpy("predictive_entropy") + 1e-6).all()
    assert np.allclose(result.as_numpy("predictive_entropy"),
                       result.as_numpy("expected_entropy") + information, atol=1e-5)
    assert result.as_numpy("flagged").dtype == bool
    assert result.as_numpy("risk_score").shape == (4,)
    members = result.as_numpy("prediction_set")
    assert members.dtype == bool and members[np.arange(4), label].all()


def test_json_and_binary_answers_agree(v2, model, digits):
    name = model[0]
    as_json = infer(v2, name, digits, outputs=list(OUTPUTS), seed=9)
    as_binary = infer(v2, name, digits, outputs=list(OUTPUTS), binary=True, seed=9)
    binary_input = v2.infer(name, [image_input(digits, binary=True)], parameters={"seed": 9})
    for output in set(OUTPUTS) - {"feedback_token"}:  # a token is new in every answer
        assert np.array_equal(as_json.as_numpy(output), as_binary.as_numpy(output)), output
        assert np.array_equal(as_json.as_numpy(output), binary_input.as_numpy(output)), output


def text(tokens: np.ndarray) -> list[str]:
    """BYTES elements as strings (tritonclient gives binary ones as bytes)."""
    return [t.decode() if isinstance(t, bytes) else t for t in tokens.tolist()]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_feedback_tokens_of_v2_answers_are_redeemed_by_feedback(v2, http, model, digits,
                                                                  binary):
    result = infer(v2, model[0], digits, outputs=["label", "n_samples", "feedback_token"],
                   binary=binary)
    tokens = text(result.as_numpy("feedback_token"))
    assert len(tokens) == len(digits) == len(set(tokens))
    feedback = [{"token": token, "label": 3} for token in tokens]
    response = http.post("/feedback", json=feedback)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["predicted_label"] for r in results] == result.as_numpy("label").tolist()
    assert [r["n_samples"] for r in results] == result.as_numpy("n_samples").tolist()
    assert_error(http.post("/feedback", json=feedback[0]), 409, "already counted")


def test_a_subset_of_outputs_on_the_versioned_path(v2, model, digits):
    name, version = model
    result = infer(v2, name, digits[:2], outputs=["risk_score", "label"], version=version)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["risk_score", "label"]
    assert response["model_version"] == version
    assert result.as_numpy("label").shape == (2,) and result.as_numpy("probabilities") is None


def test_seed_n_samples_and_risk_threshold(v2, http, model, digits):
    name = model[0]
    first = infer(v2, name, digits, outputs=["probabilities", "std"], n_samples=20, seed=11)
    again = infer(v2, name, digits, outputs=["probabilities", "std"], n_samples=20, seed=11)
    other = infer(v2, name, digits, outputs=["probabilities", "std"], n_samples=20, seed=12)
    assert first.get_response() == again.get_response()
    assert not np.array_equal(first.as_numpy("probabilities"), other.as_numpy("probabilities"))
    assert first.get_response()["parameters"]["n_samples"] == 20
    # the same draw as /predict's, to float32
    predicted = http.post("/predict", json={"instances": digits.tolist(), "n_samples": 20,
                                            "seed": 11}).json()["predictions"]
    for output in ("probabilities", "std"):
        expected = np.array([p[output] for p in predicted], dtype=np.float32)
        assert np.array_equal(first.as_numpy(output), expected), output
    strict = infer(v2, name, digits, outputs=["risk_score"], risk_threshold=1e9)
    assert strict.get_response()["parameters"]["risk_threshold"] == 1e9


def test_n_samples_auto_answers_as_predict(v2, http, model, digits):
    result = infer(v2, model[0], digits, outputs=["probabilities", "n_samples"],
                   n_samples="auto", seed=7)
    parameters = result.get_response()["parameters"]
    assert parameters["n_samples"] == parameters["calibrated_n_samples"] == "auto"
    predicted = http.post("/predict", json={"instances": digits.tolist(), "n_samples": "auto",
                                            "seed": 7}).json()["predictions"]
    assert result.as_numpy("n_samples").tolist() == [p["n_samples"] for p in predicted]
    expected = np.array([p["probabilities"] for p in predicted], dtype=np.float32)
    assert np.array_equal(result.as_numpy("probabilities"), expected)


def test_a_latency_budget_picks_n_or_is_refused_at_once(v2, http, model, digits):
    result = infer(v2, model[0], digits, outputs=["n_samples"], latency_budget_ms=60000,
                   min_samples=150)  # above every calibrated N of the test model
    parameters = result.get_response()["parameters"]
    assert parameters["n_samples"] == 150 and parameters["budget_limited"] is False
    assert result.as_numpy("n_samples").tolist() == [150] * len(digits)
    body = v2_body(digits.reshape(len(digits), -1).tolist(), [len(digits), 64],
                   latency_budget_ms=0.001)
    response = http.post(f"/v2/models/{model[0]}/infer", json=body)
    assert response.status_code == 429, response.text
    assert "latency_budget_ms" in response.json()["error"]
    assert int(response.headers["retry-after"]) >= 1


def test_a_large_request_answers_as_predict(v2, http, model):
    images = load_dataset("digits").x_test[:16]  # 16 x 100 rows: off the event loop
    result = v2.infer(model[0], [image_input(images)],
                          outputs=[triton.InferRequestedOutput("probabilities")],
                          parameters={"n_samples": 100, "seed": 3})
    predicted = http.post("/predict", json={"instances": images.tolist(), "n_samples": 100,
                                            "seed": 3}).json()["predictions"]
    expected = np.array([p["probabilities"] for p in predicted], dtype=np.float32)
    assert np.array_equal(result.as_numpy("probabilities"), expected)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_extension(v2, model, digits, binary):
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
               triton.InferRequestedOutput("std", binary_data=binary, class_count=20)]
    result = v2.infer(model[0], [image_input(digits)], outputs=outputs,
                          parameters={"seed": 4})
    plain = infer(v2, model[0], digits, outputs=["probabilities", "std"], seed=4)
    for output, k in (("probabilities", 3), ("std", 10)):  # k beyond the classes: all
        top = result.as_numpy(output)
        assert top.shape == (4, k)
        assert result.get_response()["outputs"][0]["datatype"] == "BYTES"
        values = plain.as_numpy(output)
        for row, entries in enumerate(top):
            parsed = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in entries]
            scores = [np.float32(score) for score, _, _ in parsed]
            assert [score for score, _, _ in parsed] == [str(score) for score in scores]
            assert scores == sorted(scores, reverse=True)
            for (_, index, label), expected in zip(parsed, scores, strict=True):
                assert label == index and values[row, int(index)] == expected
            if output == "probabilities":
                assert int(parsed[0][1]) == values[row].argmax()


def test_unknown_model_or_version_is_404(v2, http, model, digits):
    name, version = model
    with pytest.raises(InferenceServerException) as error:
        infer(v2, "no-such-model", digits)
    assert error.value.status() == "404" and "unknown model 'no-such-model'" in str(error.value)
    with pytest.raises(InferenceServerException) as error:
        v2.get_model_metadata(name, "v0")
    assert error.value.status() == "404"
    body = v2_body(FLAT_DIGIT, [1, 64])
    assert_error(http.post("/v2/models/other/infer", json=body), 404, "unknown model 'other'",
                 name)
    assert_error(http.post(f"/v2/models/{name}/versions/v0/infer", json=body), 404,
                 "no version 'v0'", version)
    assert_error(http.get("/v2/models/other"), 404, "unknown model")
    assert_error(http.get(f"/v2/models/{name}/versions/v0/ready"), 404, "no version")


def test_other_v2_paths_and_methods(http, model):
    assert_error(http.get("/v2/repository/index"), 404, "no V2 endpoint at /v2/repository/index")
    assert_error(http.post("/v2/health/live"), 405, "use GET")
    assert_error(http.get(f"/v2/models/{model[0]}/infer"), 405, "use POST")
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/no-such-path").status_code == 404  # the service's other paths as before


NINE = [float(v % 9) for v in range(64)]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (v2_body(["x"] * 64, [1, 64], "BYTES"), ["inputs.0.datatype", "numeric", "'BYTES'"]),
        (v2_body([True] * 64, [1, 64], "BOOL"), ["inputs.0.datatype", "'BOOL'"]),
        (v2_body(FLAT_DIGIT, [1, 8, 7]), ["inputs.0.shape", "[batch, 8, 8] or [batch, 64]",
                                          "[1, 8, 7]"]),
        (v2_body(FLAT_DIGIT, [64]), ["inputs.0.shape", "[64]"]),
        (v2_body(FLAT_DIGIT[:63], [1, 64]), ["inputs.0.data", "takes 64 values, got 63"]),
        (v2_body(FLAT_DIGIT * 2, [1, 64]), ["takes 64 values, got 128"]),
        (v2_body([[FLAT_DIGIT[:8]] * 7 + [FLAT_DIGIT[:7]]], [1, 8, 8]), ["ragged"]),
        (v2_body([[FLAT_DIGIT[:8]] * 8], [1, 64]), ["nested 3 deep", "[1, 64]"]),
        (v2_body([FLAT_DIGIT[:8]] * 8, [1, 8, 8]), ["nested 2 deep", "[1, 8, 8]"]),
        (v2_body(FLAT_DIGIT, [1, 8, 8, 1]), ["inputs.0.shape", "[1, 8, 8, 1]"]),
        (v2_body([FLAT_DIGIT[:32]] * 2, [1, 64]), ["nested as [2, 32]", "[1, 64]"]),
        (v2_body(FLAT_DIGIT[:5] + ["x"] + FLAT_DIGIT[6:], [1, 64]),
         ["inputs.0.data.5", "valid number"]),
        (v2_body(FLAT_DIGIT[:5] + [None] + FLAT_DIGIT[6:], [1, 64]), ["inputs.0.data.5"]),
        (v2_body(FLAT_DIGIT[:5] + [True] + FLAT_DIGIT[6:], [1, 64]), ["inputs.0.data.5"]),
        (v2_body(FLAT_DIGIT[:63] + [17], [1, 64]), ["range [0, 16]"]),
        (v2_body(INTEGER_DIGIT[:63] + [-1], [1, 64], "INT8"), ["range [0, 16]"]),
        (v2_body(INTEGER_DIGIT[:63] + [300], [1, 64], "UINT8"), ["inputs.0.data.63", "255"]),
        (v2_body(INTEGER_DIGIT[:63] + [-1], [1, 64], "UINT64"), ["inputs.0.data.63", "0"]),
        (v2_body(INTEGER_DIGIT[:63] + [1.5], [1, 64], "INT32"),
         ["inputs.0.data.63", "integer"]),
        (v2_body(FLAT_DIGIT, [1, 64], "INT32"), ["inputs.0.data.0", "integer", "61 more"]),
        (v2_body(FLAT_DIGIT * 17, [17, 64]), ["inputs.0.shape", "1 to 16", "UQ_MAX_INSTANCES"]),
        (v2_body([], [0, 64]), ["inputs.0.shape", "got 0"]),
        (v2_body(FLAT_DIGIT, [1, 64], n_samples=0), ["parameters.n_samples", "equal to 1"]),
        (v2_body(FLAT_DIGIT, [1, 64], n_samples=201), ["parameters.n_samples", "200"]),
        (v2_body(FLAT_DIGIT, [1, 64], n_samples="30"), ["parameters.n_samples", "integer"]),
        (v2_body(FLAT_DIGIT, [1, 64], n_samples="Auto"), ["parameters.n_samples", '"auto"']),
        (v2_body(FLAT_DIGIT, [1, 64], latency_budget_ms=0),
         ["parameters.latency_budget_ms", "greater than 0"]),
        (v2_body(FLAT_DIGIT, [1, 64], n_samples=5, min_samples=6),
         ["min_samples", "above n_samples"]),
        (v2_body(FLAT_DIGIT, [1, 64], seed=-1), ["parameters.seed"]),
        (v2_body(FLAT_DIGIT, [1, 64], risk_threshold=-0.5), ["parameters.risk_threshold"]),
        (v2_body(FLAT_DIGIT, [1, 64], n_sample=30), ["parameters.n_sample", "unknown parameter",
                                                     "n_samples"]),
        ({**v2_body(FLAT_DIGIT, [1, 64]), "outputs": [{"name": "logits"}]},
         ["outputs.0.name", "'logits'", "probabilities"]),
        ({**v2_body(FLAT_DIGIT, [1, 64]), "outputs": [{"name": "label"}, {"name": "label"}]},
         ["outputs.1.name", "twice"]),
        ({**v2_body(FLAT_DIGIT, [1, 64]),
          "outputs": [{"name": "label", "parameters": {"classification": 2}}]},
         ["outputs.0.parameters.classification", "probabilities and std"]),
        ({**v2_body(FLAT_DIGIT, [1, 64]),
          "outputs": [{"name": "std", "parameters": {"classification": 0}}]},
         ["outputs.0.parameters.classification"]),
        ({**v2_body(FLAT_DIGIT, [1, 64]), "outputs": [
            {"name": "std", "parameters": {"shared_memory_region": "r"}}]}, ["shared memory"]),
        ({"inputs": [v2_body(FLAT_DIGIT, [1, 64])["inputs"][0]] * 2}, ["inputs", "one input",
                                                                      "got 2"]),
        ({"inputs": []}, ["inputs", "one input", "got 0"]),
        ({"instances": [FLAT_DIGIT]}, ["inputs: Field required"]),
        ([FLAT_DIGIT], ["request body"]),
        ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]},
         ["inputs.0.data: required"]),
        ({"inputs": [{"name": "input", "shape": [1, "64"], "datatype": "FP32",
                      "data": FLAT_DIGIT}]}, ["inputs.0.shape.1"]),
    ],
)
def test_bad_requests_are_400_with_an_error(http, model, body, fragments):
    response = http.post(f"/v2/models/{model[0]}/infer", content=json.dumps(body))
    assert_error(response, 400, *fragments)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"{not json", ["request body", "JSON"]),
        (json.dumps(v2_body(FLAT_DIGIT, [1, 64])).replace("16.0", "NaN").encode(),
         ["inputs.0.data.16", "finite"]),
        (b"", ["request body"]),
    ],
)
def test_unparsable_bodies_are_400(http, model, content, fragments):
    assert_error(http.post(f"/v2/models/{model[0]}/infer", content=content), 400, *fragments)


def test_bad_input_through_tritonclient(v2, model):
    tensor = triton.InferInput("input", [1, 7], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 7), np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as error:
        v2.infer(model[0], [tensor])
    assert error.value.status() == "400" and "inputs.0.shape" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        v2.infer(model[0], [image_input(np.full((1, 8, 8), 99.0))])
    assert error.value.status() == "400" and "range [0, 16]" in error.value.message()


def test_binary_input_errors(http, model):
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    data = np.asarray(FLAT_DIGIT, np.float32).tobytes()
    url = f"/v2/models/{model[0]}/infer"

    def post(content, length):
        return http.post(url, content=content,
                         headers={"Inference-Header-Content-Length": str(length)})

    assert post(header + data, len(header)).status_code == 200
    assert_error(post(header + data[:-4], len(header)), 400, "binary_data_size", "256",
                 "the body holds 252")
    assert_error(post(header + data, len(header) + 10_000), 400,
                 "Inference-Header-Content-Length")
    assert_error(post(header + data, "x"), 400, "Inference-Header-Content-Length")
    infinite = np.asarray(FLAT_DIGIT[:63] + [np.inf], np.float32).tobytes()
    assert_error(post(header + infinite, len(header)), 400, "finite")
    as_json = json.dumps(v2_body(FLAT_DIGIT, [1, 64])).encode()
    assert_error(post(as_json + data, len(as_json)), 400, "binary_data_size")


def test_every_numeric_datatype_and_layout_gives_the_same_answer(http, model, digits):
    url = f"/v2/models/{model[0]}/infer"
    image = digits[0]
    bodies = [
        v2_body(image.ravel().tolist(), [1, 64], seed=2),
        v2_body(image.ravel().tolist(), [1, 8, 8], seed=2),
        v2_body([image.tolist()], [1, 8, 8], seed=2),
        v2_body([image.ravel().tolist()], [1, 64], seed=2),
        *(v2_body(image.astype(int).ravel().tolist(), [1, 64], datatype, seed=2)
          for datatype in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                           "INT64")),
        *(v2_body(image.ravel().tolist(), [1, 64], datatype, seed=2)
          for datatype in ("FP16", "FP64")),
    ]
    answers = []
    for body in bodies:
        response = http.post(url, json=body)
        assert response.status_code == 200, (body["inputs"][0]["datatype"], response.text)
        answers.append([output for output in response.json()["outputs"]
                        if output["name"] != "feedback_token"])  # new in every answer
    assert all(answer == answers[0] for answer in answers)


def test_a_compressed_request(v2, model, digits):
    plain = infer(v2, model[0], digits, outputs=["probabilities"], seed=6)
    for algorithm in ("gzip", "deflate"):
        compressed = v2.infer(
            model[0], [image_input(digits)], request_compression_algorithm=algorithm,
            outputs=[triton.InferRequestedOutput("probabilities")], parameters={"seed": 6})
        assert np.array_equal(compressed.as_numpy("probabilities"),
                              plain.as_numpy("probabilities"))


def test_body_limits_and_encodings(http, model):
    url = f"/v2/models/{model[0]}/infer"
    assert_error(http.post(url, content=b" " * 250_000), 413, "UQ_MAX_BODY_BYTES")
    bomb = gzip.compress(b" " * 250_000)
    assert_error(http.post(url, content=bomb, headers={"Content-Encoding": "gzip"}), 413,
                 "UQ_MAX_BODY_BYTES")
    response = http.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert_error(response, 400, "not valid gzip data; send it compressed")
    assert "Error -3" not in response.text  # zlib's own words
    header_length = {"Inference-Header-Content-Length": b"\xb2"}  # "²": a digit, not 0-9
    assert_error(http.post(url, content=b"{}", headers=header_length), 400,
                 "Inference-Header-Content-Length: expected")
    assert_error(http.post(url, content=b"{}", headers={"Content-Encoding": "br"}), 415, "'br'")


def test_request_id_and_metrics(http, model):
    body = {**v2_body(FLAT_DIGIT, [1, 64]), "id": "request-42"}
    response = http.post(f"/v2/models/{model[0]}/infer", json=body)
    assert response.json()["id"] == "request-42"
    text = http.get("/metrics").text
    counted = {line.split(" ")[0] for line in text.splitlines() if 'endpoint="v2_infer"' in line}
    assert any(name.startswith("uq_requests_total") and 'outcome="ok"' in name
               for name in counted), counted
    assert any(name.startswith("uq_requests_total") and 'outcome="client_error"' in name
               for name in counted), counted
    assert any(name.startswith("uq_predictions_total") for name in counted), counted


async def no_predictions(*request):
    raise AssertionError("a request reached the predictions while the model loads")


def test_while_the_model_loads_the_model_endpoints_answer_503():
    with TestClient(create_app(lambda: None, predict=no_predictions)) as app:
        assert app.get("/v2/health/live").status_code == 200
        assert app.get("/v2").json()["name"] == "uq-serving"
        assert_error(app.get("/v2/health/ready"), 503, "loading")
        assert_error(app.get("/v2/models/uq-classifier"), 503, "loading")
        assert_error(app.get("/v2/models/uq-classifier/ready"), 503, "loading")
        assert_error(app.post("/v2/models/uq-classifier/infer", json={}), 503, "loading")
        assert_error(app.post("/v2"), 405)


def test_behind_the_service_middleware_while_loading(client):
    """The whole service in this process (shared by the test run), its model taken away."""
    service = current_service()
    predictor, service.predictor = service.predictor, None
    try:
        for response in (client.get("/v2/health/ready"), client.get("/v2/models/any/ready"),
                         client.post("/v2/models/any/infer", json={})):
            assert response.status_code == 503 and set(response.json()) == {"error"}
            assert "loading" in response.json()["error"]
        assert client.get("/v2/health/live").status_code == 200
    finally:
        service.predictor = predictor
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{predictor.tag.split(':')[0]}/ready").status_code == 200
