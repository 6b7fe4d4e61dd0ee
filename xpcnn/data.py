"""Image classification data: the embedded 5,000 MNIST digits, IDX folders, ``.npz`` files, folders of
image files per class, verified downloads (MNIST, Fashion-MNIST, CIFAR-10), the article's task,
per-channel normalisation and batching.

In memory every split is ``Split(images, labels)``: images (N, C, H, W), either uint8 (0-255, scaled
to [0, 1] on the device by :func:`to_batch`) or float32 (used as given: no scaling; store uint8 if
your pixels are 0-255), and labels int64 in 0..K-1.  A :class:`Dataset` holds the splits with
``classes`` (K >= 2) and ``image_shape`` (C, H, W).

Input layouts (IDX and ``.npz`` arrays):

* (N, H, W): one channel.
* 4-D with ``layout="auto"`` (the default): channels-last (N, H, W, C), as Keras-style files store
  colour images, when the last axis is 1, 3 or 4 and axis 1 is not; otherwise channels-first
  (N, C, H, W).  ``layout="nchw"`` or ``"nhwc"`` overrides the guess.
* Float images must be finite (kept as float32, values as given); uint8 passes through; other
  integer types must lie in 0-255 and become uint8.  Labels may be (N,) or (N, 1) integers.
* K is the largest label + 1 over all splits unless ``classes=K`` is given (then every label must be
  below it); either way K >= 2.

A dataset without a validation split of its own validates on the last 10% of its training images
(at most 5,000).  Every problem is a :class:`DataError` whose message is one line naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
import sys
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from tqdm import tqdm

from xpcnn.backends import Backend, from_numpy
from xpcnn.io.files import atomic_write

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), "assets", "mnist5k.npz")
# sha256 of the embedded digits as (5000, 28, 28) uint8 images then uint8 labels (content_sha256)
EMBEDDED_SHA256 = "12419612bc73c6984162a9db41a5082e5f0ce1ff7da468b600b140ac9d2510d1"
EMBEDDED_TRAIN = 4500  # the first 4,500 shuffled digits train, the last 500 validate
VALIDATION_HOLDOUT = 5000  # at most this many (10%) of the last training images validate
LAYOUTS = ("auto", "nchw", "nhwc")
MAX_CLASS_NAME = 255  # characters: the longest file name most file systems allow (class folders)
MAX_INFERRED_CLASSES = 100_000  # a larger label is more likely a broken file: pass classes= explicitly

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
# Fashion-MNIST (Zalando Research, MIT): the same IDX file names and format as MNIST.  The sha256 of
# the gzip files as distributed (the project's README lists their md5; these sha256 values agree
# across independent checksum lists).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": ("08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc", None),
    "train-labels-idx1-ubyte.gz": ("b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc", None),
    "t10k-images-idx3-ubyte.gz": ("78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229", None),
    "t10k-labels-idx1-ubyte.gz": ("42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf", None),
}
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the project's own (sha256-verified)
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
# CIFAR-10, the BINARY version (records of 1 label byte + 3072 pixel bytes; no pickle is ever
# loaded).  The authors' page documents md5 c32a1d4ab5d03f1284b67883e8d87530 for this file
# (170,052,171 bytes); the sha256 below is the one TensorFlow Datasets' checksum registry records for
# the same URL, and the download is verified against it.
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_SHA256 = {CIFAR10_ARCHIVE: ("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", None)}
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_RECORD = 1 + 3 * 32 * 32
TAR_MEMBER_LIMIT = 256 << 20  # bytes: a larger member of a CIFAR archive is refused, not read
IDX_FILE_LIMIT = 8 << 30  # bytes of data an IDX header may declare (EMNIST ByClass, the largest, has 0.6 GiB)

# name -> (cache subfolder (None: the cache folder itself, where MNIST always went), mirrors, checksums)
DOWNLOADS = {
    "mnist": (None, MIRRORS, DOWNLOAD_SHA256),
    "fashion-mnist": ("fashion-mnist", FASHION_MNIST_MIRRORS, FASHION_MNIST_SHA256),
    "cifar10": ("cifar10", CIFAR10_MIRRORS, CIFAR10_SHA256),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class DataError(ValueError):
    """A data file or array that cannot be used; the message names it and says why."""


@dataclass
class Split:
    images: np.ndarray  # (N, C, H, W) uint8 (0-255) or float32 (as given)
    labels: np.ndarray  # (N,) int64, 0..K-1

    def __len__(self):
        return len(self.labels)

    def take(self, count: int) -> "Split":
        return Split(self.images[:count], self.labels[:count])


@dataclass
class Dataset:
    """The splits (``validation`` and ``test`` may be None; ``train`` may be empty when only a test
    split was found), K = ``classes``, ``image_shape`` = (C, H, W), where it came from, and the
    class names where the source has them (ImageFolder, CIFAR-10, Fashion-MNIST)."""

    train: Split
    validation: Split | None
    test: Split | None
    source: str
    classes: int | None = None  # None: inferred from the labels
    image_shape: tuple | None = None  # None: from the images
    class_names: tuple | None = None

    def __post_init__(self):
        splits = [s for s in (self.train, self.validation, self.test) if s is not None]
        if self.image_shape is None:
            self.image_shape = tuple(int(d) for d in next((s for s in splits if len(s)), self.train).images.shape[1:])
        if self.classes is None:
            self.classes = max((int(s.labels.max()) + 1 for s in splits if len(s)), default=0)


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


# -- validation ---------------------------------------------------------------

def resolve_layout(shape: tuple, layout: str = "auto") -> str:
    """'nchw' or 'nhwc' for a 4-D image array of ``shape`` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout
    return "nhwc" if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "nchw"


