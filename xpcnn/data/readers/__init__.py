"""The readers of ``--data``, in ONE registry, and :func:`load`, which asks them in turn.

A spec is first matched against the readers' named ``sources`` ('embedded', 'download',
'fashion-mnist', 'cifar10': a name wins over a file of that name; write ./cifar10 for a folder),
then offered to each reader's ``takes`` in registry order; the first that takes it reads it.

Adding a data format is one new module with a ``read(spec, options)`` (and a ``takes(spec)``)
and one line here::

    Reader(csv.read, csv.takes, "a .csv of pixels"),

or, from outside the package, ``register(Reader(read, takes, "a .csv of pixels"))``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from xpcnn.data.dataset import DataError, Dataset, check_classes, resolve_layout
from xpcnn.data.download import Checksums
from xpcnn.data.readers import cifar10, embedded, idx, image_folder, npz
from xpcnn.data.readers.base import Reader, ReadOptions

READERS: list[Reader] = [
    Reader(embedded.read, sources=("embedded",)),
    Reader(idx.read, idx.takes, "an IDX folder", sources=tuple(idx.DOWNLOADED)),
    Reader(image_folder.read, image_folder.takes, "a folder of class subfolders of images"),
    Reader(npz.read, npz.takes, "a .npz"),
    Reader(cifar10.read, cifar10.takes, "a CIFAR-10 binary .tar.gz", sources=("cifar10",)),
]


def register(reader: Reader, first: bool = False) -> Reader:
    """Add ``reader`` to the registry: last (it reads what no built-in reader takes), or ``first``
    (before every built-in one: a new kind of folder must come before the IDX reader, which reads
    any folder of files).  Returns it."""
    READERS.insert(0 if first else len(READERS), reader)
    return reader


def _either(forms: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b or c'."""
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else "".join(forms)


def reader_for(spec: str) -> Reader:
    """The reader of ``spec``: the one naming it among its sources, else the first that takes it."""
    for reader in READERS:
        if spec in reader.sources:
            return reader
    for reader in READERS:
        if reader.takes(spec):
            return reader
    paths = [reader.expects for reader in READERS if reader.expects]
    if not os.path.exists(spec):
        names = [repr(name) for reader in READERS for name in reader.sources]
        raise DataError(f"{spec}: no such file or folder (expected {_either(names + paths)})")
    raise DataError(f"{spec}: not {_either(paths)}")


def load(spec: str = "embedded", layout: str = "auto", classes: int | None = None, *, directory: str | None = None,
         mirrors: Sequence[str] | None = None, checksums: Checksums | None = None, progress: bool = True,
         timeout: float = 30.0) -> Dataset:
    """``spec``: 'embedded'; a named download ('download' = MNIST, 'fashion-mnist', 'cifar10'); a
    folder of IDX files or of class subfolders of images; a ``.npz`` file; a CIFAR-10 binary
    ``.tar.gz``; or whatever a registered reader takes.  ``layout`` ('auto', 'nchw', 'nhwc') applies
    to IDX and .npz arrays; ``classes`` fixes K (default: inferred).  ``directory``, ``mirrors``,
    ``checksums``, ``progress`` and ``timeout`` go to :func:`~xpcnn.data.download.download`."""
    resolve_layout((1, 1, 1, 1), layout)  # an unknown layout fails before anything is read
    if classes is not None:
        check_classes(classes, spec)
    options = ReadOptions(layout, classes, directory, mirrors, checksums, progress, timeout)
    return reader_for(spec).read(spec, options)
