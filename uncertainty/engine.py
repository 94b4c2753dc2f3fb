"""Monte Carlo dropout engine: N stochastic forward passes folded into compiled calls.

The model is read as a linear chain of Keras layer applications (nested
Sequential and Functional models flattened; a layer called twice appears twice)
and split in two:

* the deterministic prefix, every layer before the first dropout layer with a
  non-zero rate, runs once per input row in inference mode;
* the stochastic suffix runs on the prefix output repeated once per Monte Carlo
  sample, with dropout on and every other layer (BatchNormalization included)
  in inference mode.

The engine samples Keras' Dropout, AlphaDropout and SpatialDropout layers, with
their ``noise_shape``. It refuses at construction, naming the layer, what it
cannot sample faithfully rather than run it with its noise off: other noise
layers, dropout inside another layer (a wrapper, a custom layer, a subclassed
model, an RNN's own dropout), rates its 16-bit masks cannot represent, a
``noise_shape`` without one entry per axis, and a model without active dropout.

Each call is padded to a row bucket (``_bucket``: padding adds at most a
quarter, and a call never exceeds ``max_rows_per_call``) whose programs are
compiled once, so requests never retrace. Small calls run the suffix as one XLA
program; large ones keep the matrix products in TensorFlow's oneDNN kernels and
make each dropout application a fused XLA program, the first of which also
expands the prefix output to one row per sample. Rows are chunked to bound
memory (``MAX_ROWS_PER_CALL``, ``MAX_BYTES_PER_CALL``).

Masks come from a counter-based generator (SplitMix64 over the element index,
keyed per chunk and per dropout application, by its position in the chain):
each 64-bit hash gives four 16-bit uniforms, which makes the masks cheap enough
not to dominate the matrix products. A dropout rate ``p`` is applied as the
16-bit threshold ``round(p * 65536)``, and kept units are scaled by the exact
inverse of the resulting keep probability, so the layer stays unbiased; the
rate differs from ``p`` by less than 1e-5.

A ``noise_shape`` whose batch entry is 1 makes one Keras call
``model(x, training=True)`` draw one mask for all rows of ``x``. A Monte Carlo
sample plays the part of that call here: such a layer draws one mask per
sample, shared by every input of the request (its key is the same in every
chunk, and the mask a function of the sample's number).

``sample(..., stratified=True)`` draws each input's samples as Latin hypercubes of
dropout masks, in blocks of ``STRATUM_BLOCK`` (8) consecutive samples: in a block,
each unit's eight samples take the eight strata of [0, 1) in a random order (one of
the 8! permutations, drawn per unit, block and input from a 32-bit hash), and a
sample's uniform is ``(stratum + u / 65536) / 8``. Every sample is still an exact
dropout sample, but a unit is dropped in a block as often as its rate says, give or
take one: on the default Fashion-MNIST model the mean of 8 samples varies 0.44x as
much as that of 8 independent ones (12 samples, a block and a half: 0.55x), at the
same cost (benchmarks/stratified.py). A block cut short (a count not a multiple of
8) takes distinct strata too, without covering them all (the engine draws whole
blocks and drops the samples past the count). Masks shared by the inputs of a sample
are drawn plainly. The strata are keyed by the input's place in the call and the
seed, not by the chunk, so chunking does not change them.

``sample_keyed`` keys the masks per input row instead of per call: row ``i``'s
masks are SplitMix64 streams of a key derived from ``row_seeds[i]`` (and the
dropout application), counted by the row's sample number, so its samples are a
pure function of ``x[i]`` and ``row_seeds[i]`` whatever else shares the call and
however the rows are chunked. Offline scoring (``scoring/``) derives each row's
seed from the run's seed and the row's id, so that any partitioning of a data set
gives the same result. Masks shared by the inputs of a sample (a leading 1 in
``noise_shape``) draw from ``seed`` alone, the same for every row of every call.

Shapes: ``x`` is ``[batch, *input_shape]``; ``sample`` returns probabilities
``[n_samples, batch, classes]``; ``sample_ragged`` returns one
``[n_samples_i, classes]`` array per input row.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional

#: Upper bound on the rows (input rows x samples) that one compiled call sees.
MAX_ROWS_PER_CALL = 8192
#: Calls of this many rows and more keep matrix products out of XLA (MCEngine._split_plan).
SPLIT_PLAN_ROWS = 2048
#: Rows of each call of ``sample_keyed``, fewer for wide models (MAX_BYTES_PER_CALL): on
#: this 2-core machine 512 rows ran at 0.56x and 0.79x of ``sample``'s rows/s (a Dense(64)
#: and a Dense(512, 512) model), 2048 at 0.93x and 0.94x, 8192 at 0.94x and 0.72x.
KEYED_BLOCK_ROWS = 2048
#: Samples of one Latin hypercube of masks (``sample(..., stratified=True)``): its 8! orders
#: fit one lookup table.
STRATUM_BLOCK = 8
#: Upper bound on the memory of the widest activation of one call, in bytes.
MAX_BYTES_PER_CALL = 128 * 2**20

_UINT16_RANGE = 65536
#: Every order of a block's strata ``[8!]``, packed: position p's stratum in bits 3p to 3p + 2.
_STRATUM_ORDERS = (
    np.array(list(itertools.permutations(range(STRATUM_BLOCK))), np.int32)
    << np.arange(0, 3 * STRATUM_BLOCK, 3, dtype=np.int32)
).sum(axis=1, dtype=np.int32)
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_SPLITMIX_SHIFTS = (30, 27, 31)
# SELU constants, as in keras.layers.AlphaDropout.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

_MC_LAYER_TYPES = (keras.layers.Dropout, keras.layers.AlphaDropout)  # SpatialDropout included
# The calls whose dropout the engine reproduces: a subclass that overrides call may do
# anything else with its rate.
_SAMPLED_CALLS = (
    keras.layers.Dropout.call,
    keras.layers.AlphaDropout.call,
    keras.layers.SpatialDropout1D.call,  # shared by SpatialDropout2D and 3D
)
_UNSAMPLEABLE_LAYER_TYPES = (keras.layers.GaussianNoise, keras.layers.GaussianDropout)
#: Guards the first compilation of an engine's programs built on first use.
_COMPILE_LOCK = threading.Lock()


def configure_tensorflow_threads(intra_op_threads: int | None = None) -> None:
    """Use one inter-op thread and all cores inside ops: the fastest setting for
    this engine's short chains of large ops. Takes effect only before TensorFlow
    runs its first op; later calls leave the threads as they are."""
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads or 0)
    except RuntimeError:  # already initialised (a process that trained, say)
        pass


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
        key + tf.cast(counters, tf.uint64) * tf.constant(_SPLITMIX_GAMMA, tf.uint64)
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


def _random_uint16_rows(key: tf.Tensor, row_ids: tf.Tensor, row_shape: tf.Tensor) -> tf.Tensor:
    """Uniform uint16 values ``[len(row_ids), *row_shape]`` in which row ``r`` is a pure
    function of ``key`` and ``row_ids[r]`` (int32): rows with equal ids are equal."""
    row_size = tf.reduce_prod(row_shape)
    words_per_row = tf.cast((row_size + 3) // 4, tf.int64)
    counters = (  # [rows, words_per_row]
        tf.cast(row_ids, tf.int64)[:, None] * words_per_row
        + tf.range(1, words_per_row + 1, dtype=tf.int64)
    )
    n_rows = tf.shape(row_ids)[:1]
    values = tf.reshape(tf.bitcast(_hashes(key, counters), tf.uint16), tf.concat([n_rows, [-1]], 0))
    return tf.reshape(values[:, :row_size], tf.concat([n_rows, row_shape], 0))


def _random_uint16_keyed_rows(
    row_keys: tf.Tensor, row_counters: tf.Tensor, row_shape: tf.Tensor
) -> tf.Tensor:
    """Uniform uint16 values ``[R, *row_shape]`` in which row ``r`` is a pure function of
    its own key ``row_keys[r]`` (uint64) and counter ``row_counters[r]`` (int32): the
    words ``splitmix64(key + (counter * words_per_row + j + 1) * gamma)``, ``j`` from 0.
    With every key equal this is ``_random_uint16_rows`` of the counters."""
    row_size = tf.reduce_prod(row_shape)
    words_per_row = tf.cast((row_size + 3) // 4, tf.int64)
    counters = (  # [rows, words_per_row]
        tf.cast(row_counters, tf.int64)[:, None] * words_per_row
        + tf.range(1, words_per_row + 1, dtype=tf.int64)
    )
    n_rows = tf.shape(row_counters)[:1]
    hashes = _splitmix64(
        row_keys[:, None] + tf.cast(counters, tf.uint64) * tf.constant(_SPLITMIX_GAMMA, tf.uint64)
    )
    values = tf.reshape(tf.bitcast(hashes, tf.uint16), tf.concat([n_rows, [-1]], 0))
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


def _threshold(rate: float) -> int:
    """The 16-bit threshold that applies ``rate``: uniforms below it drop their unit."""
    return round(rate * _UINT16_RANGE)


def _rate_refusal(rate: float) -> str | None:
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
        reason = _rate_refusal(self.rate)
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
        words = tf.cast(_random_uint16_rows(  # [R / 8, *mask_shape, 2]
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
        return _random_uint16_rows(key, sample_index, tf.stack(mask_shape))


class _RowKeyedDropoutMask(DropoutMask):
    """A DropoutMask whose ``key`` is one uint64 key per row ``[R]``: row ``r``'s mask is
    drawn from its key, counted by its sample number ``sample_index[r]`` (``sample_keyed``)."""

    @classmethod
    def of(cls, mask: DropoutMask) -> _RowKeyedDropoutMask:
        return cls(**{field.name: getattr(mask, field.name) for field in dataclasses.fields(mask)})

    def _uniforms(
        self, h_shape: tf.Tensor, key: tf.Tensor, sample_index: tf.Tensor | None
    ) -> tf.Tensor:
        if sample_index is None:
            raise ValueError(f"dropout {self.layer_name!r} keyed per row needs sample_index")
        mask_shape = [
            1 if size == 1 else h_shape[axis + 1] for axis, size in enumerate(self.noise_shape)
        ]
        return _random_uint16_keyed_rows(key, sample_index, tf.stack(mask_shape))


@dataclasses.dataclass(frozen=True)
class _Link:
    """One application of a layer in the chain: a layer called twice gives two links."""

    layer: keras.layers.Layer
    output_shape: tuple[int | None, ...]  # of one row: without the batch axis


def _graph(layer: keras.layers.Layer) -> Functional | None:
    """The graph of a Sequential or Functional model, in which the engine can follow
    the layers in call order; None for other layers, a subclassed model's ``call``
    being as opaque as a custom layer's. None also for a Sequential not yet built."""
    if type(layer).call is keras.Sequential.call:
        return layer._functional
    if type(layer).call is Functional.call:
        return layer
    return None


