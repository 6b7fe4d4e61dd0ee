"""Data-parallel training over MPI ranks (mpi4py): one process per core, GPU or machine.

Launch with ``mpiexec -n N python scripts/train.py --distributed ...`` (docs/distributed.md).
mpi4py is imported only by the functions here, when asked for: without it the rest of xpcnn works,
and :func:`mpi` raises :class:`MPIUnavailable` naming the extra to install (``xpcnn[mpi]``).

:class:`DataParallelStep` is a step executor (the contract is in
:mod:`~xpcnn.training.executors`).  Every rank runs the same Trainer on the same data with the same
seed, so every rank draws the same shuffle and augmentation: the global batch is the single-process
batch.  Rank k keeps share k of it (``share_bounds(n, size)``, the cut ``SplitStep(threads=size)``
makes) and runs forward and backward on it with the loss and dE/dO scaled by n_k / n, exactly as
:meth:`SplitStep.gradients <xpcnn.training.executors.SplitStep.gradients>` does per share.  Each rank
then packs its gradients and weighted loss into one flat host vector in the model's dtype, the
vectors meet in a (size, count) host buffer, and every rank adds the rows in rank order,
(((g_0 + g_1) + g_2) + ...), as ``ordered_sum`` adds the threads' results.  The buffer is an MPI-3
shared-memory window when every rank runs on one machine (each rank writes its own row; after a
barrier every rank reads every row, no copy by MPI), else the vectors are ``Allgather``\\ ed into
it.  So:

* every rank holds bitwise the same sum, and so the same parameters after every step;
* an N-rank run is **bitwise equal** to the single-process ``SplitStep(threads=N)`` run
  (``train.py --threads N``), whatever the MPI library, and equal to the plain run up to float
  rounding;
* the loss each step returns is the global batch loss, the same on every rank: a divergence is
  seen at the same step everywhere.

``reduction="allreduce"`` sums with ``MPI_Allreduce`` instead: repeatable for a fixed rank count and
MPI library, **not** bitwise-equal to the threaded run (the MPI library picks the order of the sum).
``reduction="nccl"`` keeps the gradients on the GPU (cupy and torch:cuda ranks): NCCL through
``cupy.cuda.nccl``, bootstrapped over MPI, all-gathers them into a device buffer that is summed in
rank order on the device -- the same semantics as the host path.  It was written without a GPU to
test it on (see docs/distributed.md).  The host path never hands a device pointer to MPI: the
``mpich`` wheel is not CUDA-aware.

Evaluation is sharded: rank k evaluates a contiguous run of whole evaluation batches
(:meth:`DataParallelStep.evaluation_batches`), and :meth:`DataParallelStep.gather_evaluation` gives
every rank all batches' results in batch order, so the metrics are exactly the single process's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

from xpcnn.backends import from_numpy, limit_blas_threads, to_numpy
from xpcnn.data import targets_to_batch, to_batch
from xpcnn.training.executors import SplitStep, StepExecutor, refuse_batch_statistics, refuse_empty_batch, share_bounds

EXTRA = "pip install 'xpcnn[mpi]'"
REDUCTIONS = ("gather", "allreduce", "nccl")


class MPIUnavailable(RuntimeError):
    """mpi4py or its MPI library cannot be loaded; the message names the extra to install."""


class RankMismatch(RuntimeError):
    """The ranks do not run the same configuration or start from the same parameters; the
    message names the rank(s) that differ from rank 0."""


def mpi():
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


def world():
    """``MPI.COMM_WORLD`` (imports mpi4py; raises :class:`MPIUnavailable`)."""
    return mpi().COMM_WORLD


def local_rank(comm) -> tuple[int, int]:
    """(rank, size) among the ranks on this machine: a shared-memory split of ``comm``."""
    MPI = mpi()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        return local.rank, local.size
    finally:
        local.Free()


def rank_device(backend_name: str, device: str | None, local: int) -> str | None:
    """The device of a rank: unchanged on a CPU; ``cuda`` becomes ``cuda:<local rank>`` (modulo the
    GPUs this machine has, so that several ranks may share one).  An explicit ``cuda:N`` is kept."""
    wants_gpu = (device or "").startswith("cuda") or (backend_name == "cupy" and device is None)
    if not wants_gpu or ":" in (device or ""):
        return device
    count = 0
    try:
        if backend_name == "cupy":
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        elif backend_name == "torch":
            import torch

            count = torch.cuda.device_count()
        elif backend_name == "jax":
            import jax

            count = len(jax.devices("gpu"))
    except Exception:  # no GPU: let the backend's own check say so
        count = 0
    return f"cuda:{local % count}" if count else device


# -- the step executor ------------------------------------------------------------------------------

class DataParallelStep(StepExecutor):
    """Each rank computes its share of every batch; gradients are summed in rank order (module
    docstring).  ``comm``: an mpi4py communicator (default ``COMM_WORLD``; give a duplicate,
    ``comm.Dup()``, when other code runs collectives on it too).  Every rank must construct, bind,
    step, stop and evaluate alike: these are collectives.  A CPU rank runs BLAS on one thread:
    launch one rank per core.  ``reduction``: "gather" (bitwise-equal to ``--threads N``),
    "allreduce" (repeatable, not bitwise-equal) or "nccl" (GPU ranks).  ``chunk``: run the rank's
    share as pieces of at most that many images (the same step up to float rounding; then not
    bitwise-equal to the threaded run).  ``shared_memory`` (the "gather" reduction): meet in a
    shared-memory window (True), through ``Allgather`` (False), or None: the window when every
    rank is on one machine.  The same sum either way, bit for bit."""

    def __init__(self, comm=None, reduction: str = "gather", chunk: int | None = None,
                 shared_memory: bool | None = None):
        if reduction not in REDUCTIONS:
            raise ValueError(f"DataParallelStep: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"DataParallelStep: chunk must be an integer >= 1, got {chunk!r}")
        if shared_memory is not None and (not isinstance(shared_memory, bool) or reduction != "gather"):
            raise ValueError("DataParallelStep: shared_memory is True, False or None, and only for the 'gather' "
                             f"reduction (got {shared_memory!r} with {reduction!r})")
        self.MPI = mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.rank, self.comm.size
        self.reduction, self.chunk, self.shared_memory = reduction, chunk, shared_memory
        self.shared = None  # the _SharedRows window, made at the first step
        self._stale = None  # a window of an earlier bind, freed at the next first step
        self.recv = self.send = None
        self.signal = 0  # set by a signal handler (the CLI's): which signal asked to stop
        self.agreed_signal = 0  # after should_stop said True: the largest signal number any rank got
        self.comm_seconds, self.comm_steps = 0.0, 0  # time spent in the reduction, for bench.py
        # bench.py: a barrier before each reduction, so that comm_seconds holds the exchange alone,
        # not the wait for a slower rank (it costs a few microseconds a step; off in training).
        self.timing_barrier = False
        self._flag, self._flags = np.zeros(1, np.int32), np.zeros(1, np.int32)
        self.local = None
        self.nccl = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bind(self, model, loss_fn, optimizer, backend, dtype):
        refuse_batch_statistics(model, "DataParallelStep", "--distributed")
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.layout, offset = [], 0  # (layer index, name, shape, offset, size), in parameter order
        for index, layer in enumerate(model.layers):
            for name, value in layer.params.items():
                shape = tuple(value.shape)
                size = int(np.prod(shape, dtype=np.int64))
                self.layout.append((index, name, shape, offset, size))
                offset += size
        self.count = offset + 1  # every gradient, then the weighted loss
        self.host_dtype = np.dtype(dtype)
        # The host buffers are made at the first step (_host_buffers), where every rank is sure to
        # be: making them takes collectives, and bind runs while the ranks set up, where one rank
        # may fail and go to report it while the others would wait in a collective here for ever.
        if self.shared is not None:  # bound again: the old window is freed at the next first step
            self._stale = self.shared
            self.shared = None
        self.recv = self.send = None
        # What a rank takes in a step: every rank's row, or Allreduce's send and receive vectors.
        self.bytes_per_step = (2 if self.reduction == "allreduce" else self.size) * self.count * self.host_dtype.itemsize
        if self.chunk is not None:
            self.local = SplitStep(1, self.chunk)
            self.local.bind(model, loss_fn, optimizer, backend, dtype)
        if self.reduction == "nccl" and (backend.name not in ("cupy", "torch") or "cuda" not in backend.label):
            raise ValueError(f"DataParallelStep: reduction 'nccl' needs cupy or torch:cuda ranks, not {backend.label}")

    @contextlib.contextmanager
    def running(self):
        if "cuda" in self.backend.label:
            yield self
            return
        # One core per rank: BLAS on one thread, or BLAS's worker threads and the ranks fight over
        # the cores (and a lone rank would be no measure of what one rank of many does).
        with limit_blas_threads(self.backend, 1):
            yield self

    # -- one step ---------------------------------------------------------------------------------
    def to_device(self, images, targets, noise: dict | None = None):
        """This rank's share of the batch (and of the step's Dropout noise, drawn for the whole batch)."""
        refuse_empty_batch(images, type(self).__name__)
        n = len(images)
        shares = share_bounds(n, self.size)
        if self.rank >= len(shares):  # fewer images than ranks: this rank sits the batch out
            return None, None, n, len(shares), 0, 0, None
        lo, hi = shares[self.rank]
        if noise:
            noise = {name: from_numpy(value[lo:hi], self.backend, self.dtype) for name, value in noise.items()}
        return (to_batch(images[lo:hi], self.backend, self.dtype, normalize=self.normalize),
                targets_to_batch(targets[lo:hi], self.backend, self.dtype), n, len(shares), lo, hi, noise)

    def _share_gradients(self, x, y, n, lo, hi, noise=None):
        """This rank's weighted loss, leaving its weighted gradients in the model's layers."""
        weight = (hi - lo) / n
        if self.local is None:  # exactly SplitStep.gradients' arithmetic for one share
            if noise:
                self.model.set_noise(noise)
            loss = self.loss_fn(self.model(x), y) * weight
            self.model.backward(self.loss_fn.backward() * weight, input_grad=False)
            return loss
        loss = self.local.gradients(x, y, noise) * weight
        for layer in self.model.layers:
            layer.grads = {name: grad * weight for name, grad in layer.grads.items()}
        return loss

    def step(self, batch):
        x, y, n, used, lo, hi, noise = batch
        loss = self._share_gradients(x, y, n, lo, hi, noise) if x is not None else None
        if self.reduction == "nccl":
            if self.nccl is None:  # at the first step, where every rank is sure to be (a collective)
                self.nccl = _NcclGather(self.comm, self.backend, self.count, self.dtype)
            loss = self._reduce_on_device(loss, used)
        else:
            loss = self._reduce_on_host(loss, used)
        self.optimizer.step(self.model)
        return loss

    def _host_buffers(self) -> None:
        """At the first step (a collective, every rank alike): one row per rank for the gather, in a
        shared-memory window where every rank is on this machine, else Allgather's receive buffer;
        one vector for Allreduce."""
        if self._stale is not None:
            self._stale.free()
            self._stale = None
        gather = self.reduction == "gather"
        if gather and self.shared_memory is not False:
            one_machine = local_rank(self.comm)[1] == self.size  # the same answer on every rank
            if self.shared_memory and not one_machine:
                raise ValueError("DataParallelStep: shared_memory=True needs every rank on one machine")
            if one_machine:
                self.shared = _SharedRows(self.comm, self.count, self.host_dtype)
        self.recv = np.zeros((self.size if gather and self.shared is None else 0, self.count), self.host_dtype)
        self.send = None if gather else np.zeros(self.count, self.host_dtype)

    def _reduce_on_host(self, loss, used: int):
        # The gather: each rank packs into its own row (of the shared window, or of the receive
        # buffer, which Allgather then fills in place).  Allreduce: a send buffer of its own.
        if self.recv is None:
            self._host_buffers()
        gather = self.reduction == "gather"
        rows = self.recv if self.shared is None else self.shared.next_rows()
        send, packing = (rows[self.rank] if gather else self.send), time.perf_counter()
        if loss is None:
            send[:] = 0
        else:
            for index, name, shape, offset, size in self.layout:
                send[offset:offset + size] = to_numpy(self.model.layers[index].grads[name]).reshape(-1)
            send[-1] = to_numpy(loss)
        packed = time.perf_counter()
        if self.timing_barrier:
            self.comm.Barrier()
        started = time.perf_counter()
        if not gather:
            total = np.empty_like(send)
            self.comm.Allreduce(send, total, op=self.MPI.SUM)
        else:
            if self.shared is not None:
                self.shared.wait()  # every row written
            else:
                self.comm.Allgather(self.MPI.IN_PLACE, rows)
            total = rows[0].copy() if used == 1 else rows[0] + rows[1]
            for row in range(2, used):  # left fold in rank order: ((g0 + g1) + g2) + ...
                total += rows[row]
        # `total` is new every step: the layers (and the optimizer's state) may keep views of it.
        self._set_grads([from_numpy(total[offset:offset + size].reshape(shape), self.backend)
                         for _, _, shape, offset, size in self.layout])
        loss = from_numpy(np.asarray(total[-1]), self.backend)
        exchanged = time.perf_counter()
        self.comm_seconds += (packed - packing) + (exchanged - started)  # pack, exchange, sum, unpack
        self.comm_steps += 1
        return loss

    def _set_grads(self, values) -> None:
        grads = {}
        for (index, name, _, _, _), value in zip(self.layout, values):
            grads.setdefault(index, {})[name] = value
        for index, layer in enumerate(self.model.layers):
            layer.grads = grads.get(index, {})

    def _reduce_on_device(self, loss, used: int):
        grads = None if loss is None else [self.model.layers[index].grads[name]
                                           for index, name, _, _, _ in self.layout]
        started = time.perf_counter()
        total = self.nccl(grads, loss, used)
        self.comm_seconds += time.perf_counter() - started
        self.comm_steps += 1
        self._set_grads(self.nccl.unpack(total, self.layout))
        return self.nccl.unpack_loss(total)

    def should_stop(self, requested: bool) -> bool:
        self._flag[0] = (max(1, int(self.signal)) if requested else 0)
        self.comm.Allreduce(self._flag, self._flags, op=self.MPI.MAX)
        if self._flags[0]:
            self.agreed_signal = int(self._flags[0]) if self._flags[0] > 1 else 0
        return bool(self._flags[0])

    def barrier(self) -> None:
        self.comm.Barrier()

    # -- evaluation --------------------------------------------------------------------------------
    def evaluation_batches(self, count: int) -> range:
        """This rank's evaluation batches: a contiguous run of whole batches (share k of ``count``)."""
        shares = share_bounds(count, self.size)
        return range(*shares[self.rank]) if self.rank < len(shares) else range(0)

    def gather_evaluation(self, parts: list) -> list:
        """Every rank's per-batch results, in batch order (ranks hold consecutive runs of batches)."""
        return [part for rank_parts in self.comm.allgather(parts) for part in rank_parts]

    # -- start-up agreement ----------------------------------------------------------------------
    def check_same_run(self, trainer) -> None:
        """Raise :class:`RankMismatch` (on every rank alike) unless every rank runs the same
        configuration on the same backend and starts from the same parameters, optimizer state and
        position in the run.  A collective: every rank must call it."""
        mine = fingerprint(trainer)
        everyone = self.comm.allgather(mine)
        problems = []
        for what, label in (("config", "configuration"), ("state", "parameters or training state")):
            ranks = [rank for rank, prints in enumerate(everyone) if prints[what] != everyone[0][what]]
            if ranks:
                problems.append(f"{'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))} "
                                f"{'has' if len(ranks) == 1 else 'have'} different {label} than rank 0")
        if problems:
            raise RankMismatch("the ranks disagree: " + "; ".join(problems)
                               + " (launch every rank with the same flags, data and xpcnn version)")

    def close(self) -> None:
        for window in (self.shared, self._stale):  # not freed here: see _SharedRows.release
            if window is not None:
                window.release()
        self.shared = self._stale = None
        if self.nccl is not None:
            self.nccl.close()
            self.nccl = None
        if self.local is not None:
            self.local.close()
            self.local = None

    def describe(self) -> str:
        if self.shared is not None or self.shared_memory:
            meet = ", shared memory"
        elif self.shared_memory is None and self.recv is None:  # decided at the first step
            meet = ", shared memory where the ranks share a machine"
        else:
            meet = ""  # Allgather
        how = {"gather": meet, "allreduce": ", Allreduce", "nccl": ", NCCL"}[self.reduction]
        chunk = f", pieces of at most {self.chunk} images" if self.chunk else ""
        return f"data-parallel over {self.size} MPI rank{'s' if self.size != 1 else ''}{how}{chunk}"


