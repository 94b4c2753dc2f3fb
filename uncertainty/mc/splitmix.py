"""A counter-based random generator: SplitMix64 over the element index.

Each 64-bit hash gives four 16-bit uniforms, which makes dropout masks cheap enough
not to dominate the matrix products. Every value is a pure function of its key and
its counter, so a mask can be drawn again, row by row, in any call.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_SPLITMIX_SHIFTS = (30, 27, 31)


def _splitmix64(state: tf.Tensor) -> tf.Tensor:
    """SplitMix64's finaliser, element-wise on uint64."""
    first, second, third = (tf.constant(s, tf.uint64) for s in _SPLITMIX_SHIFTS)
    multiplier_1, multiplier_2 = (tf.constant(m, tf.uint64) for m in _SPLITMIX_MULTIPLIERS)
    state = tf.bitwise.bitwise_xor(state, tf.bitwise.right_shift(state, first)) * multiplier_1
    state = tf.bitwise.bitwise_xor(state, tf.bitwise.right_shift(state, second)) * multiplier_2
    return tf.bitwise.bitwise_xor(state, tf.bitwise.right_shift(state, third))


def _hashes(key: tf.Tensor, counters: tf.Tensor) -> tf.Tensor:
    """``splitmix64(key + counter * gamma)`` for int64 ``counters`` of any shape."""
    return _splitmix64(
        key + tf.cast(counters, tf.uint64) * tf.constant(SPLITMIX_GAMMA, tf.uint64)
    )


def random_uint16(key: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Uniform uint16 values of ``shape``, a pure function of ``key`` (uint64 scalar).

    Element ``i`` of the flattened result is 16 bits of
    ``splitmix64(key + (i // 4 + 1) * gamma)``.
    """
    size = tf.reduce_prod(shape)
    words = (size + 3) // 4
    hashes = _hashes(key, tf.range(1, words + 1, dtype=tf.int64))
    values = tf.reshape(tf.bitcast(hashes, tf.uint16), [-1])[:size]
    return tf.reshape(values, shape)


def random_uint16_rows(key: tf.Tensor, row_ids: tf.Tensor, row_shape: tf.Tensor) -> tf.Tensor:
    """Uniform uint16 values ``[len(row_ids), *row_shape]`` in which row ``r`` is a pure
    function of ``key`` and ``row_ids[r]`` (int32): rows with equal ids are equal."""
    return _uint16_rows(key, row_ids, row_shape)


def random_uint16_keyed_rows(
    row_keys: tf.Tensor, row_counters: tf.Tensor, row_shape: tf.Tensor
) -> tf.Tensor:
    """Uniform uint16 values ``[R, *row_shape]`` in which row ``r`` is a pure function of
    its own key ``row_keys[r]`` (uint64) and counter ``row_counters[r]`` (int32): the
    words ``splitmix64(key + (counter * words_per_row + j + 1) * gamma)``, ``j`` from 0.
    With every key equal this is ``random_uint16_rows`` of the counters."""
    return _uint16_rows(row_keys[:, None], row_counters, row_shape)


def _uint16_rows(keys: tf.Tensor, row_counters: tf.Tensor, row_shape: tf.Tensor) -> tf.Tensor:
    """Rows ``[R, *row_shape]`` of 16-bit parts of ``_hashes(keys, counters)``, ``keys`` a
    uint64 scalar or ``[R, 1]`` (one per row), row ``r``'s counters
    ``row_counters[r] * words_per_row + 1`` onwards."""
    row_size = tf.reduce_prod(row_shape)
    words_per_row = tf.cast((row_size + 3) // 4, tf.int64)
    counters = (  # [R, words_per_row]
        tf.cast(row_counters, tf.int64)[:, None] * words_per_row
        + tf.range(1, words_per_row + 1, dtype=tf.int64)
    )
    n_rows = tf.shape(row_counters)[:1]
    words = tf.bitcast(_hashes(keys, counters), tf.uint16)  # [R, words_per_row, 4]
    values = tf.reshape(words, tf.concat([n_rows, [-1]], 0))
    return tf.reshape(values[:, :row_size], tf.concat([n_rows, row_shape], 0))


def splitmix64_numpy(state: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping), as ``_splitmix64`` in TensorFlow."""
    state = np.asarray(state, dtype=np.uint64)
    first, second, third = (np.uint64(s) for s in _SPLITMIX_SHIFTS)
    multiplier_1, multiplier_2 = (np.uint64(m) for m in _SPLITMIX_MULTIPLIERS)
    with np.errstate(over="ignore"):
        state = (state ^ (state >> first)) * multiplier_1
        state = (state ^ (state >> second)) * multiplier_2
        return state ^ (state >> third)
