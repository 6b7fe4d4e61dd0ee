"""The gradient exchange of :class:`~xpcnn.distributed.DataParallelStep`: every rank's weighted
gradients and loss summed into the same total on every rank, behind one interface (as ChainerMN's
communicators are), one class per way of doing it.

Each rank packs its gradients and weighted loss, in the model's parameter order (the step's
``layout``), into one flat vector of ``count`` values in the model's dtype; the vectors meet and
every rank adds them up:

* ``"gather"`` (:class:`SharedMemoryReducer`, :class:`AllgatherReducer`): the vectors meet in a
  (size, count) host buffer and every rank adds the rows in rank order, (((g_0 + g_1) + g_2) + ...),
  as ``ordered_sum`` adds the threads' results: bitwise-equal to ``SplitStep(threads=size)``,
  whatever the MPI library.  The buffer is an MPI-3 shared-memory window when every rank runs on
  one machine (each rank writes its own row; after a barrier every rank reads every row, no copy
  by MPI), else the vectors are ``Allgather``\\ ed into it.  The same sum either way, bit for bit.
* ``"allreduce"`` (:class:`AllreduceReducer`): ``MPI_Allreduce`` sums; repeatable for a fixed rank
  count and MPI library, **not** bitwise-equal to the threaded run (the MPI library picks the order).
* ``"nccl"`` (:class:`NcclReducer`): the vectors stay on the GPU; NCCL all-gathers them into a
  device buffer summed in rank order on the device -- the gather's semantics.

The host paths never hand a device pointer to MPI: the ``mpich`` wheel is not CUDA-aware.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xpcnn.backends import Array, Backend, from_numpy, to_numpy
from xpcnn.distributed.mpi import local_rank, mpi

REDUCTIONS = ("gather", "allreduce", "nccl")


def rank_order_sum(rows: Array, used: int) -> Array:
    """rows[0] + rows[1] + ... + rows[used - 1], left to right (a new array, host or device)."""
    total = rows[0].copy() if used == 1 else rows[0] + rows[1]
    for row in range(2, used):  # left fold in rank order: ((g0 + g1) + g2) + ...
        total += rows[row]
    return total


class Reducer:
    """One way to sum every rank's vector.  A step calls :meth:`pack` (this rank's gradients, or
    None when it has no share of the batch: it adds zeros), then :meth:`exchange`, which returns the
    summed gradients (device arrays of ``backend``, in ``layout`` order) and the summed loss.  Made
    at the first step, on every rank alike: making one may take collectives.

    ``layout``: (layer index, name, shape, offset, size) per parameter; ``count``: the vector's
    length (every gradient, then the loss)."""

    label = ""  # how DataParallelStep.describe() names it (after "over N MPI ranks")

    def __init__(self, comm: Any, backend: Backend, layout: list, count: int, dtype: str) -> None:
        self.comm, self.backend, self.layout, self.count = comm, backend, layout, count
        self.dtype = np.dtype(dtype)

    def pack(self, grads: list | None, loss: Array) -> None:
        raise NotImplementedError

    def exchange(self, used: int) -> tuple[list, object]:
        """The sum of the first ``used`` ranks' vectors (the others had no share), unpacked."""
        raise NotImplementedError

    def release(self) -> None:
        """Stop using what the reducer holds, without a collective (close() also runs while one rank
        unwinds from an exception, where a collective would hang)."""

    def free(self) -> None:
        """Release and free what the reducer holds: may be a collective, for every rank alike."""
        self.release()


class HostReducer(Reducer):
    """Through host memory: the vector is a NumPy array, the total is unpacked to the device."""

    def _pack_into(self, vector: np.ndarray, grads: list | None, loss: Array) -> None:
        if grads is None:
            vector[:] = 0
            return
        for grad, (_, _, _, offset, size) in zip(grads, self.layout):
            vector[offset:offset + size] = to_numpy(grad).reshape(-1)
        vector[-1] = to_numpy(loss)

    def _unpack(self, total: np.ndarray) -> tuple[list, object]:
        # `total` is new every step: the layers (and the optimizer's state) may keep views of it.
        grads = [from_numpy(total[offset:offset + size].reshape(shape), self.backend)
                 for _, _, shape, offset, size in self.layout]
        return grads, from_numpy(np.asarray(total[-1]), self.backend)


