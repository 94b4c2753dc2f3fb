"""The Monte Carlo engine and its compiled plans.

The deterministic prefix runs once per input row, the stochastic suffix once per
sample, in compiled calls padded to row buckets (``uncertainty.mc.buckets``) so that
requests never retrace. Small calls run the suffix as one XLA program; large ones keep
the matrix products in TensorFlow's oneDNN kernels and make each dropout application a
fused XLA program, the first of which also expands the prefix output to one row per
sample. ``sample`` keys the masks per chunk of a call; ``sample_keyed`` per input row,
so that a row's samples do not depend on the rest of its call, in calls of fixed shapes
(the prefix once per input, the suffix once per sample, each its own XLA program).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from uncertainty.mc.buckets import (
    Chunk,
    bucket,
    chunk_keys,
    filled,
    largest_bucket_at_most,
    padded,
    plan_chunks,
    sample_numbers,
)
from uncertainty.mc.chain import (
    Link,
    SuffixDropout,
    SuffixStep,
    check_chain,
    is_active_dropout,
    layer_chain,
    run_suffix,
    suffix_steps,
)
from uncertainty.mc.masks import STRATUM_BLOCK, RowKeyedDropoutMask, Strata, draw_strata
from uncertainty.mc.splitmix import SPLITMIX_GAMMA, splitmix64_numpy

#: Upper bound on the rows (input rows x samples) that one compiled call sees.
MAX_ROWS_PER_CALL = 8192
#: Calls of this many rows and more keep matrix products out of XLA (MCEngine._split_plan).
SPLIT_PLAN_ROWS = 2048
#: Rows of each call of ``sample_keyed``, fewer for wide models (MAX_BYTES_PER_CALL): on
#: this 2-core machine 512 rows ran at 0.56x and 0.79x of ``sample``'s rows/s (a Dense(64)
#: and a Dense(512, 512) model), 2048 at 0.93x and 0.94x, 8192 at 0.94x and 0.72x.
KEYED_BLOCK_ROWS = 2048
#: Input rows of each call of ``sample_keyed``'s prefix (the layers before the first
#: dropout), fewer for wide prefixes (MAX_BYTES_PER_CALL).
KEYED_PREFIX_ROWS = 1024
#: Upper bound on the memory of the widest activation of one call, in bytes.
MAX_BYTES_PER_CALL = 128 * 2**20
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


#: A compiled call's body: (x, row_index, keys, sample_index or None, strata or None)
#: -> probabilities.
_Plan = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None, Strata | None], tf.Tensor]


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
        chain = layer_chain(model)
        check_chain(chain, model.name)
        self.input_shape: tuple[int, ...] = tuple(model.inputs[0].shape[1:])
        self.num_classes: int = int(model.outputs[0].shape[-1])
        split = next(i for i, link in enumerate(chain) if is_active_dropout(link.layer))
        #: Layers before the first dropout layer with a non-zero rate: run once per input.
        self.prefix_layers: list[keras.layers.Layer] = [link.layer for link in chain[:split]]
        #: The rest, starting with a dropout application: run once per sample.
        self._suffix = suffix_steps(chain[split:])
        self._dropout_steps = [step for step in self._suffix if isinstance(step, SuffixDropout)]
        #: Per dropout step, whether each sample draws one mask for all inputs.
        self._shared_by_inputs = np.array(
            [step.mask.shared_by_inputs for step in self._dropout_steps], dtype=bool
        )
        #: Whether calls take each row's sample number (``_compile``).
        self._sample_indexed = bool(self._shared_by_inputs.any())
        if max_rows_per_call is not None:
            _check_count(max_rows_per_call, "max_rows_per_call")
        rows_in_memory = _default_max_rows(chain[split:])
        self.max_rows_per_call = largest_bucket_at_most(
            int(max_rows_per_call or rows_in_memory)
        )
        #: Rows of every call of ``sample_keyed``'s suffix (a model's own: never
        #: max_rows_per_call).
        self._keyed_block_rows = min(KEYED_BLOCK_ROWS, rows_in_memory)
        #: Input rows of every call of ``sample_keyed``'s prefix: batches of a multiple of
        #: it pad none.
        self.keyed_prefix_rows = min(KEYED_PREFIX_ROWS, _default_max_rows(chain[:split]))
        #: The shape of one input's prefix output (the suffix's input).
        self._prefix_output_shape = chain[split - 1].output_shape if split else self.input_shape
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
            return run_suffix(
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
        split_suffix = self._split_suffix(self._suffix)

        def plan(x, row_index, keys, sample_index, strata):
            # B is a power of two here (see _call): one XLA program per B and R
            return split_suffix(self._prefix(x), row_index, keys, sample_index, strata)

        return plan

    def _split_suffix(self, suffix: Sequence[SuffixStep]):
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
            if isinstance(step, SuffixDropout)
        }

        def run(prefix_output, row_index, keys, sample_index, strata):
            h = expand_and_drop(prefix_output, row_index, keys, sample_index, strata)
            return run_suffix(  # h [R, ...]
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
        STRATUM_BLOCK (``uncertainty.mc.masks`` says how).
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
        ``sample``. Every call has one shape (``_keyed_programs`` says why), whatever
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
            keys = splitmix64_numpy(base[:, None] + steps[None, :] * np.uint64(SPLITMIX_GAMMA))
        shared = np.random.default_rng(seed).integers(
            0, 2**64, size=len(steps), dtype=np.uint64
        )
        keys[:, self._shared_by_inputs] = shared[self._shared_by_inputs]
        return keys

    def _keyed_programs(self) -> tuple[tf.types.experimental.ConcreteFunction | None,
                                       tf.types.experimental.ConcreteFunction]:
        """The compiled calls of ``sample_keyed``, built on first use, each an XLA program of
        one shape, so that a row's result cannot depend on the call's other rows or its
        size: neither oneDNN's nor XLA's matrix products keep a row's bits across row counts
        on every CPU (on an AMD EPYC with AVX2 both change its last bits with the count).

        - the prefix: x ``[keyed_prefix_rows, *input_shape]`` -> its output, once per
          input (None when the model starts with its dropout);
        - the suffix: prefix outputs ``[_keyed_block_rows, ...]``, one per row (its
          input's), keys ``[dropout steps, _keyed_block_rows]`` and sample_index
          ``[_keyed_block_rows]`` -> probabilities ``[_keyed_block_rows, classes]``."""
        programs = getattr(self, "_keyed_compiled", None)
        if programs is None:
            with _COMPILE_LOCK:
                programs = getattr(self, "_keyed_compiled", None)
                if programs is None:
                    programs = self._keyed_prefix_program(), self._keyed_suffix_program()
                    self._keyed_compiled = programs
        return programs

    def _keyed_prefix_program(self) -> tf.types.experimental.ConcreteFunction | None:
        if not self.prefix_layers:
            return None
        signature = [tf.TensorSpec([self.keyed_prefix_rows, *self.input_shape], tf.float32)]
        return _compiled(self._prefix, jit_compile=True,
                         input_signature=signature).get_concrete_function()

    def _keyed_suffix_program(self) -> tf.types.experimental.ConcreteFunction:
        suffix = [
            SuffixDropout(RowKeyedDropoutMask.of(step.mask), step.key_index)
            if isinstance(step, SuffixDropout) else step
            for step in self._suffix
        ]

        def plan(rows, keys, sample_index):
            return run_suffix(rows, suffix, lambda step, h: step(h, keys, sample_index))

        block = self._keyed_block_rows
        signature = [
            tf.TensorSpec([block, *self._prefix_output_shape], tf.float32),  # rows
            tf.TensorSpec([len(self._dropout_steps), block], tf.uint64),  # keys
            tf.TensorSpec([block], tf.int32),  # sample_index
        ]
        return _compiled(plan, jit_compile=True, input_signature=signature).get_concrete_function()

    def _run_keyed(self, x: np.ndarray, counts: np.ndarray, input_keys: np.ndarray) -> np.ndarray:
        """``counts[i]`` samples of each input row, keyed by ``input_keys`` ``[batch,
        dropout steps]``: the prefix in calls of ``keyed_prefix_rows`` inputs, the suffix
        in calls of ``_keyed_block_rows`` rows (the last ones padded)."""
        prefix, suffix = self._keyed_programs()
        block = self._keyed_block_rows
        owners = np.repeat(np.arange(len(x), dtype=np.int32), counts)
        samples = sample_numbers(counts)
        prefix_outputs = _PrefixOutputs(x, prefix, self.keyed_prefix_rows)
        outputs = []
        for chunk in plan_chunks(owners, block):
            rows = owners[chunk.start:chunk.stop]
            keys = np.ascontiguousarray(filled(input_keys[rows], block).T)
            probabilities = suffix(tf.constant(filled(prefix_outputs.rows(rows), block)),
                                   tf.constant(keys),
                                   tf.constant(filled(samples[chunk.start:chunk.stop], block))
                                   ).numpy()
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
        while rows < SPLIT_PLAN_ROWS and rows <= bucket(max_rows):
            indices = np.zeros(rows, np.int32)
            self._call(one_row, [indices] * (1 + self._sample_indexed), [keys])
            rows = bucket(rows + 1)
        compiled = set()
        x = np.zeros((max_batch, *self.input_shape), np.float32)
        for batch in range(1, max_batch + 1):
            owners = np.repeat(np.arange(batch, dtype=np.int32), n_samples)
            programs = {_program(c) for c in plan_chunks(owners, self.max_rows_per_call)}
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
            rows = bucket(rows + STRATUM_BLOCK)

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
        samples = sample_numbers(drawn) if stratified or self._sample_indexed else None
        if stratified and self.max_rows_per_call % STRATUM_BLOCK:
            raise ValueError(f"stratified sampling needs calls of a multiple of "
                             f"{STRATUM_BLOCK} rows, got {self.max_rows_per_call}")
        chunks = plan_chunks(owners, self.max_rows_per_call)
        keys = chunk_keys(seed, len(chunks), self._shared_by_inputs)  # [chunks, steps]
        if stratified:
            strata = draw_strata(seed, len(self._dropout_steps), owners, samples, drawn.max())
        outputs = []
        for chunk, keys_of_chunk in zip(chunks, keys, strict=True):
            rows = slice(chunk.start, chunk.stop)
            per_row = [padded(owners[rows] - chunk.first_input)]
            if self._sample_indexed:
                per_row.append(padded(samples[rows]))
            arguments = [keys_of_chunk]
            if stratified:  # R is a multiple of 8 (so is its bucket): one id per block
                blocks = strata.block_ids[rows][::STRATUM_BLOCK]
                arguments += [strata.key, filled(blocks, len(per_row[0]) // STRATUM_BLOCK)]
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


class _PrefixOutputs:
    """The prefix outputs of ``x`` ``[batch, *input_shape]``, computed as suffix calls need
    them, in calls of ``rows_per_call`` inputs (the last one padded); only the calls that
    the current rows span are kept. ``program`` None: the model has no prefix."""

    def __init__(self, x: np.ndarray, program, rows_per_call: int) -> None:
        self.x, self.program, self.rows_per_call = x, program, rows_per_call
        self.calls: dict[int, np.ndarray] = {}  # call number -> [rows_per_call, ...]

    def rows(self, owners: np.ndarray) -> np.ndarray:
        """``[len(owners), *prefix_output_shape]``: row ``i`` the output of input
        ``owners[i]``; ``owners`` non-decreasing, and never below an earlier call's."""
        if self.program is None:
            return self.x[owners]
        per_call = self.rows_per_call
        first, last = int(owners[0]) // per_call, int(owners[-1]) // per_call
        self.calls = {number: outputs for number, outputs in self.calls.items()
                      if number >= first}
        for number in range(first, last + 1):
            if number not in self.calls:
                x = self.x[number * per_call:(number + 1) * per_call]
                self.calls[number] = self.program(tf.constant(filled(x, per_call))).numpy()
        outputs = [self.calls[number] for number in range(first, last + 1)]
        return (outputs[0] if first == last else np.concatenate(outputs))[owners - first * per_call]


def _compiled(function, **options):
    """tf.function without AutoGraph: these functions have no tensor-dependent
    Python control flow to convert."""
    return tf.function(function, autograph=False, **options)


def _default_max_rows(suffix: Sequence[Link]) -> int:
    widest = max((math.prod(link.output_shape) for link in suffix), default=1)
    by_memory = max(1, MAX_BYTES_PER_CALL // (4 * widest))
    return min(MAX_ROWS_PER_CALL, 2 ** int(math.log2(by_memory)))


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _program(chunk: Chunk) -> tuple[int, int]:
    """Which compiled program runs ``chunk``: its row bucket, and for the split plan
    its input rows padded to a power of two (0 for the fused plan)."""
    rows = bucket(chunk.stop - chunk.start)
    if rows < SPLIT_PLAN_ROWS:
        return rows, 0
    return rows, 1 << (chunk.last_input - chunk.first_input).bit_length()

