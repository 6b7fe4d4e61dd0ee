"""The checks of a dataset as a whole (one line each) and of the files readers open: float pixel
range, labels that leave classes empty, a layout that is most likely wrong, empty and one-class
splits, non-regular files, and memory bounded by the declared size."""

from __future__ import annotations

import gzip
import os
import tracemalloc

import numpy as np
import pytest
from datafiles import idx_bytes, npz_file

from xpcnn import data
from xpcnn.data import DataError
from xpcnn.data.readers import idx as idx_reader


def _dataset(images, labels, classes=None):
    split = data.validate(images, labels, "x")
    return data.finish_dataset([("train", split, "x")], "src", classes)


def test_float_pixels_that_look_unscaled_are_named_with_the_fixes():
    labels = np.arange(20) % 2
    assert data.float_range_problem(_dataset(np.full((20, 4, 4), 0.9), labels)) is None  # [0, 1]
    assert data.float_range_problem(_dataset(np.full((20, 4, 4), -3.0), labels)) is None  # normalized
    assert data.float_range_problem(_dataset(np.full((20, 4, 4), 200, np.uint8), labels)) is None  # uint8: scaled
    images = np.zeros((20, 4, 4))
    images[3, 1, 1] = 255.0
    assert data.float_range_problem(_dataset(images, labels)) == (
        "src: float pixels span 0-255, and float images are used as given (uint8 ones are scaled to [0, 1]): "
        "divide them by 255, store them as uint8 0-255, or add --normalize")
    images[3, 1, 1] = 16.0  # scikit-learn's 8x8 digits
    assert "span 0-16" in data.float_range_problem(_dataset(images, labels)) and "divide them by 16" in \
        data.float_range_problem(_dataset(images, labels))


def test_classes_without_training_images_are_named():
    images = np.zeros((30, 4, 4), np.uint8)
    one_based = _dataset(images, np.arange(30) % 3 + 1)  # labels 1..3: K = 4, class 0 empty
    assert data.label_warnings(one_based) == [
        "warning: src: 1 of 4 classes have no training images (class 0): the labels look 1-based; xpcnn's run "
        "0..K-1 (subtract 1)"]
    gaps = _dataset(images, np.arange(30) % 2 * 5, classes=20)
    (line,) = data.label_warnings(gaps)
    assert line.startswith("warning: src: 18 of 20 classes have no training images (classes 1, 2, 3, 4, 6, 7, 8, 9, "
                           "10, 11 and 8 more)")
    assert data.label_warnings(_dataset(images, np.arange(30) % 3)) == []


def test_the_layout_not_taken_is_offered_when_the_channels_look_wrong():
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    split = data.validate(nhwc, np.arange(5) % 2, "x", "nchw")  # read wrongly: 8 channels of 6x3
    dataset = data.finish_dataset([("train", split, "x")], "src", None)
    assert dataset.layout == "nchw" and dataset.image_shape == (8, 6, 3)
    assert data.other_layout(dataset) == ("nhwc", (3, 8, 6))
    assert data.layout_problem(dataset) == ("src: read as nchw, the images have 8 channels of 6x3 pixels; --layout "
                                            "nhwc reads them as 3x8x6 (channels x height x width)")
    right = data.finish_dataset([("train", data.validate(nhwc, np.arange(5) % 2, "x"), "x")], "src", None)
    assert right.layout == "nhwc" and data.layout_problem(right) is None
    assert data.other_layout(right) == ("nchw", (8, 6, 3))
    flat = data.finish_dataset([("train", data.validate(nhwc[..., 0], np.arange(5) % 2, "x"), "x")], "src", None)
    assert flat.layout is None and data.other_layout(flat) is None


def test_empty_and_one_class_splits_are_named_as_such():
    empty = data.validate(np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.int64), "x")
    with pytest.raises(DataError, match=r"^src: no images \(train and test: empty\)$"):
        data.finish_dataset([("train", empty, "x"), ("test", empty, "y")], "src", None)
    with pytest.raises(DataError, match=r"^src: every label is 0, one class: a classifier needs at least 2"):
        _dataset(np.zeros((4, 4, 4), np.uint8), np.zeros(4, np.int64))


def test_non_regular_files_are_refused_before_they_are_opened(tmp_path):
    for name in ("d.npz", "train-images-idx3-ubyte", "c.tar.gz"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        with pytest.raises(DataError, match=f"{name}: not a regular file"):
            if name.startswith("train"):
                data.read_idx(str(fifo))
            else:
                data.load(str(fifo)) if name.endswith(".npz") else data.load_cifar10_binary(str(fifo))


def test_foreign_files_get_one_line(tmp_path):
    junk = os.urandom(3000)
    (tmp_path / "x.npz").write_bytes(b"\x80\x04" + junk)  # numpy would take it for a pickle
    with pytest.raises(DataError) as info:
        data.load(str(tmp_path / "x.npz"))
    assert "not an .npz archive (a .npz is a zip file" in str(info.value) and "allow_pickle" not in str(info.value)
    (tmp_path / "r.tar.gz").write_bytes(junk)
    with pytest.raises(DataError) as info:
        data.load(str(tmp_path / "r.tar.gz"))
    assert "\n" not in str(info.value) and "not a readable tar archive (ReadError: " in str(info.value)


def test_idx_reads_within_the_declared_size(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (2000, 64, 64), dtype=np.uint8)  # 8 MB
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images), compresslevel=1))
    tracemalloc.start()
    try:
        read = data.read_idx(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(read, images)
    assert peak < 1.2 * images.nbytes  # the array itself, and no second copy


def test_idx_memory_error_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4), np.uint8)))

    def refuse(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(idx_reader.np, "empty", refuse)
    with pytest.raises(DataError, match=r"header declares shape \(3, 4, 4\) = 48 bytes of data, more than the memory "
                                        r"available"):
        data.read_idx(str(path))


def test_npz_layout_is_recorded(tmp_path):
    path = npz_file(tmp_path, x_train=np.zeros((4, 5, 5, 3), np.uint8), y_train=np.arange(4) % 2)
    assert data.load(path).layout == "nhwc"
