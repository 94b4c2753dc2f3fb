"""Dataset loaders: raw pixels, a seeded validation split, class names, input shape, value range.

Every loader returns a ``Dataset`` whose images keep their raw values (the model
rescales and normalises them itself, so the service takes raw pixels too).

Specs: ``fashion_mnist`` (default), ``digits`` (scikit-learn's bundled 8x8
digits, always offline), ``mnist``, ``cifar10``, ``npz:PATH``.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

logger = logging.getLogger(__name__)

FASHION_MNIST_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path.home() / ".keras" / "datasets" / "fashion-mnist",
)
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
DATASET_NAMES = ("fashion_mnist", "digits", "mnist", "cifar10", "npz:PATH")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(ValueError):
    """A dataset that cannot be loaded or is inconsistent; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # [n_train, *input_shape], raw values
    y_train: np.ndarray  # [n_train] int64 labels
    x_val: np.ndarray  # [n_val, *input_shape]
    y_val: np.ndarray  # [n_val]
    x_test: np.ndarray  # [n_test, *input_shape]
    y_test: np.ndarray  # [n_test]
    class_names: tuple[str, ...]
    value_range: tuple[float, float]  # the raw pixel range the model expects

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"cannot read IDX file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    n_dims = data[3]
    header = 4 + 4 * n_dims
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist() -> dict[str, np.ndarray]:
    for directory in FASHION_MNIST_DIRS:
        paths = {key: _find_idx(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
        if all(paths.values()):
            logger.info("Fashion-MNIST from %s", directory)
            return {key: read_idx(path) for key, path in paths.items()}
    arrays = _download_with_keras("fashion_mnist")
    if arrays is None:
        searched = ", ".join(str(d) for d in FASHION_MNIST_DIRS)
        raise DatasetError(
            f"Fashion-MNIST not found in {searched} and the download failed; install the "
            "Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
    return arrays


def _download_with_keras(name: str) -> dict[str, np.ndarray] | None:
    """Keras's loader: reads its cache (~/.keras/datasets) or downloads. None when offline."""
    import keras

    loader = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # noqa: BLE001 - any network or archive failure means "not available"
        logger.warning("keras.datasets.%s.load_data() failed: %s", name, error)
        return None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _load_keras(name: str) -> dict[str, np.ndarray]:
    arrays = _download_with_keras(name)
    if arrays is None:
        raise DatasetError(
            f"{name} is not in the Keras cache (~/.keras/datasets) and could not be "
            "downloaded; use fashion_mnist, digits or npz:PATH offline"
        )
    return arrays


def _load_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images.astype(np.float32), digits.target, test_size=0.2,
        stratify=digits.target, random_state=0,
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _load_npz(path: str) -> dict[str, np.ndarray]:
    if not path:
        raise DatasetError("npz: needs a path, as in npz:data/my_images.npz")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    missing = {"x_train", "y_train"} - arrays.keys()
    if missing:
        raise DatasetError(f"{path} lacks the array(s) {', '.join(sorted(missing))}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DatasetError(f"{path} must hold both x_test and y_test, or neither")
    return arrays


def _checked_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DatasetError(f"{name} must be a 1-D array of class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or np.any(labels != np.round(labels)):
            raise DatasetError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _checked_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DatasetError(f"{name} must be numeric, got dtype {images.dtype}")
    if images.ndim < 2:
        raise DatasetError(f"{name} must be [n, ...features], got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise DatasetError(f"{name} holds NaN or infinite values")
    return images


def _assemble(
    name: str,
    arrays: dict[str, np.ndarray],
    class_names: tuple[str, ...] | None,
    validation_fraction: float,
    seed: int,
) -> Dataset:
    x_train = _checked_images(arrays["x_train"], "x_train")
    y_train = _checked_labels(arrays["y_train"], "y_train")
    if len(x_train) == 0:
        raise DatasetError(f"{name}: x_train is empty")
    if len(x_train) != len(y_train):
        raise DatasetError(
            f"{name}: x_train has {len(x_train)} rows but y_train has {len(y_train)}"
        )
    if "x_test" in arrays:
        x_test = _checked_images(arrays["x_test"], "x_test")
        y_test = _checked_labels(arrays["y_test"], "y_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DatasetError(
                f"{name}: x_test rows have shape {x_test.shape[1:]} but x_train rows "
                f"{x_train.shape[1:]}"
            )
        if len(x_test) != len(y_test) or len(x_test) == 0:
            raise DatasetError(
                f"{name}: x_test has {len(x_test)} rows and y_test {len(y_test)}; both must "
                "be equal and non-zero"
            )
    else:
        x_train, x_test, y_train, y_test = _split(x_train, y_train, 0.2, seed, name)
    num_classes = len(class_names) if class_names else int(max(y_train.max(), y_test.max())) + 1
    for labels, label_name in ((y_train, "y_train"), (y_test, "y_test")):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(
                f"{name}: {label_name} must lie in [0, {num_classes}), got "
                f"[{labels.min()}, {labels.max()}]"
            )
    if num_classes < 2:
        raise DatasetError(f"{name}: needs at least 2 classes, got {num_classes}")
    x_train, x_val, y_train, y_val = _split(x_train, y_train, validation_fraction, seed, name)
    if np.issubdtype(x_train.dtype, np.integer) and x_train.dtype.itemsize == 1:
        value_range = (0.0, 255.0) if x_train.dtype == np.uint8 else (-128.0, 127.0)
    else:
        everything = (x_train, x_val, x_test)
        value_range = (
            float(min(a.min() for a in everything)),
            float(max(a.max() for a in everything)),
        )
    return Dataset(
        name=name,
        x_train=x_train.astype(np.float32),
        y_train=y_train,
        x_val=x_val.astype(np.float32),
        y_val=y_val,
        x_test=x_test.astype(np.float32),
        y_test=y_test,
        class_names=class_names or tuple(str(i) for i in range(num_classes)),
        value_range=value_range,
    )


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, name: str):
    """Seeded split, stratified when every class has at least two rows."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    held_out = max(1, round(len(x) * fraction))
    if len(x) - held_out < 1:
        raise DatasetError(f"{name}: {len(x)} training rows are too few to hold out {held_out}")
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and held_out >= np.count_nonzero(counts) else None
    x_kept, x_held, y_kept, y_held = train_test_split(
        x, y, test_size=held_out, stratify=stratify, random_state=seed
    )
    return x_kept, x_held, y_kept, y_held


def _class_names_from(arrays: dict[str, np.ndarray]) -> tuple[str, ...] | None:
    if "class_names" not in arrays:
        return None
    names = tuple(str(name) for name in np.asarray(arrays["class_names"]).ravel())
    if len(set(names)) != len(names):
        raise DatasetError("class_names must be distinct")
    return names


_LOADERS: dict[str, tuple[Callable[[], dict[str, np.ndarray]], tuple[str, ...] | None]] = {
    "fashion_mnist": (_load_fashion_mnist, FASHION_MNIST_CLASSES),
    "digits": (_load_digits, tuple(str(i) for i in range(10))),
    "mnist": (lambda: _load_keras("mnist"), tuple(str(i) for i in range(10))),
    "cifar10": (lambda: _load_keras("cifar10"), CIFAR10_CLASSES),
}


def load_dataset(spec: str, validation_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load a dataset by spec, holding out ``validation_fraction`` of train with ``seed``."""
    if spec.startswith("npz:"):
        path = os.path.expanduser(spec[len("npz:") :])
        arrays = _load_npz(path)
        return _assemble(spec, arrays, _class_names_from(arrays), validation_fraction, seed)
    if spec not in _LOADERS:
        raise DatasetError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASET_NAMES)}")
    loader, class_names = _LOADERS[spec]
    return _assemble(spec, loader(), class_names, validation_fraction, seed)