def validate(images, labels, where: str, layout: str = "auto", classes: int | None = None) -> Split:
    """Check images ((N, H, W), (N, C, H, W) or (N, H, W, C): see the module docstring) and labels
    ((N,) or (N, 1) integers >= 0, below ``classes`` if given) and return the canonical Split:
    images (N, C, H, W) uint8 or float32, labels int64."""
    images, labels = np.asarray(images), np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # Keras' CIFAR labels are (N, 1)
        labels = labels[:, 0]
    if images.ndim not in (3, 4):
        raise DataError(f"{where}: images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    channels_last = images.ndim == 4 and resolve_layout(images.shape, layout) == "nhwc"
    if 0 in images.shape[1:]:
        raise DataError(f"{where}: images have an empty dimension: shape {images.shape}")
    if images.dtype.kind == "f":
        def first_bad(array):  # index of the first image with a non-finite value, or None
            bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1) if len(array) else np.zeros(0, bool)
            return int(np.argmax(bad)) if bad.any() else None

        if (index := first_bad(images)) is not None:
            raise DataError(f"{where}: image {index} contains NaN or infinity")
        if images.dtype != np.float32:  # (finite float32 stays finite: nothing to check again)
            with np.errstate(over="ignore"):
                images = images.astype(np.float32)
            if (index := first_bad(images)) is not None:
                raise DataError(f"{where}: image {index} has values beyond float32's range")
    elif images.dtype.kind in "iu":
        if images.dtype != np.uint8:
            if images.size and (images.min() < 0 or images.max() > 255):
                raise DataError(f"{where}: integer pixel values must lie in 0-255, found "
                                f"{int(images.min())}-{int(images.max())}")
            images = images.astype(np.uint8)
    else:
        raise DataError(f"{where}: images must be integers or floats, got dtype {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        first = int(np.argmax(labels > np.iinfo(np.int64).max))  # (int64 would wrap it to a negative label)
        raise DataError(f"{where}: label {int(labels[first])} at index {first} is too large (labels are 0..K-1)")
    if classes is not None:
        _check_classes(classes, where)
        out_of_range = (labels < 0) | (labels >= classes)
        if out_of_range.any():
            first = int(np.argmax(out_of_range))
            raise DataError(f"{where}: label {int(labels[first])} at index {first} is outside 0-{classes - 1}")
    elif labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        first = int(np.argmax(labels < 0))
        raise DataError(f"{where}: label {int(labels[first])} at index {first} is negative (labels are 0..K-1)")
    if images.ndim == 3:
        images = images[:, None]
    elif channels_last:
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return Split(images, labels.astype(np.int64))


def _check_classes(classes, where: str) -> None:
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise DataError(f"{where}: classes must be an integer >= 2, got {classes!r}")


def _finish(parts: list, source: str, classes: int | None, class_names=None, holdout: bool = True) -> Dataset:
    """The Dataset from ``parts`` = [(role, Split or None, where)] with role train / validation / test:
    the validation holdout when there is no validation split and ``holdout``, K inferred or checked,
    and one image shape for all splits."""
    splits = {role: (split, where) for role, split, where in parts
              if split is not None and (role == "train" or len(split))}  # an empty test split is none
    shaped = [(split, where) for split, where in splits.values()]
    if not shaped:
        raise DataError(f"{source}: no images")
    first, first_where = shaped[0]
    shape = tuple(int(d) for d in first.images.shape[1:])
    for split, where in shaped[1:]:
        if tuple(split.images.shape[1:]) != shape:
            raise DataError(f"{where}: images are {shape_text(split.images.shape[1:])} but those of {first_where} "
                            f"are {shape_text(shape)}")
        if split.images.dtype != first.images.dtype:  # uint8 is scaled by 1/255 on the way in, float32 is not
            raise DataError(f"{where}: images are {split.images.dtype} but those of {first_where} are "
                            f"{first.images.dtype}: give every split the same pixel type (uint8 0-255 or float)")
    if classes is None:
        top = max((int(split.labels.max()) for split, _ in shaped if len(split)), default=-1)
        if top + 1 > MAX_INFERRED_CLASSES:
            where = next(w for s, w in shaped if len(s) and int(s.labels.max()) == top)
            raise DataError(f"{where}: label {top} implies {top + 1} classes; pass classes= explicitly if that is meant")
        if top < 1:
            raise DataError(f"{source}: every label is {max(top, 0)}: a classifier needs at least 2 classes "
                            f"(labels 0..K-1, K >= 2)")
        classes = top + 1
    else:
        _check_classes(classes, source)
        for split, where in shaped:
            if len(split) and int(split.labels.max()) >= classes:
                first_bad = int(np.argmax(split.labels >= classes))
                raise DataError(f"{where}: label {int(split.labels[first_bad])} at index {first_bad} is outside "
                                f"0-{classes - 1}")
    long = [name for name in class_names or () if len(name) > MAX_CLASS_NAME]
    if long:  # (a checkpoint stores the names, and its reader takes them no longer than this)
        raise DataError(f"{source}: class name {long[0][:40]!r}... is {len(long[0])} characters long, more than "
                        f"{MAX_CLASS_NAME}")
    train = splits.get("train", (None,))[0]
    validation = splits.get("validation", (None,))[0]
    test = splits.get("test", (None,))[0]
    if train is None:
        train = Split(np.zeros((0, *shape), first.images.dtype), np.zeros(0, np.int64))
    elif validation is None and holdout:
        cut = len(train) - min(VALIDATION_HOLDOUT, len(train) // 10)
        train, validation = Split(train.images[:cut], train.labels[:cut]), Split(train.images[cut:], train.labels[cut:])
    return Dataset(train, validation, test, source, int(classes), shape,
                   tuple(class_names) if class_names is not None else None)


def shape_text(shape) -> str:
    """(3, 32, 32) -> '3x32x32'."""
    return "x".join(str(int(d)) for d in shape)


# -- IDX ------------------------------------------------------------------------

def read_idx(path: str, expected_ndim: int | tuple | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes, validated: magic number,
    dimension count (``expected_ndim``: one count or a tuple of them), and declared sizes against
    the bytes present.  It reads no more than the header declares (so a gzip bomb stops there),
    and refuses a declared size over ``IDX_FILE_LIMIT``."""
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            stream = gzip.GzipFile(fileobj=handle, mode="rb") if gzipped else handle
            try:
                return _read_idx_stream(stream, path, expected_ndim)
            except (OSError, EOFError, zlib.error) as exc:
                if gzipped:
                    raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
                raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read_idx_stream(stream, path: str, expected_ndim) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", head)
    if zero != 0 or type_code != 0x08:
        raise DataError(f"{path}: bad magic number 0x{head.hex()} (expected 0x0000080N for unsigned bytes)")
    expected = (expected_ndim,) if isinstance(expected_ndim, int) else expected_ndim
    if expected is not None and ndim not in expected:
        raise DataError(f"{path}: has {ndim} dimensions, expected {' or '.join(str(n) for n in expected)}")
    dims = stream.read(4 * ndim)
    if ndim < 1 or len(dims) < 4 * ndim:
        raise DataError(f"{path}: header declares {ndim} dimensions but is truncated")
    shape = struct.unpack(f">{ndim}I", dims)
    declared = math.prod(shape)  # Python integers: no overflow
    if declared > IDX_FILE_LIMIT:
        raise DataError(f"{path}: header declares shape {shape} = {declared} bytes of data, more than xpcnn "
                        f"reads into memory ({IDX_FILE_LIMIT >> 30} GiB)")
    chunks, present = [], 0
    while present <= declared:  # one byte past the declared size tells a longer file
        chunk = stream.read(min(1 << 24, declared + 1 - present))
        if not chunk:
            break
        chunks.append(chunk)
        present += len(chunk)
    if present != declared:
        more = " or more" if present > declared else ""
        raise DataError(f"{path}: header declares shape {shape} = {declared} bytes of data, file has {present}{more}")
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(shape)


# train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte, emnist-letters-test-images-idx3-ubyte.gz,
# train-images.idx3-ubyte (a common renaming) ...
_IDX_NAME = re.compile(r"^(?P<prefix>(?:.*-)?)(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]"
                       r"idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$")


def _idx_files(directory: str) -> dict:
    """(split, kind) -> path, split in train / test, kind in images / labels.  A raw file wins over
    its .gz; two different candidates for one role are an error."""
    found: dict = {}
    for name in sorted(os.listdir(directory)):
        match = _IDX_NAME.match(name)
        if not match or not os.path.isfile(os.path.join(directory, name)):
            continue
        role = ("train" if match["split"] == "train" else "test", match["kind"])
        stem = name[:-3] if match["gz"] else name
        found.setdefault(role, {}).setdefault(stem, []).append(name)
    files = {}
    for role, stems in found.items():
        if len(stems) > 1:
            raise DataError(f"{directory}: several {role[0]} {role[1]} files ({', '.join(sorted(stems))}); "
                            f"keep one set per folder")
        (stem, names), = stems.items()
        files[role] = os.path.join(directory, stem if stem in names else names[0])
    prefixes = sorted({_IDX_NAME.match(os.path.basename(path))["prefix"] for path in files.values()})
    if len(prefixes) > 1:  # e.g. emnist-letters-train-images beside emnist-digits-train-labels
        sets = ", ".join(repr(prefix.rstrip("-") or "(none)") for prefix in prefixes)
        raise DataError(f"{directory}: IDX files of different sets ({sets}); keep one set per folder")
    return files


def load_idx_pair(directory: str, split: str, layout: str = "auto", classes: int | None = None,
                  files: dict | None = None) -> Split | None:
    """The ``split`` ('train' or 'test') pair of a folder, or None when either file is missing."""
    files = _idx_files(directory) if files is None else files
    images_path, labels_path = files.get((split, "images")), files.get((split, "labels"))
    if images_path is None or labels_path is None:
        return None
    images = read_idx(images_path, (3, 4))
    labels = read_idx(labels_path, 1)
    return validate(images, labels, _pair_name(images_path, labels_path), layout, classes)


def _pair_name(images_path: str, labels_path: str) -> str:
    return f"{images_path} + {labels_path}"


def load_idx_dir(directory: str, layout: str = "auto", classes: int | None = None,
                 class_names=None) -> Dataset:
    """A folder with the IDX files (raw or .gz; see ``_IDX_NAME``).  The test pair alone is enough
    for evaluation; training needs the train pair."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: not a folder of IDX files")
    files = _idx_files(directory)
    train = load_idx_pair(directory, "train", layout, classes, files)
    test = load_idx_pair(directory, "test", layout, classes, files)
    if train is None and test is None:
        raise DataError(f"{directory}: found neither {IDX_FILES['train_images']}[.gz] + {IDX_FILES['train_labels']}[.gz] "
                        f"nor {IDX_FILES['test_images']}[.gz] + {IDX_FILES['test_labels']}[.gz]")
    parts = [("train", train, train is not None and _pair_name(files[("train", "images")], files[("train", "labels")])),
             ("test", test, test is not None and _pair_name(files[("test", "images")], files[("test", "labels")]))]
    return _finish(parts, directory, classes, class_names)


# -- .npz ------------------------------------------------------------------------------

def load_npz(path: str, layout: str = "auto", classes: int | None = None) -> Dataset:
    """Keras names (``x_train``, ``y_train``; optional ``x_test``, ``y_test`` and ``x_val``,
    ``y_val``) or ``images``/``labels`` (all training; an integer ``train_count`` makes the images
    after it the validation split, as in the embedded file)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError ...
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{path}: a single array, not an .npz archive of named arrays")
    with archive:
        names = set(archive.files)
        keras = bool(names & {"x_train", "y_train", "x_test", "y_test"})
        if keras:
            wanted = [("train", "x_train", "y_train"), ("test", "x_test", "y_test"), ("validation", "x_val", "y_val")]
            required = {"x_train", "y_train"}
        elif names & {"images", "labels"}:
            wanted, required = [("train", "images", "labels")], {"images", "labels"}
        else:
            raise DataError(f"{path}: missing arrays x_train, y_train (or images, labels) "
                            f"(has {', '.join(sorted(names)) or 'none'})")
        for _, x, y in wanted:  # a pair is all or nothing
            if x in names or y in names:
                required |= {x, y}
        missing = sorted(required - names, key=["x_train", "y_train", "x_test", "y_test", "x_val", "y_val",
                                                 "images", "labels"].index)
        if missing:
            raise DataError(f"{path}: missing arrays {', '.join(missing)} (has {', '.join(sorted(names)) or 'none'})")
        try:
            arrays = {k: archive[k] for k in required}
            train_count = archive["train_count"] if not keras and "train_count" in names else None
        except Exception as exc:
            raise DataError(f"{path}: corrupt array data ({type(exc).__name__}: {exc})") from None
    parts = []
    for role, x, y in wanted:
        if x in arrays:
            where = f"{path} [{x}, {y}]"
            parts.append((role, validate(arrays[x], arrays[y], where, layout, classes), where))
    if train_count is not None:
        role, split, where = parts[0]
        if train_count.shape != () or train_count.dtype.kind not in "iu" or not 0 < int(train_count) <= len(split):
            raise DataError(f"{path}: train_count must be an integer in 1..{len(split)}, got {train_count!r}")
        cut = int(train_count)
        parts = [("train", split.take(cut), where),
                 ("validation", Split(split.images[cut:], split.labels[cut:]), where)]
    return _finish(parts, path, classes)


# -- embedded subset -------------------------------------------------------------------

def load_embedded() -> Dataset:
    """The 5,000 real MNIST training digits shipped in the package (500 per class),
    shuffled once; 4,500 train and 500 validate.  No test split: evaluate on real
    MNIST test files with ``load_idx_dir``.  Images (N, 1, 28, 28) uint8."""
    with np.load(EMBEDDED_PATH) as archive:
        images, labels, train_count = archive["images"], archive["labels"], int(archive["train_count"])
    split = validate(images, labels, EMBEDDED_PATH, classes=10)
    return _finish([("train", split.take(train_count), EMBEDDED_PATH),
                    ("validation", Split(split.images[train_count:], split.labels[train_count:]), EMBEDDED_PATH)],
                   "embedded", 10)


# -- a folder of image files per class (ImageFolder) ---------------------------------------

def _pillow(root: str):
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{root}: reading a folder of images needs Pillow: pip install 'xpcnn[image]'") from None
    return Image


def _image_files(folder: str) -> list[str]:
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(folder, name))]


def _class_folders(root: str) -> list[str]:
    return sorted(name for name in os.listdir(root)
                  if not name.startswith(".") and os.path.isdir(os.path.join(root, name)))


def read_image(path: str, Image=None) -> np.ndarray:
    """One image file -> (C, H, W) uint8: L -> 1 channel, LA -> 2, RGB -> 3, RGBA -> 4 (palette
    images become RGB or RGBA, bilevel ones L).  Any failure is a one-line DataError."""
    Image = Image or _pillow(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode == "1":
                image = image.convert("L")
            elif mode not in ("L", "LA", "RGB", "RGBA"):
                raise DataError(f"{path}: unsupported image mode {mode} (8-bit L, LA, RGB, RGBA, P or 1)")
            array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError ...
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DataError(f"{path}: not a readable image ({detail})") from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _read_class_folders(root: str, names: list[str], Image, reference: list,
                        shuffle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every image of root/<name>/ for each name (label = its index in ``names``), in that order or
    (``shuffle``) in one fixed-seed (0) shuffle of it; ``reference`` is [path, shape] of the first
    image read, shared across splits."""
    paths = []
    for label, name in enumerate(names):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            paths += [(path, label) for path in _image_files(folder)]
    if shuffle:  # the files, before they are read: no second copy of the images
        paths = [paths[index] for index in np.random.default_rng(0).permutation(len(paths))]
    images, labels = None, np.array([label for _, label in paths], np.int64)
    for index, (path, _) in enumerate(paths):
        array = read_image(path, Image)
        if not reference:
            reference += [path, array.shape]
        if array.shape != reference[1]:
            raise DataError(f"{path}: {_describe(array.shape)} differs from {reference[0]} ({_describe(reference[1])}); "
                            f"all images must have the same size and mode")
        if images is None:
            try:
                images = np.empty((len(paths), *array.shape), np.uint8)
            except MemoryError:
                raise DataError(f"{root}: {len(paths)} images of {_describe(array.shape)} need "
                                f"{len(paths) * array.size / 2 ** 30:.1f} GiB of memory, more than there is: "
                                f"resize them (xpcnn does not)") from None
        images[index] = array
    if images is None:
        images = np.zeros((0, *(reference[1] if reference else (1, 1, 1))), np.uint8)
    return images, labels


def _describe(shape) -> str:
    return f"{shape[2]}x{shape[1]} pixels, {({1: 'L', 2: 'LA', 3: 'RGB', 4: 'RGBA'})[shape[0]]}"


def load_image_folder(root: str, classes: int | None = None) -> Dataset:
    """``root/<class>/*.png|jpg|jpeg|bmp`` (the ImageFolder convention: the classes are the sorted
    subfolder names), or ``root/train/<class>/...`` with optional ``root/test/<class>/...`` and
    ``root/val/<class>/...`` (or ``validation``).  Needs Pillow (the ``image`` extra).  The training
    images are shuffled once with a fixed seed (0), so the validation holdout takes every class."""
    train_root = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) and \
        _class_folders(os.path.join(root, "train")) else root
    split_roots = {"train": train_root}
    if train_root != root:
        for role, options in (("test", ("test",)), ("validation", ("val", "validation"))):
            folder = next((os.path.join(root, o) for o in options if os.path.isdir(os.path.join(root, o))), None)
            if folder is not None:
                split_roots[role] = folder
    names = _class_folders(train_root)
    if not names:
        raise DataError(f"{train_root}: no class subfolders (expected {os.path.join(train_root, '<class>', '*.png')})")
    if len(names) == 1 and classes is None:
        raise DataError(f"{train_root}: one class subfolder ({names[0]}): a classifier needs at least 2")
    for name in names:
        if not _image_files(os.path.join(train_root, name)):
            raise DataError(f"{os.path.join(train_root, name)}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    for role, folder in split_roots.items():
        for name in _class_folders(folder):
            if name not in names:
                raise DataError(f"{os.path.join(folder, name)}: class {name!r} is not among the training classes")
    Image = _pillow(root)
    reference: list = []
    parts = []
    for role, folder in split_roots.items():
        images, labels = _read_class_folders(folder, names, Image, reference, shuffle=role == "train")
        parts.append((role, Split(images, labels), folder))
    return _finish(parts, root, len(names) if classes is None else classes,
                   names if classes in (None, len(names)) else None)


# -- CIFAR-10, binary version ---------------------------------------------------------------------

def load_cifar10_binary(path: str, classes: int | None = None) -> Dataset:
    """``cifar-10-binary.tar.gz``: ``data_batch_1..5.bin`` train, ``test_batch.bin`` tests; each
    record is 1 label byte + 3072 pixel bytes (32x32 red, then green, then blue).  The archive is
    read in memory: nothing is extracted to disk, members with absolute or '..' names are refused,
    and no pickle is ever loaded."""
    wanted = re.compile(r"^(data_batch_[1-5]\.bin|test_batch\.bin|batches\.meta\.txt)$")  # 6 at most, each capped
    members: dict[str, bytes] = {}
    python_version = False
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", member.name):
                    raise DataError(f"{path}: refusing archive member with an unsafe name {member.name!r}")
                base = parts[-1] if parts else ""
                python_version |= base in ("data_batch_1", "test_batch")
                if not wanted.match(base):
                    continue
                if not member.isfile():
                    raise DataError(f"{path}: archive member {member.name} is not a regular file")
                if member.size > TAR_MEMBER_LIMIT:
                    raise DataError(f"{path}: archive member {member.name} is {member.size} bytes, too large")
                if base in members:
                    raise DataError(f"{path}: archive has two members named {base}")
                members[base] = archive.extractfile(member).read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except DataError:
        raise
    except Exception as exc:  # tarfile.ReadError, EOFError, zlib.error, OSError ...
        raise DataError(f"{path}: not a readable tar archive ({type(exc).__name__}: {exc})") from None
    batches = sorted((int(m[len("data_batch_"):-4]), m) for m in members if m.startswith("data_batch_"))
    if not batches and "test_batch.bin" not in members:
        hint = (" (this is the Python version, whose pickles are never loaded: use cifar-10-binary.tar.gz)"
                if python_version else "")
        raise DataError(f"{path}: no data_batch_N.bin or test_batch.bin in the archive{hint}")

    def records(name: str) -> Split:
        raw = members[name]
        if len(raw) % CIFAR10_RECORD:
            raise DataError(f"{path} [{name}]: {len(raw)} bytes is not a whole number of {CIFAR10_RECORD}-byte records "
                            f"(1 label byte + 3072 pixel bytes)")
        table = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD)
        return validate(table[:, 1:].reshape(-1, 3, 32, 32), table[:, 0], f"{path} [{name}]", "nchw",
                        10 if classes is None else classes)

    parts = []
    if batches:
        train = [records(name) for _, name in batches]
        joined = Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train]))
        parts.append(("train", joined, f"{path} [{', '.join(name for _, name in batches)}]"))
    if "test_batch.bin" in members:
        parts.append(("test", records("test_batch.bin"), f"{path} [test_batch.bin]"))
    names = CIFAR10_CLASSES
    if "batches.meta.txt" in members:
        listed = tuple(line.strip() for line in members["batches.meta.txt"].decode("utf-8", "replace").splitlines()
                       if line.strip())
        names = listed if len(listed) == 10 else names
    classes = 10 if classes is None else classes
    return _finish(parts, path, classes, names if classes == 10 else None)


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


