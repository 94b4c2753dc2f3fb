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
from uncertainty.engine import MCEngine, configure_tensorflow_threads
from uncertainty.risk import prediction_sets, risk_score
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
        risk_threshold: float | None = None,
    ) -> list[Prediction]:
        """One prediction per row of ``x`` ``[batch, *input_shape]``."""
        samples = self.engine.sample(x, n_samples, seed)  # [n_samples, batch, classes]
        return self._predictions(summarize(samples), risk_threshold)

    def predict_ragged(self, x: np.ndarray, *, n_samples: list[int]) -> list[Prediction]:
        """Row i of ``x`` with ``n_samples[i]`` samples, all in one engine pass."""
        rows = self.engine.sample_ragged(x, n_samples)  # one [n_samples[i], classes] per row
        by_count: dict[int, list[int]] = defaultdict(list)
        for index, count in enumerate(n_samples):
            by_count[count].append(index)
        predictions: list[Prediction | None] = [None] * len(n_samples)
        for indices in by_count.values():  # rows with equal counts share one summary
            samples = np.stack([rows[i] for i in indices], axis=1)  # [count, rows, classes]
            for index, prediction in zip(
                indices, self._predictions(summarize(samples), None), strict=True
            ):
                predictions[index] = prediction
        return predictions

    def _predictions(
        self, summary: UncertaintySummary, risk_threshold: float | None
    ) -> list[Prediction]:
        policy = self.card.risk_policy
        threshold = policy.threshold if risk_threshold is None else risk_threshold
        scores = risk_score(summary, policy.metric)
        flagged = scores > threshold
        sets = prediction_sets(summary.mean, self.card.conformal_quantile)
        names = self.card.class_names
        return [
            Prediction.model_validate({
                "label": int(label),
                "class_name": names[label],
                "confidence": float(summary.confidence[row]),
                "probabilities": summary.mean[row].tolist(),
                "std": summary.std[row].tolist(),
                "predictive_entropy": float(summary.predictive_entropy[row]),
                "expected_entropy": float(summary.expected_entropy[row]),
                "mutual_information": float(summary.mutual_information[row]),
                "risk": {
                    "flagged": bool(flagged[row]),
                    "metric": policy.metric,
                    "score": float(scores[row]),
                    "threshold": float(threshold),
                },
                "prediction_set": [names[c] for c in np.flatnonzero(sets[row])],
            })
            for row, label in enumerate(summary.label)
        ]
