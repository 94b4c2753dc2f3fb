"""A GAN whose generator makes inputs the classifier takes: the dataset's raw shape and range.

    generator = build_generator("dcgan", latent_dim=64, image_shape=(28, 28),
                                value_range=(0.0, 255.0))
    discriminator = build_discriminator("dcgan", (28, 28), (0.0, 255.0))
    gan = GAN(generator, discriminator, label_smoothing=0.1, label_noise=0.05, seed=0)
    gan.compile(discriminator_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
                generator_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    gan.fit(images, epochs=10, batch_size=64,
            callbacks=[SampleGrid(Path("reports/gan"), (0.0, 255.0), grid_latent(64, seed=0))])

The discriminator learns from smoothed, noisy targets (real about 0.9, fake about
0.1, each plus a little uniform noise) so that it does not become overconfident
and starve the generator of gradient; the generator is trained against hard
"real" targets. Both networks see raw-range images: the generator's tanh output
is mapped to the dataset's value range and the discriminator maps that range
back to [-1, 1], so real and generated images share one scale. Latent vectors
are standard normal.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

LEAKY_SLOPE = 0.2
DISCRIMINATOR_DROPOUT = 0.3
#: Samples on a grid: GRID_SIDE x GRID_SIDE images, each drawn GRID_ZOOM times larger.
GRID_SIDE = 10
GRID_ZOOM = 3


def discriminator_targets(
    batch_size, label_smoothing: float, label_noise: float, seed=None
) -> tuple:
    """The discriminator's targets for a batch of real and one of generated images:
    ``1 - label_smoothing`` and ``label_smoothing``, each plus uniform noise in
    ``[-label_noise, label_noise]``, clipped to [0, 1]. Two tensors [batch_size, 1]."""
    real = keras.ops.full((batch_size, 1), 1.0 - label_smoothing)
    fake = keras.ops.full((batch_size, 1), label_smoothing)
    if label_noise > 0:
        real += keras.random.uniform((batch_size, 1), -label_noise, label_noise, seed=seed)
        fake += keras.random.uniform((batch_size, 1), -label_noise, label_noise, seed=seed)
    return keras.ops.clip(real, 0.0, 1.0), keras.ops.clip(fake, 0.0, 1.0)


class GAN(keras.Model):
    """A generator and a discriminator trained against each other by ``fit(images)``.

    ``fit`` takes raw-range images ``[batch, *image_shape]`` and reports the
    discriminator's and the generator's losses and the discriminator's accuracy
    on real and on generated images, each averaged over the epoch.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        label_smoothing: float = 0.1,
        label_noise: float = 0.05,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
        if not 0 <= label_noise < 0.5:
            raise ValueError(f"label_noise must lie in [0, 0.5), got {label_noise}")
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = generator.input_shape[-1]
        self.label_smoothing = label_smoothing
        self.label_noise = label_noise
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.discriminator_loss_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.generator_loss_tracker = keras.metrics.Mean(name="generator_loss")
        self.real_accuracy = keras.metrics.BinaryAccuracy(name="real_accuracy", threshold=0.0)
        self.fake_accuracy = keras.metrics.BinaryAccuracy(name="fake_accuracy", threshold=0.0)

    def compile(self, discriminator_optimizer, generator_optimizer):
        super().compile()
        self.discriminator_optimizer = discriminator_optimizer
        self.generator_optimizer = generator_optimizer
        self.loss_function = keras.losses.BinaryCrossentropy(from_logits=True)

    @property
    def metrics(self):
        return [self.discriminator_loss_tracker, self.generator_loss_tracker,
                self.real_accuracy, self.fake_accuracy]

    def train_step(self, data):
        real_images = keras.utils.unpack_x_y_sample_weight(data)[0]  # [batch, *image_shape]
        batch_size = keras.ops.shape(real_images)[0]
        self._train_discriminator(real_images, batch_size)
        self._train_generator(batch_size)
        return {metric.name: metric.result() for metric in self.metrics}

    def _latent(self, batch_size):
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def _train_discriminator(self, real_images, batch_size) -> None:
        real_targets, fake_targets = discriminator_targets(
            batch_size, self.label_smoothing, self.label_noise, self.seed_generator
        )
        fake_images = self.generator(self._latent(batch_size), training=True)
        with tf.GradientTape() as tape:
            # separate batches, so BatchNormalization never mixes real and generated images
            real_logits = self.discriminator(real_images, training=True)  # [batch, 1]
            fake_logits = self.discriminator(fake_images, training=True)  # [batch, 1]
            loss = 0.5 * (self.loss_function(real_targets, real_logits)
                          + self.loss_function(fake_targets, fake_logits))
        weights = self.discriminator.trainable_weights
        gradients = tape.gradient(loss, weights)
        self.discriminator_optimizer.apply_gradients(zip(gradients, weights, strict=True))
        self.discriminator_loss_tracker.update_state(loss)
        self.real_accuracy.update_state(keras.ops.ones_like(real_logits), real_logits)
        self.fake_accuracy.update_state(keras.ops.zeros_like(fake_logits), fake_logits)

    def _train_generator(self, batch_size) -> None:
        latent = self._latent(batch_size)
        with tf.GradientTape() as tape:
            fake_logits = self.discriminator(self.generator(latent, training=True), training=True)
            loss = self.loss_function(keras.ops.ones_like(fake_logits), fake_logits)
        weights = self.generator.trainable_weights
        gradients = tape.gradient(loss, weights)
        self.generator_optimizer.apply_gradients(zip(gradients, weights, strict=True))
        self.generator_loss_tracker.update_state(loss)


