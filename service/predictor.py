"""The served classifier, loaded in the worker: from checked arrays to typed predictions.

Data path: x ``[batch, *input_shape]`` -> engine samples ``[n_samples, batch,
classes]`` -> summary -> risk flag and conformal set -> one ``Prediction`` per
row. The route resolves N and records metrics; this module only computes.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np

from artifacts.cards import ModelCard
from artifacts.store import load_classifier
from service.inputs import InputSpec
from service.schemas import Prediction
from uncertainty.calibration import decide
from uncertainty.engine import MCEngine, configure_tensorflow_threads
from uncertainty.summary import UncertaintySummary, summarize

logger = logging.getLogger(__name__)


class Predictor:
    def __init__(self, engine: MCEngine, card: ModelCard, tag: str, default_samples: int) -> None:
        self.engine = engine
        self.card = card
        self.tag = tag
        self.default_samples = default_samples
        self.spec = InputSpec(tuple(card.input_shape), tuple(card.value_range))

    @classmethod
    def load(cls, model_ref, default_samples: int | None, warm_up_batch: int) -> Predictor:
        """Load model and card, build the engine, compile the usual programs."""
        started = time.perf_counter()
        configure_tensorflow_threads()
        model, card, tag = load_classifier(model_ref)
        predictor = cls(MCEngine(model), card, tag, default_samples or card.default_n_samples)
        predictor.engine.warm_up(predictor.default_samples, warm_up_batch)
        logger.info("loaded %s in %.1f s", tag, time.perf_counter() - started)
        return predictor

    def predict(
        self, x: np.ndarray, *, n_samples: int, seed: int | None = None,
        risk_threshold: float | None = None, return_samples: bool = False,
    ) -> list[Prediction]:
        """One prediction per row of ``x`` ``[batch, *input_shape]``; with
        ``return_samples``, each carries its samples ``[n_samples, classes]``."""
        samples = self.engine.sample(x, n_samples, seed)  # [n_samples, batch, classes]
        predictions = self._predictions(summarize(samples), n_samples, risk_threshold)
        if return_samples:
            for row, prediction in enumerate(predictions):
                prediction.samples = samples[:, row].tolist()
        return predictions

    def predict_ragged(self, x: np.ndarray, *, n_samples: list[int]) -> list[Prediction]:
        """Row i of ``x`` with ``n_samples[i]`` samples, all in one engine pass."""
        rows = self.engine.sample_ragged(x, n_samples)  # one [n_samples[i], classes] per row
        by_count: dict[int, list[int]] = defaultdict(list)
        for index, count in enumerate(n_samples):
            by_count[count].append(index)
        predictions: list[Prediction | None] = [None] * len(n_samples)
        for count, indices in by_count.items():  # rows with equal counts share one summary
            samples = np.stack([rows[i] for i in indices], axis=1)  # [count, rows, classes]
            for index, prediction in zip(
                indices, self._predictions(summarize(samples), count, None), strict=True
            ):
                predictions[index] = prediction
        return predictions

    def _predictions(
        self, summary: UncertaintySummary, n_samples: int, risk_threshold: float | None
    ) -> list[Prediction]:
        calibration = self.card.calibration_for(n_samples)
        decision = decide(summary, calibration, risk_threshold)
        metric, novelty_metric = calibration.risk_policy.metric, calibration.novelty_policy.metric
        novelty_threshold = calibration.novelty_policy.threshold
        names = self.card.class_names
        return [
            Prediction.model_validate({
                "n_samples": n_samples,
                "label": int(label),
                "class_name": names[label],
                "confidence": float(summary.confidence[row]),
                "probabilities": summary.mean[row].tolist(),
                "std": summary.std[row].tolist(),
                "predictive_entropy": float(summary.predictive_entropy[row]),
                "expected_entropy": float(summary.expected_entropy[row]),
                "mutual_information": float(summary.mutual_information[row]),
                "risk": {
                    "flagged": bool(decision.flagged[row]),
                    "reasons": decision.reasons(row),
                    "metric": metric,
                    "score": float(decision.risk_scores[row]),
                    "threshold": decision.risk_threshold,
                    "novelty": {"metric": novelty_metric,
                                "score": float(decision.novelty_scores[row]),
                                "threshold": novelty_threshold,
                                "calibrated_n_samples": calibration.novelty_calibrated_n_samples},
                    "calibrated_n_samples": calibration.n_samples,
                },
                "prediction_set": [names[c] for c in np.flatnonzero(decision.prediction_sets[row])],
            })
            for row, label in enumerate(summary.label)
        ]
