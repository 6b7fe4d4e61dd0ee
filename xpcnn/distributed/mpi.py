"""Loading mpi4py, and where a rank runs: its place among the ranks on its machine, and its device."""

from __future__ import annotations

import sys
from typing import Any

from xpcnn.backends import adapter_for, wants_gpu

EXTRA = "pip install 'xpcnn[mpi]'"


class MPIUnavailable(RuntimeError):
    """mpi4py or its MPI library cannot be loaded; the message names the extra to install."""


def mpi() -> Any:
    """The ``mpi4py.MPI`` module, imported (and MPI initialised, thread level "serialized") on
    first use.  Raises :class:`MPIUnavailable`."""
    try:
        import mpi4py
    except ImportError as exc:
        raise MPIUnavailable(f"--distributed needs mpi4py ({type(exc).__name__}: {exc}); install the 'mpi' "
                             f"extra: {EXTRA}") from None
    if "mpi4py.MPI" not in sys.modules:
        # Only the main thread calls MPI (SplitStep's threads never do); "serialized" leaves room for
        # libraries that start threads of their own.
        mpi4py.rc.thread_level = "serialized"
    try:
        from mpi4py import MPI
    except Exception as exc:  # mpi4py without a loadable MPI library
        raise MPIUnavailable(f"--distributed: mpi4py cannot load an MPI library ({type(exc).__name__}: {exc}); "
                             f"install the 'mpi' extra: {EXTRA}") from None
    return MPI


def local_rank(comm: Any) -> tuple[int, int]:
    """(rank, size) among the ranks on this machine: a shared-memory split of ``comm``."""
    MPI = mpi()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        return local.rank, local.size
    finally:
        local.Free()


def rank_device(backend_name: str, device: str | None, local: int) -> str | None:
    """The device of a rank: unchanged on a CPU; ``cuda`` (or no device, for a library that runs on
    GPUs only) becomes ``cuda:<local rank>`` (modulo the GPUs this machine has, so that several ranks
    may share one).  An explicit ``cuda:N`` is kept."""
    on_gpu = wants_gpu(backend_name, None) if device is None else device.startswith("cuda")
    if not on_gpu or ":" in (device or ""):
        return device
    try:
        count = adapter_for(backend_name).gpu_count()
    except Exception:  # no GPU: let the backend's own check say so
        count = 0
    return f"cuda:{local % count}" if count else device
