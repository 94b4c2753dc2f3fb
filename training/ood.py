"""Shifted and out-of-distribution inputs for a dataset, in its raw pixel range.

For 28 x 28 grayscale data (Fashion-MNIST, MNIST): scikit-learn's bundled
digits upscaled to 28 x 28. For every dataset: Gaussian noise with the test
split's mean and spread, and inverted test images (high - x + low).
"""

from __future__ import annotations

import numpy as np

from training.data import Dataset


def upscaled_digits(shape: tuple[int, ...], value_range: tuple[float, float]) -> np.ndarray:
    """The 1797 bundled 8x8 digits (values 0-16) resized to ``shape`` [H, W],
    scaled to ``value_range``: [1797, *shape]."""
    from PIL import Image
    from sklearn.datasets import load_digits

    height, width = shape
    low, high = value_range
    images = load_digits().images / 16.0  # [1797, 8, 8] in [0, 1]
    resized = np.stack([
        np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(
            (width, height), Image.Resampling.BILINEAR))
        for image in images
    ])
    return (low + np.clip(resized, 0.0, 1.0) * (high - low)).astype(np.float32)


def ood_sets(dataset: Dataset, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Name -> inputs ``[n, *input_shape]`` that the classifier should distrust."""
    rng = np.random.default_rng(seed)
    low, high = dataset.value_range
    test = dataset.x_test[:rows]
    noise = rng.normal(test.mean(), test.std(), size=test.shape).clip(low, high)
    sets = {
        "gaussian_noise": noise.astype(np.float32),
        "inverted": (high + low - test).astype(np.float32),
    }
    if dataset.input_shape == (28, 28):
        sets["upscaled_digits"] = upscaled_digits((28, 28), dataset.value_range)[:rows]
    return sets