def _layer_chain(model: keras.Model) -> list[_Link]:
    """The model's layer applications in call order, nested Sequential and Functional
    models flattened.

    Raises ValueError, naming the layer, when the model is not a linear chain.
    """
    graph = _graph(model)
    if graph is None:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) must be a built Sequential or "
            "Functional model: the engine follows their layers in call order"
        )
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"model {model.name!r} must have one input and one output")
    chain: list[_Link] = []
    for link in _functional_chain(graph):
        chain.extend(_layer_chain(link.layer) if _graph(link.layer) is not None else [link])
    return chain


def _functional_chain(model: Functional) -> list[_Link]:
    """A Functional model's layer applications, input to output, when each takes the
    previous one's output. Keras keeps the model's own graph in ``_nodes_by_depth`` (a
    layer's ``input`` may belong to another model that reused it)."""
    links, previous = [], None
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes = model._nodes_by_depth[depth]
        node = nodes[0]
        parents = node.parent_nodes
        if len(nodes) != 1 or (previous is not None and parents != [previous]):
            name = next((n.operation.name for n in nodes if n.parent_nodes != [previous]),
                        node.operation.name)
            raise ValueError(
                f"layer {name!r} does not take the previous layer's output: the engine runs "
                "linear chains of layers only"
            )
        if not isinstance(node.operation, keras.layers.InputLayer):
            links.append(_Link(node.operation, tuple(node.outputs[0].shape[1:])))
        previous = node
    return links


