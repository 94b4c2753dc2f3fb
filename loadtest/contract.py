"""What a load-test request carries and what its answer must hold, apart from
locust (importing locust monkey-patches the process with gevent).

The fields a prediction must hold are the required fields of the service's
response schema (pydantic only: no TensorFlow in locust's processes)."""

from __future__ import annotations

import json

import numpy as np

from service.schemas import Prediction, Risk

PREDICTION_FIELDS = tuple(name for name, field in Prediction.model_fields.items()
                          if field.is_required())
RISK_FIELDS = tuple(name for name, field in Risk.model_fields.items() if field.is_required())


def request_bodies(images: np.ndarray, path: str, n_samples: int | str) -> list[bytes]:
    """One JSON body per image, encoded once up front (``n_samples`` may be "auto")."""
    if path == "/predict_batched":
        return [json.dumps({"items": [{"instance": image.tolist(), "n_samples": n_samples}]})
                .encode() for image in images]
    return [json.dumps({"instances": [image.tolist()], "n_samples": n_samples}).encode()
            for image in images]


def missing_fields(body: object, path: str) -> str | None:
    """What the response lacks, or None when it carries the whole contract."""
    if path == "/predict_batched":
        predictions = body if isinstance(body, list) else None
    else:
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if isinstance(body, dict) and not {"model", "n_samples"} <= body.keys():
            return "model or n_samples"
    if not predictions:
        return "predictions"
    for prediction in predictions:
        lacking = [f for f in PREDICTION_FIELDS if f not in prediction]
        lacking += [f"risk.{f}" for f in RISK_FIELDS if f not in prediction.get("risk", {})]
        if lacking:
            return ", ".join(lacking)
    return None