def fingerprint(trainer) -> dict:
    """sha256 of the run's configuration (canonical JSON, with the backend's name but not its device
    index) and of its state: parameters, optimizer state, epoch, step and random generator."""
    config = json.dumps({"config": trainer.config.__dict__, "backend": trainer.backend.name,
                         "architecture": trainer.model.config()}, sort_keys=True, default=str)
    state = hashlib.sha256()
    for group in (trainer.model.state_dict(), trainer.optimizer.state_dict()):
        for name in sorted(group):
            value = np.ascontiguousarray(group[name])
            state.update(f"\0{name}\0{value.dtype.str}\0{value.shape}\0".encode())
            state.update(value.tobytes())
    position = trainer.state
    state.update(json.dumps([position.epoch, position.step_in_epoch, position.global_step,
                             trainer.rng.bit_generator.state], sort_keys=True).encode())
    return {"config": hashlib.sha256(config.encode()).hexdigest(), "state": state.hexdigest()}


class _SharedRows:
    """The gather's (size, count) rows in one MPI-3 shared-memory window, for ranks that all run on
    one machine: each rank writes its vector into its own row, and after a barrier every rank reads
    every row straight from memory.  That replaces the ``Allgather``, whose copies cost ~100 us a
    step more at 46k parameters (docs/distributed.md).  Two sets of rows, used in turn: a rank that
    writes step k+2's row into step k's set has passed step k+1's barrier, which no rank reaches
    before it has read step k's rows."""

    def __init__(self, comm, count: int, dtype):
        MPI = mpi()
        dtype = np.dtype(dtype)
        total = 2 * comm.size * count
        self.comm = comm
        self.window = MPI.Win.Allocate_shared(total * dtype.itemsize if comm.rank == 0 else 0, dtype.itemsize,
                                              comm=comm)  # all of it in rank 0's segment, contiguous
        buffer, _ = self.window.Shared_query(0)
        # Never read before written: every rank writes its row (zeros when it sits a batch out)
        # before every wait, and the sum reads only the rows of ranks with a share.
        self.rows = np.frombuffer(buffer, dtype, count=total).reshape(2, comm.size, count)
        self.window.Lock_all()  # one passive epoch for the window's life: Sync orders the memory
        self.turn = 0

    def next_rows(self) -> np.ndarray:
        """This step's (size, count) rows; write your own row, then :meth:`wait`."""
        rows, self.turn = self.rows[self.turn], 1 - self.turn
        return rows

    def wait(self) -> None:
        """Until every rank has written its row (and its writes are visible here)."""
        self.window.Sync()
        self.comm.Barrier()
        self.window.Sync()

    def release(self) -> None:
        """Stop using the window, without freeing it: MPI frees it when the job ends.  Freeing is a
        collective, and close() also runs while one rank unwinds from an exception; there a
        collective would wait for the other ranks, which wait in the next step for this one, and
        the job would hang instead of aborting (tests/test_distributed.py)."""
        self.rows = None
        self.window.Unlock_all()

    def free(self) -> None:
        """Release and free the window: a collective, for every rank alike."""
        self.release()
        self.window.Free()


