import keras
import numpy as np
import pytest
import tensorflow as tf

from uncertainty.mc import DropoutMask, MCEngine, buckets, masks, random_uint16
from uncertainty.mc import engine as engine_module

INPUT_DROPOUT_TYPES = (keras.layers.Dropout, keras.layers.AlphaDropout)


def mlp_with_batch_norm(rate: float = 0.3, input_rate: float = 0.2) -> keras.Model:
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dropout(input_rate),
        keras.layers.Dense(16, activation="elu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(rate),
        keras.layers.Dense(8, activation="elu"),
        keras.layers.Dropout(rate),
        keras.layers.Dense(4, activation="softmax"),
    ])
    batch_norm = model.layers[2]
    batch_norm.moving_mean.assign(np.linspace(-0.5, 0.5, 16))
    batch_norm.moving_variance.assign(np.linspace(0.5, 2.0, 16))
    return model


def reference_samples(model: keras.Model, x: np.ndarray, n_samples: int) -> np.ndarray:
    """Keras's own dropout on n_samples copies of x, every other layer in inference
    mode: [n_samples, batch, classes]."""
    h = np.tile(x, (n_samples,) + (1,) * (x.ndim - 1))
    for layer in model.layers:
        h = layer(h, training=isinstance(layer, INPUT_DROPOUT_TYPES))
    return np.asarray(h).reshape(n_samples, len(x), -1)


def keras_training_samples(model: keras.Model, x: np.ndarray, n_samples: int) -> np.ndarray:
    """Keras's own ``model(..., training=True)`` on n_samples copies of x in one batch:
    [n_samples, batch, classes]. Only for models without BatchNormalization whose
    masks are drawn per row."""
    tiled = np.tile(x, (n_samples,) + (1,) * (x.ndim - 1))
    return np.asarray(model(tiled, training=True)).reshape(n_samples, len(x), -1)


def keras_call_loop(model: keras.Model, x: np.ndarray, n_samples: int) -> np.ndarray:
    """n_samples separate Keras calls ``model(x, training=True)``: [n_samples, batch, classes]."""
    call = tf.function(lambda batch: model(batch, training=True))
    return np.stack([call(x).numpy() for _ in range(n_samples)])


def with_batch_mean(samples: np.ndarray) -> np.ndarray:
    """samples [n, batch, classes] and, as one more row, their mean over the batch, whose
    spread shows how the inputs of one sample are correlated."""
    return np.concatenate([samples, samples.mean(axis=1, keepdims=True)], axis=1)


def assert_same_distribution(samples: np.ndarray, reference: np.ndarray) -> None:
    """Means and stds over samples agree within 5 standard errors."""
    n = len(samples)
    spread = np.maximum(samples.std(axis=0), reference.std(axis=0))
    mean_tolerance = 5 * spread * np.sqrt(2 / n) + 1e-6
    np.testing.assert_array_less(np.abs(samples.mean(0) - reference.mean(0)), mean_tolerance)
    # the std of a sample std is about std / sqrt(2n) for near-normal data; allow heavy tails
    std_tolerance = 5 * spread * np.sqrt(2 / n) * 2 + 1e-6
    np.testing.assert_array_less(np.abs(samples.std(0) - reference.std(0)), std_tolerance)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(7)
    return mlp_with_batch_norm()


@pytest.fixture(scope="module")
def engine(model) -> MCEngine:
    return MCEngine(model)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)


def test_agrees_with_the_naive_loop_in_distribution(model, engine, x):
    samples = engine.sample(x, 4000, seed=1)
    assert samples.shape == (4000, 3, 4)
    assert_same_distribution(samples, reference_samples(model, x, 4000))


def test_large_calls_keep_products_out_of_xla_with_the_same_masks(engine, x, monkeypatch):
    # 3 x 1000 rows run as one split-plan call; forcing the fused plan must draw the
    # same masks, so the two differ only by float rounding of the matrix products
    split = engine.sample(x, 1000, seed=5)
    monkeypatch.setattr(engine_module, "SPLIT_PLAN_ROWS", 10**9)
    fused = engine.sample(x, 1000, seed=5)
    np.testing.assert_allclose(split, fused, atol=1e-5)