class GatherReducer(HostReducer):
    """The gather: each rank packs into its own row of a (size, count) buffer, the rows meet
    (:meth:`_meet`), and every rank adds them in rank order."""

    def _next_rows(self) -> np.ndarray:
        """This step's (size, count) rows."""
        raise NotImplementedError

    def _meet(self, rows: np.ndarray) -> None:
        """Until every rank's row is in ``rows`` here."""
        raise NotImplementedError

    def pack(self, grads: list | None, loss: Array) -> None:
        self.rows = self._next_rows()
        self._pack_into(self.rows[self.comm.rank], grads, loss)

    def exchange(self, used: int) -> tuple[list, Array]:
        self._meet(self.rows)
        return self._unpack(rank_order_sum(self.rows, used))


class AllgatherReducer(GatherReducer):
    """The gather across machines: ``Allgather`` fills the rows in place."""

    def __init__(self, comm: Any, backend: Backend, layout: list, count: int, dtype: str) -> None:
        super().__init__(comm, backend, layout, count, dtype)
        self.buffer = np.zeros((comm.size, count), self.dtype)

    def _next_rows(self) -> np.ndarray:
        return self.buffer

    def _meet(self, rows: np.ndarray) -> None:
        self.comm.Allgather(mpi().IN_PLACE, rows)


class SharedMemoryReducer(GatherReducer):
    """The gather's (size, count) rows in one MPI-3 shared-memory window, for ranks that all run on
    one machine: each rank writes its vector into its own row, and after a barrier every rank reads
    every row straight from memory.  That replaces the ``Allgather``, whose copies cost ~100 us a
    step more at 46k parameters (docs/distributed.md).  Two sets of rows, used in turn: a rank that
    writes step k+2's row into step k's set has passed step k+1's barrier, which no rank reaches
    before it has read step k's rows."""

    label = ", shared memory"

    def __init__(self, comm: Any, backend: Backend, layout: list, count: int, dtype: str) -> None:
        super().__init__(comm, backend, layout, count, dtype)
        MPI = mpi()
        total = 2 * comm.size * count
        self.window = MPI.Win.Allocate_shared(total * self.dtype.itemsize if comm.rank == 0 else 0,
                                              self.dtype.itemsize, comm=comm)  # all in rank 0's segment, contiguous
        buffer, _ = self.window.Shared_query(0)
        # Never read before written: every rank writes its row (zeros when it sits a batch out)
        # before every wait, and the sum reads only the rows of ranks with a share.
        self.sets = np.frombuffer(buffer, self.dtype, count=total).reshape(2, comm.size, count)
        self.window.Lock_all()  # one passive epoch for the window's life: Sync orders the memory
        self.turn = 0

    def _next_rows(self) -> np.ndarray:
        rows, self.turn = self.sets[self.turn], 1 - self.turn
        return rows

    def _meet(self, rows: np.ndarray) -> None:  # every rank has written its row, and its writes are visible here
        self.window.Sync()
        self.comm.Barrier()
        self.window.Sync()

    def release(self) -> None:
        """Stop using the window, without freeing it: MPI frees it when the job ends.  Freeing is a
        collective, and close() also runs while one rank unwinds from an exception; there a
        collective would wait for the other ranks, which wait in the next step for this one, and
        the job would hang instead of aborting (tests/distributed/test_distributed.py)."""
        self.sets = self.rows = None  # type: ignore[assignment]  # released: never read again
        self.window.Unlock_all()

    def free(self) -> None:
        self.release()
        self.window.Free()


