"""The optional GAN generator behind /generate: seeded latent vectors -> images
shaped like the classifier's input -> the classifier's MC predictions."""

from __future__ import annotations

import logging

import numpy as np

from artifacts.cards import GeneratorCard
from artifacts.generation import generated_images
from artifacts.inputs import InputSpec
from artifacts.store import load_generator

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
        card.check_fits(tag, list(classifier_input.input_shape), classifier_input.value_range)
        logger.info("loaded generator %s", tag)
        return cls(generator, card, tag)

    def images(self, count: int, seed: int) -> np.ndarray:
        """``count`` images ``[count, *output_shape]``; the same seed, the same images."""
        return generated_images(self.generator, self.card, count, seed)
