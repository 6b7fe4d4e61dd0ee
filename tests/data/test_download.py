"""Verified downloads from a loopback server: mirrors, checksums, the named datasets."""

import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
from datafiles import cifar_records, cifar_tarball, idx_bytes, write_idx_dir

from xpcnn import data
from xpcnn.data import DataError


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "served"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_falls_back(http_root, tmp_path):
    root, url = http_root
    payload = gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)))
    (root / "good" / "labels.gz").write_bytes(payload)
    (root / "bad" / "labels.gz").write_bytes(payload[:-3] + b"xyz")  # corrupted copy
    checksums = {"labels.gz": (hashlib.sha256(payload).hexdigest(), None)}
    cache = tmp_path / "cache"
    result = data.download(str(cache), mirrors=[f"{url}/missing/", f"{url}/bad/", f"{url}/good/"],
                           checksums=checksums, progress=False)
    assert (cache / "labels.gz").read_bytes() == payload and result == str(cache)
    assert sorted(os.listdir(cache)) == ["labels.gz"]  # no temporary files left


def test_download_failure_leaves_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "bad" / "labels.gz").write_bytes(b"not the file")
    checksums = {"labels.gz": ("0" * 64, None)}
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        data.download(str(cache), mirrors=[f"{url}/bad/", f"{url}/missing/"], checksums=checksums, progress=False)
    message = str(info.value)
    assert "could not download labels.gz" in message and "does not match" in message and "404" in message
    assert os.listdir(cache) == []


def test_download_accepts_a_recompressed_copy_by_its_content_hash(http_root, tmp_path):
    root, url = http_root
    raw = idx_bytes(np.arange(10, dtype=np.uint8))
    (root / "good" / "labels.gz").write_bytes(gzip.compress(raw, mtime=123))  # other gzip bytes, same content
    checksums = {"labels.gz": (hashlib.sha256(gzip.compress(raw, mtime=0)).hexdigest(),
                               hashlib.sha256(raw).hexdigest())}
    data.download(str(tmp_path / "c"), mirrors=[f"{url}/good/"], checksums=checksums, progress=False)
    assert gzip.decompress((tmp_path / "c" / "labels.gz").read_bytes()) == raw


def test_fashion_mnist_download_and_load(http_root, tmp_path):
    root, url = http_root
    source = tmp_path / "source"
    source.mkdir()
    arrays = write_idx_dir(source, train=(30, 1), test=(10, 2))
    checksums = {}
    for name in os.listdir(source):
        payload = (source / name).read_bytes()
        (root / "good" / name).write_bytes(payload)
        checksums[name] = (hashlib.sha256(payload).hexdigest(), None)
    assert sorted(checksums) == sorted(data.FASHION_MNIST_SHA256)  # the same four file names
    cache = tmp_path / "cache"
    dataset = data.load("fashion-mnist", directory=str(cache), mirrors=[f"{url}/missing/", f"{url}/good/"],
                        checksums=checksums, progress=False)
    assert dataset.class_names == data.FASHION_MNIST_CLASSES and dataset.classes == 10
    assert dataset.image_shape == (1, 28, 28) and len(dataset.train) == 27 and len(dataset.test) == 10
    np.testing.assert_array_equal(dataset.test.images[:, 0], arrays["t10k"][0])
    assert sorted(os.listdir(cache)) == sorted(checksums)


def test_download_defaults_to_a_folder_per_dataset(http_root, tmp_path, monkeypatch):
    root, url = http_root
    monkeypatch.setenv("XPCNN_DATA", str(tmp_path / "xdg"))
    payload = b"payload"
    (root / "good" / "f.bin").write_bytes(payload)
    checksums = {"f.bin": (hashlib.sha256(payload).hexdigest(), None)}
    assert data.download(mirrors=[f"{url}/good/"], checksums=checksums, progress=False, dataset="cifar10") == \
        str(tmp_path / "xdg" / "cifar10")
    assert data.download(mirrors=[f"{url}/good/"], checksums=checksums, progress=False) == str(tmp_path / "xdg")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        data.download(dataset="imagenet")


def test_cifar10_download_verifies_the_archive(http_root, tmp_path):
    root, url = http_root
    raw, labels, images = cifar_records(30, 3)
    archive = tmp_path / "built.tar.gz"
    cifar_tarball(archive, [("cifar-10-batches-bin/data_batch_1.bin", raw),
                            ("cifar-10-batches-bin/test_batch.bin", raw[:3073 * 5])])
    payload = archive.read_bytes()
    (root / "good" / data.CIFAR10_ARCHIVE).write_bytes(payload)
    (root / "bad" / data.CIFAR10_ARCHIVE).write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    checksums = {data.CIFAR10_ARCHIVE: (hashlib.sha256(payload).hexdigest(), None)}
    cache = tmp_path / "cache"
    with pytest.raises(DataError,
                       match=r"could not download cifar-10-binary.tar.gz: .*sha256 [0-9a-f]{64} does not match"):
        data.load("cifar10", directory=str(cache), mirrors=[f"{url}/bad/"], checksums=checksums, progress=False)
    assert os.listdir(cache) == []  # the refused file is never named
    dataset = data.load("cifar10", directory=str(cache), mirrors=[f"{url}/bad/", f"{url}/good/"], checksums=checksums,
                        progress=False)
    assert dataset.image_shape == (3, 32, 32) and len(dataset.train) == 27 and len(dataset.test) == 5
    np.testing.assert_array_equal(dataset.test.labels, labels[:5])
    assert dataset.class_names == data.CIFAR10_CLASSES
