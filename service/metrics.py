"""Prometheus metrics, all prefixed ``uq_``; BentoML serves them at /metrics, beside
its own ``bentoml_service_*`` request counts and durations. The routes record
them around each predictor call (:func:`observe_predictions`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from service.schemas import Prediction

REQUESTS = Counter(
    "uq_requests", "HTTP requests by endpoint and outcome (ok, client_error, server_error)",
    ["endpoint", "outcome"],
)
BATCH_SIZE = Histogram(
    "uq_batch_size", "Items per /predict_batched engine call (adaptive batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICTIONS = Counter("uq_predictions", "Predictions returned, by endpoint", ["endpoint"])
FLAGGED = Counter(
    "uq_flagged_predictions", "Predictions whose risk flag was raised, by endpoint", ["endpoint"]
)
FLAG_REASONS = Counter(
    "uq_flag_reasons", "Flagged predictions by endpoint and reason (error_risk, novelty)",
    ["endpoint", "reason"],
)
N_SAMPLES = Histogram(
    "uq_n_samples", "MC samples per prediction",
    buckets=(1, 2, 5, 10, 20, 30, 50, 100, 200, 500, 1000),
)
ENGINE_SECONDS = Histogram(
    "uq_engine_seconds", "Time in the predictor (MC engine, summary, risk) per call",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
RISK_SCORE = Histogram(
    "uq_risk_score", "Risk score of each prediction, by metric", ["metric"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)


def observe_predictions(endpoint: str, predictions: Sequence[Prediction], seconds: float) -> None:
    """One predictor call of ``seconds``: its predictions, flags, scores and sample counts."""
    ENGINE_SECONDS.observe(seconds)
    PREDICTIONS.labels(endpoint).inc(len(predictions))
    FLAGGED.labels(endpoint).inc(sum(p.risk.flagged for p in predictions))
    for reason in ("error_risk", "novelty"):
        count = sum(reason in p.risk.reasons for p in predictions)
        if count:
            FLAG_REASONS.labels(endpoint, reason).inc(count)
    for prediction in predictions:
        RISK_SCORE.labels(prediction.risk.metric).observe(prediction.risk.score)
        N_SAMPLES.observe(prediction.n_samples)
