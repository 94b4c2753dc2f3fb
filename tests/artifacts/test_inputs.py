import io

import numpy as np
import pytest
from PIL import Image

from artifacts.inputs import InputSpec, parse_image, parse_instance

SPEC = InputSpec(input_shape=(2, 3), value_range=(0.0, 255.0))


def test_flat_and_shaped_instances_give_the_input_shape():
    flat = parse_instance([0, 1, 2, 3, 4, 5.5], SPEC)
    shaped = parse_instance([[0, 1, 2], [3, 4, 5.5]], SPEC)
    assert flat.shape == shaped.shape == (2, 3) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, shaped)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2, 3], "expected 6 numbers or a 2 x 3 nested list, got shape 3"),
        ([[1, 2, 3], [4, 5]], "ragged nesting"),
        ([1, 2, 3, 4, 5, True], "got a boolean among the values"),
        ([1, 2, 3, 4, 5, "6"], "got a string among the values"),
        ([1, 2, 3, 4, 5, None], "got null among the values"),
        ([1, 2, 3, 4, 5, float("nan")], "NaN or Infinity"),
        ([1, 2, 3, 4, 5, float("inf")], "NaN or Infinity"),
        ([1, 2, 3, 4, 5, 256], r"range \[0, 255\], got \[1, 256\]"),
        ([1, 2, 3, 4, 5, -1], r"range \[0, 255\]"),
        ([], "got an empty list"),
        ({"a": 1}, "got an object"),
        ([[[1, 2, 3]], [[4, 5, 6]]], "got shape 2 x 1 x 3"),
    ],
)
def test_bad_instances_say_what_was_expected(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_instance(raw, SPEC)


def test_a_batch_read_as_numbers_gives_the_input_shape_or_names_the_instance():
    flat = np.arange(12, dtype=np.float64).reshape(2, 6)
    batch = SPEC.parse_batch(flat)
    assert batch.shape == (2, 2, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, SPEC.parse_batch(flat.reshape(2, 2, 3)))
    np.testing.assert_array_equal(SPEC.parse_numbers(flat[1]), batch[1])
    with pytest.raises(ValueError, match=r"instance 1: values must lie in .*\[0, 256\]"):
        SPEC.parse_batch(np.array([[0.0] * 6, [0.0] * 5 + [256.0]]))
    with pytest.raises(ValueError, match="instance 0: expected 6 numbers .* got shape 5"):
        SPEC.parse_batch(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="^expected 6 numbers .* got shape 2 x 2"):
        SPEC.parse_numbers(np.zeros((2, 2)))


def image_bytes(array: np.ndarray, image_format: str) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    buffer.seek(0)
    return buffer


def test_images_become_instances_in_the_cards_range(tmp_path):
    spec = InputSpec(input_shape=(8, 8), value_range=(0.0, 16.0))
    white = np.full((32, 32, 3), 255, np.uint8)  # RGB, larger: converted and resized
    path = tmp_path / "white.png"
    path.write_bytes(image_bytes(white, "PNG").getvalue())
    x = parse_image(str(path), spec)
    assert x.shape == (8, 8)
    np.testing.assert_allclose(x, 16.0)


def test_unreadable_and_unsupported_images_are_refused(tmp_path):
    spec = InputSpec(input_shape=(8, 8), value_range=(0.0, 16.0))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable PNG or JPEG"):
        parse_image(str(junk), spec)
    gif = tmp_path / "x.gif"
    gif.write_bytes(image_bytes(np.zeros((4, 4), np.uint8), "GIF").getvalue())
    with pytest.raises(ValueError, match="expected a PNG or JPEG image, got GIF"):
        parse_image(str(gif), spec)


@pytest.mark.parametrize(
    ("input_shape", "image_shape"),
    [((8, 8), (8, 8)), ((8, 8, 1), (8, 8, 1)), ((8, 8, 3), (8, 8, 3)), ((64,), (8, 8)),
     ((784,), (28, 28)), ((5,), None), ((8, 8, 2), None), ((2, 4, 4, 1), None)],
)
def test_the_image_shape_of_uploads(input_shape, image_shape):
    assert InputSpec(input_shape, (0.0, 1.0)).image_shape == image_shape


def test_a_flat_input_of_a_square_size_reads_images_as_gray_squares(tmp_path):
    path = tmp_path / "gray.png"
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 17
    path.write_bytes(image_bytes(np.stack([pixels] * 3, axis=-1), "PNG").getvalue())
    x = parse_image(str(path), InputSpec(input_shape=(16,), value_range=(0.0, 255.0)))
    np.testing.assert_array_equal(x, pixels.ravel())


@pytest.mark.parametrize(("input_shape", "described"),
                         [((5,), "5 numbers"), ((4, 4, 2), "32 numbers or a 4 x 4 x 2")])
def test_an_input_without_an_image_shape_refuses_images_in_words(tmp_path, input_shape,
                                                                  described):
    path = tmp_path / "x.png"
    path.write_bytes(image_bytes(np.zeros((4, 4), np.uint8), "PNG").getvalue())
    with pytest.raises(ValueError, match=f"this model takes {described}.* and has no image "
                       "shape; send the numbers to /predict"):
        parse_image(str(path), InputSpec(input_shape, (0.0, 255.0)))
