"""MNIST: the embedded 5,000-digit subset, IDX files, Keras' mnist.npz, an
optional verified download, the article's task, and batching.

Images stay uint8 on the host, shaped (N, 28, 28); :func:`to_batch` scales one
batch to [0, 1] in the requested dtype on the target device, shaped (N, 1, 28, 28).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
import urllib.request
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .backend import Backend, from_numpy
from .files import atomic_write

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), "assets", "mnist5k.npz")
EMBEDDED_SHA256 = "12419612bc73c6984162a9db41a5082e5f0ce1ff7da468b600b140ac9d2510d1"
EMBEDDED_TRAIN = 4500  # the first 4,500 shuffled digits train, the last 500 validate
VALIDATION_HOLDOUT = 5000  # for full MNIST: the last 5,000 training images validate

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the gzip files as distributed, and of their decompressed bytes.
DOWNLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", None),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                   "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                  "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaef0a1d8d3d9e8ba4",
                                  "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class DataError(ValueError):
    """A data file or array that cannot be used; the message names it and says why."""


@dataclass
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8, 0-9

    def __len__(self):
        return len(self.labels)

    def take(self, count: int) -> "Split":
        return Split(self.images[:count], self.labels[:count])


@dataclass
class Dataset:
    train: Split
    validation: Split | None
    test: Split | None
    source: str


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


# -- validation ---------------------------------------------------------------

def validate(images, labels, where: str) -> Split:
    """Check images (N, H, W) and labels (N,) and return them as uint8.  Float images
    must be finite and in [0, 1] (scaled to 0-255) or [0, 255]."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3:
        raise DataError(f"{where}: images must have shape (N, rows, cols), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if images.dtype.kind == "f":
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: image {int(np.argmax(bad))} contains NaN or infinity")
        low, high = float(images.min(initial=0)), float(images.max(initial=0))
        if low < 0 or high > 255:
            raise DataError(f"{where}: float pixel values must lie in [0, 1] or [0, 255], found [{low}, {high}]")
        images = np.rint(images * (255.0 if high <= 1.0 else 1.0)).astype(np.uint8)
    elif images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{where}: pixel values must lie in 0-255")
        images = images.astype(np.uint8, copy=False)
    else:
        raise DataError(f"{where}: images must be integers or floats, got dtype {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    out_of_range = (labels < 0) | (labels > 9)
    if out_of_range.any():
        first = int(np.argmax(out_of_range))
        raise DataError(f"{where}: label {int(labels[first])} at index {first} is outside 0-9")
    return Split(images, labels.astype(np.uint8, copy=False))


# -- IDX ------------------------------------------------------------------------

def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return raw


def read_idx(path: str, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes, validated: magic number,
    dimension count, and declared sizes against the bytes present."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code != 0x08:
        raise DataError(f"{path}: bad magic number 0x{raw[:4].hex()} (expected 0x0000080N for unsigned bytes)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: has {ndim} dimensions, expected {expected_ndim}")
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: header declares {ndim} dimensions but is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    declared = int(np.prod(shape))
    present = len(raw) - 4 - 4 * ndim
    if present != declared:
        raise DataError(f"{path}: header declares shape {shape} = {declared} bytes of data, file has {present}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def load_idx_pair(directory: str, split: str) -> Split | None:
    images_path = _find(directory, IDX_FILES[f"{split}_images"])
    labels_path = _find(directory, IDX_FILES[f"{split}_labels"])
    if images_path is None or labels_path is None:
        return None
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    return validate(images, labels, f"{images_path} + {labels_path}")


def load_idx_dir(directory: str) -> Dataset:
    """A folder with the four IDX files (raw or .gz).  The test pair alone is enough
    for evaluation; training needs the train pair."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: not a folder of IDX files")
    train = load_idx_pair(directory, "train")
    test = load_idx_pair(directory, "test")
    if train is None and test is None:
        raise DataError(f"{directory}: found neither {IDX_FILES['train_images']}[.gz] + {IDX_FILES['train_labels']}[.gz] "
                        f"nor {IDX_FILES['test_images']}[.gz] + {IDX_FILES['test_labels']}[.gz]")
    return _with_validation(train, test, directory)


def _with_validation(train: Split | None, test: Split | None, source: str) -> Dataset:
    if train is None:
        return Dataset(Split(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)), None, test, source)
    holdout = min(VALIDATION_HOLDOUT, len(train) // 10)
    cut = len(train) - holdout
    return Dataset(Split(train.images[:cut], train.labels[:cut]), Split(train.images[cut:], train.labels[cut:]),
                   test, source)


# -- Keras mnist.npz -----------------------------------------------------------------

def load_npz(path: str) -> Dataset:
    """Keras' ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError ...
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    with archive:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing arrays {', '.join(missing)} (has {', '.join(archive.files) or 'none'})")
        try:
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except Exception as exc:
            raise DataError(f"{path}: corrupt array data ({type(exc).__name__}: {exc})") from None
    train = validate(arrays["x_train"], arrays["y_train"], f"{path} [x_train, y_train]")
    test = validate(arrays["x_test"], arrays["y_test"], f"{path} [x_test, y_test]")
    return _with_validation(train, test, path)


# -- embedded subset -------------------------------------------------------------------

def load_embedded() -> Dataset:
    """The 5,000 real MNIST training digits shipped in the package (500 per class),
    shuffled once; 4,500 train and 500 validate.  No test split: evaluate on real
    MNIST test files with ``load_idx_dir``."""
    with np.load(EMBEDDED_PATH) as archive:
        images, labels, train_count = archive["images"], archive["labels"], int(archive["train_count"])
    split = validate(images, labels, EMBEDDED_PATH)
    return Dataset(Split(split.images[:train_count], split.labels[:train_count]),
                   Split(split.images[train_count:], split.labels[train_count:]), None, "embedded")


# -- download ----------------------------------------------------------------------------

def cache_dir() -> str:
    return os.environ.get("XPCNN_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "xpcnn")


def _matches(packed: bytes, sums: tuple[str, str | None]) -> bool:
    """The sha256 of the gzip file, or (a re-compressed copy) of its decompressed bytes."""
    if hashlib.sha256(packed).hexdigest() == sums[0]:
        return True
    if sums[1] is None:
        return False
    try:
        return hashlib.sha256(gzip.decompress(packed)).hexdigest() == sums[1]
    except (OSError, EOFError):
        return False


def _verified(path: str, sums: tuple[str, str | None]) -> bool:
    with open(path, "rb") as handle:
        return _matches(handle.read(), sums)


def download(directory: str | None = None, mirrors=MIRRORS, checksums=None, progress: bool = True,
             timeout: float = 30.0) -> str:
    """Fetch the four MNIST files into ``directory`` (default: ``$XPCNN_DATA`` or
    ``~/.cache/xpcnn``) from the first mirror that serves a file whose sha256 matches.
    Each file is written atomically; files already present and verified are kept."""
    directory = directory or cache_dir()
    checksums = checksums or DOWNLOAD_SHA256
    os.makedirs(directory, exist_ok=True)
    for name, sums in checksums.items():
        target = os.path.join(directory, name)
        if os.path.isfile(target) and _verified(target, sums):
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            chunks, done = [], 0
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, desc=name, unit="B", unit_scale=True, file=sys.stderr,
                              disable=not progress, leave=False) as bar:
                        while chunk := response.read(1 << 16):
                            chunks.append(chunk)
                            done += len(chunk)
                            bar.update(len(chunk))
                packed = b"".join(chunks)
                if total is not None and done != total:
                    raise DataError(f"received {done} of {total} bytes")
                if not _matches(packed, sums):
                    raise DataError(f"sha256 {hashlib.sha256(packed).hexdigest()} does not match {sums[0]}")
                with atomic_write(target) as out:  # verified first, so only a good file is ever named
                    out.write(packed)
                break
            except Exception as exc:  # network error or verification failure: try the next mirror
                failures.append(f"{url}: {exc}")
        else:
            raise DataError(f"could not download {name}: " + "; ".join(failures))
    return directory


# -- one entry point ----------------------------------------------------------------------

def load(spec: str = "embedded") -> Dataset:
    """``'embedded'``, ``'download'``, a folder of IDX files, or a ``.npz`` file."""
    if spec == "embedded":
        return load_embedded()
    if spec == "download":
        return load_idx_dir(download())
    if os.path.isdir(spec):
        return load_idx_dir(spec)
    if spec.endswith(".npz"):
        return load_npz(spec)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or folder (expected 'embedded', 'download', an IDX folder or a .npz)")
    raise DataError(f"{spec}: not an IDX folder or a .npz file")


# -- tasks and batches ------------------------------------------------------------------------

TASKS = ("binary", "multiclass")


def task_targets(labels: np.ndarray, task: str) -> np.ndarray:
    """Host targets: ``binary`` -> float (N, 1) with 1 where digit > 4 (the article's
    task); ``multiclass`` -> int64 class labels (N,)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must have shape (N,), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"labels must lie in 0-9 for task {task!r}, found {int(labels.min())}-{int(labels.max())}")
    if task == "binary":
        return (labels > 4).astype(np.float64)[:, None]
    if task == "multiclass":
        return labels.astype(np.int64)
    raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def to_batch(images: np.ndarray, backend: Backend, dtype: str):
    """uint8 (N, H, W) on the host -> float (N, 1, H, W) in [0, 1] on ``backend``.
    Only the uint8 batch crosses to the device; scaling happens there."""
    if images.dtype != np.uint8:
        raise DataError(f"to_batch expects uint8 images, got {images.dtype}")
    device_images = from_numpy(images[:, None, :, :], backend)
    return backend.xp.astype(device_images, backend.dtype(dtype)) / 255.0


def targets_to_batch(targets: np.ndarray, backend: Backend, dtype: str):
    """Host targets -> device: float targets in ``dtype``, integer labels as int64."""
    return from_numpy(targets, backend, dtype if targets.dtype.kind == "f" else None)


def batch_indices(count: int, batch_size: int, rng: np.random.Generator | None, drop_last: bool = False):
    """Index arrays of the batches of one epoch, shuffled by the host ``rng``
    (None: in order).  Every backend given the same rng state sees the same batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(count) if rng is not None else np.arange(count)
    stop = count - count % batch_size if drop_last else count
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]
