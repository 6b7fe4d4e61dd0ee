"""The data-parallel step executor: each MPI rank computes its share of every batch, the shares'
gradients are summed (:mod:`~xpcnn.distributed.reducers`), and every rank takes the same update."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from xpcnn.backends import Array, Backend, from_numpy, limit_blas_threads, to_numpy
from xpcnn.data import targets_to_batch, to_batch
from xpcnn.distributed.mpi import mpi
from xpcnn.distributed.reducers import REDUCTIONS, Reducer, make_reducer, reducer_class
from xpcnn.training.executors import (
    SplitStep,
    StepExecutor,
    forward_backward,
    refuse_batch_statistics,
    refuse_empty_batch,
    share_bounds,
    statistics_layers,
)

if TYPE_CHECKING:
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer
    from xpcnn.training.trainer import Trainer


class RankMismatch(RuntimeError):
    """The ranks do not run the same configuration or start from the same parameters; the
    message names the rank(s) that differ from rank 0."""


class RankStatistics:
    """BatchNorm's :class:`~xpcnn.nn.batchnorm.StatisticsReducer` over MPI ranks: every rank's
    partial statistics, gathered on the host (``allgather``: the mpich wheel is not CUDA-aware) and
    handed back in rank order, so every rank combines them as the shares of a
    :class:`~xpcnn.training.executors.SplitStep` are combined: the same bits."""

    def __init__(self, comm: Any, backend: Backend, dtype: str) -> None:
        self.comm, self.backend, self.dtype = comm, backend, dtype

    def exchange(self, values: tuple) -> list[tuple]:
        host = tuple(value if isinstance(value, (int, float)) else to_numpy(value) for value in values)
        return [tuple(value if isinstance(value, (int, float)) else from_numpy(value, self.backend, self.dtype)
                      for value in part) for part in self.comm.allgather(host)]


class DataParallelStep(StepExecutor):
    """Each rank computes its share of every batch; gradients are summed in rank order
    (:mod:`xpcnn.distributed`'s docstring).  ``comm``: an mpi4py communicator (default ``COMM_WORLD``; give a duplicate,
    ``comm.Dup()``, when other code runs collectives on it too).  Every rank must construct, bind,
    step, stop and evaluate alike: these are collectives.  A CPU rank runs BLAS on one thread:
    launch one rank per core.  ``reduction``: "gather" (bitwise-equal to ``SplitStep(threads=N)``),
    "allreduce" (repeatable, not bitwise-equal) or "nccl" (GPU ranks).  ``chunk``: run the rank's
    share as pieces of at most that many images (the same step up to float rounding; then not
    bitwise-equal to the threaded run; not with BatchNorm).  BatchNorm layers compute the whole
    batch's statistics: the ranks exchange their partial sums (:class:`RankStatistics`).
    ``shared_memory`` (the "gather" reduction): meet in a
    shared-memory window (True), through ``Allgather`` (False), or None: the window when every
    rank is on one machine.  The same sum either way, bit for bit."""

    def __init__(self, comm: Any = None, reduction: str = "gather", chunk: int | None = None,
                 shared_memory: bool | None = None) -> None:
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
        self.reducer: Reducer | None = None  # the gradient exchange (reducers.py), made at the first step
        self._stale: Reducer | None = None  # the reducer of an earlier bind, freed at the next first step
        self.signal = 0  # set by a signal handler (the CLI's): which signal asked to stop
        self.agreed_signal = 0  # after should_stop said True: the largest signal number any rank got
        self.comm_seconds, self.comm_steps = 0.0, 0  # time spent in the reduction, for bench.py
        # bench.py: a barrier before each reduction, so that comm_seconds holds the exchange alone,
        # not the wait for a slower rank (it costs a few microseconds a step; off in training).
        self.timing_barrier = False
        self._flag, self._flags = np.zeros(1, np.int32), np.zeros(1, np.int32)
        self.local: SplitStep | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        if self.chunk is not None:
            refuse_batch_statistics(model, "DataParallelStep", "--chunk (with --distributed)")
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.statistics = statistics_layers(model)
        for statistics_layer in self.statistics:  # synchronised BatchNorm: the whole batch's statistics
            statistics_layer.reducer = RankStatistics(self.comm, backend, dtype)
        self.layout, offset = [], 0  # (layer index, name, shape, offset, size), in parameter order
        for index, layer in enumerate(model.layers):
            for name, value in layer.params.items():
                shape = tuple(value.shape)
                size = int(np.prod(shape, dtype=np.int64))
                self.layout.append((index, name, shape, offset, size))
                offset += size
        self.count = offset + 1  # every gradient, then the weighted loss
        # The reducer is made at the first step, where every rank is sure to be: making it takes
        # collectives, and bind runs while the ranks set up, where one rank may fail and go to
        # report it while the others would wait in a collective here for ever.
        if self.reducer is not None:  # bound again: the old reducer is freed at the next first step
            self._stale = self.reducer
            self.reducer = None
        # What a rank takes in a step: every rank's row, or Allreduce's send and receive vectors.
        vectors = 2 if self.reduction == "allreduce" else self.size
        self.bytes_per_step = vectors * self.count * np.dtype(dtype).itemsize
        if self.chunk is not None:
            self.local = SplitStep(1, self.chunk)
            self.local.bind(model, loss_fn, optimizer, backend, dtype)
        if self.reduction == "nccl" and backend.adapter.nccl_device(backend.device) is None:
            raise ValueError(f"DataParallelStep: reduction 'nccl' needs cupy or torch:cuda ranks, not {backend.label}")

    @contextlib.contextmanager
    def running(self) -> Iterator[StepExecutor]:
        if "cuda" in self.backend.label:
            yield self
            return
        # One core per rank: BLAS on one thread, or BLAS's worker threads and the ranks fight over
        # the cores (and a lone rank would be no measure of what one rank of many does).
        with limit_blas_threads(self.backend, 1):
            yield self

    # -- one step ---------------------------------------------------------------------------------
    def to_device(self, images: np.ndarray, targets: np.ndarray, noise: dict | None = None) -> tuple:
        """This rank's share of the batch (and of the step's Dropout noise, drawn for the whole batch)."""
        refuse_empty_batch(images, type(self).__name__)
        n = len(images)
        if self.statistics and n < self.size:  # every rank must meet in BatchNorm's exchange
            raise ValueError(f"DataParallelStep: a batch of {n} image{'s' if n != 1 else ''} for {self.size} ranks; "
                             f"a model with BatchNorm needs at least one image per rank (a larger --batch-size, or "
                             f"fewer ranks)")
        shares = share_bounds(n, self.size)
        if self.rank >= len(shares):  # fewer images than ranks: this rank sits the batch out
            return None, None, n, len(shares), 0, 0, None
        lo, hi = shares[self.rank]
        if noise:
            noise = {name: from_numpy(value[lo:hi], self.backend, self.dtype) for name, value in noise.items()}
        return (to_batch(images[lo:hi], self.backend, self.dtype, normalize=self.normalize),
                targets_to_batch(targets[lo:hi], self.backend, self.dtype), n, len(shares), lo, hi, noise)

    def _share_gradients(self, x: Array, y: Array, n: int, lo: int, hi: int, noise: dict | None = None) -> Array:
        """This rank's weighted loss, leaving its weighted gradients in the model's layers."""
        weight = (hi - lo) / n
        if self.local is None:  # exactly SplitStep.gradients' arithmetic for one share
            return forward_backward(self.model, self.loss_fn, x, y, noise, weight)
        loss = self.local.gradients(x, y, noise) * weight
        for layer in self.model.layers:
            layer.grads = {name: grad * weight for name, grad in layer.grads.items()}
        return loss

    def step(self, batch: tuple) -> Array:
        x, y, n, used, lo, hi, noise = batch
        loss = self._share_gradients(x, y, n, lo, hi, noise) if x is not None else None
        if self.reducer is None:  # the first step, where every rank is sure to be (collectives)
            if self._stale is not None:
                self._stale.free()
                self._stale = None
            self.reducer = make_reducer(self.reduction, self.shared_memory, self.comm, self.backend, self.layout,
                                        self.count, self.dtype)
        grads = None if loss is None else [self.model.layers[index].grads[name]
                                           for index, name, _, _, _ in self.layout]
        packing = time.perf_counter()
        self.reducer.pack(grads, loss)
        packed = time.perf_counter()
        if self.timing_barrier:
            self.comm.Barrier()
        started = time.perf_counter()
        grads, loss = self.reducer.exchange(used)
        self.comm_seconds += (packed - packing) + (time.perf_counter() - started)  # pack, exchange, sum, unpack
        self.comm_steps += 1
        self._set_grads(grads)
        self.optimizer.step(self.model)
        return loss

    def _set_grads(self, values: list) -> None:
        grads: dict[int, dict] = {}
        for (index, name, _, _, _), value in zip(self.layout, values):
            grads.setdefault(index, {})[name] = value
        for index, layer in enumerate(self.model.layers):
            layer.grads = grads.get(index, {})

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
    def check_same_run(self, trainer: Trainer) -> None:
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
        for reducer in (self.reducer, self._stale):  # released, not freed: see SharedMemoryReducer.release
            if reducer is not None:
                reducer.release()
        self.reducer = self._stale = None
        for statistics_layer in getattr(self, "statistics", ()):
            statistics_layer.reducer = None
        if self.local is not None:
            self.local.close()
            self.local = None

    def describe(self) -> str:
        if self.reducer is not None:
            how = self.reducer.label
        elif self.reduction == "gather" and self.shared_memory is None:  # decided at the first step
            how = ", shared memory where the ranks share a machine"
        else:
            how = reducer_class(self.reduction, self.shared_memory).label
        chunk = f", pieces of at most {self.chunk} images" if self.chunk else ""
        return f"data-parallel over {self.size} MPI rank{'s' if self.size != 1 else ''}{how}{chunk}"


def fingerprint(trainer: Trainer) -> dict:
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