def download(directory: str | None = None, mirrors=None, checksums=None, progress: bool = True,
             timeout: float = 30.0, dataset: str = "mnist") -> str:
    """Fetch the files of ``dataset`` (a name in :data:`DOWNLOADS`: 'mnist', 'fashion-mnist',
    'cifar10') into ``directory`` (default: ``$XPCNN_DATA`` or ``~/.cache/xpcnn``, and a subfolder
    named after the dataset except for MNIST) from the first mirror that serves a file whose sha256
    matches.  Each file is written atomically; files already present and verified are kept.
    ``mirrors`` and ``checksums`` replace the dataset's (tests use a loopback server)."""
    if dataset not in DOWNLOADS:
        raise DataError(f"unknown dataset {dataset!r} to download; choose one of {', '.join(DOWNLOADS)}")
    subfolder, default_mirrors, default_checksums = DOWNLOADS[dataset]
    if directory is None:
        directory = cache_dir() if subfolder is None else os.path.join(cache_dir(), subfolder)
    mirrors = default_mirrors if mirrors is None else mirrors
    checksums = checksums or default_checksums
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

NAMED = ("embedded", "download", "fashion-mnist", "cifar10")


def load(spec: str = "embedded", layout: str = "auto", classes: int | None = None, *, directory: str | None = None,
         mirrors=None, checksums=None, progress: bool = True, timeout: float = 30.0) -> Dataset:
    """``spec``: 'embedded'; a named download ('download' = MNIST, 'fashion-mnist', 'cifar10'; these
    names win over files of the same name: write ./cifar10 for a folder); a folder of IDX files or of
    class subfolders of images; a ``.npz`` file; a CIFAR-10 binary ``.tar.gz``.  ``layout`` ('auto',
    'nchw', 'nhwc') applies to IDX and .npz arrays; ``classes`` fixes K (default: inferred).
    ``directory``, ``mirrors``, ``checksums``, ``progress`` and ``timeout`` go to :func:`download`."""
    resolve_layout((1, 1, 1, 1), layout)  # an unknown layout fails before anything is read
    if classes is not None:
        _check_classes(classes, spec)
    fetch = dict(directory=directory, mirrors=mirrors, checksums=checksums, progress=progress, timeout=timeout)
    if spec == "embedded":
        dataset = load_embedded()
        if classes is not None and classes != 10:
            raise DataError(f"embedded: the embedded digits have 10 classes, not {classes}")
        return dataset
    if spec == "download":
        return load_idx_dir(download(dataset="mnist", **fetch), layout, 10 if classes is None else classes)
    if spec == "fashion-mnist":
        return load_idx_dir(download(dataset="fashion-mnist", **fetch), layout, 10 if classes is None else classes,
                            FASHION_MNIST_CLASSES if classes in (None, 10) else None)
    if spec == "cifar10":
        return load_cifar10_binary(os.path.join(download(dataset="cifar10", **fetch), CIFAR10_ARCHIVE), classes)
    if os.path.isdir(spec):
        if _idx_files(spec):
            return load_idx_dir(spec, layout, classes)
        if _class_folders(spec):
            return load_image_folder(spec, classes)
        return load_idx_dir(spec, layout, classes)  # "found neither ..."
    if spec.endswith(".npz"):
        return load_npz(spec, layout, classes)
    if spec.endswith((".tar.gz", ".tgz", ".tar")) and os.path.isfile(spec):
        return load_cifar10_binary(spec, classes)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or folder (expected 'embedded', 'download', 'fashion-mnist', 'cifar10', "
                        f"an IDX folder, a folder of class subfolders of images, a .npz or a CIFAR-10 binary .tar.gz)")
    raise DataError(f"{spec}: not an IDX folder, an image folder, a .npz file or a CIFAR-10 binary .tar.gz")


