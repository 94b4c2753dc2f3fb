"""Uncertainty summaries of Monte Carlo samples.

From probabilities ``[n_samples, batch, classes]`` to per-row statistics. The
entropies are in nats. Mutual information (epistemic uncertainty) is the
predictive entropy minus the expected entropy (aleatoric uncertainty); it is
non-negative in exact arithmetic and clipped at zero against rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class UncertaintySummary:
    """Per-row statistics of MC samples; ``batch`` rows, ``classes`` columns."""

    mean: np.ndarray  # [batch, classes] mean probability
    std: np.ndarray  # [batch, classes] std of the probability across samples
    label: np.ndarray  # [batch] argmax of mean
    confidence: np.ndarray  # [batch] mean probability of label
    predictive_entropy: np.ndarray  # [batch] H[mean]
    expected_entropy: np.ndarray  # [batch] mean over samples of H[sample] (aleatoric)
    mutual_information: np.ndarray  # [batch] predictive - expected entropy (epistemic)

    @property
    def predicted_class_std(self) -> np.ndarray:
        """[batch] std of the predicted class's probability across samples."""
        return np.take_along_axis(self.std, self.label[:, None], axis=1)[:, 0]


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis; 0 log 0 is 0."""
    p = np.asarray(probabilities, dtype=np.float64)
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def summarize(probabilities: np.ndarray) -> UncertaintySummary:
    """Summarise MC samples ``[n_samples, batch, classes]`` (computed in float64)."""
    samples = np.asarray(probabilities, dtype=np.float64)
    if samples.ndim != 3 or 0 in samples.shape:
        raise ValueError(
            f"probabilities must have shape [n_samples, batch, classes], got {list(samples.shape)}"
        )
    mean = samples.mean(axis=0)
    label = mean.argmax(axis=1)
    predictive_entropy = entropy(mean)
    expected_entropy = entropy(samples).mean(axis=0)
    return UncertaintySummary(
        mean=mean,
        std=samples.std(axis=0),
        label=label,
        confidence=mean[np.arange(len(label)), label],
        predictive_entropy=predictive_entropy,
        expected_entropy=expected_entropy,
        mutual_information=np.maximum(predictive_entropy - expected_entropy, 0.0),
    )
