"""Training-time augmentation of images: random shifts.

Applied to the raw pixels that the model's own preprocessing then rescales, in the
input pipeline only: the stored model has no augmentation layers, so the engine and
the service see the same chain of layers as without it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

#: Largest shift along each image axis, as a share of its size (2 pixels of 28; at least 1).
MAX_SHIFT_SHARE = 0.07


def max_shift(size: int) -> int:
    """The largest shift, in pixels, along an axis of ``size`` pixels."""
    return max(1, round(MAX_SHIFT_SHARE * size))


def augmented_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, background: float, seed: int
) -> tf.data.Dataset:
    """Shuffled batches of ``x`` ``[n, height, width(, channels)]`` and ``y`` ``[n, ...]``,
    each image shifted by up to ``max_shift`` pixels along each axis, independently
    (the uncovered border takes the value ``background``). Flips are left out: they
    change the class of digits and letters. Every pass over the data shuffles and
    shifts afresh, as a pure function of ``seed`` and the number of the pass."""
    if x.ndim not in (3, 4):
        raise ValueError(f"augmentation needs images [n, height, width(, channels)], got "
                         f"shape {list(x.shape[1:])}")
    shape = x.shape[1:]
    images = x if x.ndim == 4 else x[..., None]  # [n, H, W, C]
    rows, columns = max_shift(images.shape[1]), max_shift(images.shape[2])
    padding = [[rows, rows], [columns, columns], [0, 0]]

    def augment(pair: tuple[tf.Tensor, tf.Tensor], key: tf.Tensor):
        image, label = pair
        uniform = tf.random.stateless_uniform([2], key)  # [2] in [0, 1)
        offsets = tf.cast(uniform * [2 * rows + 1, 2 * columns + 1], tf.int32)
        padded = tf.pad(image, padding, constant_values=background)
        window = tf.slice(padded, tf.concat([offsets, [0]], axis=0), images.shape[1:])
        return tf.reshape(window, shape), label

    pairs = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), y)).shuffle(
        len(images), seed=seed, reshuffle_each_iteration=True)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (
        tf.data.Dataset.zip((pairs, keys))
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
