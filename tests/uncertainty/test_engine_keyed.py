"""MCEngine.sample_keyed: each row's samples a pure function of the row, its seed and
the run's seed, whatever else shares the call and however the call is chunked."""

import keras
import numpy as np
import pytest

from tests.uncertainty.test_engine import (
    assert_same_distribution,
    mlp_with_batch_norm,
    reference_samples,
)
from uncertainty.mc import MCEngine, splitmix64_numpy


def spatial_model() -> keras.Model:
    """Dropout with masks shared along the positions of a row (SpatialDropout1D)."""
    keras.utils.set_random_seed(11)
    return keras.Sequential([
        keras.Input((6, 4)),
        keras.layers.Dense(8, activation="elu"),
        keras.layers.SpatialDropout1D(0.3),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(3, activation="softmax"),
    ])


def shared_mask_model() -> keras.Model:
    """One dropout whose mask every input of a sample shares (a leading 1)."""
    keras.utils.set_random_seed(12)
    return keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(16, activation="elu"),
        keras.layers.Dropout(0.5, noise_shape=(1, 16)),
        keras.layers.Dense(3, activation="softmax"),
    ])


def conv_model(dropout_after_flatten: bool = False) -> keras.Model:
    """Conv/Pool blocks, Flatten, Dense, Dropout, Dense(softmax): the dropout only in the
    dense head, so the convolutions are the prefix (and a Dropout after Flatten too)."""
    keras.utils.set_random_seed(13)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(6, 3, padding="same", activation="elu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(8, 3, padding="same", activation="elu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        *[keras.layers.Dropout(0.1)] * dropout_after_flatten,
        keras.layers.Dense(16, activation="elu"),
        keras.layers.Dropout(0.4),
        keras.layers.Dense(3, activation="softmax"),
    ])


def inputs(model: keras.Model, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, *model.inputs[0].shape[1:])).astype(np.float32)
    return x, rng.integers(0, 2**64, size=rows, dtype=np.uint64)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(7)
    return mlp_with_batch_norm()


MODELS = [mlp_with_batch_norm, spatial_model, conv_model, lambda: conv_model(True)]


@pytest.mark.parametrize("build", MODELS)
def test_a_row_gets_the_same_samples_in_any_call_and_chunking(build):
    model = build()
    x, seeds = inputs(model, 37)
    whole = MCEngine(model).sample_keyed(x, 20, seeds, seed=3)  # [20, 37, classes]
    assert whole.shape == (20, 37, model.outputs[0].shape[-1])
    for max_rows in (8, 64, None):  # calls of 8 rows, a few rows each, one big call
        engine = MCEngine(model, max_rows_per_call=max_rows)
        for batch in (1, 5, 37):
            parts = [engine.sample_keyed(x[i:i + batch], 20, seeds[i:i + batch], seed=3)
                     for i in range(0, len(x), batch)]
            np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    order = np.random.default_rng(1).permutation(len(x))
    shuffled = MCEngine(model).sample_keyed(x[order], 20, seeds[order], seed=3)
    np.testing.assert_array_equal(shuffled, whole[:, order])


@pytest.mark.parametrize("build", MODELS)
def test_a_row_gets_the_same_samples_across_prefix_and_suffix_calls(build):
    """Batches that span several prefix calls and suffix calls, cut anywhere: a row's
    prefix output and samples do not depend on the inputs beside it."""
    model = build()
    x, seeds = inputs(model, 300, seed=4)
    engine = MCEngine(model)
    engine.keyed_prefix_rows = 16  # before the first keyed call: many prefix calls
    whole = engine.sample_keyed(x, 9, seeds, seed=1)  # 2,700 rows: two suffix calls
    for cuts in ([7, 40, 41, 250], [16, 32, 229, 231]):
        parts = [engine.sample_keyed(x[a:b], 9, seeds[a:b], seed=1)
                 for a, b in zip([0, *cuts], [*cuts, len(x)], strict=True)]
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    lone = [engine.sample_keyed(x[i:i + 1], 9, seeds[i:i + 1], seed=1) for i in (0, 150, 299)]
    np.testing.assert_array_equal(np.concatenate(lone, axis=1), whole[:, [0, 150, 299]])


@pytest.mark.parametrize("dropout_after_flatten", [False, True])
def test_keyed_samples_of_a_conv_model_follow_keras_dropout(dropout_after_flatten):
    model = conv_model(dropout_after_flatten)
    x, _ = inputs(model, 1, seed=2)
    samples = MCEngine(model).sample_keyed(x, 3000, np.array([17], np.uint64))
    assert_same_distribution(samples, reference_samples(model, x, 3000))


