"""n_samples "auto" on every prediction route: in-process, and against the real server."""

import io

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from artifacts.store import read_card
from loadtest.server import ServerError, served
from service.adapter import current_service
from tests.service.test_api import DIGIT, assert_error, post
from training.data import load_dataset


@pytest.fixture(scope="module")
def digits() -> list[list[float]]:
    return load_dataset("digits").x_test[:12].reshape(12, -1).tolist()


@pytest.fixture(scope="module")
def auto(classifier_tag):
    return read_card(bentoml.models.get(classifier_tag)).auto_calibration


def without_tokens(predictions: list[dict]) -> list[dict]:
    """Predictions without their feedback tokens, which are fresh in every response."""
    return [{key: value for key, value in p.items() if key != "feedback_token"}
            for p in predictions]


def check_auto(prediction: dict, auto) -> None:
    risk = prediction["risk"]
    assert prediction["n_samples"] in auto.schedule
    assert risk["calibrated_n_samples"] == risk["novelty"]["calibrated_n_samples"] == "auto"
    assert risk["metric"] == auto.risk_policy.metric
    assert risk["threshold"] == pytest.approx(auto.risk_policy.threshold)
    assert risk["novelty"]["threshold"] == pytest.approx(auto.novelty_policy.threshold)
    assert prediction["label"] == int(np.argmax(prediction["probabilities"]))


def test_the_card_holds_the_calibration_of_auto(auto, classifier_tag):
    card = read_card(bentoml.models.get(classifier_tag))
    assert auto is not None and auto.schedule == (8, 16, 32, 64, 100)
    assert auto.stopping_n_samples == max(card.calibrated_n_samples)
    stopping = card.calibration_for(auto.stopping_n_samples)
    assert auto.stopping.risk_threshold == stopping.risk_policy.threshold
    assert auto.risk_policy.metric == stopping.risk_policy.metric
    assert 8 <= auto.mean_n_samples <= 100
    assert sum(auto.n_samples_shares.values()) == pytest.approx(1.0)
    assert card.test_metrics["auto"]["mean_n_samples"] >= 8


