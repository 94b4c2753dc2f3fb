"""Prometheus metrics, all prefixed ``uq_``; BentoML serves them at /metrics, beside
its own ``bentoml_service_*`` request counts and durations. The service hands
each request's predictions to monitoring (service/monitoring.py), whose background
thread records them (:func:`observe_predictions`) beside drift and the prediction log,
off the event loop; /metrics first records every prediction answered before it.
Gauges keep the largest value of the live worker
processes (``livemax``): Prometheus's multiprocess mode, which BentoML uses."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from service.schemas import Prediction


REQUESTS = Counter(
    "uq_requests", "HTTP requests by endpoint and outcome (ok, client_error, server_error)",
    ["endpoint", "outcome"],
)
BATCH_SIZE = Histogram(
    "uq_batch_size", "Instances per engine round (the scheduler batches every route's work)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUED_ROWS = Gauge(
    "uq_queued_rows", "Engine rows (instances x samples) admitted and not yet drawn",
    multiprocess_mode="livemax",
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
OVERLOADED = Counter(
    "uq_overloaded_requests", "Requests refused for overload (429), by endpoint", ["endpoint"],
)


def count_request(endpoint: str, outcome: str, overloaded: bool) -> None:
    """One answered request, by its outcome; ``overloaded``: refused with 429."""
    _requests(endpoint, outcome).inc()
    if overloaded:
        _overloaded(endpoint).inc()


# Children of labelled metrics, kept: ``labels`` costs as much as the increment, and
# refusals under overload come by the thousand per second.
_requests = functools.cache(REQUESTS.labels)
_overloaded = functools.cache(OVERLOADED.labels)


FEEDBACK = Counter(
    "uq_feedback", "Late labels counted (POST /feedback), by whether the prediction was "
    "correct, its flag reasons (none, error_risk, novelty, error_risk+novelty) and whether "
    "its conformal set covered the label", ["correct", "reasons", "covered"],
)
FEEDBACK_REJECTED = Counter(
    "uq_feedback_rejected", "Feedback items refused, by problem (malformed, forged, "
    "other_model, expired, too_old, duplicate, unknown_label)", ["problem"],
)
DRIFT_SCORE = Gauge(
    "uq_drift_score", "Drift statistic of an uncertainty score over the last window of "
    "predictions (chi-square against the calibration split; alarm above uq_drift_threshold)",
    ["score"], multiprocess_mode="livemax",
)
DRIFT_THRESHOLD = Gauge(
    "uq_drift_threshold", "The drift statistic above which the alarm is on",
    multiprocess_mode="livemax",
)
DRIFT_ALARM = Gauge(
    "uq_drift_alarm", "1 while the drift detector sees the uncertainty scores drift from the "
    "calibration split, else 0", multiprocess_mode="livemax",
)
DRIFT_ALARMS = Counter("uq_drift_alarms", "Times the drift alarm came on")
RISK_TARGET_ERROR = Gauge(
    "uq_risk_target_error", "The card's target for the error among predictions not flagged "
    "for error risk",
    multiprocess_mode="livemax",
)
CONFORMAL_TARGET_COVERAGE = Gauge(
    "uq_conformal_target_coverage", "The card's conformal coverage target (1 - alpha)",
    multiprocess_mode="livemax",
)
MONITORING_DROPPED = Counter(
    "uq_monitoring_dropped", "Predictions neither the drift detector nor the prediction log "
    "saw: the monitoring queue was full",
)

def observe_predictions(endpoint: str, predictions: Sequence[Prediction], seconds: float) -> None:
    """One request's predictions, drawn in ``seconds`` of engine rounds: flags, scores and
    sample counts."""
    ENGINE_SECONDS.observe(seconds)
    _predictions(endpoint).inc(len(predictions))
    _flagged(endpoint).inc(sum(p.risk.flagged for p in predictions))
    for reason in ("error_risk", "novelty"):
        count = sum(reason in p.risk.reasons for p in predictions)
        if count:
            _flag_reasons(endpoint, reason).inc(count)
    for prediction in predictions:
        _risk_score(prediction.risk.metric).observe(prediction.risk.score)
        N_SAMPLES.observe(prediction.n_samples)


_predictions = functools.cache(PREDICTIONS.labels)
_flagged = functools.cache(FLAGGED.labels)
_flag_reasons = functools.cache(FLAG_REASONS.labels)
_risk_score = functools.cache(RISK_SCORE.labels)