def test_alpha_dropout_and_spatial_dropout_follow_keras():
    selu = keras.Sequential([
        keras.Input((6,)),
        keras.layers.AlphaDropout(0.2),
        keras.layers.Dense(8, activation="selu", kernel_initializer="lecun_normal"),
        keras.layers.AlphaDropout(0.3),
        keras.layers.Dense(3, activation="softmax"),
    ])
    conv = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.SpatialDropout2D(0.4),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.25, noise_shape=(None, 1)),
        keras.layers.Dense(3, activation="softmax"),
    ])
    rng = np.random.default_rng(3)
    for model, x in (
        (selu, rng.normal(size=(2, 6))),
        (conv, rng.normal(size=(2, 6, 6, 2))),
    ):
        x = x.astype(np.float32)
        samples = MCEngine(model).sample(x, 3000, seed=2)
        assert_same_distribution(samples, reference_samples(model, x, 3000))


def test_random_uint16_is_uniform_and_keyed():
    key = tf.constant(12345, tf.uint64)
    values = random_uint16(key, tf.constant([200, 500])).numpy().astype(np.float64)
    assert values.shape == (200, 500)
    # 100k uniforms on [0, 65535]: mean and std within 5 standard errors, 16 equal bins
    assert abs(values.mean() - 32767.5) < 5 * 18918 / np.sqrt(values.size)
    assert abs(values.std() - 18918.6) < 200
    counts = np.bincount((values // 4096).astype(int).ravel(), minlength=16)
    chi_square = ((counts - values.size / 16) ** 2 / (values.size / 16)).sum()
    assert chi_square < 50  # 15 degrees of freedom: p < 1e-5
    lag_correlation = np.corrcoef(values.ravel()[:-1], values.ravel()[1:])[0, 1]
    assert abs(lag_correlation) < 0.02
    again = random_uint16(key, tf.constant([200, 500])).numpy()
    np.testing.assert_array_equal(values, again)
    other = random_uint16(tf.constant(12346, tf.uint64), tf.constant([200, 500])).numpy()
    assert np.mean(other == values) < 0.01


def test_dropout_mask_drops_at_the_rate_and_keeps_the_mean():
    ones = tf.ones([4000, 50])
    mask = DropoutMask("d", rate=0.2, noise_shape=(50,), alpha=False)
    out = mask(ones, tf.constant(3, tf.uint64)).numpy()
    dropped = out == 0
    assert abs(dropped.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / out.size)
    np.testing.assert_allclose(np.unique(out[~dropped]), [1 / mask.keep_probability])
    assert abs(mask.keep_probability - 0.8) < 1e-5
    assert abs(out.mean() - 1.0) < 0.01


def test_alpha_dropout_mask_keeps_zero_mean_unit_variance():
    normal = tf.random.stateless_normal([4000, 50], seed=[1, 2])
    mask = DropoutMask("a", rate=0.3, noise_shape=(50,), alpha=True)
    out = mask(normal, tf.constant(4, tf.uint64)).numpy()
    assert abs(out.mean()) < 0.02
    assert abs(out.var() - 1.0) < 0.03


def test_spatial_mask_is_shared_across_positions():
    mask = DropoutMask("s", rate=0.5, noise_shape=(1, 1, 8), alpha=False)
    out = mask(tf.ones([10, 4, 4, 8]), tf.constant(5, tf.uint64)).numpy()
    assert np.all(out == out[:, :1, :1, :])
    assert 0 < (out == 0).mean() < 1


def analytic_model() -> keras.Model:
    """One input unit with dropout 0.5 and logits (0, 0.7 x): for x = 1 a sample's second
    probability is 0.5 when the unit is dropped, sigmoid(0.7 / keep) when kept."""
    model = keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(2, activation="softmax", use_bias=False),
    ])
    model.layers[-1].kernel.assign([[0.0, 0.7]])
    return model


