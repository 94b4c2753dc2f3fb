import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training import data
from training.data import DatasetError, load_dataset, read_idx


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_idx_reader_round_trips_gzipped_and_plain(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)


def test_idx_reader_handles_big_endian_floats(tmp_path):
    values = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float32)
    write_idx(tmp_path / "floats", values, type_code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "floats"), values)


def test_idx_reader_refuses_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DatasetError, match="header says shape"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_loads_from_an_idx_directory(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for key, stem in data.FASHION_MNIST_FILES.items():
        rows = 40 if "train" in key else 10
        array = (rng.integers(0, 256, size=(rows, 28, 28)) if key.startswith("x")
                 else np.arange(rows) % 10)
        write_idx(tmp_path / f"{stem}.gz", array.astype(np.uint8))
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (tmp_path / "missing", tmp_path))
    dataset = load_dataset("fashion_mnist", validation_fraction=0.25)
    assert dataset.input_shape == (28, 28)
    assert dataset.class_names[9] == "Ankle boot"
    assert (len(dataset.x_train), len(dataset.x_val), len(dataset.x_test)) == (30, 10, 10)
    assert dataset.value_range == (0.0, 255.0)


def test_fashion_mnist_offline_error_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (tmp_path,))
    monkeypatch.setattr(data, "_download_with_keras", lambda name: None)
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


@pytest.mark.skipif(not data.FASHION_MNIST_DIRS[0].is_dir(),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_the_debian_fashion_mnist_package():
    dataset = load_dataset("fashion_mnist")
    assert len(dataset.x_train) + len(dataset.x_val) == 60000
    assert len(dataset.x_test) == 10000
    assert dataset.x_train.dtype == np.float32 and dataset.x_train.max() == 255


def test_digits_split_is_seeded_and_disjoint():
    first, again = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    other = load_dataset("digits", seed=4)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    assert first.input_shape == (8, 8) and first.value_range == (0.0, 16.0)
    total = len(first.x_train) + len(first.x_val) + len(first.x_test)
    assert total == 1797


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 6)).astype(np.float32), np.arange(50) % 3
    np.savez(tmp_path / "plain.npz", x_train=x, y_train=y)
    dataset = load_dataset(f"npz:{tmp_path / 'plain.npz'}")
    assert dataset.num_classes == 3 and len(dataset.x_test) == 10
    np.savez(tmp_path / "named.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5],
             class_names=np.array(["a", "b", "c"]))
    assert load_dataset(f"npz:{tmp_path / 'named.npz'}").class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 2))}, "lacks the array"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3, int)}, "4 rows but y_train has 3"),
        ({"x_train": np.zeros((0, 2)), "y_train": np.zeros(0, int)}, "empty"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, 2, 5]),
          "class_names": np.array(["a", "b", "c"])}, r"must lie in \[0, 3\)"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0.5, 1, 0, 1])}, "integer class"),
        ({"x_train": np.full((4, 2), np.nan), "y_train": np.array([0, 1, 0, 1])}, "NaN"),
        ({"x_train": np.zeros((8, 2)), "y_train": np.arange(8) % 2,
          "x_test": np.zeros((2, 3)), "y_test": np.array([0, 1])}, "x_test rows have shape"),
    ],
)
def test_npz_inconsistencies_are_named(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_unreadable_npz_and_unknown_dataset(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
