"""Model presets: the classic dropout + max-norm MLP (default) and a small conv net.

Preprocessing sits inside the model: ``Rescaling`` maps the raw value range to
[0, 1] and ``Normalization`` (adapted on the training images) standardises each
feature, so the served model takes raw pixels. Both presets end in softmax.
"""

from __future__ import annotations

import keras
import numpy as np

from training.config import ModelConfig

#: Whether the training step is compiled with XLA, per architecture: XLA's CPU code was
#: faster for the MLP (18 against 26 ms a step of 128 on the 2-core machine) and slower
#: for the conv net, whose convolutions oneDNN runs on both cores (about 50 ms a step
#: without XLA, 63-68 ms with it). Either way, some epochs of the conv net run at about
#: 85 ms a step on one core (a quarter of them without XLA); why is not known.
TRAIN_WITH_XLA = {"mlp": "auto", "cnn": False}

#: Floor on each feature's variance after rescaling to [0, 1]: a pixel that is
#: (nearly) constant in training must not turn a small change into a huge input.
VARIANCE_FLOOR = 1e-2


def preprocessing(
    x_train: np.ndarray, value_range: tuple[float, float]
) -> list[keras.layers.Layer]:
    """Rescale the raw range to [0, 1], then standardise each feature (the last axis)
    with the mean and variance of ``x_train``."""
    low, high = value_range
    scale = 1.0 / (high - low) if high > low else 1.0
    rescaled = (x_train.astype(np.float64) - low) * scale
    features = rescaled.reshape(-1, rescaled.shape[-1])
    return [
        keras.layers.Rescaling(scale, offset=-low * scale, name="rescaling"),
        keras.layers.Normalization(
            axis=-1,
            mean=features.mean(axis=0),
            variance=np.maximum(features.var(axis=0), VARIANCE_FLOOR),
            name="normalization",
        ),
    ]


def build_model(
    config: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    x_train: np.ndarray,
    value_range: tuple[float, float],
) -> keras.Model:
    """A model from raw pixels ``[batch, *input_shape]`` to probabilities ``[batch, classes]``."""
    if config.architecture == "cnn":
        body = _cnn_layers(config, input_shape)
    else:
        body = _mlp_layers(config)
    constraint = keras.constraints.MaxNorm(config.max_norm_value)
    output = keras.layers.Dense(
        num_classes, activation="softmax", kernel_constraint=constraint, name="probabilities"
    )
    inputs = keras.Input(input_shape, name="pixels")
    layers = [*_input_layers(config, input_shape, x_train, value_range), *body, output]
    return keras.Sequential([inputs, *layers], name=f"uq_{config.architecture}")


def _dropout_layer(config: ModelConfig) -> type[keras.layers.Layer]:
    return keras.layers.AlphaDropout if config.activation == "selu" else keras.layers.Dropout


def _initializer(config: ModelConfig) -> str:
    return "lecun_normal" if config.activation == "selu" else "he_normal"


def _input_layers(config, input_shape, x_train, value_range) -> list[keras.layers.Layer]:
    if config.architecture == "cnn":
        channels = [] if len(input_shape) == 3 else [keras.layers.Reshape((*input_shape, 1))]
        images = x_train.reshape(len(x_train), *input_shape[:2], -1)
        return [*channels, *preprocessing(images, value_range)]
    flat = x_train.reshape(len(x_train), -1)
    return [keras.layers.Flatten(name="flatten"), *preprocessing(flat, value_range)]


def _mlp_layers(config: ModelConfig) -> list[keras.layers.Layer]:
    constraint = keras.constraints.MaxNorm(config.max_norm_value)
    layers: list[keras.layers.Layer] = []
    if config.input_dropout > 0:
        layers.append(_dropout_layer(config)(config.input_dropout, name="input_dropout"))
    for index, units in enumerate(config.hidden_units):
        layers.append(keras.layers.Dense(
            units, activation=None if config.batch_norm else config.activation,
            kernel_initializer=_initializer(config), kernel_constraint=constraint,
            name=f"dense_{index}",
        ))
        if config.batch_norm:
            layers += [
                keras.layers.BatchNormalization(name=f"batch_norm_{index}"),
                keras.layers.Activation(config.activation, name=f"activation_{index}"),
            ]
        if config.hidden_dropout > 0:
            layers.append(_dropout_layer(config)(config.hidden_dropout, name=f"dropout_{index}"))
    return layers


def _cnn_layers(config: ModelConfig, input_shape: tuple[int, ...]) -> list[keras.layers.Layer]:
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"the cnn preset needs images [height, width(, channels)], got {input_shape}"
        )
    constraint = keras.constraints.MaxNorm(config.max_norm_value, axis=[0, 1, 2])
    layers: list[keras.layers.Layer] = []
    for index, filters in enumerate(config.conv_filters):
        layers += [
            keras.layers.Conv2D(
                filters, 3, padding="same", activation=config.activation,
                kernel_initializer=_initializer(config), kernel_constraint=constraint,
                name=f"conv_{index}",
            ),
            keras.layers.MaxPooling2D(name=f"pool_{index}"),
        ]
        if config.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"conv_batch_norm_{index}"))
        if config.conv_dropout > 0:
            layers.append(
                keras.layers.SpatialDropout2D(config.conv_dropout, name=f"spatial_dropout_{index}")
            )
    layers.append(keras.layers.Flatten(name="flatten"))
    return layers + _mlp_layers(config)