class AllreduceReducer(HostReducer):
    """``MPI_Allreduce`` of the vectors (the MPI library's order of addition)."""

    label = ", Allreduce"

    def __init__(self, comm: Any, backend: Backend, layout: list, count: int, dtype: str) -> None:
        super().__init__(comm, backend, layout, count, dtype)
        self.send = np.zeros(count, self.dtype)

    def pack(self, grads: list | None, loss: Array) -> None:
        self._pack_into(self.send, grads, loss)

    def exchange(self, used: int) -> tuple[list, Array]:
        total = np.empty_like(self.send)
        self.comm.Allreduce(self.send, total, op=mpi().SUM)
        return self._unpack(total)


class NcclReducer(Reducer):
    """The GPU-direct gather (cupy and torch:cuda ranks): pack the gradients into one device
    vector, NCCL allGather into a (size, count) device buffer, sum the rows in rank order on the
    device.  The backend's arrays cross to CuPy and back through DLPack (no copies:
    ``cupy.from_dlpack`` takes CuPy's own arrays too, ``backend.xp.from_dlpack`` gives back the
    backend's); all NCCL work runs on CuPy's current stream, and DLPack's stream handshake orders
    it after the backend's.  NCCL's unique id comes from rank 0 over MPI, as in ChainerMN.  Not run
    on a GPU yet (docs/distributed.md)."""

    label = ", NCCL"

    def __init__(self, comm: Any, backend: Backend, layout: list, count: int, dtype: str) -> None:
        import cupy
        from cupy.cuda import nccl

        super().__init__(comm, backend, layout, count, dtype)
        self.cupy = cupy
        self.device = cupy.cuda.Device(backend.adapter.nccl_device(backend.device))
        places = comm.allgather((os.uname().nodename, self.device.pci_bus_id))
        if len(set(places)) != len(places):  # NCCL refuses two ranks of one communicator on one GPU
            raise ValueError("reduction 'nccl' needs one GPU per rank; these ranks share GPUs: "
                             f"{places}; use the default reduction (through the host) to share GPUs")
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.bcast(uid, root=0)
        with self.device:
            self.nccl = nccl.NcclCommunicator(comm.size, uid, comm.rank)
            self.send = cupy.zeros(count, dtype)
            self.recv = cupy.empty((comm.size, count), dtype)
        self.datatype = nccl.NCCL_FLOAT32 if dtype == "float32" else nccl.NCCL_FLOAT64

    def pack(self, grads: list | None, loss: Array) -> None:
        with self.device:
            if grads is None:
                self.send.fill(0)
            else:
                parts = [self.cupy.from_dlpack(g).reshape(-1) for g in grads] + [self.cupy.from_dlpack(loss).reshape(1)]
                self.cupy.concatenate(parts, out=self.send)

    def exchange(self, used: int) -> tuple[list, Array]:
        with self.device:
            stream = self.cupy.cuda.get_current_stream()
            self.nccl.allGather(self.send.data.ptr, self.recv.data.ptr, self.count, self.datatype, stream.ptr)
            total = rank_order_sum(self.recv, used)
        back = self.backend.xp.from_dlpack
        grads = [back(total[offset:offset + size].reshape(shape)) for _, _, shape, offset, size in self.layout]
        return grads, back(total[-1:].reshape(()))

    def release(self) -> None:
        self.nccl.destroy()


def reducer_class(reduction: str, shared_memory: bool | None) -> type[Reducer]:
    """The class of a reduction ("gather": in shared memory or through Allgather)."""
    if reduction == "gather":
        return SharedMemoryReducer if shared_memory else AllgatherReducer
    return {"allreduce": AllreduceReducer, "nccl": NcclReducer}[reduction]


def make_reducer(reduction: str, shared_memory: bool | None, comm: Any, backend: Backend, layout: list, count: int,
                 dtype: str) -> Reducer:
    """A collective, every rank alike.  ``shared_memory`` (the gather): True, False, or None for the
    shared-memory window exactly when every rank runs on this machine."""
    if reduction == "gather" and shared_memory is not False:
        one_machine = local_rank(comm)[1] == comm.size  # the same answer on every rank
        if shared_memory and not one_machine:
            raise ValueError("DataParallelStep: shared_memory=True needs every rank on one machine")
        shared_memory = one_machine
    return reducer_class(reduction, shared_memory)(comm, backend, layout, count, dtype)
