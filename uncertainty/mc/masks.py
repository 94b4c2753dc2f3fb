"""Dropout masks drawn from the counter-based generator, and the strata of Latin
hypercube masks.

A dropout rate ``p`` is applied as the 16-bit threshold ``round(p * 65536)``, and kept
units are scaled by the exact inverse of the resulting keep probability, so the layer
stays unbiased. Stratified masks come in blocks of ``STRATUM_BLOCK`` consecutive
samples of one input, in which each unit takes the eight strata of [0, 1) in a random
order (one of the 8! permutations, drawn per unit, block and input from a 32-bit hash)
and a sample's uniform is ``(stratum + u / 65536) / 8``: every sample is still an exact
dropout sample, but a unit is dropped in a block as often as its rate says, give or
take one. A block cut short (a count not a multiple of 8) takes distinct strata
without covering them all. The strata are keyed by the input's place in the call and
the seed, not by the chunk, so chunking does not change them. A mask shared by the
inputs of a sample (a leading 1 in Keras' ``noise_shape``) is drawn plainly.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from uncertainty.mc.splitmix import random_uint16, random_uint16_keyed_rows, random_uint16_rows

#: Samples of one Latin hypercube of masks (``sample(..., stratified=True)``): its 8! orders
#: fit one lookup table.
STRATUM_BLOCK = 8

_UINT16_RANGE = 65536
#: Every order of a block's strata ``[8!]``, packed: position p's stratum in bits 3p to 3p + 2.
_STRATUM_ORDERS = (
    np.array(list(itertools.permutations(range(STRATUM_BLOCK))), np.int32)
    << np.arange(0, 3 * STRATUM_BLOCK, 3, dtype=np.int32)
).sum(axis=1, dtype=np.int32)
# SELU constants, as in keras.layers.AlphaDropout.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _threshold(rate: float) -> int:
    """The 16-bit threshold that applies ``rate``: uniforms below it drop their unit."""
    return round(rate * _UINT16_RANGE)


def rate_refusal(rate: float) -> str | None:
    """Why the engine's 16-bit masks cannot apply ``rate``, or None."""
    if not 0.0 <= rate or _threshold(rate) >= _UINT16_RANGE:
        return (
            f"has rate {rate}; the engine needs 0 <= rate < 1 - 2**-17, so that its 16-bit "
            f"threshold round(rate * {_UINT16_RANGE}) stays below {_UINT16_RANGE}"
        )
    return None


class Strata(NamedTuple):
    """What Latin hypercube masks need of a call whose rows come in blocks of
    STRATUM_BLOCK samples of one input: ``key`` (uint64 scalar) and ``block_ids``
    ``[R / 8]`` (int32), each block's input and place among its samples, unique in the
    call."""

    key: tf.Tensor
    block_ids: tf.Tensor