def build_generator(
    preset: str, latent_dim: int, image_shape: tuple[int, ...], value_range: tuple[float, float]
) -> keras.Model:
    """Latent vectors [batch, latent_dim] -> images [batch, *image_shape] in ``value_range``."""
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    body = _bodies(preset, image_shape)[0](image_shape)
    low, high = value_range
    layers = [
        *body,
        keras.layers.Rescaling((high - low) / 2, offset=(high + low) / 2, name="to_value_range"),
        keras.layers.Reshape(image_shape, name="image"),
    ]
    return keras.Sequential([keras.Input((latent_dim,), name="latent"), *layers],
                            name=f"{preset}_generator")


def build_discriminator(
    preset: str, image_shape: tuple[int, ...], value_range: tuple[float, float]
) -> keras.Model:
    """Raw-range images [batch, *image_shape] -> logits [batch, 1] (positive: real)."""
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must have high > low, got {value_range}")
    from_value_range = keras.layers.Rescaling(
        2 / (high - low), offset=-(high + low) / (high - low), name="from_value_range"
    )
    body = _bodies(preset, image_shape)[1](image_shape)
    return keras.Sequential(
        [keras.Input(image_shape, name="image"), from_value_range, *body,
         keras.layers.Dense(1, name="logit")],
        name=f"{preset}_discriminator",
    )


def _bodies(preset: str, image_shape: tuple[int, ...]):
    """The preset's (generator layers, discriminator layers) builders, each taking image_shape."""
    presets = {"dense": (_dense_generator, _dense_discriminator),
               "dcgan": (_dcgan_generator, _dcgan_discriminator)}
    if preset not in presets:
        raise ValueError(f"preset must be one of {', '.join(presets)}, got {preset!r}")
    if preset == "dcgan" and not (
        len(image_shape) in (2, 3) and image_shape[0] % 4 == 0 and image_shape[1] % 4 == 0
    ):
        raise ValueError(
            "the dcgan preset needs images [height, width(, channels)] with height and width "
            f"multiples of 4, got {image_shape}"
        )
    return presets[preset]


def _dense_generator(image_shape: tuple[int, ...]) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for index, units in enumerate((256, 512)):
        layers += [
            keras.layers.Dense(units, use_bias=False, name=f"dense_{index}"),
            keras.layers.BatchNormalization(name=f"batch_norm_{index}"),
            keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"leaky_relu_{index}"),
        ]
    return [*layers, keras.layers.Dense(math.prod(image_shape), activation="tanh", name="pixels")]


def _dense_discriminator(image_shape: tuple[int, ...]) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = [keras.layers.Flatten(name="flatten")]
    for index, units in enumerate((512, 256)):
        layers += [
            keras.layers.Dense(units, name=f"dense_{index}"),
            keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"leaky_relu_{index}"),
            keras.layers.Dropout(DISCRIMINATOR_DROPOUT, name=f"dropout_{index}"),
        ]
    return layers