# -- tasks and batches ------------------------------------------------------------------------

TASKS = ("binary", "multiclass")


def task_targets(labels: np.ndarray, task: str, classes: int = 10) -> np.ndarray:
    """Host targets: ``binary`` -> float (N, 1) with 1 where digit > 4 (the article's task; only
    for K = 10 classes); ``multiclass`` -> int64 class labels (N,) in 0..classes-1."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must have shape (N,), got {labels.shape}")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "binary" and classes != 10:
        raise DataError(f"task 'binary' (the article's digit > 4) needs 10 classes, the data has {classes}: "
                        f"use task 'multiclass'")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels must lie in 0-{classes - 1} for task {task!r}, found "
                        f"{int(labels.min())}-{int(labels.max())}")
    if task == "binary":
        return (labels > 4).astype(np.float64)[:, None]
    return labels.astype(np.int64)


def channel_stats(split) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean[C], std[C]) of a Split's (or an (N, C, H, W) array's) images, float64, on
    the scale the network sees (uint8 / 255; float32 as given): the numbers for
    ``to_batch(..., normalize=(mean, std))``.  uint8 statistics are exact (integer sums, correctly
    rounded); float ones are summed in float64 in a fixed order.  The population std (ddof 0); a
    constant channel reports std 1.0, so normalising only centres it."""
    images = split.images if isinstance(split, Split) else np.asarray(split)
    if images.ndim != 4:
        raise DataError(f"channel_stats expects images (N, C, H, W), got shape {images.shape}")
    n, channels = images.shape[:2]
    count = n * images.shape[2] * images.shape[3]
    if count == 0:
        raise DataError("channel_stats: no images to compute channel statistics from")
    step = max(1, (1 << 22) // max(1, images[0].size))  # about 4M pixels at a time
    if images.dtype == np.uint8:
        s1, s2 = [0] * channels, [0] * channels
        for start in range(0, n, step):
            chunk = images[start:start + step].astype(np.uint64)
            s1 = [a + int(b) for a, b in zip(s1, chunk.sum(axis=(0, 2, 3)))]
            s2 = [a + int(b) for a, b in zip(s2, (chunk * chunk).sum(axis=(0, 2, 3)))]
        mean = np.array([a / (count * 255) for a in s1])
        variance = [(count * b - a * a) / (count * count) for a, b in zip(s1, s2)]  # exact integers, then one rounding
        std = np.array([math.sqrt(v) / 255 for v in variance])
    elif images.dtype.kind == "f":
        total = np.zeros(channels)
        for start in range(0, n, step):
            total += images[start:start + step].sum(axis=(0, 2, 3), dtype=np.float64)
        mean = total / count
        squares = np.zeros(channels)
        for start in range(0, n, step):
            centred = images[start:start + step].astype(np.float64) - mean[None, :, None, None]
            squares += (centred * centred).sum(axis=(0, 2, 3))
        std = np.sqrt(squares / count)
    else:
        raise DataError(f"channel_stats expects uint8 or float images, got {images.dtype}")
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float64), std.astype(np.float64)