def test_samples_take_exactly_the_analytic_values():
    # one input unit x = 1 with dropout 0.5: the logit is 0 or 2 w, nothing else
    model = analytic_model()
    samples = MCEngine(model).sample(np.ones((1, 1), np.float32), 2000, seed=0)[:, 0, 1]
    kept = 1 / (1 + np.exp(-0.7 / DropoutMask("", 0.5, (1,), False).keep_probability))
    values, counts = np.unique(np.round(samples, 6), return_counts=True)
    np.testing.assert_allclose(values, [0.5, kept], rtol=1e-6)
    assert abs(counts[0] / 2000 - 0.5) < 5 * np.sqrt(0.25 / 2000)


@pytest.mark.parametrize("rate", [0.5, 0.4, 0.1])
def test_stratified_masks_drop_each_unit_at_its_rate_in_every_block(rate):
    # 8 x 500 rows: 500 blocks of 8 samples; each unit is dropped rate * 8 times per
    # block, rounded either way, and each place in a block at the rate
    mask = DropoutMask("d", rate=rate, noise_shape=(300,), alpha=False)
    strata = masks.Strata(tf.constant(9, tf.uint64), tf.range(500, dtype=tf.int32))
    out = mask(tf.ones([8 * 500, 300]), tf.constant(3, tf.uint64), None, strata).numpy()
    dropped = (out == 0).reshape(500, 8, 300)
    assert set(np.unique(dropped.sum(axis=1))) <= {int(rate * 8), int(rate * 8) + 1}
    per_place = dropped.mean(axis=(0, 2))
    assert np.all(np.abs(per_place - rate) < 5 * np.sqrt(rate * (1 - rate) / (500 * 300)))
    np.testing.assert_allclose(np.unique(out[out > 0]), [1 / mask.keep_probability])


def test_stratified_samples_are_latin_hypercubes_whatever_the_chunking():
    # the analytic model: a sample is kept (0.5 + w) or dropped (0.5); with rate 0.5 each
    # block of 8 samples of an input keeps its unit exactly 4 times
    model = analytic_model()
    x = np.ones((50, 1), np.float32)
    samples = MCEngine(model).sample(x, 20, seed=4, stratified=True)  # [20, 50, 2]
    kept = samples[:, :, 1] > 0.6
    np.testing.assert_array_equal(kept[:8].sum(axis=0), 4)
    np.testing.assert_array_equal(kept[8:16].sum(axis=0), 4)
    assert set(kept[16:].sum(axis=0)) > {2}  # a block cut short: 4 of its 8 strata
    np.testing.assert_array_equal(
        samples, MCEngine(model).sample(x, 20, seed=4, stratified=True))
    small_calls = MCEngine(model, max_rows_per_call=16).sample(x, 20, seed=4, stratified=True)
    np.testing.assert_array_equal(small_calls[:, :, 1] > 0.6, kept)
    assert not np.array_equal(MCEngine(model).sample(x, 20, seed=5, stratified=True), samples)


def test_stratified_means_vary_less_than_independent_ones(engine):
    x = np.random.default_rng(3).normal(size=(200, 12)).astype(np.float32)

    def variance_of_the_mean(stratified: bool) -> float:
        means = np.stack([engine.sample(x, 8, seed=seed, stratified=stratified).mean(axis=0)
                          for seed in range(12)])  # [seeds, rows, classes]
        return float(means.var(axis=0, ddof=1).sum(axis=1).mean())

    assert variance_of_the_mean(True) < 0.8 * variance_of_the_mean(False)


def test_zero_rates_and_rates_below_the_mask_resolution_give_the_inference_output():
    # 2**-18 rounds to the 16-bit threshold 0: the input mask keeps every unit, unscaled,
    # and every later layer, zero-rate dropout and BatchNormalization included, runs
    # in inference mode
    model = mlp_with_batch_norm(rate=0.0, input_rate=2**-18)
    x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    samples = MCEngine(model).sample(x, 3)
    eager = np.asarray(model(x, training=False))
    for sample in samples:
        # XLA fuses the suffix's products and activations: equal up to float rounding
        np.testing.assert_allclose(sample, eager, rtol=1e-6, atol=1e-7)


