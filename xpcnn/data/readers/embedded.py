"""``--data embedded`` (the default): the 5,000 real MNIST training digits shipped in the package
(``xpcnn/assets/mnist5k.npz``, 500 per class, shuffled once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xpcnn.data.dataset import DataError, Dataset, finish_dataset, validate
from xpcnn.data.readers.base import ReadOptions

EMBEDDED_PATH = str(Path(__file__).parents[2] / "assets" / "mnist5k.npz")
# sha256 of the embedded digits as (5000, 28, 28) uint8 images then uint8 labels (content_sha256)
EMBEDDED_SHA256 = "12419612bc73c6984162a9db41a5082e5f0ce1ff7da468b600b140ac9d2510d1"
EMBEDDED_TRAIN = 4500  # the first 4,500 shuffled digits train, the last 500 validate


def load_embedded() -> Dataset:
    """The 5,000 real MNIST training digits shipped in the package (500 per class),
    shuffled once; 4,500 train and 500 validate.  No test split: evaluate on real
    MNIST test files with ``load_idx_dir``.  Images (N, 1, 28, 28) uint8."""
    with np.load(EMBEDDED_PATH) as archive:
        images, labels, train_count = archive["images"], archive["labels"], int(archive["train_count"])
    train, validation = validate(images, labels, EMBEDDED_PATH, classes=10).split_at(train_count)
    return finish_dataset([("train", train, EMBEDDED_PATH), ("validation", validation, EMBEDDED_PATH)], "embedded", 10)


def read(spec: str, options: ReadOptions) -> Dataset:
    if options.classes is not None and options.classes != 10:
        raise DataError(f"embedded: the embedded digits have 10 classes, not {options.classes}")
    return load_embedded()
