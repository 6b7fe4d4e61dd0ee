""".npz archives: Keras' names and images/labels, layouts, K classes, one pixel type."""

import numpy as np
import pytest
from datafiles import npz_file

from xpcnn import data
from xpcnn.data import DataError


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    y_train, y_test = rng.integers(0, 10, 50, dtype=np.uint8), rng.integers(0, 10, 8, dtype=np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    dataset = data.load(str(path))
    np.testing.assert_array_equal(dataset.test.images, x_test[:, None])
    np.testing.assert_array_equal(np.concatenate([dataset.train.labels, dataset.validation.labels]), y_train)


def test_npz_errors(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.zeros((3, 28, 28)), x_test=np.zeros((3, 28, 28)))
    with pytest.raises(DataError, match="missing arrays y_train, y_test"):
        data.load(str(path))
    np.savez(path, pixels=np.zeros((3, 28, 28)))
    with pytest.raises(DataError, match=r"missing arrays x_train, y_train \(or images, labels\) \(has pixels\)"):
        data.load(str(path))
    bad = np.zeros((4, 28, 28))
    bad[2, 5, 5] = np.nan
    np.savez(path, x_train=bad, y_train=np.zeros(4, np.uint8), x_test=np.zeros((1, 28, 28)),
             y_test=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match=r"\[x_train, y_train\]: image 2 contains NaN or infinity"):
        data.load(str(path))
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz file"):
        data.load(str(path))


def test_one_class_and_bad_classes_are_refused(tmp_path):
    with pytest.raises(DataError, match="every label is 0, one class: a classifier needs at least 2"):
        data.load_npz(npz_file(tmp_path, x_train=np.zeros((5, 4, 4), np.uint8), y_train=np.zeros(5, np.uint8)))
    path = npz_file(tmp_path, x_train=np.zeros((5, 4, 4), np.uint8), y_train=np.arange(5))
    for bad in (1, 0, 2.5, True):
        with pytest.raises(DataError, match="classes must be an integer >= 2"):
            data.load(path, classes=bad)
    with pytest.raises(DataError, match=r"\[x_train, y_train\]: label 3 at index 3 is outside 0-2"):
        data.load(path, classes=3)
    huge = npz_file(tmp_path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 10 ** 9]))
    with pytest.raises(DataError, match="label 1000000000 implies 1000000001 classes; pass classes= explicitly"):
        data.load(huge)


def test_colour_channels_last_npz_like_keras_cifar(tmp_path):
    rng = np.random.default_rng(4)
    x_train = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    y_train, y_test = (np.arange(60) % 10)[:, None].astype(np.uint8), (np.arange(7) % 10)[:, None].astype(np.uint8)
    dataset = data.load(npz_file(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test))
    assert dataset.image_shape == (3, 32, 32) and dataset.classes == 10
    assert len(dataset.train) == 54 and len(dataset.validation) == 6
    np.testing.assert_array_equal(dataset.test.images, x_test.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(dataset.test.labels, y_test[:, 0])
    # its own validation split, no test split
    dataset = data.load(npz_file(tmp_path, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test))
    assert len(dataset.train) == 60 and len(dataset.validation) == 7 and dataset.test is None
    empty = data.load(npz_file(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test[:0], y_test=y_test[:0]))
    assert empty.test is None and len(empty.validation) == 6  # an empty split is no split
    with pytest.raises(DataError, match=r"\[x_test, y_test\]: images are 3x16x16 but those of .*\[x_train, y_train\] "
                                        r"are 3x32x32"):
        data.load(npz_file(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test[:, :16, :16], y_test=y_test))
    with pytest.raises(DataError, match=r"\[x_test, y_test\]: 7 images but 6 labels"):
        data.load(npz_file(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test[:6]))


def test_npz_splits_share_one_pixel_type_and_labels_do_not_wrap(tmp_path):
    x = np.random.default_rng(6).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    y = np.arange(20) % 2
    # uint8 is scaled by 1/255 on the way in and float32 is not: mixing them would skew one split
    with pytest.raises(DataError, match=r"\[x_test, y_test\]: images are float32 but those of .*\[x_train, y_train\] "
                                        r"are uint8: give every split the same pixel type"):
        data.load(npz_file(tmp_path, x_train=x, y_train=y, x_test=x[:5].astype(np.float32), y_test=y[:5]))
    # an empty float split is no split (not a reshape error)
    empty = data.load(npz_file(tmp_path, x_train=x.astype(np.float32), y_train=y,
                               x_test=np.zeros((0, 8, 8), np.float32), y_test=np.zeros(0, np.int64)))
    assert empty.test is None and empty.train.images.dtype == np.float32
    labels = y.astype(np.uint64)
    labels[3] = 2 ** 64 - 1  # int64 would make it -1
    with pytest.raises(DataError, match=r"label 18446744073709551615 at index 3 is too large"):
        data.load(npz_file(tmp_path, images=x, labels=labels))


def test_images_labels_npz_float_channels_first(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(40, 2, 5, 7))  # float64, values as given (negative too)
    dataset = data.load(npz_file(tmp_path, images=images, labels=np.arange(40) % 37), classes=37)
    assert dataset.classes == 37 and dataset.image_shape == (2, 5, 7) and dataset.test is None
    assert dataset.train.images.dtype == np.float32 and len(dataset.validation) == 4
    np.testing.assert_array_equal(np.concatenate([dataset.train.images, dataset.validation.images]),
                                  images.astype(np.float32))
    split = data.load(npz_file(tmp_path, images=images, labels=np.arange(40) % 3, train_count=np.array(30)))
    assert len(split.train) == 30 and len(split.validation) == 10
    with pytest.raises(DataError, match=r"\[images, labels\]: image 0 contains NaN or infinity"):
        data.load(npz_file(tmp_path, images=np.full((3, 4, 4), np.inf), labels=np.arange(3)))
