import itertools

import numpy as np
import pytest

from training.augment import augmented_batches, max_shift


def shifted(image: np.ndarray, rows: int, columns: int, background: float) -> np.ndarray:
    """``image`` [H, W] moved down by ``rows`` and right by ``columns``, border filled."""
    height, width = image.shape
    padded = np.pad(image, 2, constant_values=background)
    return padded[2 - rows : 2 - rows + height, 2 - columns : 2 - columns + width]


def test_every_image_is_a_shift_of_its_own_with_the_background_around():
    x = np.arange(1, 1 + 6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)  # no two pixels equal
    y = np.arange(6)
    seen_shifts = set()
    batches = augmented_batches(x, y, 4, background=-1.0, seed=0)
    for images, labels in itertools.chain.from_iterable(itertools.repeat(batches, 10)):
        assert images.shape[1:] == (8, 8)
        for image, label in zip(images.numpy(), labels.numpy(), strict=True):
            shifts = [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)
                      if np.array_equal(image, shifted(x[label], r, c, -1.0))]
            assert len(shifts) == 1, "each image is exactly one shift of its own source"
            seen_shifts.add(shifts[0])
    assert len(seen_shifts) == 9  # every shift of up to one pixel of 8 along each axis


def test_images_with_channels_keep_their_shape_and_flat_rows_are_refused():
    x = np.ones((4, 28, 28, 3), dtype=np.float32)
    images, _ = next(iter(augmented_batches(x, np.zeros(4), 4, background=0.0, seed=0)))
    assert images.shape == (4, 28, 28, 3) and max_shift(28) == 2
    with pytest.raises(ValueError, match="needs images"):
        augmented_batches(np.ones((4, 64)), np.zeros(4), 4, background=0.0, seed=0)


def test_the_same_seed_gives_the_same_passes_and_each_pass_differs():
    x = np.arange(1, 1 + 16 * 8 * 8, dtype=np.float32).reshape(16, 8, 8)

    def two_passes(seed: int) -> list[np.ndarray]:
        batches = augmented_batches(x, np.arange(16), 16, background=0.0, seed=seed)
        return [next(iter(batches))[0].numpy() for _ in range(2)]

    first, second = two_passes(3)
    assert not np.array_equal(first, second)
    assert all(np.array_equal(a, b) for a, b in zip(two_passes(3), (first, second), strict=True))
