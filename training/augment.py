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
    height, width = images.shape[1:3]
    rows, columns = max_shift(height), max_shift(width)
    padding = [[0, 0], [rows, rows], [columns, columns], [0, 0]]

    def augment(batch: tuple[tf.Tensor, tf.Tensor], key: tf.Tensor):
        """A whole batch at once (one gather per axis): per image, a window of the padded
        image at its own offset."""
        image, label = batch  # [b, H, W, C], [b, ...]
        count = tf.shape(image)[0]
        uniform = tf.random.stateless_uniform(tf.stack([count, 2]), key)  # [b, 2] in [0, 1)
        offsets = tf.cast(uniform * [2 * rows + 1, 2 * columns + 1], tf.int32)  # [b, 2]
        padded = tf.pad(image, padding, constant_values=background)  # [b, H+2r, W+2c, C]
        window_rows = offsets[:, :1] + tf.range(height)  # [b, H]
        window_columns = offsets[:, 1:] + tf.range(width)  # [b, W]
        window = tf.gather(padded, window_rows, axis=1, batch_dims=1)  # [b, H, W+2c, C]
        window = tf.gather(window, window_columns, axis=2, batch_dims=1)  # [b, H, W, C]
        return tf.reshape(window, tf.concat([[count], shape], axis=0)), label

    batches = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), y)).shuffle(
        len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (
        tf.data.Dataset.zip((batches, keys))
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
