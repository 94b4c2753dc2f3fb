"""Classifiers and generators in BentoML's model store: ``model.keras`` plus a card.

The card lives in the store entry's metadata, so ``bentoml models get TAG``
shows it. Keras and BentoML are imported inside the functions that need them:
the service's API process imports this module without loading TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from artifacts.cards import GeneratorCard, ModelCard

if TYPE_CHECKING:
    import bentoml
    import keras

DEFAULT_CLASSIFIER_NAME = "uq-classifier"
DEFAULT_GENERATOR_NAME = "uq-generator"
MODEL_FILE = "model.keras"


def save_classifier(
    model: keras.Model, card: ModelCard, name: str = DEFAULT_CLASSIFIER_NAME
) -> str:
    """Save to the model store; returns the tag (``name:version``)."""
    return _save(model, card, name, {"kind": "classifier"})


class CardError(ValueError):
    """A store entry whose card this code cannot serve."""


def read_card(model_ref: bentoml.Model) -> ModelCard:
    metadata = model_ref.info.metadata
    if "calibrations" not in metadata:
        raise CardError(
            f"the card of {model_ref.tag} has no per-N calibration (it predates it): "
            f"run uq-calibrate --model {model_ref.tag}"
        )
    return ModelCard.model_validate(metadata)


def stored_card(tag: str) -> ModelCard:
    """The card of the stored classifier ``tag``; ValueError (one line) when the store
    has no such model."""
    import bentoml

    try:
        return read_card(bentoml.models.get(tag))
    except bentoml.exceptions.NotFound:
        raise ValueError(f"model {tag!r} is not in the store ('bentoml models list')") from None


def load_classifier(tag_or_ref: str | bentoml.Model) -> tuple[keras.Model, ModelCard, str]:
    """The Keras model, its card and its full tag, from a tag or a store entry."""
    model, model_ref = _load(tag_or_ref)
    return model, read_card(model_ref), str(model_ref.tag)


def save_generator(
    generator: keras.Model, card: GeneratorCard, name: str = DEFAULT_GENERATOR_NAME
) -> str:
    """Save an uncompiled generator to the model store; returns the tag (``name:version``)."""
    return _save(generator, card, name, {"kind": "generator", "preset": card.preset})


def load_generator(tag_or_ref: str | bentoml.Model) -> tuple[keras.Model, GeneratorCard, str]:
    """The Keras generator, its card and its full tag, from a tag or a store entry."""
    generator, model_ref = _load(tag_or_ref)
    return generator, GeneratorCard.model_validate(model_ref.info.metadata), str(model_ref.tag)


def _save(model: keras.Model, card: BaseModel, name: str, labels: dict[str, str]) -> str:
    """``model.keras`` and the card as metadata, under ``name``; the new tag."""
    import bentoml

    with bentoml.models.create(
        name,
        metadata=card.model_dump(mode="json", exclude_none=True),  # the store refuses None
        labels={**labels, "dataset": card.dataset.split(":")[0]},
    ) as model_ref:
        model.save(model_ref.path_of(MODEL_FILE))
    return str(model_ref.tag)


def _load(tag_or_ref: str | bentoml.Model) -> tuple[keras.Model, bentoml.Model]:
    """The uncompiled Keras model of a store entry, and the entry."""
    import bentoml
    import keras

    model_ref = bentoml.models.get(tag_or_ref) if isinstance(tag_or_ref, str) else tag_or_ref
    return keras.saving.load_model(model_ref.path_of(MODEL_FILE), compile=False), model_ref
