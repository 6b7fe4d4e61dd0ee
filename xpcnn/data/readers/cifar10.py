"""``--data cifar10`` (the verified download) or ``--data archive.tar.gz``: CIFAR-10's BINARY
version, read in memory from the archive; no pickle is ever loaded."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import PurePosixPath

import numpy as np

from xpcnn.data.dataset import DataError, Dataset, Split, finish_dataset, regular_file, validate
from xpcnn.data.download import CIFAR10_ARCHIVE
from xpcnn.data.readers.base import ReadOptions

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_RECORD = 1 + 3 * 32 * 32
TAR_MEMBER_LIMIT = 256 << 20  # bytes: a larger member of a CIFAR archive is refused, not read


def _members(path: str) -> tuple[dict[str, bytes], bool]:
    """The wanted members of the archive by base name (6 at most, each capped), and whether it looks
    like the Python (pickle) version."""
    wanted = re.compile(r"^(data_batch_[1-5]\.bin|test_batch\.bin|batches\.meta\.txt)$")
    members: dict[str, bytes] = {}
    python_version = False
    try:
        if os.path.exists(path):
            regular_file(path)
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
                # (a regular file: extractfile returns its bytes, not None)
                members[base] = archive.extractfile(member).read()  # type: ignore[union-attr]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: its members do not fit in the memory available") from None
    except Exception as exc:  # tarfile.ReadError (its message is several lines), EOFError, zlib.error, OSError ...
        first = (str(exc).strip().splitlines() or [""])[0].rstrip(".:")
        raise DataError(f"{path}: not a readable tar archive ({type(exc).__name__}: {first})") from None
    return members, python_version


def load_cifar10_binary(path: str, classes: int | None = None) -> Dataset:
    """``cifar-10-binary.tar.gz``: ``data_batch_1..5.bin`` train, ``test_batch.bin`` tests; each
    record is 1 label byte + 3072 pixel bytes (32x32 red, then green, then blue).  The archive is
    read in memory: nothing is extracted to disk, members with absolute or '..' names are refused,
    and no pickle is ever loaded."""
    members, python_version = _members(path)
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
    names: tuple[str, ...] = CIFAR10_CLASSES
    if "batches.meta.txt" in members:
        listed = tuple(line.strip() for line in members["batches.meta.txt"].decode("utf-8", "replace").splitlines()
                       if line.strip())
        names = listed if len(listed) == 10 else names
    classes = 10 if classes is None else classes
    return finish_dataset(parts, path, classes, names if classes == 10 else None)


def takes(spec: str) -> bool:
    return spec.endswith((".tar.gz", ".tgz", ".tar")) and os.path.isfile(spec)


def read(spec: str, options: ReadOptions) -> Dataset:
    if spec == "cifar10":
        return load_cifar10_binary(os.path.join(options.download("cifar10"), CIFAR10_ARCHIVE), options.classes)
    return load_cifar10_binary(spec, options.classes)