class _NcclGather:
    """The GPU-direct reduction (cupy and torch:cuda ranks): pack the gradients into one device
    vector, NCCL allGather into a (size, count) device buffer, sum the rows in rank order on the
    device.  torch tensors cross to CuPy and back through DLPack (no copies); all NCCL work runs on
    CuPy's current stream, and DLPack's stream handshake orders it after torch's.  NCCL's unique id
    comes from rank 0 over MPI, as in ChainerMN.  Not run on a GPU yet (docs/distributed.md)."""

    def __init__(self, comm, backend, count: int, dtype: str):
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl_module, self.backend, self.count = cupy, nccl, backend, count
        index = backend.device.id if backend.name == "cupy" else (backend.device.index or 0)
        self.device = cupy.cuda.Device(index)
        places = comm.allgather((os.uname().nodename, self.device.pci_bus_id))
        if len(set(places)) != len(places):  # NCCL refuses two ranks of one communicator on one GPU
            raise ValueError("reduction 'nccl' needs one GPU per rank; these ranks share GPUs: "
                             f"{places}; use the default reduction (through the host) to share GPUs")
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.bcast(uid, root=0)
        with self.device:
            self.comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
            self.send = cupy.zeros(count, dtype)
            self.recv = cupy.empty((comm.size, count), dtype)
        self.datatype = nccl.NCCL_FLOAT32 if dtype == "float32" else nccl.NCCL_FLOAT64

    def _cupy(self, array):
        return array if self.backend.name == "cupy" else self.cupy.from_dlpack(array)

    def __call__(self, grads, loss, used: int):
        cupy = self.cupy
        with self.device:
            if grads is None:
                self.send.fill(0)
            else:
                cupy.concatenate([self._cupy(g).reshape(-1) for g in grads] + [self._cupy(loss).reshape(1)],
                                 out=self.send)
            stream = cupy.cuda.get_current_stream()
            self.comm.allGather(self.send.data.ptr, self.recv.data.ptr, self.count, self.datatype, stream.ptr)
            total = self.recv[0].copy() if used == 1 else self.recv[0] + self.recv[1]
            for row in range(2, used):
                total += self.recv[row]
            return total

    def _out(self, array):
        if self.backend.name == "cupy":
            return array
        import torch

        return torch.from_dlpack(array)

    def unpack(self, total, layout):
        return [self._out(total[offset:offset + size].reshape(shape)) for _, _, shape, offset, size in layout]

    def unpack_loss(self, total):
        return self._out(total[-1:].reshape(()))

    def close(self):
        self.comm.destroy()


# -- the job around the ranks: agreement on exit, abort on failure -------------------------------------

class Job:
    """What a distributed entry point needs besides the executor: this rank's place, a shared
    checkpoint without a shared filesystem, and an exit that never leaves another rank hanging."""

    def __init__(self, comm=None):
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
        if self.rank == 0:
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
        handle, copy = tempfile.mkstemp(prefix=f"xpcnn-rank{self.rank}-", suffix=".npz")
        with os.fdopen(handle, "wb") as out:
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


def run_job(main, prog: str = "xpcnn", timeout: float = 10.0) -> int:
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