def _check_chain(chain: list[_Link], model_name: str) -> None:
    """Raise ValueError, naming the layer, unless the engine can sample ``chain``."""
    for link in chain:
        reason = _refusal(link.layer)
        if reason:
            raise ValueError(f"layer {link.layer.name!r} ({type(link.layer).__name__}) {reason}")
    if not chain or not _ends_in_softmax(chain[-1].layer):
        last = chain[-1].layer.name if chain else model_name
        raise ValueError(
            f"layer {last!r} must end the model with a softmax: the engine averages "
            "probabilities"
        )
    if not any(_is_active_dropout(link.layer) for link in chain):
        raise ValueError(
            f"model {model_name!r} has no active dropout to sample: no Dropout, AlphaDropout "
            "or SpatialDropout layer with a non-zero rate"
        )


def _refusal(layer: keras.layers.Layer) -> str | None:
    """Why the engine cannot run ``layer`` faithfully, or None."""
    if isinstance(layer, _MC_LAYER_TYPES):
        if type(layer).call not in _SAMPLED_CALLS:
            return (
                "overrides call: the engine samples only Keras' own dropout layers (use "
                "keras.layers.Dropout; the engine turns it on itself)"
            )
        return _rate_refusal(layer.rate)
    reason = _noise_refusal(layer)
    if reason:
        return reason
    for inner in layer._flatten_layers(include_self=False):
        if _is_active_dropout(inner) or _noise_refusal(inner):
            return (
                f"holds the stochastic layer {inner.name!r} ({type(inner).__name__}): the "
                "engine samples dropout layers of the model's own chain only"
            )
    return None


def _noise_refusal(layer: keras.layers.Layer) -> str | None:
    """Why ``layer``'s own noise, other than a dropout layer's, cannot be sampled, or None."""
    if isinstance(layer, _UNSAMPLEABLE_LAYER_TYPES):
        return "adds noise the engine cannot sample (use Dropout, AlphaDropout or SpatialDropout)"
    for attribute in ("dropout", "recurrent_dropout"):
        value = getattr(layer, attribute, 0)
        if isinstance(value, int | float) and value > 0:
            return f"has internal {attribute}={value}, which the engine cannot sample"
    return None


def _ends_in_softmax(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        getattr(layer, "activation", None) is keras.activations.softmax
    )


def _is_active_dropout(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, _MC_LAYER_TYPES) and layer.rate > 0


@dataclasses.dataclass(frozen=True)
class _SuffixDropout:
    """An active dropout application of the suffix. ``key_index`` is its position among
    the suffix's dropout applications: the column of a call's keys that draws its
    masks, so that no two applications share a mask."""

    mask: DropoutMask
    key_index: int

    def __call__(
        self, h: tf.Tensor, keys: tf.Tensor, sample_index: tf.Tensor | None,
        strata: Strata | None = None,
    ) -> tf.Tensor:
        """h ``[R, ...]``, keys ``[dropout steps]``, sample_index ``[R]`` or None; strata
        with one key per dropout step ``[dropout steps]``, or None."""
        if strata is not None:
            strata = strata._replace(key=strata.key[self.key_index])
        return self.mask(h, keys[self.key_index], sample_index, strata)


