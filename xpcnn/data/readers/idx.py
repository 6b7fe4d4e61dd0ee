"""``--data folder`` of IDX files (MNIST's format: raw or gzip), and the named IDX downloads
``download`` (MNIST) and ``fashion-mnist``.  A folder of files that holds no IDX set is read here
too, so its error names the files it lacks."""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from xpcnn.data.dataset import DataError, Dataset, Split, finish_dataset, regular_file, validate
from xpcnn.data.readers.base import ReadOptions, subfolders

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_FILE_LIMIT = 8 << 30  # bytes of data an IDX header may declare (EMNIST ByClass, the largest, has 0.6 GiB)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
# the named downloads of IDX files: --data name -> (dataset to download, class names)
DOWNLOADED = {"download": ("mnist", None), "fashion-mnist": ("fashion-mnist", FASHION_MNIST_CLASSES)}

# train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte, emnist-letters-test-images-idx3-ubyte.gz,
# train-images.idx3-ubyte (a common renaming) ...
_IDX_NAME = re.compile(r"^(?P<prefix>(?:.*-)?)(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]"
                       r"idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$")


def read_idx(path: str, expected_ndim: int | tuple | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes, validated: magic number,
    dimension count (``expected_ndim``: one count or a tuple of them), and declared sizes against
    the bytes present.  It reads no more than the header declares (so a gzip bomb stops there),
    and refuses a declared size over ``IDX_FILE_LIMIT``."""
    if os.path.exists(path):
        regular_file(path)  # (a FIFO would block)
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


def _read_idx_stream(stream: io.BufferedIOBase, path: str, expected_ndim: int | tuple | None) -> np.ndarray:
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
    try:  # the declared bytes, read (and decompressed) straight into their array: 1x the declared size
        data = np.empty(declared, dtype=np.uint8)
    except MemoryError:
        raise DataError(f"{path}: header declares shape {shape} = {declared:,} bytes of data, more than the "
                        f"memory available") from None
    view, present = memoryview(data.data), 0
    while present < declared:
        count = stream.readinto(view[present:present + (1 << 20)])
        if not count:
            break
        present += count
    if present == declared and stream.read(1):  # one byte past the declared size tells a longer file
        raise DataError(f"{path}: header declares shape {shape} = {declared} bytes of data, file has "
                        f"{present + 1} or more")
    if present != declared:
        raise DataError(f"{path}: header declares shape {shape} = {declared} bytes of data, file has {present}")
    return data.reshape(shape)


def idx_files(directory: str) -> dict:
    """(split, kind) -> path, split in train / test, kind in images / labels.  A raw file wins over
    its .gz; two different candidates for one role are an error."""
    found: dict = {}
    prefixes = set()  # 'emnist-letters-', '' ...
    for name in sorted(os.listdir(directory)):
        match = _IDX_NAME.match(name)
        if not match or not os.path.isfile(os.path.join(directory, name)):
            continue
        prefixes.add(match["prefix"])
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
    if len(prefixes) > 1:  # e.g. emnist-letters-train-images beside emnist-digits-train-labels
        sets = ", ".join(repr(prefix.rstrip("-") or "(none)") for prefix in sorted(prefixes))
        raise DataError(f"{directory}: IDX files of different sets ({sets}); keep one set per folder")
    return files


def load_idx_pair(directory: str, split: str, layout: str = "auto", classes: int | None = None,
                  files: dict | None = None) -> Split | None:
    """The ``split`` ('train' or 'test') pair of a folder, or None when either file is missing."""
    files = idx_files(directory) if files is None else files
    images_path, labels_path = files.get((split, "images")), files.get((split, "labels"))
    if images_path is None or labels_path is None:
        return None
    images = read_idx(images_path, (3, 4))
    labels = read_idx(labels_path, 1)
    return validate(images, labels, _pair_name(images_path, labels_path), layout, classes)


def _pair_name(images_path: str, labels_path: str) -> str:
    return f"{images_path} + {labels_path}"


def load_idx_dir(directory: str, layout: str = "auto", classes: int | None = None,
                 class_names: Sequence[str] | None = None) -> Dataset:
    """A folder with the IDX files (raw or .gz; see ``_IDX_NAME``).  The test pair alone is enough
    for evaluation; training needs the train pair."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: not a folder of IDX files")
    files = idx_files(directory)
    train = load_idx_pair(directory, "train", layout, classes, files)
    test = load_idx_pair(directory, "test", layout, classes, files)
    if train is None and test is None:
        raise DataError(f"{directory}: found neither {IDX_FILES['train_images']}[.gz] + "
                        f"{IDX_FILES['train_labels']}[.gz] nor {IDX_FILES['test_images']}[.gz] + "
                        f"{IDX_FILES['test_labels']}[.gz]")
    parts = [("train", train, train is not None and _pair_name(files[("train", "images")], files[("train", "labels")])),
             ("test", test, test is not None and _pair_name(files[("test", "images")], files[("test", "labels")]))]
    return finish_dataset(parts, directory, classes, class_names)


def takes(spec: str) -> bool:
    """A folder holding IDX files, or a folder of files (no subfolders) that holds none."""
    return os.path.isdir(spec) and bool(idx_files(spec) or not subfolders(spec))


def read(spec: str, options: ReadOptions) -> Dataset:
    if spec in DOWNLOADED:
        dataset, names = DOWNLOADED[spec]
        classes = 10 if options.classes is None else options.classes
        return load_idx_dir(options.download(dataset), options.layout, classes, names if classes == 10 else None)
    return load_idx_dir(spec, options.layout, options.classes)