@dataclasses.dataclass(frozen=True)
class DropoutMask:
    """One dropout layer applied with our own masks. ``noise_shape`` excludes the
    row axis and may hold 1s where the mask is shared (SpatialDropout). With
    ``shared_by_inputs`` (Keras' noise shape with a leading 1) each Monte Carlo
    sample draws one mask, shared by all the inputs of that sample."""

    layer_name: str
    rate: float
    noise_shape: tuple[int | None, ...]
    alpha: bool
    shared_by_inputs: bool = False

    def __post_init__(self) -> None:
        reason = rate_refusal(self.rate)
        if reason:
            raise ValueError(f"dropout {self.layer_name!r} {reason}")

    @property
    def threshold(self) -> int:
        return _threshold(self.rate)

    @property
    def keep_probability(self) -> float:
        return 1.0 - self.threshold / _UINT16_RANGE

    def __call__(
        self, h: tf.Tensor, key: tf.Tensor, sample_index: tf.Tensor | None = None,
        strata: Strata | None = None,
    ) -> tf.Tensor:
        """``h`` ``[R, *shape]`` through dropout drawn with ``key`` (uint64 scalar).
        ``sample_index`` ``[R]`` (int32), the Monte Carlo sample of each row, is needed
        with ``shared_by_inputs``. With ``strata`` the rows' masks are Latin hypercubes
        (module docstring), unless the mask is shared by inputs."""
        uniforms = self._uniforms(tf.shape(h), key, sample_index)
        if strata is None or self.shared_by_inputs:
            keep = uniforms >= tf.constant(self.threshold, tf.uint16)
        else:
            keep = self._stratified_keep(uniforms, strata)
        if not self.alpha:
            return tf.where(keep, h * (1.0 / self.keep_probability), tf.zeros((), h.dtype))
        dropped_value = -_SELU_ALPHA * _SELU_SCALE
        drop_probability = 1.0 - self.keep_probability
        a = (self.keep_probability * (1 + drop_probability * dropped_value**2)) ** -0.5
        b = -a * dropped_value * drop_probability
        return a * tf.where(keep, h, tf.constant(dropped_value, h.dtype)) + b

    def _stratified_keep(self, uniforms: tf.Tensor, strata: Strata) -> tf.Tensor:
        """Bool ``[R, *mask_shape]`` from the rows' uint16 ``uniforms``, R a multiple of
        STRATUM_BLOCK whose consecutive groups of 8 are blocks: each unit takes one order of
        the 8 strata per block (one of 8!, from 32 hashed bits), which gives each row its
        stratum; the unit is kept when ``stratum * 65536 + uniform`` is at least 8 times the
        threshold, with probability exactly ``keep_probability``."""
        mask_shape = tf.shape(uniforms)[1:]
        words = tf.cast(random_uint16_rows(  # [R / 8, *mask_shape, 2]
            strata.key, strata.block_ids, tf.concat([mask_shape, [2]], 0)), tf.uint64)
        bits = tf.bitwise.bitwise_or(
            tf.bitwise.left_shift(words[..., 0], tf.constant(16, tf.uint64)), words[..., 1])
        order = tf.bitwise.right_shift(  # uniform on [0, 8!) to within 8! / 2**32
            bits * tf.constant(len(_STRATUM_ORDERS), tf.uint64), tf.constant(32, tf.uint64))
        packed = tf.gather(tf.constant(_STRATUM_ORDERS), tf.cast(order, tf.int32))
        rank = tf.rank(uniforms)
        shifts = tf.reshape(  # [1, 8, 1, ...]: the 3 bits of each position in the block
            tf.range(0, 3 * STRATUM_BLOCK, 3, dtype=tf.int32),
            tf.concat([[1, STRATUM_BLOCK], tf.ones([rank - 1], tf.int32)], 0))
        stratum = tf.reshape(  # [R / 8, 8, *mask_shape] -> [R, *mask_shape]
            tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[:, None], shifts), 7),
            tf.shape(uniforms))
        edge, within = divmod(self.threshold * STRATUM_BLOCK, _UINT16_RANGE)
        return (stratum > edge) | ((stratum == edge) & (uniforms >= within))

    def _uniforms(
        self, h_shape: tf.Tensor, key: tf.Tensor, sample_index: tf.Tensor | None
    ) -> tf.Tensor:
        """uint16 ``[R, *mask_shape]``: ``h``'s shape with the 1s of ``noise_shape``."""
        mask_shape = [
            1 if size == 1 else h_shape[axis + 1] for axis, size in enumerate(self.noise_shape)
        ]
        if not self.shared_by_inputs:
            return random_uint16(key, tf.stack([h_shape[0], *mask_shape]))
        if sample_index is None:
            raise ValueError(
                f"dropout {self.layer_name!r} draws one mask per sample: it needs sample_index"
            )
        return random_uint16_rows(key, sample_index, tf.stack(mask_shape))


class RowKeyedDropoutMask(DropoutMask):
    """A DropoutMask whose ``key`` is one uint64 key per row ``[R]``: row ``r``'s mask is
    drawn from its key, counted by its sample number ``sample_index[r]`` (``sample_keyed``)."""

    @classmethod
    def of(cls, mask: DropoutMask) -> RowKeyedDropoutMask:
        return cls(**{field.name: getattr(mask, field.name) for field in dataclasses.fields(mask)})

    def _uniforms(
        self, h_shape: tf.Tensor, key: tf.Tensor, sample_index: tf.Tensor | None
    ) -> tf.Tensor:
        if sample_index is None:
            raise ValueError(f"dropout {self.layer_name!r} keyed per row needs sample_index")
        mask_shape = [
            1 if size == 1 else h_shape[axis + 1] for axis, size in enumerate(self.noise_shape)
        ]
        return random_uint16_keyed_rows(key, sample_index, tf.stack(mask_shape))


def draw_strata(
    seed: int | None, n_steps: int, owners: np.ndarray, samples: np.ndarray, max_count: int
) -> Strata:
    """Strata (as numpy) for a call's rows ``[total]``: one key per dropout step, drawn
    from ``seed`` apart from the chunks' keys and the same in every chunk, and each
    row's block id (its input and sample // STRATUM_BLOCK), so that chunking changes
    nothing."""
    blocks_per_input = -(-int(max_count) // STRATUM_BLOCK)
    generator = np.random.default_rng(None if seed is None else (int(seed), STRATUM_BLOCK))
    return Strata(
        key=generator.integers(0, 2**64, size=n_steps, dtype=np.uint64),
        block_ids=(owners.astype(np.int64) * blocks_per_input + samples // STRATUM_BLOCK
                   ).astype(np.int32),
    )

