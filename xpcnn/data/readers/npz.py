"""``--data file.npz``: NumPy archives of named arrays, Keras' names or ``images``/``labels``."""

from __future__ import annotations

import os

import numpy as np

from xpcnn.data.dataset import DataError, Dataset, finish_dataset, regular_file, validate
from xpcnn.data.readers.base import ReadOptions

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry; an empty zip


def load_npz(path: str, layout: str = "auto", classes: int | None = None) -> Dataset:
    """Keras names (``x_train``, ``y_train``; optional ``x_test``, ``y_test`` and ``x_val``,
    ``y_val``) or ``images``/``labels`` (all training; an integer ``train_count`` makes the images
    after it the validation split, as in the embedded file).  Never unpickles."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    regular_file(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in ZIP_MAGIC:  # (else numpy takes it for a pickle and suggests allow_pickle)
        raise DataError(f"{path}: not an .npz archive (a .npz is a zip file, starting 'PK'; this one starts "
                        f"{magic!r})")
    try:
        archive = np.load(path, allow_pickle=False)
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
        except MemoryError:
            raise DataError(f"{path}: its arrays do not fit in the memory available") from None
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
        train, validation = split.split_at(int(train_count))
        parts = [("train", train, where), ("validation", validation, where)]
    return finish_dataset(parts, path, classes)


def takes(spec: str) -> bool:
    return spec.endswith(".npz")


def read(spec: str, options: ReadOptions) -> Dataset:
    return load_npz(spec, options.layout, options.classes)