def test_batch_norm_uses_moving_statistics(engine, model):
    # one row: batch statistics would normalise every feature to beta, whatever x is
    x = np.random.default_rng(2).normal(size=(1, 12)).astype(np.float32)
    samples = engine.sample(x, 3000, seed=4)
    assert_same_distribution(samples, reference_samples(model, x, 3000))


def test_same_seed_is_bit_identical_and_no_seed_is_fresh(engine, x):
    np.testing.assert_array_equal(engine.sample(x, 30, seed=7), engine.sample(x, 30, seed=7))
    assert not np.array_equal(engine.sample(x, 30, seed=7), engine.sample(x, 30, seed=8))
    assert not np.array_equal(engine.sample(x, 30), engine.sample(x, 30))


def test_chunked_calls_reproduce_and_stay_normalised(model, x):
    small_calls = MCEngine(model, max_rows_per_call=8)  # 3 x 20 rows -> 8 calls
    first = small_calls.sample(x, 20, seed=3)
    np.testing.assert_array_equal(first, small_calls.sample(x, 20, seed=3))
    np.testing.assert_allclose(first.sum(axis=-1), 1.0, rtol=1e-5)
    assert len({tuple(np.round(s[0], 6)) for s in first}) > 10  # samples differ


def test_one_sample(engine, x):
    samples = engine.sample(x, 1)
    assert samples.shape == (1, 3, 4)
    np.testing.assert_allclose(samples.sum(axis=-1), 1.0, rtol=1e-5)


def test_ragged_counts_in_one_call(engine, x):
    rows = engine.sample_ragged(x, [1, 5, 40], seed=9)
    assert [r.shape for r in rows] == [(1, 4), (5, 4), (40, 4)]
    again = engine.sample_ragged(x, [1, 5, 40], seed=9)
    for first, second in zip(rows, again, strict=True):
        np.testing.assert_array_equal(first, second)


def test_many_batch_sizes_reuse_the_compiled_call(engine):
    concrete = engine._forwards["fused"]
    for batch in (1, 2, 3, 7, 16, 33):
        x = np.zeros((batch, 12), np.float32)
        assert engine.sample(x, 2).shape == (2, batch, 4)
    assert engine._forwards["fused"] is concrete


