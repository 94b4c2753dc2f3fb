"""Request ids, feedback, drift and the prediction log, against the service in this process."""

import io
import json
import logging.config
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.adapter import current_service
from service.feedback import Signer, reason_bits
from service.monitoring import PREDICTION_LOG
from service.schemas import Prediction
from tests.conftest import MONITORING_DIR
from tests.service.test_api import DIGIT, assert_error, post

GENERATED = re.compile(r"[0-9a-f]{32}")


def served():
    return current_service()


def predict(client, count=1, headers=None, **options):
    response = client.post("/predict", json={"instances": [DIGIT] * count, **options},
                           headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def metric(client, name: str, **labels) -> float:
    """A sample's value in /metrics (0 when absent)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            inside = line[line.find("{") + 1: line.find("}")] if "{" in line else ""
            if wanted <= set(inside.split(",")) - {""}:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- request ids -------------------------------------------------------------------------


def test_a_request_id_is_generated_or_taken_from_the_caller(client):
    response = predict(client)
    assert GENERATED.fullmatch(response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]
    given = predict(client, headers={"X-Request-ID": "order-17/line:3"})
    assert given.headers["x-request-id"] == given.json()["request_id"] == "order-17/line:3"
    for unusable in ("two words", "x" * 129, ""):
        replaced = predict(client, headers={"X-Request-ID": unusable})
        assert GENERATED.fullmatch(replaced.json()["request_id"])


def test_every_response_carries_the_header(client):
    headers = {"X-Request-ID": "r-1"}
    batched = client.post("/predict_batched", json={"items": [{"instance": DIGIT}]},
                          headers=headers)
    assert isinstance(batched.json(), list) and batched.headers["x-request-id"] == "r-1"
    error = client.post("/predict", json={"instances": []}, headers=headers)
    assert error.status_code == 400 and set(error.json()) == {"error"}
    assert error.headers["x-request-id"] == "r-1"
    for path in ("/metadata", "/drift"):
        response = client.post(path, json={}, headers=headers)
        assert response.json()["request_id"] == response.headers["x-request-id"] == "r-1"
    assert client.get("/v2/health/ready", headers=headers).headers["x-request-id"] == "r-1"
    assert client.post("/no_such_route", json={}).headers["x-request-id"]
    assert "x-request-id" not in client.get("/readyz").headers


def test_generate_answers_its_request_id(client):
    response = client.post("/generate", json={"count": 1, "seed": 1},
                           headers={"X-Request-ID": "g-1"})
    assert response.json()["request_id"] == "g-1"


# --- feedback ----------------------------------------------------------------------------


def tokens(client, count=2, **options) -> list[dict]:
    return predict(client, count, **options).json()["predictions"]


def test_every_prediction_carries_a_token_and_feedback_is_counted(client):
    predictions = tokens(client, 2, n_samples=5, seed=3)
    assert all(len(p["feedback_token"]) <= 200 for p in predictions)
    first, second = predictions
    reasons = "+".join(first["risk"]["reasons"]) or "none"
    before = metric(client, "uq_feedback_total", correct="true", reasons=reasons)
    response = client.post("/feedback", json={"token": first["feedback_token"],
                                              "label": first["class_name"]},
                           headers={"X-Request-ID": "fb-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "fb-1" and body["accepted"] == 1
    assert body["model"] == served().predictor.tag
    [result] = body["results"]
    assert result["correct"] and result["covered"] and result["n_samples"] == 5
    assert result["predicted_label"] == first["label"] == result["label"]
    assert result["reasons"] == first["risk"]["reasons"]
    assert metric(client, "uq_feedback_total", correct="true", reasons=reasons) == before + 1
    wrong = (second["label"] + 1) % 10
    body = client.post("/feedback", json=[{"token": second["feedback_token"],
                                           "label": wrong}]).json()
    assert body["accepted"] == 1 and body["results"][0]["correct"] is False
    assert body["results"][0]["covered"] == (str(wrong) in second["prediction_set"])


def rejected(client, body, status, problem, *fragments):
    before = metric(client, "uq_feedback_rejected_total", problem=problem)
    accepted_before = sum(metric(client, "uq_feedback_total", correct=correct)
                          for correct in ("true", "false"))
    response = client.post("/feedback", json=body)
    assert_error(response, status, *fragments)
    assert response.headers["x-request-id"]
    assert metric(client, "uq_feedback_rejected_total", problem=problem) >= before + 1
    assert sum(metric(client, "uq_feedback_total", correct=correct)
               for correct in ("true", "false")) == accepted_before


def test_refused_feedback_names_the_problem_is_counted_and_changes_nothing(client):
    token = tokens(client, 1)[0]["feedback_token"]
    client.post("/feedback", json={"token": token, "label": 0})
    rejected(client, {"token": token, "label": 0}, 409, "duplicate", "already counted")
    fresh = tokens(client, 1)[0]["feedback_token"]
    altered = fresh[:10] + ("A" if fresh[10] != "A" else "B") + fresh[11:]
    rejected(client, {"token": altered, "label": 0}, 403, "forged", "signature does not match")
    rejected(client, {"token": "AAAA" * 11, "label": 0}, 403, "forged")
    rejected(client, {"token": fresh, "label": "no such class"}, 400, "unknown_label",
             "label: expected a class index 0 to 9 or a class name")
    rejected(client, {"token": fresh}, 400, "malformed", '"token" and "label"')
    rejected(client, {"token": "!!", "label": 1}, 400, "malformed", "token: not a feedback token")
    rejected(client, [{"token": fresh, "label": 1}, {"token": "!!", "label": 1}], 400,
             "malformed", "1.token")
    predictor = served().predictor
    sets = np.ones((1, 10), bool)
    old = predictor.signer.issue(5, np.array([1]), reason_bits([False], [False]), sets,
                                 issued=int(time.time()) - 8 * 24 * 3600)[0]
    rejected(client, {"token": old, "label": 1}, 410, "expired", "expired")
    other = Signer(predictor.signer.key, "uq-test-digits:another", 10, 3600)
    foreign = other.issue(5, np.array([1]), reason_bits([False], [False]), sets)[0]
    rejected(client, {"token": foreign, "label": 1}, 409, "other_model", "another model")
    # the valid item of the refused list was not counted: it is accepted now
    assert client.post("/feedback", json={"token": fresh, "label": 1}).json()["accepted"] == 1


def test_feedback_bodies_that_are_not_json_objects_or_lists_are_refused(client):
    expected = 'expected {"token": ..., "label": ...} or a non-empty list of them'
    assert_error(post(client, "/feedback", "3"), 400, expected)
    assert_error(post(client, "/feedback", '"x"'), 400, expected)
    assert_error(post(client, "/feedback", [1, {}, {"token": "x"}]), 400,
                 '0: expected an object with "token" and "label", got a number; '
                 '1: expected an object with "token" and "label", got an empty object; '
                 '2: expected an object with "token" and "label", got an object with the '
                 'keys "token"')
    [token] = [p["feedback_token"] for p in predict(client).json()["predictions"]]
    assert_error(post(client, "/feedback", [{"token": token, "label": None}]), 400,
                 "0.label: expected a class index 0 to 9 or a class name", "got null")
    assert_error(post(client, "/feedback", {"token": token, "label": "x" * 100}), 400,
                 "label: expected a class index", "got a string")
    assert_error(post(client, "/feedback", '{"token": '), 400, "Invalid JSON")
    assert_error(post(client, "/feedback", {"token": "x", "label": 1}, "text/plain"), 415)


def test_the_feedback_key_is_not_shown(client, monkeypatch):
    card = client.post("/metadata", json={}).json()
    assert "feedback_key" not in card["service"]
    assert card["service"]["feedback_max_age_hours"] == 168


# --- drift -------------------------------------------------------------------------------


def test_drift_state_follows_every_answered_prediction(client):
    state = client.post("/drift", json={}).json()
    card = client.post("/metadata", json={}).json()
    assert state["enabled"] and state["reference_n_samples"] == card["calibrated_n_samples"]
    assert card["drift"]["window"] == state["window"] == 200
    assert all(c["reference"]["scores"].keys() == {"mutual_information", "one_minus_confidence"}
               for c in card["calibrations"])
    before = state["observed"], state["skipped"]
    predict(client, 3, n_samples=5)  # calibrated
    predict(client, 2, n_samples=7)  # off the grid: no reference
    client.post("/generate", json={"count": 2, "n_samples": 5})  # not traffic
    client.post("/predict_batched", json={"items": [{"instance": DIGIT, "n_samples": 5}]})
    state = client.post("/drift", json={}).json()
    assert (state["observed"], state["skipped"]) == (before[0] + 4, before[1] + 2)
    assert state["alarm"] is False
    assert metric(client, "uq_drift_threshold") == state["threshold"]
    assert metric(client, "uq_drift_alarm") == 0
    assert 0 < metric(client, "uq_risk_target_error") < 1
    assert 0 < metric(client, "uq_conformal_target_coverage") < 1


# --- the prediction log ------------------------------------------------------------------


def logged(name: str, request_id: str, timeout: float = 10) -> list[dict]:
    """Records of ``request_id`` in the bentoml.monitor log ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = []
        for path in Path(MONITORING_DIR, name, "data").glob("data.*.log*"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("x_request_id") == request_id:
                    records.append(record)
        if records:
            return records
        time.sleep(0.2)
    return []


def test_the_prediction_log_has_every_prediction_without_its_input(client):
    body = predict(client, 2, n_samples=5, headers={"X-Request-ID": "log-1"}).json()
    records = logged(PREDICTION_LOG, "log-1")
    assert len(records) == 2
    record = records[0]
    prediction = body["predictions"][0]
    assert record["model"] == body["model"] and record["n_samples"] == 5
    assert record["label"] == prediction["label"] and record["endpoint"] == "predict"
    assert record["mutual_information"] == pytest.approx(prediction["mutual_information"])
    assert record["reasons"] == ",".join(prediction["risk"]["reasons"])
    assert record["latency_ms"] > 0 and "input" not in record
    assert len(record["prediction_id"]) == 20
    schema = Path(MONITORING_DIR, PREDICTION_LOG, "schema")
    assert any(schema.glob("schema.*.log*"))
    batched = client.post("/predict_batched", json={"items": [{"instance": DIGIT}]},
                          headers={"X-Request-ID": "log-2"})
    assert batched.status_code == 200
    assert [r["endpoint"] for r in logged(PREDICTION_LOG, "log-2")] == ["predict_batched"]


def test_inputs_are_logged_only_when_asked(client, monkeypatch):
    monkeypatch.setattr(served().monitoring, "log_inputs", True)
    predict(client, 1, headers={"X-Request-ID": "log-3"})
    [record] = logged(PREDICTION_LOG, "log-3")
    assert record["input"] == pytest.approx(DIGIT)



def test_predictions_of_n_samples_auto_are_not_fed_to_the_detector(client):
    [prediction] = tokens(client, 1, n_samples=5)
    auto = Prediction.model_validate(
        {**prediction, "risk": {**prediction["risk"], "calibrated_n_samples": "auto"}})
    monitoring = served().monitoring
    before = monitoring.drift_state()
    monitoring.observe("predict", [auto], 0.001)
    after = monitoring.drift_state()
    assert after["skipped"] == before["skipped"] + 1
    assert after["observed"] == before["observed"]


def test_configuring_logging_again_closes_no_stream_of_the_test_run():
    """The prediction log configures logging again from the monitoring thread, whatever
    pytest is doing then: with its capture swapped out, absl's log handler, which the
    configuration closes, must not close the stream it writes to (tests/conftest.py)."""
    import absl.logging

    stream = absl.logging.get_absl_handler().python_handler.stream
    saved = sys.stderr
    sys.stderr = io.StringIO()  # as while pytest's capture is swapped out
    try:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    finally:
        sys.stderr = saved
    assert not stream.closed