_SuffixStep = keras.layers.Layer | _SuffixDropout
#: A compiled call's body: (x, row_index, keys, sample_index or None, strata or None)
#: -> probabilities.
_Plan = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None, Strata | None], tf.Tensor]


def _suffix_steps(links: Sequence[_Link]) -> list[_SuffixStep]:
    """The suffix's layers, each active dropout application replaced by our mask."""
    steps: list[_SuffixStep] = []
    n_dropout = 0
    for link in links:
        if _is_active_dropout(link.layer):
            steps.append(_SuffixDropout(_dropout_mask(link), key_index=n_dropout))
            n_dropout += 1
        else:
            steps.append(link.layer)
    return steps


def _dropout_mask(link: _Link) -> DropoutMask:
    """Our mask for an active dropout application, with Keras' noise shape."""
    layer = link.layer
    noise_shape = _keras_noise_shape(link)
    if len(noise_shape) != len(link.output_shape) + 1 or any(
        size not in (None, 1, axis_size)
        for size, axis_size in zip(noise_shape[1:], link.output_shape, strict=True)
    ):
        # Keras fills a shorter noise_shape's Nones from the left but broadcasts it from the right
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) has noise_shape {noise_shape}; the "
            f"engine needs one entry per axis of its input {(None, *link.output_shape)}, each "
            "None, 1 or the axis's size"
        )
    return DropoutMask(
        layer_name=layer.name,
        rate=float(layer.rate),
        noise_shape=tuple(noise_shape[1:]),
        alpha=isinstance(layer, keras.layers.AlphaDropout),
        shared_by_inputs=noise_shape[0] == 1,
    )


def _keras_noise_shape(link: _Link) -> tuple[int | None, ...]:
    """The layer's noise shape, batch axis first, None where the mask takes the input's size."""
    layer = link.layer
    if hasattr(layer, "_get_noise_shape"):  # SpatialDropout1D/2D/3D
        return tuple(layer._get_noise_shape(keras.KerasTensor((None, *link.output_shape))))
    if layer.noise_shape is not None:
        return tuple(layer.noise_shape)
    return (None,) * (len(link.output_shape) + 1)


