"""Monte Carlo dropout engine: N stochastic forward passes folded into compiled calls.

The model is read as a linear chain of Keras layers and split in two:

* the deterministic prefix, every layer before the first dropout layer with a
  non-zero rate, runs once per input row in inference mode;
* the stochastic suffix runs on the prefix output repeated once per Monte Carlo
  sample, with dropout on and every other layer (BatchNormalization included)
  in inference mode.

Each call is padded to a row bucket (``_bucket``: padding adds at most a
quarter) whose programs are compiled once, so requests never retrace. Small
calls run the suffix as one XLA program; large ones keep the matrix products in
TensorFlow's oneDNN kernels and make each dropout layer a fused XLA program,
the first of which also expands the prefix output to one row per sample.
Rows are chunked to bound memory (``MAX_ROWS_PER_CALL``, ``MAX_BYTES_PER_CALL``).

Masks come from a counter-based
generator (SplitMix64 over the element index, keyed per chunk and per layer):
each 64-bit hash gives four 16-bit uniforms, which makes the masks cheap enough
not to dominate the matrix products. A dropout rate ``p`` is applied as the
16-bit threshold ``round(p * 65536)``, and kept units are scaled by the exact
inverse of the resulting keep probability, so the layer stays unbiased; the
rate differs from ``p`` by less than 1e-5.

Shapes: ``x`` is ``[batch, *input_shape]``; ``sample`` returns probabilities
``[n_samples, batch, classes]``; ``sample_ragged`` returns one
``[n_samples_i, classes]`` array per input row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

#: Upper bound on the rows (input rows x samples) that one compiled call sees.
MAX_ROWS_PER_CALL = 8192
#: Calls of this many rows and more keep matrix products out of XLA (MCEngine._compile).
SPLIT_PLAN_ROWS = 2048
#: Upper bound on the memory of the widest activation of one call, in bytes.
MAX_BYTES_PER_CALL = 128 * 2**20

_UINT16_RANGE = 65536
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_SPLITMIX_SHIFTS = (30, 27, 31)
# SELU constants, as in keras.layers.AlphaDropout.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

_MC_LAYER_TYPES = (keras.layers.Dropout, keras.layers.AlphaDropout)
_UNSAMPLEABLE_LAYER_TYPES = (keras.layers.GaussianNoise, keras.layers.GaussianDropout)


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


def random_uint16(key: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Uniform uint16 values of ``shape``, a pure function of ``key`` (uint64 scalar).

    Element ``i`` of the flattened result is 16 bits of
    ``splitmix64(key + (i // 4 + 1) * gamma)``.
    """
    size = tf.reduce_prod(shape)
    words = (size + 3) // 4
    counters = tf.cast(tf.range(1, words + 1, dtype=tf.int64), tf.uint64)
    hashes = _splitmix64(key + counters * tf.constant(_SPLITMIX_GAMMA, tf.uint64))
    values = tf.reshape(tf.bitcast(hashes, tf.uint16), [-1])[:size]
    return tf.reshape(values, shape)


@dataclasses.dataclass(frozen=True)
class DropoutMask:
    """One dropout layer applied with our own masks. ``noise_shape`` excludes the
    row axis and may hold 1s where the mask is shared (SpatialDropout)."""

    layer_name: str
    rate: float
    noise_shape: tuple[int | None, ...]
    alpha: bool

    @property
    def threshold(self) -> int:
        return round(self.rate * _UINT16_RANGE)

    @property
    def keep_probability(self) -> float:
        return 1.0 - self.threshold / _UINT16_RANGE

    def __call__(self, h: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        h_shape = tf.shape(h)
        mask_shape = tf.stack(
            [h_shape[0]]
            + [1 if size == 1 else h_shape[axis + 1] for axis, size in enumerate(self.noise_shape)]
        )
        keep = random_uint16(key, mask_shape) >= tf.constant(self.threshold, tf.uint16)
        if not self.alpha:
            return tf.where(keep, h * (1.0 / self.keep_probability), tf.zeros((), h.dtype))
        dropped_value = -_SELU_ALPHA * _SELU_SCALE
        drop_probability = 1.0 - self.keep_probability
        a = (self.keep_probability * (1 + drop_probability * dropped_value**2)) ** -0.5
        b = -a * dropped_value * drop_probability
        return a * tf.where(keep, h, tf.constant(dropped_value, h.dtype)) + b


def _layer_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in call order, nested models flattened.

    Raises ValueError, naming the layer, when the model is not a linear chain.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r} must have one input and one output")
    if isinstance(model, keras.Sequential):
        layers = model.layers
    else:
        layers = _functional_chain(model)
    chain: list[keras.layers.Layer] = []
    for layer in layers:
        chain.extend(_layer_chain(layer) if isinstance(layer, keras.Model) else [layer])
    return chain


