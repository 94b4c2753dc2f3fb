"""Locust users that post real test images to the service with a configured N.

Configured by uq-loadtest through the environment:

- ``UQ_LOADTEST_IMAGES``: a .npy file of images ``[n, *input_shape]``, raw pixels
- ``UQ_LOADTEST_PATH``: ``/predict`` or ``/predict_batched``
- ``UQ_LOADTEST_N_SAMPLES``: MC samples per request, or ``auto``

Each user sends one image per request, back to back, and checks every response:
a missing field or a non-200 status is a failure.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:3000 -u 32 -t 30s
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np
from locust import FastHttpUser, constant, task

from loadtest.contract import missing_fields, request_bodies


@functools.cache
def shared_bodies(path: str, n_samples: int | str) -> list[bytes]:
    """The request bodies, encoded once per locust process rather than once per
    user (gevent runs one greenlet at a time: encoding holds up every user)."""
    return request_bodies(np.load(os.environ["UQ_LOADTEST_IMAGES"]), path, n_samples)


class PredictionUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.path = os.environ.get("UQ_LOADTEST_PATH", "/predict")
        n_samples = os.environ.get("UQ_LOADTEST_N_SAMPLES", "30")
        bodies = shared_bodies(self.path, n_samples if n_samples == "auto" else int(n_samples))
        offset = id(self) % len(bodies)  # users start at different images
        self.bodies = itertools.cycle(bodies[offset:] + bodies[:offset])

    @task
    def predict(self) -> None:
        with self.client.post(
            self.path, data=next(self.bodies), headers={"Content-Type": "application/json"},
            catch_response=True, name=self.path,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                body = response.json()
            except ValueError:
                response.failure("the body is not JSON")
                return
            lacking = missing_fields(body, self.path)
            if lacking:
                response.failure(f"missing {lacking}")
