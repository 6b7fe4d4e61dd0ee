"""xpcnn.training.hostmem: the allocator setting is explicit, honest about what it did, and lets the
user's environment win."""

import platform
import subprocess
import sys

import pytest

from xpcnn.training.hostmem import keep_freed_memory


def test_the_users_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() == "left to the environment (MALLOC_TRIM_THRESHOLD_)"


@pytest.mark.skipif(platform.system() != "Linux" or "glibc" not in platform.libc_ver()[0],
                    reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds(monkeypatch):
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() == "glibc keeps up to 1024 MiB freed; blocks < 32 MiB from the heap"


@pytest.mark.parametrize("value", [0, 1 << 40, 2.5, True])
def test_thresholds_must_fit_a_c_int(value):
    with pytest.raises(ValueError, match="must be an integer in"):
        keep_freed_memory(mmap_threshold=value)


def test_only_a_call_tunes_the_allocator_never_an_import():
    """Importing xpcnn (library and CLI modules) must not touch mallopt; calling does."""
    code = ("import ctypes, os\n"
            "for name in ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_'): os.environ.pop(name, None)\n"
            "seen, real = [], ctypes.CDLL\n"
            "class Spy(real):\n"
            "    def __getattr__(self, name):\n"
            "        seen.append(name)\n"
            "        return real.__getattr__(self, name)\n"
            "ctypes.CDLL = Spy\n"
            "import xpcnn, xpcnn.training, xpcnn.cli, xpcnn.training.hostmem\n"
            "print('mallopt' in seen)\n"
            "xpcnn.training.hostmem.keep_freed_memory()\n"
            "print('mallopt' in seen)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]
