import bentoml
import keras
import numpy as np
import pytest

from artifacts.cards import ModelCard
from artifacts.store import load_classifier, save_classifier
from training.config import ModelConfig
from training.data import load_dataset
from training.models import build_model
from uncertainty.calibration import Calibration
from uncertainty.mc import MCEngine
from uncertainty.risk import NoveltyPolicy, RiskPolicy


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def fit_briefly(model, dataset, learning_rate=0.05):
    model.compile(
        keras.optimizers.SGD(learning_rate, momentum=0.9), "sparse_categorical_crossentropy"
    )
    model.fit(dataset.x_train, dataset.y_train, epochs=2, batch_size=64, verbose=0)


def constrained_norms(model):
    """(norm of each output unit's incoming weights, the layer's c) for every MaxNorm kernel."""
    for layer in model.layers:
        constraint = getattr(layer, "kernel_constraint", None)
        if isinstance(constraint, keras.constraints.MaxNorm):
            kernel = np.asarray(layer.kernel)
            axes = tuple(range(kernel.ndim - 1))
            yield np.sqrt((kernel**2).sum(axis=axes)), constraint.max_value


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_trained_kernels_respect_max_norm(digits, architecture):
    config = ModelConfig(architecture=architecture, hidden_units=(32,), max_norm_value=0.5,
                         conv_filters=(4,))
    model = build_model(config, digits.input_shape, 10, digits.x_train, digits.value_range)
    fit_briefly(model, digits)
    norms = list(constrained_norms(model))
    assert len(norms) == (3 if architecture == "cnn" else 2)
    for column_norms, c in norms:
        assert column_norms.max() <= c + 1e-5
    # the constraint binds: a large learning rate pushes some columns onto it
    assert any(np.isclose(column_norms.max(), c, rtol=1e-3) for column_norms, c in norms)


def test_dropout_and_preprocessing_are_inside_the_model(digits):
    model = build_model(ModelConfig(hidden_units=(16, 8)), digits.input_shape, 10,
                        digits.x_train, digits.value_range)
    names = [type(layer).__name__ for layer in model.layers]
    assert names[:3] == ["Flatten", "Rescaling", "Normalization"]
    assert names.count("Dropout") == 3  # input + two hidden
    # raw pixels in, normalised features out of the preprocessing layers
    features = model.layers[2](model.layers[1](model.layers[0](digits.x_train)))
    assert abs(float(np.mean(features))) < 0.05


def test_selu_uses_alpha_dropout_and_lecun_initialisation(digits):
    model = build_model(ModelConfig(activation="selu", hidden_units=(16,)), digits.input_shape,
                        10, digits.x_train, digits.value_range)
    assert any(isinstance(layer, keras.layers.AlphaDropout) for layer in model.layers)
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    assert type(dense.kernel_initializer).__name__ == "LecunNormal"


def test_store_round_trip_keeps_predictions(digits):
    model = build_model(ModelConfig(hidden_units=(16,), batch_norm=True), digits.input_shape,
                        10, digits.x_train, digits.value_range)
    fit_briefly(model, digits, learning_rate=0.01)
    card = ModelCard(
        dataset="digits", class_names=list(digits.class_names), input_shape=[8, 8],
        value_range=digits.value_range, architecture="mlp", max_norm_value=3.0,
        dropout_rates={"input_dropout": 0.2}, default_n_samples=30,
        test_metrics={"mc": {"accuracy": 0.5}},
        conformal_alpha=0.1, training={"epochs": 2},
        calibrations=[Calibration(
            n_samples=30,
            risk_policy=RiskPolicy("mutual_information", 0.1, 0.02, 0.8, 0.01, {}),
            conformal_quantile=0.5,
            novelty_policy=NoveltyPolicy("mutual_information", 0.2, 0.02, 0.019),
        )],
    )
    tag = save_classifier(model, card, "uq-round-trip")
    loaded, loaded_card, loaded_tag = load_classifier("uq-round-trip:latest")
    assert loaded_tag == tag and bentoml.models.get(tag).tag.name == "uq-round-trip"
    assert loaded_card == card
    np.testing.assert_array_equal(loaded.predict(digits.x_test, verbose=0),
                                  model.predict(digits.x_test, verbose=0))
    # the engine takes the loaded model too, and draws the same samples
    np.testing.assert_array_equal(MCEngine(loaded).sample(digits.x_test[:5], 10, seed=1),
                                  MCEngine(model).sample(digits.x_test[:5], 10, seed=1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input_dropout": 1.0}, r"input_dropout must lie in \[0, 1\)"),
        ({"hidden_dropout": -0.1}, "hidden_dropout"),
        ({"max_norm_value": 0.0}, "max_norm_value must be > 0"),
        ({"hidden_units": ()}, "hidden_units"),
        ({"activation": "tanh"}, "activation must be one of"),
    ],
)
def test_impossible_hyperparameters_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**options)