def _dcgan_generator(image_shape: tuple[int, ...]) -> list[keras.layers.Layer]:
    """Dense to a quarter-size feature map, then two stride-2 transposed convolutions."""
    height, width = image_shape[:2]
    channels = image_shape[2] if len(image_shape) == 3 else 1
    return [
        keras.layers.Dense(height // 4 * width // 4 * 128, use_bias=False, name="project"),
        keras.layers.BatchNormalization(name="batch_norm_0"),
        keras.layers.ReLU(name="relu_0"),
        keras.layers.Reshape((height // 4, width // 4, 128), name="feature_map"),
        keras.layers.Conv2DTranspose(64, 4, strides=2, padding="same", use_bias=False,
                                     name="upsample_1"),
        keras.layers.BatchNormalization(name="batch_norm_1"),
        keras.layers.ReLU(name="relu_1"),
        keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", activation="tanh",
                                     name="pixels"),
    ]


def _dcgan_discriminator(image_shape: tuple[int, ...]) -> list[keras.layers.Layer]:
    """Two stride-2 convolutions with LeakyReLU (BatchNormalization on the second).

    Narrower than the generator (32 and 64 filters, not 64 and 128): on Fashion-MNIST
    a step costs half as much and the samples were cleaner after the same wall time."""
    channels = [] if len(image_shape) == 3 else [
        keras.layers.Reshape((*image_shape, 1), name="add_channel")]
    return [
        *channels,
        keras.layers.Conv2D(32, 4, strides=2, padding="same", name="conv_0"),
        keras.layers.LeakyReLU(LEAKY_SLOPE, name="leaky_relu_0"),
        keras.layers.Conv2D(64, 4, strides=2, padding="same", use_bias=False, name="conv_1"),
        keras.layers.BatchNormalization(name="batch_norm_1"),
        keras.layers.LeakyReLU(LEAKY_SLOPE, name="leaky_relu_1"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dropout(DISCRIMINATOR_DROPOUT, name="dropout"),
    ]


def generate(generator: keras.Model, latent: np.ndarray) -> np.ndarray:
    """Latent vectors [count, latent_dim] -> images [count, *image_shape], inference mode."""
    return keras.ops.convert_to_numpy(generator(latent, training=False))


def save_sample_grid(
    images: np.ndarray, value_range: tuple[float, float], path: Path
) -> None:
    """Tile images [count, height, width(, channels)] into a square grid PNG."""
    low, high = value_range
    pixels = np.clip((images - low) / (high - low) * 255, 0, 255).round().astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[..., None]  # [count, height, width, channels]
    count, height, width, channels = pixels.shape
    side = math.ceil(math.sqrt(count))
    padded = np.zeros((side * side, height + 2, width + 2, channels), np.uint8)
    padded[:count, 1:-1, 1:-1] = pixels
    grid = padded.reshape(side, side, height + 2, width + 2, channels).swapaxes(1, 2)
    grid = grid.reshape(side * (height + 2), side * (width + 2), channels)
    grid = grid.repeat(GRID_ZOOM, axis=0).repeat(GRID_ZOOM, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if channels == 1 else grid).save(path)


class SampleGrid(keras.callbacks.Callback):
    """After every epoch, draw the generator's images for fixed latent vectors into
    ``directory / "samples_epoch_NNN.png"``: one grid per stage of training."""

    def __init__(self, directory: Path, value_range: tuple[float, float], latent: np.ndarray):
        super().__init__()
        self.directory = directory
        self.value_range = value_range
        self.latent = latent  # [count, latent_dim], fixed so that the grids are comparable

    def on_epoch_end(self, epoch, logs=None):
        images = generate(self.model.generator, self.latent)
        save_sample_grid(images, self.value_range,
                         self.directory / f"samples_epoch_{epoch + 1:03d}.png")


def grid_latent(latent_dim: int, seed: int) -> np.ndarray:
    """The fixed latent vectors of the sample grids: [GRID_SIDE**2, latent_dim]."""
    return np.random.default_rng(seed).standard_normal((GRID_SIDE**2, latent_dim), np.float32)
