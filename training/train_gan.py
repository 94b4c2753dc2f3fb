"""uq-train-gan: train a GAN on a classifier's dataset and store its generator.

    uq-train-gan                                    # Fashion-MNIST, the DCGAN preset
    uq-train-gan --dataset digits --epochs 200      # 8x8 digits, the dense preset

The story: load the dataset with uq-train's loaders (training and validation
rows together: a GAN holds nothing out) -> build a generator whose output is the
classifier's input (same shape, raw value range) and a discriminator that takes
raw-range images -> fit the two against each other, the discriminator on
smoothed, noisy targets, drawing a grid of samples after every epoch -> save the
generator alone, uncompiled, with its card to the BentoML model store -> draw
the final grid, ``samples.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from artifacts.cards import GeneratorCard, training_record
from artifacts.store import DEFAULT_GENERATOR_NAME, save_generator
from commandline.arguments import OneLineErrorParser, fail
from training.config import check_model_name
from training.data import DATASET_NAMES, Dataset, DatasetError, load_dataset

PRESETS = ("dense", "dcgan")  # training.gan's builders; named here to check flags without Keras
#: Image sizes (height, width) that get the dcgan preset when none is asked for.
DCGAN_DEFAULT_SIZES = ((28, 28), (32, 32))


@dataclasses.dataclass(frozen=True)
class GanConfig:
    dataset: str = "fashion_mnist"
    model_name: str = DEFAULT_GENERATOR_NAME
    epochs: int = 10
    batch_size: int = 64
    latent_dim: int = 64
    preset: str | None = None  # None: dcgan for 28x28 and 32x32 images, dense otherwise
    label_smoothing: float = 0.1  # discriminator targets: real 0.9, fake 0.1
    label_noise: float = 0.05  # plus uniform noise in [-0.05, 0.05]
    learning_rate: float = 2e-4  # Adam with beta_1 = 0.5, for both networks
    seed: int = 0
    output_dir: Path = Path("reports/gan")

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}"),
            (self.preset is None or self.preset in PRESETS,
             f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}"),
            (0 <= self.label_smoothing < 0.5,
             f"label_smoothing must lie in [0, 0.5), got {self.label_smoothing}"),
            (0 <= self.label_noise < 0.5,
             f"label_noise must lie in [0, 0.5), got {self.label_noise}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_model_name(self.model_name)


@dataclasses.dataclass(frozen=True)
class GanResult:
    tag: str
    card: GeneratorCard
    grid_path: Path


def build_parser() -> argparse.ArgumentParser:
    defaults = GanConfig()
    parser = OneLineErrorParser(
        prog="uq-train-gan", description="Train a GAN and store its generator."
    )
    add = parser.add_argument
    add("--dataset", default=defaults.dataset,
        help=f"one of {', '.join(DATASET_NAMES)} (default: %(default)s)")
    add("--model-name", default=defaults.model_name, help="store name (default: %(default)s)")
    add("--epochs", type=int, default=defaults.epochs, help="(default: %(default)s)")
    add("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    add("--latent-dim", type=int, default=defaults.latent_dim,
        help="size of the generator's standard-normal input (default: %(default)s)")
    add("--preset", choices=PRESETS,
        help="default: dcgan for 28x28 and 32x32 images, dense otherwise")
    add("--label-smoothing", type=float, default=defaults.label_smoothing,
        help="discriminator targets 1 - s for real and s for generated images "
        "(default: %(default)s)")
    add("--label-noise", type=float, default=defaults.label_noise,
        help="uniform noise in [-n, n] added to those targets (default: %(default)s)")
    add("--learning-rate", type=float, default=defaults.learning_rate,
        help="Adam (beta_1 0.5) for both networks (default: %(default)s)")
    add("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    add("--output-dir", type=Path, default=defaults.output_dir,
        help="sample grids and history.csv (default: %(default)s)")
    return parser


def parse_config(argv: list[str] | None) -> GanConfig:
    """Flags over defaults. Raises ValueError with a one-line message."""
    args = build_parser().parse_args(argv)
    return GanConfig(**vars(args))


def choose_preset(preset: str | None, image_shape: tuple[int, ...]) -> str:
    """The asked-for preset, checked against the images, or the default for them."""
    is_image = len(image_shape) in (2, 3)
    if preset is None:
        return "dcgan" if is_image and image_shape[:2] in DCGAN_DEFAULT_SIZES else "dense"
    if preset == "dcgan" and not (is_image and image_shape[0] % 4 == image_shape[1] % 4 == 0):
        raise ValueError(
            "the dcgan preset needs images [height, width(, channels)] with height and width "
            f"multiples of 4, got rows of shape {image_shape}"
        )
    return preset


def train_gan(config: GanConfig, dataset: Dataset, callbacks: tuple = ()) -> GanResult:
    """Fit the GAN, store the generator, draw the final grid. ``callbacks``: extra Keras ones."""
    import keras

    from training.gan import (  # imports TensorFlow: uq-train-gan's arguments are checked first
        GAN,
        SampleGrid,
        build_discriminator,
        build_generator,
        generate,
        grid_latent,
        save_sample_grid,
    )

    keras.utils.set_random_seed(config.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    preset = choose_preset(config.preset, dataset.input_shape)
    images = np.concatenate([dataset.x_train, dataset.x_val])  # [n, *input_shape], raw values
    generator = build_generator(preset, config.latent_dim, dataset.input_shape,
                                dataset.value_range)
    gan = GAN(
        generator, build_discriminator(preset, dataset.input_shape, dataset.value_range),
        label_smoothing=config.label_smoothing, label_noise=config.label_noise, seed=config.seed,
    )
    gan.compile(
        discriminator_optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=0.5),
        generator_optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=0.5),
    )
    latent = grid_latent(config.latent_dim, config.seed)  # [100, latent_dim], every grid's
    started = time.perf_counter()
    history = gan.fit(
        images, epochs=config.epochs, batch_size=config.batch_size,
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[
            SampleGrid(config.output_dir, dataset.value_range, latent),
            keras.callbacks.CSVLogger(str(config.output_dir / "history.csv")),
            *callbacks,
        ],
    )
    fit_seconds = time.perf_counter() - started
    card = GeneratorCard(
        dataset=dataset.name,
        latent_dim=config.latent_dim,
        output_shape=list(dataset.input_shape),
        value_range=dataset.value_range,
        preset=preset,
        training={**training_record(dataclasses.replace(config, preset=preset)),
                  "fit_seconds": round(fit_seconds, 1)},
        metrics={name: float(values[-1]) for name, values in history.history.items()},
    )
    tag = save_generator(generator, card, config.model_name)
    grid_path = config.output_dir / "samples.png"
    save_sample_grid(generate(generator, latent), dataset.value_range, grid_path)
    return GanResult(tag=tag, card=card, grid_path=grid_path)


def summary(result: GanResult) -> str:
    metrics = result.card.metrics
    return "\n".join([
        "last epoch: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()),
        f"saved {result.tag} ({result.card.preset} generator: latent_dim "
        f"{result.card.latent_dim} -> {result.card.output_shape} in "
        f"[{result.card.value_range[0]:g}, {result.card.value_range[1]:g}])",
        f"samples in {result.grid_path} (one grid per epoch beside it)",
    ])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv)
        dataset = load_dataset(config.dataset, seed=config.seed)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        preset = choose_preset(config.preset, dataset.input_shape)
        low, high = dataset.value_range
        print(f"{dataset.name}: {len(dataset.x_train) + len(dataset.x_val)} images of shape "
              f"{dataset.input_shape} in [{low:g}, {high:g}]; the {preset} preset", flush=True)
        result = train_gan(config, dataset)
    except (ValueError, DatasetError) as error:
        return fail("uq-train-gan", str(error))
    except KeyboardInterrupt:
        print("uq-train-gan: interrupted; nothing was saved", file=sys.stderr)
        return 130
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
