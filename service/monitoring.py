"""What happens to predictions after they are answered: their metrics, the drift
detector and the prediction log, off the request's path.

The service hands each request's predictions to :meth:`Monitoring.observe`; observe only
queues them, and a background thread takes the queue every :data:`FLUSH_SECONDS`:

- Their metrics (``metrics.observe_predictions``: counts, flags, risk scores, samples,
  engine seconds). :meth:`Monitoring.flush` drains the queue, and the service calls it
  before each /metrics answer, so that /metrics counts every prediction answered before
  it was asked.
- The drift detector (:mod:`uncertainty.drift`) gets every prediction at a
  calibrated N except generated images' (``/generate``, not traffic), in the order
  answered (n_samples "auto" and N off the grid have no reference: skipped);
  ``uq_drift_score{score}``, ``uq_drift_threshold`` and ``uq_drift_alarm`` follow
  it. :meth:`Monitoring.drift_state` drains the queue first, so it counts every
  prediction answered before it was asked.
- The prediction log goes through BentoML's monitoring API (``bentoml.monitor``),
  one record per prediction in the monitor :data:`PREDICTION_LOG`, with BentoML's
  ``monitoring`` configuration: by default JSON lines in
  ``monitoring/uq_predictions/data/data.<worker>.log`` under the server's working
  directory (its schema beside, in ``schema/``), rotated daily and never deleted
  (about 400 bytes a prediction: bound it with a BentoML ``log_config_file`` whose
  handler has a ``backupCount``). Columns: ``x_request_id``, ``endpoint``, ``model``,
  ``n_samples``, ``latency_ms`` (the predictor call the prediction was part of),
  ``label``, ``confidence``, ``predictive_entropy``, ``mutual_information``,
  ``risk_score``, ``reasons`` and ``prediction_id``, the id in its feedback token,
  which ``/feedback`` answers too, so that late labels join their predictions; with
  ``UQ_LOG_INPUTS=true``, ``input`` (flat, raw pixels). BentoML adds ``timestamp``
  (when written, within FLUSH_SECONDS unless the writer falls behind). One log only:
  BentoML's default monitors of a process share one logger (service/adapter.py).

The queue holds at most :data:`QUEUE_LIMIT` predictor calls: beyond, calls are
dropped from drift and the log and counted (``uq_monitoring_dropped_total``); their
metrics are recorded at once.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service import adapter, metrics, request_ids
from service.feedback import prediction_id
from uncertainty.drift import SCORES, DriftDetector

if TYPE_CHECKING:
    from artifacts.cards import ModelCard
    from service.schemas import Prediction

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
QUEUE_LIMIT = 10_000
PREDICTION_LOG = "uq_predictions"
#: Endpoints whose predictions are not traffic the drift detector should see.
NOT_TRAFFIC = ("generate",)

# (column, role, type) of the prediction log, in BentoML's roles and types; the request
# id is "x_request_id": BentoML's "request_id" column is its OpenTelemetry span's
_PREDICTION_COLUMNS = (
    ("x_request_id", "feature", "categorical"),
    ("endpoint", "feature", "categorical"),
    ("model", "feature", "categorical"),
    ("n_samples", "feature", "numerical"),
    ("latency_ms", "feature", "numerical"),
    ("label", "prediction", "categorical"),
    ("confidence", "prediction", "numerical"),
    ("predictive_entropy", "prediction", "numerical"),
    ("mutual_information", "prediction", "numerical"),
    ("risk_score", "prediction", "numerical"),
    ("reasons", "prediction", "categorical"),  # comma-separated; empty: not flagged
    ("prediction_id", "prediction", "categorical"),
)


class Monitoring:
    """The drift detector and the prediction log of one served model."""

    def __init__(self, card: ModelCard, tag: str, *, log_predictions: bool, log_inputs: bool,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.tag = tag
        self.log_predictions, self.log_inputs = log_predictions, log_inputs
        references = {calibration.n_samples: calibration.reference
                      for calibration in card.calibrations if calibration.reference is not None}
        self.detector = DriftDetector(references) if references else None
        if self.detector is None:
            logger.warning("the card of %s holds no reference of the uncertainty scores: drift "
                           "detection is off (recalibrate with uq-calibrate --model %s)", tag, tag)
        else:
            metrics.DRIFT_THRESHOLD.set(self.detector.threshold)
        metrics.RISK_TARGET_ERROR.set(card.risk_policy.target_error)
        metrics.CONFORMAL_TARGET_COVERAGE.set(1.0 - card.conformal_alpha)
        self.queue: collections.deque = collections.deque()
        self.lock = threading.Lock()  # one drain at a time: the detector is not thread-safe
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(flush_seconds,),
                                       name="uq-monitoring", daemon=True)
        self.thread.start()

    # --- on the request's path: queue only ----------------------------------------------

    def observe(self, endpoint: str, predictions: Sequence[Prediction], seconds: float,
                inputs: Sequence[np.ndarray] = ()) -> None:
        """Queue one request's predictions, with the current request's id and the inputs:
        arrays ``[batch, *input_shape]`` whose rows, in order, are the predictions' (kept
        only when they are logged)."""
        if len(self.queue) >= QUEUE_LIMIT:
            metrics.observe_predictions(endpoint, predictions, seconds)
            metrics.MONITORING_DROPPED.inc(len(predictions))
            return
        self.queue.append((endpoint, predictions, seconds,
                           request_ids.current(),
                           inputs if self.log_inputs else None))

    # --- in the background ----------------------------------------------------------------

    def _run(self, flush_seconds: float) -> None:
        while not self.stopping.wait(flush_seconds):
            try:
                self.flush()
            except Exception:  # the thread must outlive any one bad record
                logger.exception("monitoring: could not process the queue")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.flush()

    def flush(self) -> None:
        """Process every queued call, in order."""
        with self.lock:
            calls = []
            while self.queue:
                calls.append(self.queue.popleft())
            if not calls:
                return
            for endpoint, predictions, seconds, *_ in calls:
                metrics.observe_predictions(endpoint, predictions, seconds)
            if self.detector is not None:
                self._feed_detector(calls)
            if self.log_predictions:
                self._write_log(calls)

    def _feed_detector(self, calls: list[tuple]) -> None:
        predictions = [prediction for endpoint, batch, *_ in calls
                       if endpoint not in NOT_TRAFFIC for prediction in batch]
        if not predictions:
            return
        alarms_before = self.detector.alarms
        self.detector.update(
            # n_samples "auto" stops each row at its own N, so the scores of a row that
            # stopped at N are not those of N fixed samples: no reference, skipped (N 0)
            np.array([0 if p.risk.calibrated_n_samples == "auto" else p.n_samples
                      for p in predictions]),
            {"mutual_information": np.array([p.mutual_information for p in predictions]),
             "one_minus_confidence": 1.0 - np.array([p.confidence for p in predictions])},
        )
        raised = self.detector.alarms - alarms_before
        if raised:
            metrics.DRIFT_ALARMS.inc(raised)
            logger.warning("drift alarm: the uncertainty scores of the last %d predictions "
                           "differ from the calibration split's (%s)", self.detector.window,
                           ", ".join(f"{name} {value:.1f}" for name, value in
                                     self.detector.statistics.items()))
        for name in SCORES:
            value = self.detector.statistics[name]
            if not np.isnan(value):
                metrics.DRIFT_SCORE.labels(name).set(value)
        metrics.DRIFT_ALARM.set(int(self.detector.alarm))

    def _write_log(self, calls: list[tuple]) -> None:
        try:
            adapter.write_monitor_records(
                PREDICTION_LOG, (record for call in calls for record in self._records(*call)))
        except Exception as error:  # e.g. a read-only working directory
            logger.error("the prediction log is off: bentoml.monitor could not write (%s)",
                         error)
            self.log_predictions = False

    def _records(self, endpoint: str, predictions: Sequence[Prediction], seconds: float,
                 request_id: str | None, inputs: Sequence[np.ndarray] | None
                 ) -> Iterator[list[tuple]]:
        """The prediction log's records of one call: per prediction, (value, column, role,
        type) for each column (and the input, when logged)."""
        latency_ms = round(seconds * 1000, 3)
        inputs = np.concatenate(inputs) if inputs else None
        for row, prediction in enumerate(predictions):
            risk = prediction.risk
            values = [
                request_id or "",
                endpoint, self.tag, prediction.n_samples, latency_ms, prediction.label,
                prediction.confidence, prediction.predictive_entropy,
                prediction.mutual_information, risk.score, ",".join(risk.reasons),
                prediction_id(prediction.feedback_token) if prediction.feedback_token else "",
            ]
            record = [(value, *column) for value, column in zip(
                values, _PREDICTION_COLUMNS, strict=True)]
            if inputs is not None:
                record.append((np.asarray(inputs[row], float).ravel().round(4).tolist(),
                               "input", "feature", "numerical_sequence"))
            yield record

    # --- state -------------------------------------------------------------------------------

    def drift_state(self) -> dict[str, Any]:
        """The detector's state after every prediction answered so far."""
        self.flush()
        if self.detector is None:
            return {"enabled": False, "reason": "the model card holds no reference of the "
                    "uncertainty scores; recalibrate with uq-calibrate"}
        with self.lock:
            return {"enabled": True, **self.detector.state()}