def _functional_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """A Functional model's layers, input to output, when each takes the previous
    one's output. Keras keeps the model's own graph in ``_nodes_by_depth`` (a layer's
    ``input`` may belong to another model that reused it)."""
    layers, previous = [], None
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
            layers.append(node.operation)
        previous = node
    return layers


def _refusal(layer: keras.layers.Layer) -> str | None:
    """Why the engine cannot run ``layer`` faithfully, or None."""
    if isinstance(layer, _UNSAMPLEABLE_LAYER_TYPES):
        return "adds noise the engine cannot sample (use Dropout, AlphaDropout or SpatialDropout)"
    for attribute in ("dropout", "recurrent_dropout"):
        value = getattr(layer, attribute, 0)
        if isinstance(value, int | float) and value > 0:
            return f"has internal {attribute}={value}, which the engine cannot sample"
    if isinstance(layer, _MC_LAYER_TYPES) and not 0.0 <= layer.rate < 1.0:
        return f"has rate {layer.rate}; the engine needs 0 <= rate < 1"
    return None


def _ends_in_softmax(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        getattr(layer, "activation", None) is keras.activations.softmax
    )


def _dropout_step(layer: keras.layers.Layer) -> DropoutMask:
    per_row_shape = tuple(layer.output.shape[1:])
    noise_shape = per_row_shape
    if isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None:
        noise_shape = tuple(layer.noise_shape[1:])
    if hasattr(layer, "_get_noise_shape"):  # SpatialDropout1D/2D/3D
        noise_shape = tuple(layer._get_noise_shape(layer.output)[1:])
    return DropoutMask(
        layer_name=layer.name,
        rate=float(layer.rate),
        noise_shape=noise_shape,
        alpha=isinstance(layer, keras.layers.AlphaDropout),
    )


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
    samples) of one compiled call; by default it is ``MAX_ROWS_PER_CALL``, lowered
    so that the widest activation of a call stays under ``MAX_BYTES_PER_CALL``.
    """

    def __init__(self, model: keras.Model, max_rows_per_call: int | None = None) -> None:
        chain = _layer_chain(model)
        for layer in chain:
            reason = _refusal(layer)
            if reason:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) {reason}")
        if not chain or not _ends_in_softmax(chain[-1]):
            last = chain[-1].name if chain else model.name
            raise ValueError(
                f"layer {last!r} must end the model with a softmax: the engine averages "
                "probabilities"
            )
        if not any(isinstance(layer, _MC_LAYER_TYPES) for layer in chain):
            raise ValueError(
                f"model {model.name!r} has no Dropout, AlphaDropout or SpatialDropout layer "
                "to sample"
            )
        self.model = model
        self.input_shape: tuple[int, ...] = tuple(model.inputs[0].shape[1:])
        self.num_classes: int = int(model.outputs[0].shape[-1])
        split = next(
            (i for i, layer in enumerate(chain) if _is_active_dropout(layer)), len(chain)
        )
        #: Layers before the first dropout layer with a non-zero rate: run once per input.
        self.prefix_layers: list[keras.layers.Layer] = chain[:split]
        #: The rest, dropout layers replaced by our masks: run once per sample.
        self._suffix: list[keras.layers.Layer | DropoutMask] = [
            _dropout_step(layer) if _is_active_dropout(layer) else layer for layer in chain[split:]
        ]
        self.mc_layers: list[DropoutMask] = [
            step for step in self._suffix if isinstance(step, DropoutMask)
        ]
        if max_rows_per_call is not None:
            _check_count(max_rows_per_call, "max_rows_per_call")
        self.max_rows_per_call = max_rows_per_call or _default_max_rows(chain[split:])
        self._compile()

    def _compile(self) -> None:
        """Two plans for the rows after the prefix, drawing the same masks. Small calls
        run them as one XLA program (one launch). Large calls keep the matrix
        products in TensorFlow's oneDNN kernels, faster than XLA's, and make each
        dropout layer an XLA program; the first also expands the prefix output to
        one row per sample, so the expanded rows are written once, already masked."""
        signature = [
            tf.TensorSpec([None, *self.input_shape], tf.float32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([len(self.mc_layers)], tf.uint64),
        ]

        def prefix(x: tf.Tensor) -> tf.Tensor:
            for layer in self.prefix_layers:
                x = layer(x, training=False)
            return x

        def run_suffix(h: tf.Tensor, keys: tf.Tensor, steps: list, apply_dropout) -> tf.Tensor:
            for step in steps:
                if isinstance(step, DropoutMask):
                    h = apply_dropout(step, h, keys[self.mc_layers.index(step)])
                else:
                    h = step(h, training=False)
            return h

        def call_step(step: DropoutMask, h: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
            return step(h, key)

        fused_suffix = _compiled(
            lambda rows, keys: run_suffix(rows, keys, self._suffix, call_step), jit_compile=True
        )

        @_compiled(input_signature=signature)
        def forward_fused(x: tf.Tensor, row_index: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
            # x: [B, *input_shape], row_index: [R] into x, keys: [n_mc_layers] -> [R, classes]
            rows = tf.gather(prefix(x), row_index)
            return fused_suffix(rows, keys) if self.mc_layers else rows

        self._forward_fused = forward_fused.get_concrete_function()
        if not self.mc_layers:
            self._forward_split = self._forward_fused
            return

        compiled_steps = {
            id(step): _compiled(step.__call__, jit_compile=True) for step in self.mc_layers
        }
        first_step = self.mc_layers[0]
        expand_and_drop = _compiled(
            lambda h, row_index, key: first_step(tf.gather(h, row_index), key),
            jit_compile=True,
        )

        @_compiled(input_signature=signature)
        def forward_split(x: tf.Tensor, row_index: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
            # as forward_fused; B must be a power of two (one XLA program per B and R)
            h = expand_and_drop(prefix(x), row_index, keys[0])
            return run_suffix(
                h, keys, self._suffix[1:], lambda step, h, key: compiled_steps[id(step)](h, key)
            )

        self._forward_split = forward_split.get_concrete_function()

    def sample(self, x: np.ndarray, n_samples: int, seed: int | None = None) -> np.ndarray:
        """Probabilities ``[n_samples, batch, classes]`` for ``x`` ``[batch, *input_shape]``.

        The same ``seed`` and ``x`` give bit-identical samples; no seed, fresh ones.
        """
        _check_count(n_samples, "n_samples")
        x = self._check_input(x)
        counts = np.full(len(x), n_samples, dtype=np.int64)
        rows = self._run(x, counts, seed)  # [batch * n_samples, classes], input-row major
        return np.ascontiguousarray(
            rows.reshape(len(x), n_samples, self.num_classes).transpose(1, 0, 2)
        )

    def sample_ragged(
        self, x: np.ndarray, n_samples_per_row: Sequence[int], seed: int | None = None
    ) -> list[np.ndarray]:
        """One ``[n_samples_per_row[i], classes]`` array per row of ``x``, drawn together."""
        x = self._check_input(x)
        counts = np.asarray(n_samples_per_row)
        if counts.shape != (len(x),):
            raise ValueError(
                f"n_samples_per_row must hold one count per row of x ({len(x)}), got shape "
                f"{list(counts.shape)}"
            )
        for count in counts.tolist():
            _check_count(count, "n_samples_per_row")
        rows = self._run(x, counts.astype(np.int64), seed)
        return np.split(rows, np.cumsum(counts)[:-1])

    def warm_up(self, n_samples: int, max_batch: int) -> None:
        """Compile now, not on first use, the programs that calls of up to
        ``max_batch * n_samples`` rows need: every small-call bucket, whatever the
        mix of sample counts, and the large-call programs of 1 to ``max_batch``
        rows at ``n_samples``. Each new program takes a fraction of a second."""
        keys = np.zeros(len(self.mc_layers), np.uint64)
        one_row = np.zeros((1, *self.input_shape), np.float32)
        max_rows = min(max_batch * n_samples, self.max_rows_per_call)
        rows = 1
        while rows < SPLIT_PLAN_ROWS and rows <= _bucket(max_rows):
            self._call(one_row, np.zeros(rows, np.int32), keys)
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

    def _run(self, x: np.ndarray, counts: np.ndarray, seed: int | None) -> np.ndarray:
        """Probabilities ``[sum(counts), classes]``: ``counts[i]`` rows for input ``i``."""
        owners = np.repeat(np.arange(len(x), dtype=np.int32), counts)  # [total] input row
        chunks = _plan_chunks(owners, self.max_rows_per_call)
        keys = _chunk_keys(seed, len(chunks), len(self.mc_layers))  # [chunks, mc_layers]
        outputs = []
        for chunk, chunk_keys in zip(chunks, keys, strict=True):
            row_index = owners[chunk.start : chunk.stop] - chunk.first_input
            padded = np.full(_bucket(len(row_index)), row_index[-1], dtype=np.int32)
            padded[: len(row_index)] = row_index
            inputs = x[chunk.first_input : chunk.last_input + 1]
            outputs.append(self._call(inputs, padded, chunk_keys)[: len(row_index)])
        return np.concatenate(outputs)

    def _call(self, x: np.ndarray, row_index: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """One compiled call: x ``[B, *input_shape]``, row_index ``[R]`` (a bucket size)
        -> probabilities ``[R, classes]``."""
        if len(row_index) < SPLIT_PLAN_ROWS:
            forward = self._forward_fused
        else:
            forward = self._forward_split
            padding = (1 << (len(x) - 1).bit_length()) - len(x)  # B to a power of two
            x = np.concatenate([x, np.zeros((padding, *x.shape[1:]), x.dtype)])
        return forward(tf.constant(x), tf.constant(row_index), tf.constant(keys)).numpy()


def _compiled(function=None, **options):
    """tf.function without AutoGraph: these functions have no tensor-dependent
    Python control flow to convert."""
    if function is None:
        return lambda f: tf.function(f, autograph=False, **options)
    return tf.function(function, autograph=False, **options)


def _is_active_dropout(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, _MC_LAYER_TYPES) and layer.rate > 0


def _default_max_rows(suffix: Sequence[keras.layers.Layer]) -> int:
    widest = max((math.prod(layer.output.shape[1:]) for layer in suffix), default=1)
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


def _program(chunk: _Chunk) -> tuple[int, int]:
    """Which compiled program runs ``chunk``: its row bucket, and for the split plan
    its input rows padded to a power of two (0 for the fused plan)."""
    rows = _bucket(chunk.stop - chunk.start)
    if rows < SPLIT_PLAN_ROWS:
        return rows, 0
    return rows, 1 << (chunk.last_input - chunk.first_input).bit_length()


def _plan_chunks(owners: np.ndarray, max_rows: int) -> list[_Chunk]:
    """Split expanded rows (``owners[i]`` is the input row of row ``i``) into calls of
    at most ``max_rows``. Padding the last call to its bucket costs less than a
    further call would."""
    chunks = []
    for start in range(0, len(owners), max_rows):
        stop = min(start + max_rows, len(owners))
        chunks.append(_Chunk(start, stop, int(owners[start]), int(owners[stop - 1])))
    return chunks


def _chunk_keys(seed: int | None, n_chunks: int, n_layers: int) -> np.ndarray:
    """uint64 keys ``[n_chunks, n_layers]``: a pure function of ``seed``, fresh when None."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
    ):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    generator = np.random.default_rng(seed)
    return generator.integers(0, 2**64, size=(n_chunks, n_layers), dtype=np.uint64)
