"""CIFAR-10's binary archives, read in memory: records, class names, unsafe or broken archives."""

import numpy as np
import pytest
from datafiles import cifar_records, cifar_tarball

from xpcnn import data
from xpcnn.data import DataError


def test_cifar10_binary_parsing(tmp_path):
    batches = [cifar_records(20, seed) for seed in range(5)]
    test_raw, test_labels, test_images = cifar_records(15, 9)
    names = "\n".join(data.CIFAR10_CLASSES[::-1]) + "\n\n"
    path = cifar_tarball(tmp_path / "cifar-10-binary.tar.gz",
                         [(f"cifar-10-batches-bin/data_batch_{k}.bin", batches[k - 1][0]) for k in (2, 1, 3, 5, 4)]
                         + [("cifar-10-batches-bin/test_batch.bin", test_raw),
                            ("cifar-10-batches-bin/batches.meta.txt", names.encode()),
                            ("cifar-10-batches-bin/readme.html", b"<html>"),
                            ("cifar-10-batches-bin/data_batch_6.bin", batches[0][0])])  # not CIFAR-10's: not read
    dataset = data.load(path)
    assert dataset.image_shape == (3, 32, 32) and dataset.classes == 10 and dataset.train.images.dtype == np.uint8
    assert dataset.class_names == data.CIFAR10_CLASSES[::-1]
    assert len(dataset.train) == 90 and len(dataset.validation) == 10 and len(dataset.test) == 15
    names = "\n".join(["y" * 300, *data.CIFAR10_CLASSES[1:]]).encode()
    long = cifar_tarball(tmp_path / "long.tar.gz", [("data_batch_1.bin", batches[0][0]), ("batches.meta.txt", names)])
    with pytest.raises(DataError, match="class name 'yyyy.*is 300 characters long, more than 255"):
        data.load(long)  # a checkpoint could not hold it
    images = np.concatenate([dataset.train.images, dataset.validation.images])
    np.testing.assert_array_equal(images, np.concatenate([b[2] for b in batches]))  # batches 1..5 in order
    np.testing.assert_array_equal(np.concatenate([dataset.train.labels, dataset.validation.labels]),
                                  np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(dataset.test.images, test_images)
    # a record's pixels: 1024 red, then green, then blue, each row by row
    raw = np.frombuffer(test_raw, np.uint8).reshape(15, 3073)
    assert dataset.test.images[4, 1, 2, 3] == raw[4, 1 + 1024 + 2 * 32 + 3]


@pytest.mark.parametrize("members,message", [
    ([("cifar-10-batches-bin/data_batch_1.bin", b"\x00" * 3072)],
     r"\[data_batch_1.bin\]: 3072 bytes is not a whole number of 3073-byte records"),
    ([("b/data_batch_1.bin", bytes([10]) + b"\x00" * 3072)],
     r"\[data_batch_1.bin\]: label 10 at index 0 is outside 0-9"),
    ([("../data_batch_1.bin", cifar_records(2, 0)[0])],
     r"refusing archive member with an unsafe name '../data_batch_1.bin'"),
    ([("/abs/test_batch.bin", cifar_records(2, 0)[0])], r"unsafe name '/abs/test_batch.bin'"),
    ([("b/data_batch_1.bin", None)], r"archive member b/data_batch_1.bin is not a regular file"),
    ([("cifar-10-batches-py/data_batch_1", b"\x80\x04pickle"), ("cifar-10-batches-py/test_batch", b"\x80")],
     r"no data_batch_N.bin or test_batch.bin in the archive \(this is the Python version, whose pickles are never "
     r"loaded: use cifar-10-binary.tar.gz\)"),
])
def test_cifar10_bad_archives(tmp_path, members, message):
    path = cifar_tarball(tmp_path / "c.tar.gz", members)
    with pytest.raises(DataError, match=message) as info:
        data.load(path)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


def test_cifar10_corrupt_archive(tmp_path):
    path = tmp_path / "c.tar.gz"
    cifar_tarball(path, [("b/data_batch_1.bin", cifar_records(40, 0)[0])])
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(DataError, match=r"c.tar.gz: not a readable tar archive"):
        data.load(str(path))
