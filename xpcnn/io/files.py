"""Atomic file writes: write to a temporary name in the same folder, flush and
fsync, then ``os.replace``.  A crash or kill mid-write leaves the previous file
intact and at most a stray ``.tmp-*`` file, never a half-written target."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


def _umask() -> int:
    """The process umask.  POSIX can only read it by setting it, so set it and put it straight
    back (for that instant a file another thread creates is not masked at all)."""
    old = os.umask(0)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_write(path) as handle: handle.write(...)``.

    The file ends with the permissions a plain ``open(path, "w")`` would give a new file,
    0o666 & ~umask (0o644 under the usual umask 0o022), not the 0o600 that ``tempfile.mkstemp``
    gives its temporary file: the temporary file is ``fchmod``-ed before it is renamed into place.
    (An existing file's permissions are not kept; the new file replaces it.)"""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as handle:
            if hasattr(os, "fchmod"):  # POSIX (and Windows from Python 3.13)
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def check_writable_dir(path: str | os.PathLike) -> str | None:
    """None if ``path`` is (or can be made) a writable folder, else why not."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path!r} is not a folder"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"cannot create {path!r}: {exc.strerror}"
    if not os.path.isdir(path):
        return f"{path!r} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"cannot write in {path!r}: {exc.strerror}"
    return None


def check_writable_file(path: str | os.PathLike) -> str | None:
    """None if a file can be written (atomically) at ``path``, else why not: checked before
    a long run, so that the run's results are not lost at the end."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return f"{path!r} is a folder; give a file name (e.g. {os.path.join(path, 'bench.json')!r})"
    return check_writable_dir(os.path.dirname(os.path.abspath(path)))
