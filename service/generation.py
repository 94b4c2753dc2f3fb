"""The optional GAN generator behind /generate: seeded latent vectors -> images
shaped like the classifier's input -> the classifier's MC predictions."""

from __future__ import annotations

import logging

import numpy as np

from service.schemas import InputSpec
from uncertainty.artifact import GeneratorCard, load_generator

logger = logging.getLogger(__name__)


class Sampler:
    def __init__(self, generator, card: GeneratorCard, tag: str) -> None:
        self.generator = generator
        self.card = card
        self.tag = tag

    @classmethod
    def load(cls, model_ref, classifier_input: InputSpec) -> Sampler:
        """Load the generator; refuses one whose images the classifier cannot take."""
        generator, card, tag = load_generator(model_ref)
        if (tuple(card.output_shape) != classifier_input.input_shape
                or tuple(card.value_range) != classifier_input.value_range):
            raise ValueError(
                f"generator {tag} makes {card.output_shape} images in {card.value_range}, but "
                f"the classifier takes {list(classifier_input.input_shape)} in "
                f"{classifier_input.value_range}"
            )
        logger.info("loaded generator %s", tag)
        return cls(generator, card, tag)

    def images(self, count: int, seed: int) -> np.ndarray:
        """``count`` images ``[count, *output_shape]`` in the card's range; the same seed
        gives the same images."""
        latent = np.random.default_rng(seed).standard_normal((count, self.card.latent_dim))
        images = np.asarray(self.generator(latent.astype(np.float32), training=False))
        low, high = self.card.value_range
        return np.clip(images, low, high).astype(np.float32)
