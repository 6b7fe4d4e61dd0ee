"""xpcnn.io.files: atomic writes (permissions, failures), write_json, the writability checks."""

import errno
import json
import os
import stat
import tempfile

import pytest

from xpcnn.io import files
from xpcnn.io.files import atomic_write, check_writable_dir, check_writable_file, write_json


@pytest.fixture
def umask():
    """Set the process umask for one test and put the previous one back afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- atomic_write ---------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="no os.fchmod on this platform")
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o000, 0o666)],
                         ids=["umask022", "umask077", "umask002", "umask000"])
def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path, umask, mask, expected):
    umask(mask)
    with atomic_write(tmp_path / "out.bin") as handle:
        handle.write(b"data")
    with open(tmp_path / "plain.bin", "wb") as handle:  # what open() gives under the same umask
        handle.write(b"data")
    assert _mode(tmp_path / "out.bin") == expected == _mode(tmp_path / "plain.bin")
    assert os.umask(mask) == mask  # reading the umask left it as it was


def test_atomic_write_writes_and_replaces(tmp_path):
    path = tmp_path / "out.txt"
    with atomic_write(path, "w") as handle:
        handle.write("first\n")
    with atomic_write(str(path), "w") as handle:  # str or PathLike
        handle.write("second\n")
    assert path.read_text() == "second\n"
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")
    with pytest.raises(type(error)):
        with atomic_write(path) as handle:
            handle.write(b"half of the new")
            raise error
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failure_on_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.bin") as handle:
            handle.write(b"x")
            raise ValueError("stop")
    assert os.listdir(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def replace(src, dst):
        raise OSError(errno.EXDEV, "rename failed")

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_write(path) as handle:
            handle.write(b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


# -- write_json -----------------------------------------------------------------------

def test_write_json_round_trips_in_key_order_with_a_final_newline(tmp_path):
    data = {"b": 1, "a": [1.5, "x", None], "nested": {"z": True}}
    path = tmp_path / "metrics.json"
    write_json(path, data)
    text = path.read_text()
    assert text.endswith("}\n") and json.loads(text) == data
    assert list(json.loads(text)) == ["b", "a", "nested"]  # not sorted
    assert text.startswith('{\n  "b": 1')  # indented


def test_write_json_that_cannot_serialise_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


# -- check_writable_dir / check_writable_file ----------------------------------------------

def test_check_writable_dir_accepts_and_creates_folders(tmp_path):
    assert check_writable_dir(tmp_path) is None
    nested = tmp_path / "a" / "b"
    assert check_writable_dir(nested) is None
    assert nested.is_dir()
    assert os.listdir(nested) == []  # the probe file is gone


def test_check_writable_dir_rejects_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    assert check_writable_dir(path) == f"{str(path)!r} is not a folder"


def test_check_writable_dir_cannot_create_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    problem = check_writable_dir(tmp_path / "file" / "sub")
    assert problem.startswith(f"cannot create {str(tmp_path / 'file' / 'sub')!r}: ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="needs POSIX permissions that bind (root writes anywhere)")
def test_check_writable_dir_rejects_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert check_writable_dir(folder) == f"cannot write in {str(folder)!r}: Permission denied"
    finally:
        folder.chmod(0o700)


def test_check_writable_dir_reports_a_failed_probe(tmp_path, monkeypatch):
    """The same branch as a read-only folder, for a run as root (which writes anywhere)."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert check_writable_dir(tmp_path) == f"cannot write in {str(tmp_path)!r}: Permission denied"


def test_check_writable_file(tmp_path):
    assert check_writable_file(tmp_path / "bench.json") is None
    assert check_writable_file(tmp_path / "new" / "bench.json") is None
    assert (tmp_path / "new").is_dir()  # its folder is made ready
    (tmp_path / "exists.json").write_text("{}")
    assert check_writable_file(tmp_path / "exists.json") is None
    suggestion = os.path.join(str(tmp_path), "bench.json")
    assert check_writable_file(tmp_path) == (f"{str(tmp_path)!r} is a folder; give a file name "
                                             f"(e.g. {suggestion!r})")
    (tmp_path / "file").write_text("x")
    assert check_writable_file(tmp_path / "file" / "out.json") == f"{str(tmp_path / 'file')!r} is not a folder"