def test_large_calls_and_small_calls_agree(model):
    """The keyed calls always run the split plan, whose per-row arithmetic does not
    depend on the call's size: 1 row and 400 rows x 30 samples give the same bits."""
    x, seeds = inputs(model, 400)
    engine = MCEngine(model)
    big = engine.sample_keyed(x, 30, seeds)  # 12,000 rows: split-plan territory
    small = np.concatenate([engine.sample_keyed(x[i:i + 1], 30, seeds[i:i + 1])
                            for i in range(0, 400, 37)], axis=1)
    np.testing.assert_array_equal(small, big[:, ::37])


def test_first_samples_do_not_depend_on_n_samples(model):
    x, seeds = inputs(model, 4)
    engine = MCEngine(model)
    np.testing.assert_array_equal(engine.sample_keyed(x, 50, seeds)[:7],
                                  engine.sample_keyed(x, 7, seeds))


def test_seeds_decide_the_draw(model):
    x, seeds = inputs(model, 3)
    engine = MCEngine(model)
    first = engine.sample_keyed(x, 30, seeds)
    np.testing.assert_array_equal(first, engine.sample_keyed(x, 30, seeds))
    other = engine.sample_keyed(x, 30, seeds + np.uint64(1))
    assert not np.array_equal(first[:, 0], other[:, 0])
    # equal inputs with equal seeds are equal; with other seeds, independent
    twins = engine.sample_keyed(np.repeat(x[:1], 2, axis=0), 30, np.array([5, 5], np.uint64))
    np.testing.assert_array_equal(twins[:, 0], twins[:, 1])
    strangers = engine.sample_keyed(np.repeat(x[:1], 2, axis=0), 30, np.array([5, 6], np.uint64))
    assert not np.array_equal(strangers[:, 0], strangers[:, 1])


def test_masks_shared_by_the_inputs_of_a_sample_follow_the_run_seed():
    model = shared_mask_model()
    engine = MCEngine(model)
    twins = np.repeat(inputs(model, 1)[0], 2, axis=0)
    seeds = np.array([1, 2], np.uint64)  # different row seeds, one shared mask per sample
    samples = engine.sample_keyed(twins, 40, seeds, seed=9)
    np.testing.assert_array_equal(samples[:, 0], samples[:, 1])
    assert not np.array_equal(samples, engine.sample_keyed(twins, 40, seeds, seed=10))
    np.testing.assert_array_equal(samples[:, :1], engine.sample_keyed(twins[:1], 40, seeds[:1],
                                                                      seed=9))


def test_keyed_samples_follow_keras_dropout(model):
    x = np.random.default_rng(2).normal(size=(1, 12)).astype(np.float32)
    samples = MCEngine(model).sample_keyed(x, 3000, np.array([17], np.uint64))
    assert_same_distribution(samples, reference_samples(model, x, 3000))


def test_sample_is_unchanged_by_keyed_calls(model):
    """The keyed programs are built apart: a call of sample_keyed leaves sample alone."""
    x, seeds = inputs(model, 3)
    engine = MCEngine(model)
    before = engine.sample(x, 30, seed=7)
    engine.sample_keyed(x, 30, seeds)
    np.testing.assert_array_equal(before, engine.sample(x, 30, seed=7))


def test_splitmix64_numpy_matches_known_values():
    # SplitMix64's finaliser of 1 * gamma and 2 * gamma: the reference generator's
    # first two outputs from state 0
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        states = np.array([1, 2], np.uint64) * gamma
    np.testing.assert_array_equal(
        splitmix64_numpy(states),
        np.array([0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4], np.uint64),
    )


@pytest.mark.parametrize("call, message", [
    (lambda e, x: e.sample_keyed(x, 5, np.zeros(2, np.uint64)), "one integer per row"),
    (lambda e, x: e.sample_keyed(x, 5, np.zeros(3)), "one integer per row"),
    (lambda e, x: e.sample_keyed(x, 5, np.zeros(3, np.uint64), seed=-1), "non-negative"),
    (lambda e, x: e.sample_keyed(x, 0, np.zeros(3, np.uint64)), "positive integer"),
])
def test_bad_arguments_are_refused(model, call, message):
    x, _ = inputs(model, 3)
    with pytest.raises(ValueError, match=message):
        call(MCEngine(model), x)
