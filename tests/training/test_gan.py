import re
import subprocess
import sys

import bentoml
import keras
import numpy as np
import pytest
from PIL import Image

from artifacts.cards import GeneratorCard
from artifacts.store import load_generator, save_generator
from training.data import Dataset, load_dataset
from training.gan import (
    GAN,
    build_discriminator,
    build_generator,
    discriminator_targets,
    generate,
    grid_latent,
)
from training.train_gan import main

TINY = ["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--latent-dim", "8"]


def stored(name: str) -> list[str]:
    return [str(model.tag) for model in bentoml.models.list() if model.tag.name == name]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_28x28_dataset() -> Dataset:
    """Random uint8-range images with the shape and value range of Fashion-MNIST."""
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28)).astype(np.float32)
    labels = np.arange(8) % 2
    return Dataset("tiny28", images, labels, images, labels, images, labels,
                   ("a", "b"), (0.0, 255.0))


def test_targets_are_smoothed_and_noisy_by_default():
    real, fake = discriminator_targets(1000, label_smoothing=0.1, label_noise=0.05, seed=0)
    real, fake = np.asarray(real), np.asarray(fake)
    assert real.shape == fake.shape == (1000, 1)
    assert 0.85 <= real.min() < real.max() <= 0.95 and real.max() < 1
    assert 0.05 <= fake.min() < fake.max() <= 0.15 and fake.min() > 0
    assert abs(real.mean() - 0.9) < 0.01 and abs(fake.mean() - 0.1) < 0.01


def test_targets_are_hard_without_smoothing_or_noise():
    real, fake = discriminator_targets(16, label_smoothing=0.0, label_noise=0.0)
    np.testing.assert_array_equal(real, np.ones((16, 1)))
    np.testing.assert_array_equal(fake, np.zeros((16, 1)))


def test_noisy_targets_are_clipped_to_zero_and_one():
    real, fake = discriminator_targets(1000, label_smoothing=0.0, label_noise=0.2, seed=0)
    assert np.asarray(real).max() == 1 and np.asarray(real).min() >= 0.8
    assert np.asarray(fake).min() == 0 and np.asarray(fake).max() <= 0.2