def test_predict_auto_reports_each_n_and_the_calibration_of_auto(client, digits, auto):
    body = {"instances": digits, "n_samples": "auto", "seed": 5}
    response = post(client, "/predict", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["n_samples"] == "auto" and len(answer["predictions"]) == len(digits)
    for prediction in answer["predictions"]:
        check_auto(prediction, auto)
    again = post(client, "/predict", body).json()
    assert without_tokens(again["predictions"]) == without_tokens(answer["predictions"])
    other = post(client, "/predict", {**body, "seed": 6}).json()
    assert without_tokens(other["predictions"]) != without_tokens(answer["predictions"])
    # each feedback token carries its own prediction's N
    feedback = [{"token": p["feedback_token"], "label": 0} for p in answer["predictions"]]
    results = post(client, "/feedback", feedback).json()["results"]
    assert [r["n_samples"] for r in results] == [p["n_samples"] for p in answer["predictions"]]


def test_auto_returns_the_samples_it_drew_and_takes_a_risk_threshold(client, digits, auto):
    response = post(client, "/predict", {"instances": digits[:3], "n_samples": "auto",
                                         "seed": 1, "return_samples": True,
                                         "risk_threshold": 0.0})
    assert response.status_code == 200, response.text
    for prediction in response.json()["predictions"]:
        samples = np.array(prediction["samples"])
        assert samples.shape == (prediction["n_samples"], 10)
        np.testing.assert_allclose(samples.mean(0), prediction["probabilities"], atol=1e-6)
        assert prediction["risk"]["threshold"] == 0.0


def test_batched_items_mix_auto_and_fixed_n(client, digits, auto):
    items = [{"instance": digits[0], "n_samples": "auto"}, {"instance": digits[1], "n_samples": 3},
             {"instance": digits[2]}, {"instance": digits[3], "n_samples": "auto"}]
    response = post(client, "/predict_batched", {"items": items})
    assert response.status_code == 200, response.text
    first, fixed, default, last = response.json()
    check_auto(first, auto)
    check_auto(last, auto)
    assert fixed["n_samples"] == 3 and fixed["risk"]["calibrated_n_samples"] == 1
    assert default["n_samples"] == default["risk"]["calibrated_n_samples"] == 8


def test_image_upload_and_generate_take_auto(client, digits, auto):
    buffer = io.BytesIO()
    pixels = (np.array(digits[0]).reshape(8, 8) * (255 / 16)).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    response = client.post("/predict_image", files={"image": ("x.png", buffer.getvalue(),
                                                              "image/png")},
                           data={"n_samples": "auto", "seed": "4"})
    assert response.status_code == 200, response.text
    assert response.json()["n_samples"] == "auto"
    check_auto(response.json()["predictions"][0], auto)
    response = post(client, "/generate", {"count": 2, "n_samples": "auto", "seed": 2})
    assert response.status_code == 200, response.text
    for sample in response.json()["samples"]:
        check_auto(sample["prediction"], auto)


@pytest.mark.parametrize("value", ["Auto", 0, "x", "AUTO", 2.5, None])
def test_bad_n_samples_is_400_naming_the_field(client, value):
    if value is None:  # null is "not given" on every route; a list is not a count
        value = ["auto"]
    response = post(client, "/predict", {"instances": [DIGIT], "n_samples": value})
    assert_error(response, 400, "n_samples", 'or "auto"')
    response = post(client, "/predict_batched", {"items": [
        {"instance": DIGIT, "n_samples": "auto"}, {"instance": DIGIT, "n_samples": value}]})
    assert_error(response, 400, "items.1.n_samples", 'or "auto"')


def test_bad_form_n_samples_is_400_naming_the_field(client):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    files = {"image": ("x.png", buffer.getvalue(), "image/png")}
    for value in ("Auto", "0", "x"):
        response = client.post("/predict_image", files=files, data={"n_samples": value})
        assert_error(response, 400, "n_samples", 'or "auto"')


def test_auto_is_the_default_when_configured_and_refused_without_its_calibration(
        client, monkeypatch):
    predictor = current_service().predictor
    monkeypatch.setattr(predictor, "default_request_samples", "auto")
    answer = post(client, "/predict", {"instances": [DIGIT]}).json()
    assert answer["n_samples"] == "auto"
    assert answer["predictions"][0]["risk"]["calibrated_n_samples"] == "auto"
    monkeypatch.setattr(predictor, "card", predictor.card.model_copy(
        update={"auto_calibration": None}))
    response = post(client, "/predict", {"instances": [DIGIT], "n_samples": "auto"})
    assert_error(response, 400, "n_samples", "calibrated for it", "uq-calibrate")


def test_the_real_server_answers_auto(server, digits, auto):
    with httpx.Client(base_url=server, timeout=60) as http:
        response = http.post("/predict", json={"instances": digits, "n_samples": "auto",
                                               "seed": 9})
        assert response.status_code == 200, response.text
        for prediction in response.json()["predictions"]:
            check_auto(prediction, auto)
        [batched] = http.post("/predict_batched", json={"items": [
            {"instance": digits[0], "n_samples": "auto"}]}).json()
        check_auto(batched, auto)
        card = http.post("/metadata", json={}).json()
        assert card["auto_calibration"]["schedule"] == list(auto.schedule)
        assert card["auto_calibration"]["stratified"] is True
        assert_error(http.post("/predict", json={"instances": [DIGIT], "n_samples": "Auto"}),
                     400, "n_samples", 'or "auto"')


def test_a_card_calibrated_before_stratified_rounds_keeps_independent_ones(
        client, monkeypatch):
    predictor = current_service().predictor
    stored = predictor.card.model_dump(mode="json")
    del stored["auto_calibration"]["stratified"]  # as cards of the earlier rounds were written
    old_card = type(predictor.card).model_validate(stored)
    assert old_card.auto_calibration.stratified is False
    drawn = []
    sample = predictor.engine.sample
    monkeypatch.setattr(predictor.engine, "sample", lambda *args, stratified, **options: (
        drawn.append(stratified), sample(*args, stratified=stratified, **options))[1])
    post(client, "/predict", {"instances": [DIGIT], "n_samples": "auto", "seed": 3})
    monkeypatch.setattr(predictor, "card", old_card)
    post(client, "/predict", {"instances": [DIGIT], "n_samples": "auto", "seed": 3})
    assert drawn[0] is True and drawn[-1] is False and set(drawn) == {True, False}


def test_a_max_auto_samples_other_than_the_calibrated_cap_stops_start_up(
        classifier_tag, tmp_path, monkeypatch):
    monkeypatch.setenv("UQ_MAX_AUTO_SAMPLES", "50")
    with pytest.raises(ServerError, match=r"UQ_MAX_AUTO_SAMPLES=50, but the \"auto\" of "
                       r".* at most 100 samples"):
        with served(classifier_tag, tmp_path):
            pass


def test_start_up_checks_of_auto(client, monkeypatch):
    from service import service as service_module  # reads the served card: once stored

    card = current_service().predictor.card
    monkeypatch.setattr(service_module, "read_card", lambda model_ref: card)
    monkeypatch.setattr(service_module.settings, "default_samples", "auto")
    service_module._served_card()  # the card is calibrated for auto
    monkeypatch.setattr(service_module.settings, "max_auto_samples", 100)
    service_module._served_card()  # the cap it was calibrated with
    without = card.model_copy(update={"auto_calibration": None})
    monkeypatch.setattr(service_module, "read_card", lambda model_ref: without)
    with pytest.raises(ValueError, match=r"UQ_DEFAULT_SAMPLES=auto needs a card calibrated"):
        service_module._served_card()
