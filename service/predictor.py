"""The served classifier, loaded in the worker: from checked arrays to typed predictions.

Data path: x ``[batch, *input_shape]`` -> engine samples ``[n_samples, batch,
classes]`` -> summary -> risk flag and conformal set -> one ``Prediction`` per
row, each with a signed feedback token when the predictor has a signer. The route
resolves N and records metrics; this module only computes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from artifacts.cards import ModelCard
from artifacts.inputs import InputSpec
from artifacts.store import load_classifier
from service.feedback import Signer, reason_bits
from service.schemas import Prediction
from uncertainty.calibration import decide
from uncertainty.mc import MCEngine, configure_tensorflow_threads
from uncertainty.sequential import (
    AUTO,
    AutoCalibration,
    SequentialDraw,
    SequentialRun,
    sample_sequential,
)
from uncertainty.summary import UncertaintySummary, summarize

logger = logging.getLogger(__name__)


class Predictor:
    def __init__(self, engine: MCEngine, card: ModelCard, tag: str, default_samples: int,
                 signer: Signer | None = None) -> None:
        self.engine = engine
        self.card = card
        self.tag = tag
        #: n_samples of a request without one: an int or "auto" (UQ_DEFAULT_SAMPLES)
        self.default_request_samples = default_samples
        #: the default fixed N (the card's when the default is "auto")
        self.default_samples = (card.default_n_samples if default_samples == AUTO
                                else default_samples)
        self.spec = InputSpec(tuple(card.input_shape), tuple(card.value_range))
        self.signer = signer

    @classmethod
    def load(cls, model_ref, default_samples: int | str | None, warm_up_batch: int,
             signer: Callable[[str, int], Signer] | None = None) -> Predictor:
        """Load model and card, build the engine, compile the usual programs. ``signer``
        makes the feedback tokens' signer from the served tag and the number of classes."""
        started = time.perf_counter()
        configure_tensorflow_threads()
        model, card, tag = load_classifier(model_ref)
        predictor = cls(MCEngine(model), card, tag, default_samples or card.default_n_samples,
                        signer(tag, len(card.class_names)) if signer else None)
        predictor.engine.warm_up(predictor.default_samples, warm_up_batch)
        if predictor.auto is not None and predictor.auto.stratified:
            predictor.engine.warm_up_stratified()
        logger.info("loaded %s in %.1f s", tag, time.perf_counter() - started)
        return predictor

    @property
    def auto(self) -> AutoCalibration | None:
        """n_samples "auto": the procedure and its calibration, or None."""
        return self.card.auto_calibration

    def most_samples(self, n_samples: int | str) -> int:
        """The most samples one prediction with ``n_samples`` may draw."""
        return self.auto.max_samples if n_samples == AUTO else n_samples

    def predict(
        self, x: np.ndarray, *, n_samples: int | str, seed: int | None = None,
        risk_threshold: float | None = None, return_samples: bool = False,
    ) -> list[Prediction]:
        """One prediction per row of ``x`` ``[batch, *input_shape]``; with
        ``return_samples``, each carries its samples ``[n_samples, classes]``.
        ``n_samples`` "auto": each row draws the samples its decision needs."""
        if n_samples == AUTO:
            return self._predict_auto(x, seed, risk_threshold, return_samples)
        samples = self.engine.sample(x, n_samples, seed)  # [n_samples, batch, classes]
        return self.predictions(samples, risk_threshold, return_samples)

    def predictions(self, samples: np.ndarray, risk_threshold: float | None = None,
                    return_samples: bool = False) -> list[Prediction]:
        """One prediction per row of ``samples`` ``[n_samples, batch, classes]``."""
        predictions = self._predictions(summarize(samples), len(samples), risk_threshold)
        if return_samples:
            for row, prediction in enumerate(predictions):
                prediction.samples = samples[:, row].tolist()
        return predictions

    def _predict_auto(
        self, x: np.ndarray, seed: int | None, risk_threshold: float | None,
        return_samples: bool,
    ) -> list[Prediction]:
        """``predict`` with n_samples "auto" (uncertainty.sequential): rounds of samples,
        each row stopped once its decision is settled; every prediction reports its own N,
        all are judged by the calibration of "auto"."""
        if self.auto is None:
            raise ValueError('n_samples: "auto" needs a model card calibrated for it')
        result = sample_sequential(self.engine, x, self.auto.rule(risk_threshold),
                                   self.auto.schedule, seed, stratified=self.auto.stratified)
        return self.auto_predictions(result, risk_threshold, return_samples)

    def auto_run(self, rows: int, risk_threshold: float | None = None) -> SequentialRun:
        """The procedure of "auto" on ``rows`` rows, for a caller that draws its rounds
        (``engine.sample_ragged(..., stratified=self.auto.stratified)``)."""
        return SequentialRun(rows, self.auto.rule(risk_threshold), self.auto.schedule)

    def auto_predictions(self, result: SequentialDraw, risk_threshold: float | None = None,
                         return_samples: bool = False) -> list[Prediction]:
        """One prediction per row of a sequential draw, each with its own N, all judged by
        the calibration of "auto"."""
        predictions = self._predictions(result.summary, result.n_samples, risk_threshold,
                                        auto=True)
        if return_samples:
            for prediction, samples in zip(predictions, result.samples, strict=True):
                prediction.samples = samples.tolist()
        return predictions

    def _predictions(
        self, summary: UncertaintySummary, n_samples: int | np.ndarray,
        risk_threshold: float | None, auto: bool = False,
    ) -> list[Prediction]:
        """Predictions of ``n_samples`` samples each; ``auto``: drawn by n_samples "auto"
        (``n_samples`` then one count per row ``[batch]``), whose own calibration applies."""
        calibration = self.auto.calibration if auto else self.card.calibration_for(n_samples)
        calibrated = AUTO if auto else calibration.n_samples
        decision = decide(summary, calibration, risk_threshold)
        metric, novelty_metric = calibration.risk_policy.metric, calibration.novelty_policy.metric
        novelty_threshold = calibration.novelty_policy.threshold
        names = self.card.class_names
        tokens = (self.signer.issue(n_samples, summary.label,
                                    reason_bits(decision.error_risk, decision.novel),
                                    decision.prediction_sets)
                  if self.signer else [None] * len(summary.label))
        novelty_calibrated = AUTO if auto else calibration.novelty_calibrated_n_samples
        sets = [[names[c] for c in np.flatnonzero(members)] for members in
                decision.prediction_sets]
        # columns as Python values at once (indexing arrays per row costs more)
        return [
            Prediction.model_validate({
                "n_samples": count, "label": label, "class_name": names[label],
                "confidence": confidence, "probabilities": mean, "std": std,
                "predictive_entropy": predictive_entropy, "expected_entropy": expected_entropy,
                "mutual_information": mutual_information,
                "risk": {
                    "flagged": bool(reasons), "reasons": reasons,
                    "metric": metric, "score": score, "threshold": decision.risk_threshold,
                    "novelty": {"metric": novelty_metric, "score": novelty_score,
                                "threshold": novelty_threshold,
                                "calibrated_n_samples": novelty_calibrated},
                    "calibrated_n_samples": calibrated,
                },
                "prediction_set": prediction_set, "feedback_token": token,
            })
            for (count, label, confidence, mean, std, predictive_entropy, expected_entropy,
                 mutual_information, reasons, score, novelty_score, prediction_set,
                 token) in zip(
                np.broadcast_to(n_samples, summary.label.shape).tolist(),
                summary.label.tolist(), summary.confidence.tolist(), summary.mean.tolist(),
                summary.std.tolist(), summary.predictive_entropy.tolist(),
                summary.expected_entropy.tolist(), summary.mutual_information.tolist(),
                decision.reasons_per_row(), decision.risk_scores.tolist(),
                decision.novelty_scores.tolist(), sets, tokens, strict=True)
        ]