def check_normalize(normalize, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) as float64 arrays of ``channels`` finite numbers, std > 0; else a one-line DataError."""
    try:
        mean, std = normalize
        mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"normalize must be (mean, std), one number per channel each ({exc})") from None
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DataError(f"normalize: {mean.size} means and {std.size} stds for {channels}-channel images")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise DataError(f"normalize: means must be finite and stds finite and > 0, got {mean.tolist()}, {std.tolist()}")
    return mean, std


_NORMALIZE_CACHE: dict = {}


def _device_normalize(normalize, channels: int, backend: Backend, dtype: str):
    """(mean, std) shaped (1, C, 1, 1) in ``dtype`` on ``backend``: cast on the host, transferred once
    per (backend, dtype, numbers)."""
    mean, std = check_normalize(normalize, channels)
    key = (backend, dtype, mean.tobytes(), std.tobytes())
    try:
        cached = _NORMALIZE_CACHE.get(key)
    except TypeError:  # a backend whose device cannot be hashed: no cache
        key, cached = None, None
    if cached is None:
        cached = tuple(from_numpy(a.reshape(1, channels, 1, 1), backend, dtype) for a in (mean, std))
        if key is not None:
            if len(_NORMALIZE_CACHE) >= 32:
                _NORMALIZE_CACHE.clear()
            _NORMALIZE_CACHE[key] = cached
    return cached


def to_batch(images: np.ndarray, backend: Backend, dtype: str, normalize=None):
    """Host images (N, C, H, W) -> ``dtype`` on ``backend``: uint8 scaled to [0, 1], float32 as
    given; then, with ``normalize=(mean[C], std[C])`` (see :func:`channel_stats`), (x - mean) / std
    per channel.  Only the host batch crosses to the device; scaling and normalising happen there."""
    if images.dtype not in (np.uint8, np.float32):
        raise DataError(f"to_batch expects uint8 or float32 images, got {images.dtype}")
    if images.ndim != 4:
        raise DataError(f"to_batch expects images (N, C, H, W), got shape {images.shape}")
    batch = from_numpy(images, backend)
    if images.dtype == np.uint8:
        batch = backend.xp.astype(batch, backend.dtype(dtype)) / 255.0
    elif dtype != "float32":
        batch = backend.xp.astype(batch, backend.dtype(dtype))
    if normalize is not None:
        mean, std = _device_normalize(normalize, images.shape[1], backend, dtype)
        batch = (batch - mean) / std
    return batch


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
