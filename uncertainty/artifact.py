"""The model artifact: ``model.keras`` plus a model card, in BentoML's model store.

The card lives in the store entry's metadata, so ``bentoml models get TAG``
shows it. Keras and BentoML are imported inside the functions that need them:
the service's API process imports this module without loading TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from uncertainty.risk import RiskPolicy

if TYPE_CHECKING:
    import bentoml
    import keras

DEFAULT_CLASSIFIER_NAME = "uq-classifier"
DEFAULT_GENERATOR_NAME = "uq-generator"
MODEL_FILE = "model.keras"


class ModelCard(BaseModel):
    """What a served classifier needs to judge its own answers, and how it was made."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    class_names: list[str]
    input_shape: list[int]  # one instance, without the batch axis
    value_range: tuple[float, float]  # raw pixel values the model expects
    architecture: str
    max_norm_value: float
    dropout_rates: dict[str, float]  # dropout layer name -> rate
    default_n_samples: int
    test_metrics: dict[str, dict[str, float]]  # "deterministic" and "mc" -> name -> value
    risk_policy: RiskPolicy
    conformal_alpha: float
    conformal_quantile: float
    training: dict[str, Any]  # the training configuration, for the record


def save_classifier(
    model: keras.Model, card: ModelCard, name: str = DEFAULT_CLASSIFIER_NAME
) -> str:
    """Save to the model store; returns the tag (``name:version``)."""
    return _save(model, card, name, {"kind": "classifier"})


def read_card(model_ref: bentoml.Model) -> ModelCard:
    return ModelCard.model_validate(model_ref.info.metadata)


def load_classifier(tag_or_ref: str | bentoml.Model) -> tuple[keras.Model, ModelCard, str]:
    """The Keras model, its card and its full tag, from a tag or a store entry."""
    model, model_ref = _load(tag_or_ref)
    return model, read_card(model_ref), str(model_ref.tag)


class GeneratorCard(BaseModel):
    """What a served GAN generator needs: it maps standard-normal latent vectors
    ``[batch, latent_dim]`` to images ``[batch, *output_shape]`` in ``value_range``,
    the classifier's input for the same dataset."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    latent_dim: int
    output_shape: list[int]  # one image, without the batch axis: the classifier's input_shape
    value_range: tuple[float, float]  # raw pixel values, as the classifier expects them
    preset: str
    training: dict[str, Any]  # the training configuration, for the record
    metrics: dict[str, float]  # the last epoch's losses and discriminator accuracies

    def check_fits(
        self, tag: str, input_shape: list[int], value_range: tuple[float, float]
    ) -> None:
        """Raises ValueError unless this generator's images are a classifier's input."""
        if (list(self.output_shape) != list(input_shape)
                or tuple(self.value_range) != tuple(value_range)):
            raise ValueError(
                f"generator {tag} makes {list(self.output_shape)} images in "
                f"{list(self.value_range)}, but the classifier takes {list(input_shape)} in "
                f"{list(value_range)}"
            )


def save_generator(
    generator: keras.Model, card: GeneratorCard, name: str = DEFAULT_GENERATOR_NAME
) -> str:
    """Save an uncompiled generator to the model store; returns the tag (``name:version``)."""
    return _save(generator, card, name, {"kind": "generator", "preset": card.preset})


def _save(model: keras.Model, card: BaseModel, name: str, labels: dict[str, str]) -> str:
    """``model.keras`` and the card as metadata, under ``name``; the new tag."""
    import bentoml

    with bentoml.models.create(
        name,
        metadata=card.model_dump(mode="json"),
        labels={**labels, "dataset": card.dataset.split(":")[0]},
    ) as model_ref:
        model.save(model_ref.path_of(MODEL_FILE))
    return str(model_ref.tag)


def load_generator(tag_or_ref: str | bentoml.Model) -> tuple[keras.Model, GeneratorCard, str]:
    """The Keras generator, its card and its full tag, from a tag or a store entry."""
    generator, model_ref = _load(tag_or_ref)
    return generator, GeneratorCard.model_validate(model_ref.info.metadata), str(model_ref.tag)


def generated_images(
    generator: keras.Model, card: GeneratorCard, count: int, seed: int
) -> np.ndarray:
    """``count`` images ``[count, *output_shape]`` in the card's range, from standard-normal
    latent vectors drawn with ``seed``: the same seed gives the same images."""
    latent = np.random.default_rng(seed).standard_normal((count, card.latent_dim))
    images = np.asarray(generator(latent.astype(np.float32), training=False))
    low, high = card.value_range
    return np.clip(images, low, high).astype(np.float32)


def _load(tag_or_ref: str | bentoml.Model) -> tuple[keras.Model, bentoml.Model]:
    """The uncompiled Keras model of a store entry, and the entry."""
    import bentoml
    import keras

    model_ref = bentoml.models.get(tag_or_ref) if isinstance(tag_or_ref, str) else tag_or_ref
    return keras.saving.load_model(model_ref.path_of(MODEL_FILE), compile=False), model_ref
