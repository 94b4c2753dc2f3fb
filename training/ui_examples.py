"""Write the web page's bundled example images and their list (``examples/examples.json``).

    .venv/bin/python -m training.ui_examples

Test-split images, one per chosen class, as grayscale PNGs at the dataset's own
size (0..255; the service maps them onto the model's value range):
scikit-learn's 8x8 ``digits`` (the split ``uq-train --dataset digits`` uses) and,
when Debian's ``dataset-fashion-mnist`` is installed, 28x28 Fashion-MNIST. The page
offers the examples whose size is the served model's input first, the others as
images the service resizes. Needs the ``train`` extra (scikit-learn): not served.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES_DIRECTORY = Path(__file__).resolve().parents[1] / "service" / "ui" / "examples"
FASHION_MNIST_DIRECTORY = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_LABELS = (0, 2, 3, 5, 7, 9)
FASHION_LABELS = (0, 1, 3, 7, 8, 9)


def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 8, 8]`` in 0..16 and labels: the test split of training/data.py."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x_test, _, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return x_test, y_test


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzip or not) as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    dimensions = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).exists():
            return directory / name
    return None


def first_of_each(labels: np.ndarray, wanted: tuple[int, ...]) -> list[int]:
    """The index of the first image of each wanted label, in the order given."""
    return [int(np.flatnonzero(labels == label)[0]) for label in wanted]


def write(image: np.ndarray, name: str, directory: Path) -> None:
    # a 2-D uint8 array: a grayscale (L) image
    Image.fromarray(image.astype(np.uint8)).save(directory / name, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=EXAMPLES_DIRECTORY,
                        help="where the PNGs and examples.json go")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    examples = []

    images, labels = digits_test_split()
    for index in first_of_each(labels, DIGIT_LABELS):
        label = int(labels[index])
        name = f"digits-{label}.png"
        write(np.round(images[index] * (255 / 16)), name, args.output_dir)
        examples.append({"file": name, "dataset": "digits", "label": label,
                         "class_name": str(label), "shape": [8, 8]})

    images_path = find_idx(FASHION_MNIST_DIRECTORY, "t10k-images-idx3-ubyte")
    labels_path = find_idx(FASHION_MNIST_DIRECTORY, "t10k-labels-idx1-ubyte")
    if images_path and labels_path:
        images, labels = read_idx(images_path), read_idx(labels_path)
        for index in first_of_each(labels, FASHION_LABELS):
            label = int(labels[index])
            class_name = FASHION_MNIST_CLASSES[label]
            name = f"fashion-{class_name.lower().replace('/', '-').replace(' ', '-')}.png"
            write(images[index], name, args.output_dir)
            examples.append({"file": name, "dataset": "fashion_mnist", "label": label,
                             "class_name": class_name, "shape": [28, 28]})
    else:
        print(f"no Fashion-MNIST under {FASHION_MNIST_DIRECTORY}: digits examples only")

    listing = ",\n".join(f"  {json.dumps(example)}" for example in examples)
    (args.output_dir / "examples.json").write_text(f"[\n{listing}\n]\n")
    print(f"wrote {len(examples)} examples to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
