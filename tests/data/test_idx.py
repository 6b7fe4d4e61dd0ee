"""IDX folders: round trips, real MNIST, and the refusal of malformed or oversized files."""

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
from datafiles import idx_bytes, write_idx_dir

from xpcnn import data
from xpcnn.data import DataError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx_dir(tmp_path, train=(100, 1), gz=gz)
    dataset = data.load(str(tmp_path))
    np.testing.assert_array_equal(np.concatenate([dataset.train.images, dataset.validation.images]),
                                  arrays["train"][0][:, None])
    np.testing.assert_array_equal(dataset.test.labels, arrays["t10k"][1])
    assert len(dataset.validation) == 10 and dataset.classes == 10 and dataset.image_shape == (1, 28, 28)
    assert dataset.test.labels.dtype == np.int64


def test_real_mnist_facts(mnist_dir):
    dataset = data.load_idx_dir(mnist_dir)
    assert dataset.test.images.shape == (10000, 1, 28, 28) and dataset.classes == 10
    assert dataset.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    raw = gzip.decompress(open(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz"), "rb").read())
    assert hashlib.sha256(raw).hexdigest() == data.DOWNLOAD_SHA256["t10k-images-idx3-ubyte.gz"][1]


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad magic number 0x00000903"),
    (lambda b: b"\x00\x00\x08\x02" + b[4:], "has 2 dimensions, expected 3"),
    (lambda b: b[:-5], "header declares shape (20, 28, 28) = 15680 bytes of data, file has 15675"),
    (lambda b: b + b"\x00", "file has 15681"),
    (lambda b: b[:10], "header declares 3 dimensions but is truncated"),
    (lambda b: b[:2], "too short for an IDX header (2 bytes)"),
])
def test_malformed_idx_images(tmp_path, mutate, message):
    write_idx_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(DataError) as info:
        data.load_idx_dir(str(tmp_path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_idx_header_cannot_overflow_or_declare_too_much(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    # 2**22 x 2**21 x 2**21 wraps to 0 in int64: it must not pass for an empty file
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2 ** 22, 2 ** 21, 2 ** 21))
    with pytest.raises(DataError, match=r"= 18446744073709551616 bytes of data, more than xpcnn reads into memory"):
        data.load_idx_dir(str(tmp_path))


def test_gzip_idx_is_read_no_further_than_its_header_declares(tmp_path):
    write_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + bytes(1 << 20)))  # 1 MiB too long
    with pytest.raises(DataError, match=r"= 15680 bytes of data, file has 15681 or more"):
        data.load_idx_dir(str(tmp_path))


def test_idx_files_of_two_sets_are_not_paired(tmp_path):
    write_idx_dir(tmp_path, prefix="letters-", gz=False)
    (tmp_path / "letters-train-labels-idx1-ubyte").rename(tmp_path / "digits-train-labels-idx1-ubyte")
    with pytest.raises(DataError,
                       match=r"IDX files of different sets \('digits', 'letters'\); keep one set per folder"):
        data.load_idx_dir(str(tmp_path))


def test_truncated_gzip_is_rejected(tmp_path):
    write_idx_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: corrupt or truncated gzip data"):
        data.load_idx_dir(str(tmp_path))


def test_count_mismatch_and_label_range(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(DataError, match="20 images but 19 labels"):
        data.load_idx_dir(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.r_[np.zeros(19), 12].astype(np.uint8)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: label 12 at index 19 is outside 0-9"):
        data.load_idx_dir(str(tmp_path), classes=10)
    assert data.load_idx_dir(str(tmp_path)).classes == 13  # inferred: the largest label + 1


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="found neither train-images-idx3-ubyte"):
        data.load_idx_dir(str(tmp_path))
    with pytest.raises(DataError, match="no such file or folder"):
        data.load(str(tmp_path / "nope"))


@pytest.mark.parametrize("classes", [3, 37])
def test_odd_sized_idx_with_k_classes_and_prefixed_names(tmp_path, classes):
    arrays = write_idx_dir(tmp_path, train=(80, 1), test=(40, 2), shape=(17, 23), classes=classes,
                           prefix="emnist-odd-", test_name="test")
    dataset = data.load(str(tmp_path))
    assert dataset.classes == classes and dataset.image_shape == (1, 17, 23)
    assert dataset.train.images.shape == (72, 1, 17, 23) and len(dataset.validation) == 8
    np.testing.assert_array_equal(dataset.test.images[:, 0], arrays["test"][0])
    np.testing.assert_array_equal(dataset.test.labels, arrays["test"][1])
    assert data.load(str(tmp_path), classes=classes + 5).classes == classes + 5
    with pytest.raises(DataError, match=r"emnist-odd-train-images-idx3-ubyte.gz \+ "
                                        r".*emnist-odd-train-labels-idx1-ubyte.gz: "
                                        r"label \d+ at index \d+ is outside 0-1"):
        data.load(str(tmp_path), classes=2)


def test_idx_colour_images_4d_and_ambiguous_folders(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (30, 9, 11, 3), dtype=np.uint8)  # channels-last, as IDX 4-D
    (tmp_path / "train-images-idx4-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(30) % 4))
    dataset = data.load(str(tmp_path))
    assert dataset.image_shape == (3, 9, 11) and dataset.classes == 4 and dataset.test is None
    np.testing.assert_array_equal(dataset.train.images, images[:27].transpose(0, 3, 1, 2))
    assert data.load(str(tmp_path), layout="nchw").image_shape == (9, 11, 3)
    (tmp_path / "other-train-images-idx3-ubyte").write_bytes(idx_bytes(images[..., 0]))
    with pytest.raises(DataError, match=r"several train images files \(other-train-images-idx3-ubyte, "
                                        r"train-images-idx4-ubyte\); keep one set per folder"):
        data.load(str(tmp_path))