def tiny_gan(dataset: Dataset, preset: str = "dense") -> GAN:
    generator = build_generator(preset, 8, dataset.input_shape, dataset.value_range)
    discriminator = build_discriminator(preset, dataset.input_shape, dataset.value_range)
    gan = GAN(generator, discriminator, seed=0)
    gan.compile(discriminator_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
                generator_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    return gan


def test_a_tiny_gan_trains_and_its_losses_stay_finite(digits):
    gan = tiny_gan(digits)
    before = [np.copy(weight) for weight in gan.generator.get_weights()]
    history = gan.fit(digits.x_train[:256], epochs=2, batch_size=32, verbose=0).history
    assert set(history) == {"discriminator_loss", "generator_loss",
                            "real_accuracy", "fake_accuracy"}
    for name in ("discriminator_loss", "generator_loss"):
        assert all(np.isfinite(history[name])) and all(value > 0 for value in history[name])
    for name in ("real_accuracy", "fake_accuracy"):
        assert all(0 <= value <= 1 for value in history[name])
    after = gan.generator.get_weights()
    assert any(not np.array_equal(old, new) for old, new in zip(before, after, strict=True))


@pytest.mark.parametrize("preset", ["dense", "dcgan"])
def test_generator_output_is_the_classifiers_input_on_digits(digits, preset):
    generator = tiny_gan(digits, preset).generator
    images = generate(generator, grid_latent(8, seed=0) * 10)  # large latents: saturate tanh
    assert images.shape == (100, 8, 8)
    assert images.min() >= 0 and images.max() <= 16 and images.max() > images.min()


def test_dcgan_output_is_28x28_in_0_255_after_training():
    dataset = tiny_28x28_dataset()
    gan = tiny_gan(dataset, "dcgan")
    gan.fit(dataset.x_train, epochs=1, batch_size=4, verbose=0)
    images = generate(gan.generator, grid_latent(8, seed=0) * 10)
    assert gan.generator.output_shape == (None, 28, 28)
    assert images.shape == (100, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.max() > images.min()
    logits = gan.discriminator(images[:4], training=False)  # the discriminator takes them too
    assert logits.shape == (4, 1)


def test_dcgan_for_colour_images_keeps_the_channels():
    generator = build_generator("dcgan", 8, (32, 32, 3), (0.0, 255.0))
    assert generator.output_shape == (None, 32, 32, 3)
    assert build_discriminator("dcgan", (32, 32, 3), (0.0, 255.0)).output_shape == (None, 1)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [("label_smoothing", 0.5, "label_smoothing must lie in [0, 0.5)"),
     ("label_noise", -0.1, "label_noise must lie in [0, 0.5)")],
)
def test_gan_refuses_bad_target_settings(digits, keyword, value, message):
    generator = build_generator("dense", 8, digits.input_shape, digits.value_range)
    discriminator = build_discriminator("dense", digits.input_shape, digits.value_range)
    with pytest.raises(ValueError, match=re.escape(message)):
        GAN(generator, discriminator, **{keyword: value})


def test_uq_train_gan_end_to_end_on_digits(tmp_path, capsys):
    code = main([*TINY, "--model-name", "uq-gan-e2e", "--output-dir", str(tmp_path)])
    assert code == 0
    [tag] = stored("uq-gan-e2e")
    out = capsys.readouterr().out
    assert f"saved {tag}" in out and str(tmp_path / "samples.png") in out
    entry = bentoml.models.get(tag)
    assert entry.info.labels == {"kind": "generator", "dataset": "digits", "preset": "dense"}
    card = GeneratorCard.model_validate(entry.info.metadata)
    assert card.output_shape == [8, 8] and card.value_range == (0.0, 16.0)
    assert card.latent_dim == 8 and card.preset == "dense" and card.dataset == "digits"
    assert card.training["label_smoothing"] == 0.1 and card.training["label_noise"] == 0.05
    assert set(card.metrics) == {"discriminator_loss", "generator_loss",
                                 "real_accuracy", "fake_accuracy"}
    for name in ("samples.png", "samples_epoch_001.png", "samples_epoch_002.png"):
        with Image.open(tmp_path / name) as grid:
            assert grid.format == "PNG" and grid.size == (300, 300)  # 10 x 10 of (8 + 2) x 3

    generator, loaded_card, loaded_tag = load_generator(tag)
    assert loaded_tag == tag and loaded_card == card and not generator.compiled
    images = generate(generator, grid_latent(card.latent_dim, seed=5))
    assert images.shape == (100, 8, 8) and images.min() >= 0 and images.max() <= 16


def test_save_and_load_give_identical_generator_outputs(digits):
    gan = tiny_gan(digits)
    gan.fit(digits.x_train[:128], epochs=1, batch_size=32, verbose=0)  # moves BatchNorm stats
    card = GeneratorCard(dataset="digits", latent_dim=8, output_shape=[8, 8],
                         value_range=(0.0, 16.0), preset="dense", training={}, metrics={})
    tag = save_generator(gan.generator, card, "uq-gan-round-trip")
    generator, loaded_card, loaded_tag = load_generator(bentoml.models.get(tag))
    latent = grid_latent(8, seed=1)
    np.testing.assert_array_equal(generate(generator, latent), generate(gan.generator, latent))
    assert loaded_card == card and loaded_tag == tag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--dataset", "npz:/nonexistent.npz"], "cannot read /nonexistent.npz"),
        (["--dataset", "npz:{no_labels}"], "lacks the array(s) y_train"),
        ([*TINY, "--epochs", "0"], "epochs must be >= 1"),
        ([*TINY, "--batch-size", "0"], "batch_size must be >= 1"),
        ([*TINY, "--latent-dim", "0"], "latent_dim must be >= 1"),
        ([*TINY, "--label-smoothing", "0.5"], "label_smoothing must lie in [0, 0.5)"),
        ([*TINY, "--label-smoothing", "-0.1"], "label_smoothing must lie in [0, 0.5)"),
        ([*TINY, "--label-noise", "0.5"], "label_noise must lie in [0, 0.5)"),
        ([*TINY, "--learning-rate", "0"], "learning_rate must be > 0"),
        ([*TINY, "--model-name", "Bad Name!"], "not a valid BentoML name"),
        ([*TINY, "--preset", "vae"], "invalid choice: 'vae'"),
        ([*TINY, "--epochs", "many"], "invalid int value: 'many'"),
        (["--dataset", "npz:{flat}", "--preset", "dcgan"], "the dcgan preset needs images"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_stored(tmp_path, capsys, argv, message):
    np.savez(tmp_path / "flat.npz", x_train=np.zeros((20, 5)), y_train=np.arange(20) % 2)
    np.savez(tmp_path / "no_labels.npz", x_train=np.zeros((20, 5)))
    argv = [arg.format(flat=tmp_path / "flat.npz", no_labels=tmp_path / "no_labels.npz")
            for arg in argv]
    if "--model-name" not in argv:
        argv += ["--model-name", "uq-gan-bad"]
    before = len(bentoml.models.list())
    try:
        code = main([*argv, "--output-dir", str(tmp_path / "out")])
    except SystemExit as exit:  # argparse's own type errors
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert len(bentoml.models.list()) == before
    assert not (tmp_path / "out").exists()


def test_console_script_exits_2_with_one_line_before_loading_tensorflow():
    code = ("import sys; from training.train_gan import main; code = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules; sys.exit(code)")
    result = subprocess.run(
        [sys.executable, "-c", code, "--dataset", "digits", "--label-noise", "0.7"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "uq-train-gan: error: label_noise must lie in [0, 0.5), got 0.7\n"
