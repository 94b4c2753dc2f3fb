"""Admission against a real ``bentoml serve`` whose latency bound is tight: big requests at
normal load are served, budgets are answered in time or refused at once."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from loadtest.server import served
from training.data import load_dataset

#: the server's latency bound, and the requests' size: 64 instances x 500 samples take
#: longer than the bound alone, and four of them much longer
LATENCY_BOUND_MS, INSTANCES, SAMPLES = 50, 64, 500


@pytest.fixture(scope="module")
def tight(classifier_tag, generator_tag, tmp_path_factory):
    """A client of a real server with UQ_BATCH_MAX_LATENCY_MS=50 and 64 instances a request."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"UQ_BATCH_MAX_LATENCY_MS": LATENCY_BOUND_MS,
                            "UQ_MAX_INSTANCES": INSTANCES, "UQ_BATCH_MAX_SIZE": INSTANCES,
                            "UQ_MAX_SAMPLES": SAMPLES}.items():
            patch.setenv(name, str(value))
        with served(classifier_tag, tmp_path_factory.mktemp("tight")) as url, \
                httpx.Client(base_url=url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def instances():
    return load_dataset("digits").x_test[:INSTANCES].tolist()


def test_four_big_requests_at_once_are_all_served(tight, instances):
    body = {"instances": instances, "n_samples": SAMPLES}
    tight.post("/predict", json=body)  # the cost model learns the rows' price
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: tight.post("/predict", json=body), range(4)))
    refused = [answer.text for answer in answers if answer.status_code != 200]
    assert not refused, refused[0]
    assert all(len(answer.json()["predictions"]) == INSTANCES for answer in answers)
    assert time.perf_counter() - started > LATENCY_BOUND_MS / 1000  # more than the bound


def test_a_budget_that_cannot_be_met_is_refused_at_once_never_answered_late(tight, instances):
    big = {"instances": instances, "n_samples": SAMPLES}
    budgeted = {"instances": instances[:1], "latency_budget_ms": 1, "min_samples": SAMPLES}

    def timed(body):
        started = time.perf_counter()
        answer = tight.post("/predict", json=body)
        return answer, time.perf_counter() - started

    with ThreadPoolExecutor(6) as pool:
        busy = [pool.submit(timed, big) for _ in range(2)]
        time.sleep(0.05)
        refused = [pool.submit(timed, budgeted) for _ in range(4)]
        for answer, seconds in (future.result() for future in refused):
            assert answer.status_code == 429, answer.text
            assert int(answer.headers["retry-after"]) >= 1
            assert "latency_budget_ms: 1 ms" in answer.json()["error"]
            assert seconds < 1.0
        assert all(future.result()[0].status_code == 200 for future in busy)
