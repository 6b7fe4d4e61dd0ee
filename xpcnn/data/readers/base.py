"""What a reader is: the options every reader is given (:class:`ReadOptions`) and the record the
registry in :mod:`xpcnn.data.readers` holds for each ``--data`` form (:class:`Reader`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xpcnn.data.dataset import Dataset
from xpcnn.data.download import Checksums, download


@dataclass(frozen=True)
class ReadOptions:
    """``layout`` ('auto', 'nchw', 'nhwc') for 4-D image arrays, ``classes`` (K, or None: inferred),
    and the settings of :func:`~xpcnn.data.download.download` for the named downloads."""

    layout: str = "auto"
    classes: int | None = None
    directory: str | None = None
    mirrors: Sequence[str] | None = None
    checksums: Checksums | None = None
    progress: bool = True
    timeout: float = 30.0

    def download(self, dataset: str) -> str:
        """The folder holding the verified files of the named download ``dataset``."""
        return download(self.directory, self.mirrors, self.checksums, self.progress, self.timeout, dataset)


def never(spec: str) -> bool:
    """The ``takes`` of a reader of named sources only."""
    return False


@dataclass(frozen=True)
class Reader:
    """One form of ``--data``: ``read(spec, options)`` reads a ``spec`` that is one of ``sources``
    (names such as 'cifar10', tried before any path: the name wins over a file of that name) or
    that ``takes(spec)`` accepts (a folder of some shape, a file suffix...); ``expects`` is how the
    form reads in the error for a spec no reader takes ('a .npz')."""

    read: Callable[[str, ReadOptions], Dataset]
    takes: Callable[[str], bool] = never
    expects: str = ""
    sources: tuple[str, ...] = ()


def subfolders(root: str) -> list[str]:
    """The sorted names of the folders in ``root``, hidden ones ('.git') left out: the folder shape
    that tells a folder of class subfolders from a folder of files."""
    return sorted(name for name in os.listdir(root)
                  if not name.startswith(".") and os.path.isdir(os.path.join(root, name)))