def test_memory_bound_lowers_rows_per_call_for_wide_models():
    wide = keras.Sequential([
        keras.Input((64, 64, 3)),
        keras.layers.Dropout(0.1),
        keras.layers.Conv2D(64, 3, padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    engine = MCEngine(wide)
    widest_bytes = 64 * 64 * 64 * 4
    assert engine.max_rows_per_call * widest_bytes <= engine_module.MAX_BYTES_PER_CALL
    assert engine.max_rows_per_call < engine_module.MAX_ROWS_PER_CALL


class DenseWithDropout(keras.layers.Layer):
    """A custom layer that holds a dropout layer of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.dropout = keras.layers.Dropout(0.3)

    def call(self, inputs, training=None):
        return self.dropout(self.dense(inputs), training=training)


class SubclassedBlock(keras.Model):
    """A subclassed model, with its own call, used as a layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.inner_dropout = keras.layers.Dropout(0.3)

    def call(self, inputs, training=None):
        return self.inner_dropout(self.dense(inputs), training=training)


class AlwaysOnDropout(keras.layers.Dropout):
    """A Dropout subclass with its own call: the engine cannot know what it draws."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([keras.layers.Dense(3, activation="softmax")], "no active dropout"),
        ([keras.layers.Dropout(0.0), keras.layers.Dense(4), keras.layers.Dropout(0.0),
          keras.layers.Dense(3, activation="softmax")], "no active dropout"),
        ([keras.layers.Reshape((2, 2)),
          keras.layers.TimeDistributed(keras.layers.Dropout(0.5), name="wrapped"),
          keras.layers.Flatten(), keras.layers.Dropout(0.1),
          keras.layers.Dense(3, activation="softmax")], "'wrapped'.*'dropout"),
        ([DenseWithDropout(name="custom"), keras.layers.Dropout(0.1),
          keras.layers.Dense(3, activation="softmax")], "'custom'"),
        ([keras.layers.Dropout(0.1), SubclassedBlock(name="block"),
          keras.layers.Dense(3, activation="softmax")], "'block'.*Dropout"),
        ([AlwaysOnDropout(0.5, name="always_on"), keras.layers.Dense(3, activation="softmax")],
         "'always_on'.*overrides call"),
        ([keras.layers.Dropout(1 - 2**-18, name="nearly_all"),
          keras.layers.Dense(3, activation="softmax")], "'nearly_all'.*16-bit"),
        ([keras.layers.Dropout(0.1, noise_shape=(4,), name="short_noise"),
          keras.layers.Dense(3, activation="softmax")], "'short_noise'.*noise_shape"),
        ([keras.layers.GaussianNoise(0.1, name="noisy"), keras.layers.Dropout(0.1),
          keras.layers.Dense(3, activation="softmax")], "'noisy'"),
        ([keras.layers.Dropout(0.1), keras.layers.Dense(3, name="logits")], "'logits'"),
        ([keras.layers.Reshape((2, 2)), keras.layers.LSTM(3, dropout=0.2, name="recurrent"),
          keras.layers.Dropout(0.1), keras.layers.Dense(3, activation="softmax")],
         "'recurrent'"),
    ],
)
def test_refusals_name_the_layer(layers, message):
    model = keras.Sequential([keras.Input((4,)), *layers])
    with pytest.raises(ValueError, match=message):
        MCEngine(model)


def test_branching_model_is_refused_by_layer_name():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    merged = keras.layers.Add(name="skip")([inputs, hidden])
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Dropout(0.2)(merged))
    with pytest.raises(ValueError, match="'skip'"):
        MCEngine(keras.Model(inputs, outputs))


def test_nested_sequential_is_flattened(x):
    inner = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8), keras.layers.Dropout(0.5)])
    outer = keras.Sequential(
        [keras.Input((12,)), inner, keras.layers.Dense(2, activation="softmax")]
    )
    assert MCEngine(outer).sample(x, 4).shape == (4, 3, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, x: e.sample(x[:, :5], 3), r"shape \[batch, 12\]"),
        (lambda e, x: e.sample(x[:0], 3), "at least one row"),
        (lambda e, x: e.sample(x, 0), "n_samples must be a positive integer"),
        (lambda e, x: e.sample(x, 2.5), "n_samples must be a positive integer"),
        (lambda e, x: e.sample(x, 3, seed=-1), "seed must be a non-negative integer"),
        (lambda e, x: e.sample_ragged(x, [1, 2]), "one count per row"),
        (lambda e, x: e.sample_ragged(x, [1, 0, 2]), "n_samples_per_row"),
    ],
)
def test_bad_arguments_are_refused(engine, x, call, message):
    with pytest.raises(ValueError, match=message):
        call(engine, x)


def dropout_called_twice() -> keras.Model:
    inputs = keras.Input((8,))
    dropout = keras.layers.Dropout(0.5)
    hidden = keras.layers.Dense(8, activation="elu")(dropout(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(dropout(hidden))
    return keras.Model(inputs, outputs)


def twin_blocks() -> keras.Model:
    def block(name: str) -> keras.Sequential:
        return keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(8, activation="elu"),
            keras.layers.Dropout(0.5, name="dropout"),
        ], name=name)

    return keras.Sequential([
        keras.Input((8,)), block("first"), block("second"),
        keras.layers.Dense(3, activation="softmax"),
    ])


@pytest.mark.parametrize("build", [dropout_called_twice, twin_blocks])
def test_each_dropout_application_draws_its_own_masks(build):
    # one layer called twice, or two identically named and configured layers in two
    # sub-models: sharing a mask between the two applications shifts the variance
    model = build()
    x = np.random.default_rng(4).normal(size=(3, 8)).astype(np.float32)
    samples = MCEngine(model).sample(x, 4000, seed=3)
    assert_same_distribution(samples, keras_training_samples(model, x, 4000))


def test_alpha_dropout_honours_noise_shape():
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(8, activation="selu", kernel_initializer="lecun_normal"),
        keras.layers.AlphaDropout(0.4, noise_shape=(None, 1)),  # one draw per row
        keras.layers.Dense(3, activation="softmax"),
    ])
    x = np.random.default_rng(5).normal(size=(3, 8)).astype(np.float32)
    samples = MCEngine(model).sample(x, 4000, seed=6)
    assert_same_distribution(samples, keras_training_samples(model, x, 4000))


def test_a_leading_one_in_noise_shape_draws_one_mask_per_sample():
    # Keras shares such a mask by the rows of one call; here sample s of every input
    # plays the part of call s. 3 x 3000 rows run as one split-plan call and one fused
    # call, the third input's samples spread over both.
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dropout(0.3, noise_shape=(1, 8)),
        keras.layers.Dense(8, activation="elu"),
        keras.layers.AlphaDropout(0.2, noise_shape=(1, None)),
        keras.layers.Dense(3, activation="softmax"),
    ])
    first, second = np.random.default_rng(6).normal(size=(2, 8)).astype(np.float32)
    x = np.stack([first, second, first])
    engine = MCEngine(model)
    samples = engine.sample(x, 3000, seed=8)
    np.testing.assert_allclose(samples[:, 0], samples[:, 2], atol=1e-5)
    assert_same_distribution(
        with_batch_mean(samples), with_batch_mean(keras_call_loop(model, x, 3000))
    )
    engine.warm_up(n_samples=4, max_batch=2)
    ragged = engine.sample_ragged(x, [5, 2, 7], seed=1)
    np.testing.assert_allclose(ragged[0], ragged[2][:5], atol=1e-6)


def test_shared_mask_follows_the_sample_index():
    mask = DropoutMask("s", rate=0.5, noise_shape=(64,), alpha=False, shared_by_inputs=True)
    sample_index = tf.constant([0, 1, 2, 0, 1, 2], tf.int32)
    out = mask(tf.ones([6, 64]), tf.constant(9, tf.uint64), sample_index).numpy()
    np.testing.assert_array_equal(out[:3], out[3:])
    assert not np.array_equal(out[0], out[1])
    assert 0.3 < (out == 0).mean() < 0.7


def test_dropout_mask_refuses_a_rate_its_16_bit_threshold_cannot_hold():
    assert DropoutMask("d", 1 - 2**-16, (4,), False).keep_probability == 2**-16
    for rate in (1 - 2**-17, 1 - 2**-18, 1.0, -0.1):
        with pytest.raises(ValueError, match="'d' has rate"):
            DropoutMask("d", rate, (4,), False)


def test_no_call_exceeds_max_rows_per_call(model, x):
    engine = MCEngine(model, max_rows_per_call=100)  # not a bucket size: 100 rows pad to 112
    call = engine._call
    rows_per_call = []

    def recording_call(inputs, per_row, *arguments):
        rows_per_call.append(len(per_row[0]))
        return call(inputs, per_row, *arguments)

    engine._call = recording_call
    assert engine.sample(x, 100, seed=1).shape == (100, 3, 4)
    assert [len(rows) for rows in engine.sample_ragged(x, [1, 99, 150])] == [1, 99, 150]
    assert engine.sample(x, 99, seed=2, stratified=True).shape == (99, 3, 4)
    engine.warm_up(n_samples=100, max_batch=3)
    assert max(rows_per_call) <= 100


def test_largest_bucket_at_most_is_the_largest_bucket_within_the_bound():
    for rows in range(1, 20_000):
        bucket = buckets.largest_bucket_at_most(rows)
        assert bucket <= rows and buckets.bucket(bucket) == bucket
        assert buckets.bucket(bucket + 1) > rows


def test_subclassed_model_is_refused():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.dropout = keras.layers.Dropout(0.5)
            self.dense = keras.layers.Dense(2, activation="softmax")

        def call(self, inputs, training=None):
            return self.dense(self.dropout(inputs, training=training))

    model = Classifier()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="'subclassed'.*Sequential or Functional"):
        MCEngine(model)
