"""Seeded images from a stored GAN generator, shaped like the classifier's input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from artifacts.cards import GeneratorCard

if TYPE_CHECKING:
    import keras


def generated_images(
    generator: keras.Model, card: GeneratorCard, count: int, seed: int
) -> np.ndarray:
    """``count`` images ``[count, *output_shape]`` in the card's range, from standard-normal
    latent vectors drawn with ``seed``: the same seed gives the same images."""
    latent = np.random.default_rng(seed).standard_normal((count, card.latent_dim))
    images = np.asarray(generator(latent.astype(np.float32), training=False))
    low, high = card.value_range
    return np.clip(images, low, high).astype(np.float32)
