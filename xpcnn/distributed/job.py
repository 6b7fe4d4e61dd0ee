"""The job around the ranks: this rank's place, a shared checkpoint without a shared filesystem, and
agreement on exit with an abort on failure, so that no rank is ever left hanging."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from xpcnn.distributed.mpi import MPIUnavailable, local_rank, mpi


class Job:
    """What a distributed entry point needs besides the executor: this rank's place, a shared
    checkpoint without a shared filesystem, and an exit that never leaves another rank hanging."""

    def __init__(self, comm: Any = None) -> None:
        self.MPI = mpi()
        base = comm if comm is not None else self.MPI.COMM_WORLD
        self.comm = base.Dup()
        self.exit_comm = base.Dup()  # only the exit agreement uses it: it cannot match a step's collective
        self.rank, self.size = self.comm.rank, self.comm.size
        self.local_rank, self.local_size = local_rank(self.comm)
        self.temp_files: list[str] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def abort(self, code: int) -> None:
        """End every rank of the job now (after flushing this rank's output)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self.MPI.COMM_WORLD.Abort(code if isinstance(code, int) and 0 < code < 256 else 1)

    def share_file(self, path: str | None) -> str | None:
        """Rank 0 reads ``path`` and sends its bytes to every rank; the others get a private copy
        (a temporary file, removed at exit), so no shared filesystem is needed.  Returns the path
        to use on this rank; ``None`` when rank 0 could not read it (rank 0 gets ``path`` back and
        reports the problem itself)."""
        payload = None
        if self.rank == 0 and path is not None:
            try:
                with open(path, "rb") as handle:
                    payload = handle.read()
            except OSError:
                payload = None
        payload = self.comm.bcast(payload, root=0)
        if self.rank == 0:
            return path
        if payload is None:
            return None
        descriptor, copy = tempfile.mkstemp(prefix=f"xpcnn-rank{self.rank}-", suffix=".npz")
        with os.fdopen(descriptor, "wb") as out:
            out.write(payload)
        self.temp_files.append(copy)
        return copy

    def gather_failures(self, message: str | None) -> list[tuple[int, str]]:
        """Every rank's set-up problem (None: none), as (rank, message) pairs; a collective."""
        return [(rank, text) for rank, text in enumerate(self.comm.allgather(message)) if text is not None]

    def finish(self, code: int, timeout: float = 10.0) -> int:
        """Agree with the other ranks on leaving: when every rank got here within ``timeout``
        seconds, every rank returns the largest exit status of all; otherwise some rank is still
        waiting in a step for this one, and this rank aborts the whole job with ``code`` (or 1)."""
        mine, codes = np.array([code], np.int32), np.zeros(self.size, np.int32)
        request = self.exit_comm.Iallgather(mine, codes)
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                print(f"rank {self.rank}: the other ranks did not finish within {timeout:g}s; aborting the job",
                      file=sys.stderr)
                self.abort(code or 1)
            time.sleep(0.002)
        return int(codes.max())

    def close(self) -> None:
        for path in self.temp_files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.temp_files = []


def run_job(main: Callable[[Job], int | None], prog: str = "xpcnn", timeout: float = 10.0) -> int:
    """Run ``main(job)`` on every rank and return its exit status, never leaving a rank hanging:

    * mpi4py missing: one line naming the extra, status 2 (no MPI needed for that);
    * ``main`` returns (or raises SystemExit with) a status: the ranks agree on leaving
      (:meth:`Job.finish`); a rank whose partners are stuck aborts the job;
    * any other exception, or KeyboardInterrupt, on any rank: its traceback is printed and
      ``MPI_Abort`` ends every rank at once (status 1, or 130), as ``python -m mpi4py`` would.
    """
    try:
        job = Job()
    except MPIUnavailable as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            code = main(job)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            job.abort(130)
        except BaseException:
            traceback.print_exc()
            job.abort(1)
        return job.finish(int(code or 0), timeout)
    finally:
        job.close()
