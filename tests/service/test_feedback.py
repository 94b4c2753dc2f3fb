"""Feedback tokens and the desk that redeems them, without a server: signing across
replicas, tampering, expiry, the replay memory's bound."""

import base64
import time

import numpy as np
import pytest

from service.feedback import (
    Desk,
    FeedbackError,
    Rejected,
    ReplayMemory,
    Signer,
    prediction_id,
    reason_bits,
    token_chars,
)

KEY = b"a shared key of the replicas, 32+"
TAG = "uq-classifier:abc"
NAMES = [f"class {c}" for c in range(10)]
WEEK = 7 * 24 * 3600


def signer(key: bytes = KEY, tag: str = TAG, classes: int = 10) -> Signer:
    return Signer(key, tag, classes, max_age_seconds=WEEK)


def issue(sign: Signer, rows: int = 1, issued: int | None = None) -> list[str]:
    sets = np.zeros((rows, sign.classes), bool)
    sets[:, 3] = sets[:, 5] = True
    return sign.issue(30, np.full(rows, 3), reason_bits(np.ones(rows, bool), np.zeros(rows, bool)),
                      sets, issued=issued)


def desk(sign: Signer | None = None, capacity: int = 1000) -> Desk:
    return Desk(sign or signer(), ReplayMemory(capacity, WEEK), NAMES)


def test_a_token_is_compact_url_safe_and_says_what_the_prediction_was():
    [token] = issue(signer())
    assert len(token) == token_chars(10) == 46
    assert token_chars(944) <= 200 < token_chars(945)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    content = signer().verify(token)
    assert (content.n_samples, content.label, content.reasons) == (30, 3, ["error_risk"])
    assert content.prediction_set == {3, 5}
    assert content.prediction_id == prediction_id(token) and len(content.prediction_id) == 20
    assert abs(content.issued - time.time()) < 5


def test_identical_predictions_get_distinct_tokens():
    tokens = issue(signer(), rows=50)
    assert len(set(tokens)) == 50


def test_another_replica_with_the_same_key_accepts_a_token():
    [token] = issue(signer())
    other_replica = signer()  # another process: its own signer and memory, the same key
    assert desk(other_replica).receive({"token": token, "label": 3})[0].correct


@pytest.mark.parametrize(
    ("verifier", "problem", "status"),
    [(signer(key=b"another key, not the replicas'"), "forged", 403),
     (signer(tag="uq-classifier:other"), "other_model", 409)],
)
def test_a_token_checked_under_another_key_or_model_is_refused(verifier, problem, status):
    [token] = issue(signer())
    with pytest.raises(FeedbackError) as error:
        verifier.verify(token)
    assert (error.value.problem, error.value.status) == (problem, status)


def test_any_altered_byte_breaks_the_signature():
    [token] = issue(signer())
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    for position in range(len(raw)):
        altered = raw.copy()
        altered[position] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        with pytest.raises(FeedbackError) as error:
            signer().verify(text)
        assert error.value.problem == "forged"


@pytest.mark.parametrize("token", ["", "not base64 !", "AAAA", 42, None, "x" * 201])
def test_what_is_not_a_token_is_malformed(token):
    with pytest.raises(FeedbackError) as error:
        signer().verify(token)
    assert (error.value.problem, error.value.status) == ("malformed", 400)


def test_tokens_expire():
    [token] = issue(signer(), issued=int(time.time()) - WEEK - 60)
    with pytest.raises(FeedbackError, match="expired: issued 168.0 hours ago") as error:
        signer().verify(token)
    assert error.value.status == 410


def test_a_list_counts_all_or_nothing_and_each_token_once():
    office = desk()
    first, second = issue(signer(), rows=2)
    with pytest.raises(Rejected) as rejected:
        office.receive([{"token": first, "label": "class 3"}, {"token": second, "label": "x"}])
    assert rejected.value.status == 400 and rejected.value.problems == ["unknown_label"]
    assert "1.label: expected a class index 0 to 9 or a class name" in rejected.value.message
    judged = office.receive([{"token": first, "label": "class 3"}, {"token": second, "label": 5}])
    assert [(item.correct, item.covered) for item in judged] == [(True, True), (False, True)]
    with pytest.raises(Rejected) as rejected:
        office.receive({"token": first, "label": 3})
    assert rejected.value.status == 409 and rejected.value.problems == ["duplicate"]
    [third] = issue(signer())
    with pytest.raises(Rejected, match="repeated in this request"):
        office.receive([{"token": third, "label": 3}, {"token": third, "label": 3}])


@pytest.mark.parametrize("body", [[], {"token": "x"}, {"token": "x", "label": 1, "more": 2},
                                  [3], "text", [{"token": "x", "label": 1}] * 1001])
def test_malformed_bodies_are_refused(body):
    with pytest.raises(Rejected) as rejected:
        desk().receive(body)
    assert rejected.value.status == 400 and set(rejected.value.problems) == {"malformed"}


@pytest.mark.parametrize("label", [True, -1, 10, 2.0, "class 10", None])
def test_labels_must_be_a_class_index_or_name(label):
    [token] = issue(signer())
    with pytest.raises(Rejected) as rejected:
        desk().receive({"token": token, "label": label})
    assert rejected.value.problems == ["unknown_label"]


def test_the_replay_memory_forgets_its_oldest_hour_when_full_and_then_refuses_it():
    office = desk(capacity=3)
    now = int(time.time())
    hours = [now - 3600 * age for age in (5, 4, 3, 2)]
    tokens = [issue(signer(), issued=issued)[0] for issued in hours]
    for token in tokens:
        office.receive({"token": token, "label": 3}, now=now)
    assert office.memory.size == 3  # the oldest hour was forgotten to make room
    late = issue(signer(), issued=hours[0])[0]
    with pytest.raises(Rejected) as rejected:
        office.receive({"token": late, "label": 3}, now=now)
    assert rejected.value.problems == ["too_old"] and rejected.value.status == 410
    with pytest.raises(Rejected) as rejected:  # the remembered ones are still caught
        office.receive({"token": tokens[-1], "label": 3}, now=now)
    assert rejected.value.problems == ["duplicate"]


def test_the_replay_memory_drops_expired_hours_without_refusing_anything():
    office = desk()
    now = int(time.time())
    [old] = issue(signer(), issued=now - WEEK + 60)
    office.receive({"token": old, "label": 3}, now=now)
    office.receive({"token": issue(signer())[0], "label": 3}, now=now + 3 * 3600)
    assert office.memory.size == 1 and office.memory.floor == 0