def _run_suffix(
    h: tf.Tensor,
    steps: Sequence[_SuffixStep],
    apply_dropout: Callable[[_SuffixDropout, tf.Tensor], tf.Tensor],
) -> tf.Tensor:
    """``h`` ``[R, ...]`` through ``steps``: layers in inference mode, dropout
    applications through ``apply_dropout(step, h)``."""
    for step in steps:
        if isinstance(step, _SuffixDropout):
            h = apply_dropout(step, h)
        else:
            h = step(h, training=False)
    return h


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Expanded rows ``[start, stop)`` of one call; they belong to input rows
    ``[first_input, last_input]``."""

    start: int
    stop: int
    first_input: int
    last_input: int


class MCEngine:
    """Monte Carlo dropout sampler for a Keras 3 model made of a linear chain of layers.

    >>> engine = MCEngine(model)
    >>> probabilities = engine.sample(x, n_samples=30, seed=7)  # [30, batch, classes]

    Calls are thread-safe. ``max_rows_per_call`` bounds the rows (input rows x
    samples) of one compiled call, padding included: it is rounded down to a row
    bucket. By default it is ``MAX_ROWS_PER_CALL``, lowered so that the widest
    activation of a call stays under ``MAX_BYTES_PER_CALL``.
    """

    def __init__(self, model: keras.Model, max_rows_per_call: int | None = None) -> None:
        chain = _layer_chain(model)
        _check_chain(chain, model.name)
        self.input_shape: tuple[int, ...] = tuple(model.inputs[0].shape[1:])
        self.num_classes: int = int(model.outputs[0].shape[-1])
        split = next(i for i, link in enumerate(chain) if _is_active_dropout(link.layer))
        #: Layers before the first dropout layer with a non-zero rate: run once per input.
        self.prefix_layers: list[keras.layers.Layer] = [link.layer for link in chain[:split]]
        #: The rest, starting with a dropout application: run once per sample.
        self._suffix = _suffix_steps(chain[split:])
        self._dropout_steps = [step for step in self._suffix if isinstance(step, _SuffixDropout)]
        #: Per dropout step, whether each sample draws one mask for all inputs.
        self._shared_by_inputs = np.array(
            [step.mask.shared_by_inputs for step in self._dropout_steps], dtype=bool
        )
        #: Whether calls take each row's sample number (``_compile``).
        self._sample_indexed = bool(self._shared_by_inputs.any())
        if max_rows_per_call is not None:
            _check_count(max_rows_per_call, "max_rows_per_call")
        rows_in_memory = _default_max_rows(chain[split:])
        self.max_rows_per_call = _largest_bucket_at_most(
            int(max_rows_per_call or rows_in_memory)
        )
        #: Rows of every ``sample_keyed`` call (a model's own: never max_rows_per_call).
        self._keyed_block_rows = min(KEYED_BLOCK_ROWS, rows_in_memory)
        #: "fused" or "split" -> its compiled call (``_call`` picks by the call's rows); the
        #: stratified ones (``_stratified_forward``) are built on first use
        self._forwards = {plan: self._compile(plan_body)
                          for plan, plan_body in (("fused", self._fused_plan()),
                                                  ("split", self._split_plan()))}
        self._stratified_forwards: dict[str, tf.types.experimental.ConcreteFunction] = {}

    def _compile(
        self, plan: _Plan, stratified: bool = False
    ) -> tf.types.experimental.ConcreteFunction:
        """``plan`` as one compiled call of x ``[B, *input_shape]``, row_index ``[R]``
        (each row's input, a row of x), keys ``[dropout steps]``, only when
        ``_sample_indexed`` (it costs a small call a few percent) sample_index ``[R]``
        (each row's sample of its input), and when ``stratified`` the Strata: keys
        ``[dropout steps]`` and block ids ``[R / 8]``."""
        x = tf.TensorSpec([None, *self.input_shape], tf.float32)
        per_row = tf.TensorSpec([None], tf.int32)
        keys = tf.TensorSpec([len(self._dropout_steps)], tf.uint64)
        sample_indexed = self._sample_indexed
        signature = [x, per_row, keys] + [per_row] * sample_indexed
        if stratified:
            signature += [keys, per_row]

        def call(x, row_index, keys, *rest):
            sample_index = rest[0] if sample_indexed else None
            strata = Strata(*rest[sample_indexed:]) if stratified else None
            return plan(x, row_index, keys, sample_index, strata)

        return _compiled(call, input_signature=signature).get_concrete_function()

    def _prefix(self, x: tf.Tensor) -> tf.Tensor:
        """x ``[B, *input_shape]`` -> ``[B, *prefix_output_shape]``, in inference mode."""
        for layer in self.prefix_layers:
            x = layer(x, training=False)
        return x

    def _fused_plan(self) -> _Plan:
        """The plan for small calls: the suffix as one XLA program (one launch)."""

        def suffix(rows: tf.Tensor, keys: tf.Tensor, sample_index: tf.Tensor | None,
                   strata: Strata | None) -> tf.Tensor:
            # rows [R, *prefix_output_shape] -> [R, classes]
            return _run_suffix(
                rows, self._suffix, lambda step, h: step(h, keys, sample_index, strata))

        compiled_suffix = _compiled(suffix, jit_compile=True)

        def plan(x, row_index, keys, sample_index, strata):
            return compiled_suffix(tf.gather(self._prefix(x), row_index), keys, sample_index,
                                   strata)

        return plan

    def _split_plan(self) -> _Plan:
        """The plan for large calls (``SPLIT_PLAN_ROWS`` rows and more): the draws of the
        fused plan, but the matrix products stay in TensorFlow's oneDNN kernels, faster
        than XLA's at this size, and each dropout application is an XLA program. The
        first also expands the prefix output to one row per sample, so that the
        expanded rows are written once, already masked."""
        run_suffix = self._split_suffix(self._suffix)

        def plan(x, row_index, keys, sample_index, strata):
            # B is a power of two here (see _call): one XLA program per B and R
            return run_suffix(self._prefix(x), row_index, keys, sample_index, strata)

        return plan

    def _split_suffix(self, suffix: Sequence[_SuffixStep]):
        """The split plan's programs over ``suffix`` (which starts with a dropout), as
        (prefix output ``[B, ...]``, row_index ``[R]``, keys, sample_index) ->
        ``[R, classes]``; keys as the suffix's masks take them."""
        first, rest = suffix[0], suffix[1:]
        expand_and_drop = _compiled(
            lambda prefix_output, row_index, keys, sample_index, strata: first(
                tf.gather(prefix_output, row_index), keys, sample_index, strata
            ),
            jit_compile=True,
        )
        dropout_programs = {
            step.key_index: _compiled(step.__call__, jit_compile=True)
            for step in rest
            if isinstance(step, _SuffixDropout)
        }

        def run(prefix_output, row_index, keys, sample_index, strata):
            h = expand_and_drop(prefix_output, row_index, keys, sample_index, strata)
            return _run_suffix(  # h [R, ...]
                h, rest, lambda step, h: dropout_programs[step.key_index](
                    h, keys, sample_index, strata)
            )

        return run

    def sample(
        self, x: np.ndarray, n_samples: int, seed: int | None = None, stratified: bool = False
    ) -> np.ndarray:
        """Probabilities ``[n_samples, batch, classes]`` for ``x`` ``[batch, *input_shape]``.

        The same ``seed`` and ``x`` give bit-identical samples; no seed, fresh ones.
        ``stratified``: each input's samples are Latin hypercubes of masks, in blocks of
        STRATUM_BLOCK (the module docstring says how).
        """
        _check_count(n_samples, "n_samples")
        x = self._check_input(x)
        counts = np.full(len(x), n_samples, dtype=np.int64)
        # [batch * n_samples, classes], input-row major
        rows = self._run(x, counts, seed, stratified)
        return np.ascontiguousarray(
            rows.reshape(len(x), n_samples, self.num_classes).transpose(1, 0, 2)
        )

    def sample_ragged(
        self, x: np.ndarray, n_samples_per_row: Sequence[int], seed: int | None = None,
        stratified: bool = False,
    ) -> list[np.ndarray]:
        """One ``[n_samples_per_row[i], classes]`` array per row of ``x``, drawn together;
        ``stratified`` as in ``sample``."""
        x = self._check_input(x)
        counts = np.asarray(n_samples_per_row)
        if counts.shape != (len(x),):
            raise ValueError(
                f"n_samples_per_row must hold one count per row of x ({len(x)}), got shape "
                f"{list(counts.shape)}"
            )
        for count in counts.tolist():
            _check_count(count, "n_samples_per_row")
        rows = self._run(x, counts.astype(np.int64), seed, stratified)
        return np.split(rows, np.cumsum(counts)[:-1])

    def sample_keyed(
        self, x: np.ndarray, n_samples: int, row_seeds: np.ndarray, seed: int = 0
    ) -> np.ndarray:
        """Probabilities ``[n_samples, batch, classes]`` for ``x`` ``[batch, *input_shape]``,
        each row keyed by its own seed: row ``i``'s samples are a pure function of
        ``x[i]``, ``row_seeds[i]`` (``[batch]``, uint64) and ``seed``, whichever rows share
        the call and however it is chunked, and its first ``k`` samples do not depend on
        ``n_samples``. ``seed`` (a non-negative integer) keys only the dropout layers that
        draw one mask per sample for all inputs (a leading 1 in ``noise_shape``): every row
        of every call with that seed shares them, as the rows of one request do in
        ``sample``. Every call has one shape (``_keyed_forward`` says why), whatever
        ``max_rows_per_call``; tests check that a row's bits do not depend on its call."""
        _check_count(n_samples, "n_samples")
        x = self._check_input(x)
        input_keys = self.row_keys(row_seeds, seed, len(x))  # [batch, dropout steps]
        counts = np.full(len(x), n_samples, dtype=np.int64)
        rows = self._run_keyed(x, counts, input_keys)  # [batch * n_samples, classes]
        return np.ascontiguousarray(
            rows.reshape(len(x), n_samples, self.num_classes).transpose(1, 0, 2)
        )

    def row_keys(self, row_seeds: np.ndarray, seed: int, batch: int) -> np.ndarray:
        """uint64 keys ``[batch, dropout steps]`` of ``sample_keyed``: per row and dropout
        step ``splitmix64(splitmix64(row_seed) + (step + 1) * gamma)``; the steps whose
        mask is shared by the inputs of a sample take keys drawn from ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        seeds = np.asarray(row_seeds)
        if seeds.shape != (batch,) or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(
                f"row_seeds must hold one integer per row of x ({batch}), got shape "
                f"{list(seeds.shape)} of {seeds.dtype}"
            )
        steps = np.arange(1, len(self._dropout_steps) + 1, dtype=np.uint64)
        base = splitmix64_numpy(seeds.astype(np.uint64))
        with np.errstate(over="ignore"):
            keys = splitmix64_numpy(base[:, None] + steps[None, :] * np.uint64(_SPLITMIX_GAMMA))
        shared = np.random.default_rng(seed).integers(
            0, 2**64, size=len(steps), dtype=np.uint64
        )
        keys[:, self._shared_by_inputs] = shared[self._shared_by_inputs]
        return keys

    def _keyed_forward(self) -> tf.types.experimental.ConcreteFunction:
        """The compiled call of ``sample_keyed``, built on first use: the whole model, prefix
        included, as one XLA program of one shape, ``_keyed_block_rows`` rows and as many
        inputs. A row's result then cannot depend on the call's other rows or its size:
        neither oneDNN's nor XLA's matrix products keep a row's bits across row counts on
        every CPU (on an AMD EPYC with AVX2 both change its last bits with the count)."""
        forward = getattr(self, "_keyed_block_forward", None)
        if forward is None:
            with _COMPILE_LOCK:
                forward = getattr(self, "_keyed_block_forward", None)
                if forward is None:
                    suffix = [
                        _SuffixDropout(_RowKeyedDropoutMask.of(step.mask), step.key_index)
                        if isinstance(step, _SuffixDropout) else step
                        for step in self._suffix
                    ]

                    def plan(x, row_index, input_keys, sample_index):
                        keys = tf.transpose(tf.gather(input_keys, row_index))  # [steps, R]
                        rows = tf.gather(self._prefix(x), row_index)
                        return _run_suffix(
                            rows, suffix, lambda step, h: step(h, keys, sample_index))

                    block = self._keyed_block_rows
                    signature = [
                        tf.TensorSpec([block, *self.input_shape], tf.float32),  # x, padded
                        tf.TensorSpec([block], tf.int32),  # row_index [R]
                        tf.TensorSpec([block, len(self._dropout_steps)], tf.uint64),  # [B, steps]
                        tf.TensorSpec([block], tf.int32),  # sample_index [R]
                    ]
                    forward = _compiled(
                        plan, jit_compile=True, input_signature=signature
                    ).get_concrete_function()
                    self._keyed_block_forward = forward
        return forward

    def _run_keyed(self, x: np.ndarray, counts: np.ndarray, input_keys: np.ndarray) -> np.ndarray:
        """``counts[i]`` samples of each input row, keyed by ``input_keys`` ``[batch,
        dropout steps]``, in calls of ``_keyed_block_rows`` rows (the last one padded)."""
        forward = self._keyed_forward()
        block = self._keyed_block_rows
        owners = np.repeat(np.arange(len(x), dtype=np.int32), counts)
        samples = _sample_numbers(counts)
        outputs = []
        for chunk in _plan_chunks(owners, block):
            rows = slice(chunk.start, chunk.stop)
            inputs = slice(chunk.first_input, chunk.last_input + 1)
            arguments = (x[inputs], owners[rows] - chunk.first_input, input_keys[inputs],
                         samples[rows])
            probabilities = forward(
                *(tf.constant(_filled(argument, block)) for argument in arguments)).numpy()
            outputs.append(probabilities[: chunk.stop - chunk.start])
        return np.concatenate(outputs)

    def warm_up(self, n_samples: int, max_batch: int) -> None:
        """Compile now, not on first use, the programs that calls of up to
        ``max_batch * n_samples`` rows need: every small-call bucket, whatever the
        mix of sample counts, and the large-call programs of 1 to ``max_batch``
        rows at ``n_samples``. Each new program takes a fraction of a second."""
        keys = np.zeros(len(self._dropout_steps), np.uint64)
        one_row = np.zeros((1, *self.input_shape), np.float32)
        max_rows = min(max_batch * n_samples, self.max_rows_per_call)
        rows = 1
        while rows < SPLIT_PLAN_ROWS and rows <= _bucket(max_rows):
            indices = np.zeros(rows, np.int32)
            self._call(one_row, [indices] * (1 + self._sample_indexed), [keys])
            rows = _bucket(rows + 1)
        compiled = set()
        x = np.zeros((max_batch, *self.input_shape), np.float32)
        for batch in range(1, max_batch + 1):
            owners = np.repeat(np.arange(batch, dtype=np.int32), n_samples)
            programs = {_program(c) for c in _plan_chunks(owners, self.max_rows_per_call)}
            programs = {program for program in programs if program[1]}  # split plan only
            if not programs <= compiled:
                self.sample(x[:batch], n_samples, seed=0)
                compiled |= programs

    def warm_up_stratified(self) -> None:
        """Compile now the programs of stratified calls of fewer than SPLIT_PLAN_ROWS rows:
        one per bucket of whole blocks of STRATUM_BLOCK rows (the sizes of the rounds of
        n_samples "auto"), so that no request waits for a compilation."""
        rows = STRATUM_BLOCK
        while rows < SPLIT_PLAN_ROWS and rows <= self.max_rows_per_call:
            x = np.zeros((rows // STRATUM_BLOCK, *self.input_shape), np.float32)
            self.sample(x, STRATUM_BLOCK, seed=0, stratified=True)
            rows = _bucket(rows + STRATUM_BLOCK)

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"x must have shape [batch, {', '.join(map(str, self.input_shape))}], "
                f"got {list(x.shape)}"
            )
        if len(x) == 0:
            raise ValueError("x must hold at least one row")
        return x

    def _run(
        self, x: np.ndarray, counts: np.ndarray, seed: int | None, stratified: bool = False
    ) -> np.ndarray:
        """Probabilities ``[sum(counts), classes]``: ``counts[i]`` rows for input ``i``.
        ``stratified``: Latin hypercube masks; each input then draws its count rounded up
        to whole blocks of STRATUM_BLOCK, in calls that hold whole blocks, and the
        samples past its count are dropped."""
        drawn = -(-counts // STRATUM_BLOCK) * STRATUM_BLOCK if stratified else counts
        owners = np.repeat(np.arange(len(x), dtype=np.int32), drawn)  # [total] input row
        # [total] sample of that input, when a call needs it
        samples = _sample_numbers(drawn) if stratified or self._sample_indexed else None
        if stratified and self.max_rows_per_call % STRATUM_BLOCK:
            raise ValueError(f"stratified sampling needs calls of a multiple of "
                             f"{STRATUM_BLOCK} rows, got {self.max_rows_per_call}")
        chunks = _plan_chunks(owners, self.max_rows_per_call)
        keys = _chunk_keys(seed, len(chunks), self._shared_by_inputs)  # [chunks, steps]
        if stratified:
            strata = _strata(seed, len(self._dropout_steps), owners, samples, drawn.max())
        outputs = []
        for chunk, chunk_keys in zip(chunks, keys, strict=True):
            rows = slice(chunk.start, chunk.stop)
            per_row = [_padded(owners[rows] - chunk.first_input)]
            if self._sample_indexed:
                per_row.append(_padded(samples[rows]))
            arguments = [chunk_keys]
            if stratified:  # R is a multiple of 8 (so is its bucket): one id per block
                blocks = strata.block_ids[rows][::STRATUM_BLOCK]
                arguments += [strata.key, _filled(blocks, len(per_row[0]) // STRATUM_BLOCK)]
            inputs = x[chunk.first_input : chunk.last_input + 1]
            probabilities = self._call(inputs, per_row, arguments, stratified)
            outputs.append(probabilities[: chunk.stop - chunk.start])
        rows = np.concatenate(outputs)
        return rows[samples < counts[owners]] if stratified else rows

    def _call(
        self, x: np.ndarray, per_row: list[np.ndarray], arguments: list[np.ndarray],
        stratified: bool = False,
    ) -> np.ndarray:
        """One compiled call (``_compile``) -> probabilities ``[R, classes]``: ``per_row``
        the row index and (when ``_sample_indexed``) the sample index, R a bucket size;
        ``arguments`` the keys and, ``stratified``, the strata fields."""
        row_index, *sample_index = per_row
        plan = "fused" if len(row_index) < SPLIT_PLAN_ROWS else "split"
        if plan == "split":
            padding = (1 << (len(x) - 1).bit_length()) - len(x)  # B to a power of two
            x = np.concatenate([x, np.zeros((padding, *x.shape[1:]), x.dtype)])
        forward = self._stratified_forward(plan) if stratified else self._forwards[plan]
        keys, *strata = arguments
        values = [x, row_index, keys, *sample_index, *strata]
        return forward(*(tf.constant(value) for value in values)).numpy()

    def _stratified_forward(self, plan: str) -> tf.types.experimental.ConcreteFunction:
        """The stratified compiled call of ``plan`` ("fused" or "split"), built on first use."""
        forward = self._stratified_forwards.get(plan)
        if forward is None:
            with _COMPILE_LOCK:
                if plan not in self._stratified_forwards:
                    body = self._fused_plan() if plan == "fused" else self._split_plan()
                    self._stratified_forwards[plan] = self._compile(body, stratified=True)
                forward = self._stratified_forwards[plan]
        return forward


def _compiled(function=None, **options):
    """tf.function without AutoGraph: these functions have no tensor-dependent
    Python control flow to convert."""
    if function is None:
        return lambda f: tf.function(f, autograph=False, **options)
    return tf.function(function, autograph=False, **options)


def _default_max_rows(suffix: Sequence[_Link]) -> int:
    widest = max((math.prod(link.output_shape) for link in suffix), default=1)
    by_memory = max(1, MAX_BYTES_PER_CALL // (4 * widest))
    return min(MAX_ROWS_PER_CALL, 2 ** int(math.log2(by_memory)))


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _bucket(rows: int) -> int:
    """The padded row count of a call: a power of two up to 8, then 4, 5, 6 or 7 times
    a power of two, so that padding adds at most a quarter. Each bucket is one XLA
    program, compiled on first use."""
    if rows <= 8:
        return 1 << max(0, rows - 1).bit_length()
    step = 1 << ((rows - 1).bit_length() - 3)
    return -(-rows // step) * step


def _largest_bucket_at_most(rows: int) -> int:
    """The largest bucket size (``_bucket``) not above ``rows``: calls of at most that
    many rows stay within ``rows`` once padded."""
    if rows <= 8:
        return 1 << (rows.bit_length() - 1)
    step = 1 << ((rows - 1).bit_length() - 3)
    return rows // step * step


def _filled(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` ``[n, ...]`` to ``[rows, ...]`` (n <= rows), repeating its last row."""
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


def _padded(indices: np.ndarray) -> np.ndarray:
    """int32 ``indices`` ``[n]`` to their bucket ``[_bucket(n)]``, repeating the last."""
    return _filled(np.asarray(indices, dtype=np.int32), _bucket(len(indices)))


def _program(chunk: _Chunk) -> tuple[int, int]:
    """Which compiled program runs ``chunk``: its row bucket, and for the split plan
    its input rows padded to a power of two (0 for the fused plan)."""
    rows = _bucket(chunk.stop - chunk.start)
    if rows < SPLIT_PLAN_ROWS:
        return rows, 0
    return rows, 1 << (chunk.last_input - chunk.first_input).bit_length()


def _plan_chunks(owners: np.ndarray, max_rows: int) -> list[_Chunk]:
    """Split expanded rows (``owners[i]`` is the input row of row ``i``) into calls of
    at most ``max_rows``, a bucket size. Padding the last call to its bucket costs
    less than a further call would."""
    chunks = []
    for start in range(0, len(owners), max_rows):
        stop = min(start + max_rows, len(owners))
        chunks.append(_Chunk(start, stop, int(owners[start]), int(owners[stop - 1])))
    return chunks


def _sample_numbers(counts: np.ndarray) -> np.ndarray:
    """int32 ``[sum(counts)]``: ``0 .. counts[i] - 1`` for each input ``i`` in turn."""
    starts = np.cumsum(counts) - counts
    return (np.arange(counts.sum()) - np.repeat(starts, counts)).astype(np.int32)


def _strata(
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


def _chunk_keys(seed: int | None, n_chunks: int, shared_by_inputs: np.ndarray) -> np.ndarray:
    """uint64 keys ``[n_chunks, len(shared_by_inputs)]``, one column per dropout step: a
    pure function of ``seed``, fresh when None. A step whose mask is shared by the
    inputs of a sample keeps its first chunk's key in every chunk, so that a sample
    split across chunks still has one mask."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
    ):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    generator = np.random.default_rng(seed)
    keys = generator.integers(0, 2**64, size=(n_chunks, len(shared_by_inputs)), dtype=np.uint64)
    keys[:, shared_by_inputs] = keys[0, shared_by_inputs]
    return keys
