"""A batch cut into shares: pieces of at most ``chunk`` images (fixed by the batch), run by up to
``threads`` threads at once (``train.py``'s ``--chunk`` and ``--threads``); BatchNorm's statistics
are the whole batch's (synchronised over the shares)."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from xpcnn.backends import Array, Backend, limit_blas_threads
from xpcnn.nn.batchnorm import _BatchNorm
from xpcnn.training.executors.base import (
    StepExecutor,
    forward_backward,
    ordered_sum,
    share_bounds,
)

if TYPE_CHECKING:
    from xpcnn.nn.base import Layer
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SplitStep: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def statistics_layers(model: Layer) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``model``, those inside residual blocks too, in forward order."""
    found: list[_BatchNorm] = []
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, _BatchNorm):
            found.append(layer)
        elif hasattr(layer, "paths"):  # a Residual block: its paths are Sequentials
            for _, path in layer.paths():
                found.extend(statistics_layers(path))
    return found


class ShareExchange:
    """One step's meeting point of its shares (one thread each): share k writes its values into
    slot k, waits until every share has written, and reads every slot in share order.  Two sets of
    slots alternate, so a share that runs ahead to its next exchange cannot overwrite values a
    slower share is still reading.  While a share waits it gives its turn (``turns``, the thread
    cap) to another share.  An error in one share breaks the barrier, so none waits for ever."""

    def __init__(self, shares: int, turns: threading.Semaphore) -> None:
        self.barrier = threading.Barrier(shares)
        self.turns = turns
        self.slots: list[list[Any]] = [[None] * shares, [None] * shares]
        self.calls = [0] * shares

    def exchange(self, share: int, values: tuple) -> list[tuple]:
        slots = self.slots[self.calls[share] % 2]
        self.calls[share] += 1
        slots[share] = values
        if self.barrier.parties > 1:
            self.turns.release()
            try:
                self.barrier.wait()
            finally:
                self.turns.acquire()
        return list(slots)

    def abort(self) -> None:
        self.barrier.abort()


class ShareReducer:
    """BatchNorm's :class:`~xpcnn.nn.batchnorm.StatisticsReducer` for share ``share`` of the current step."""

    def __init__(self, share: int) -> None:
        self.share = share
        self.meeting: ShareExchange | None = None

    def exchange(self, values: tuple) -> list[tuple]:
        if self.meeting is None:
            raise RuntimeError("ShareReducer: used outside a SplitStep step")
        return self.meeting.exchange(self.share, values)


class SplitStep(StepExecutor):
    """A batch cut into shares and run as shares.  Every loss in xpcnn is a batch mean, so with
    share n_k / N of the batch:

        dE/dtheta = sum over shares k of (n_k / N) * dE_k/dtheta,    E = sum over k of (n_k / N) * E_k

    which is the whole-batch step up to float rounding.  BatchNorm layers compute the whole batch's
    statistics: each share's layer exchanges its partial sums with the other shares
    (:class:`ShareExchange`) and combines them in share order (:mod:`xpcnn.nn.batchnorm`).

    The split is fixed by the batch, not by the machine: share k is rows
    ``share_bounds(N, max(ceil(N / chunk), min(min_shares, N)))[k]``, pieces of at most ``chunk``
    images, and at least ``min_shares`` of them (so that a small batch still keeps two cores busy).
    ``threads`` only schedules them: every share runs in a thread of its own, at most ``threads`` of them compute at
    once, and the sums run in share order.  So the numbers are the same bits for any ``threads``
    (and on any machine); they change only with ``chunk``.  (``chunk=None``: ``threads`` shares,
    the cut of ``threads`` MPI ranks.)

    Why it is faster on a CPU (measured in docs/performance.md):

    * chunks: a batch's arrays (im2col's columns are 25x the images) outgrow the cache at some size;
      two steps on 64 images then cost less than one on 128.
    * threads: NumPy (and PyTorch) release the GIL inside their array operations, so two threads keep
      two cores busy.  Matrix products run single-threaded (:func:`~xpcnn.backends.limit_blas_threads`
      while the executor runs, for every ``threads``: a BLAS's result may depend on its thread count),
      or BLAS's worker threads and ours fight over the cores.

    Each share runs on its own copy of the layers (layers keep their activations from forward to
    backward, so two shares cannot share one).  On a GPU neither helps: use neither."""

    def __init__(self, threads: int = 1, chunk: int | None = None, min_shares: int = 1) -> None:
        self.threads = _count(threads, "threads", 1)
        self.chunk = None if chunk is None else _count(chunk, "chunk", 1)
        self.min_shares = _count(min_shares, "min_shares", 1)
        if self.threads == 1 and self.chunk is None:
            raise ValueError("SplitStep: give threads >= 2 or a chunk size (otherwise there is nothing to split)")
        self.pool: ThreadPoolExecutor | None = None
        self.pool_size = 0

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.replicas: list[Sequential] = []
        self.losses: list[Loss] = []
        self.reducers: list[ShareReducer] = []
        self.statistics = bool(statistics_layers(model))

    def _replica(self, share: int) -> tuple[Sequential, Loss]:
        while len(self.replicas) <= share:
            replica = copy.deepcopy(self.model)
            reducer = ShareReducer(len(self.replicas))
            for layer in statistics_layers(replica):
                layer.reducer = reducer
            self.replicas.append(replica)
            self.losses.append(copy.deepcopy(self.loss_fn))
            self.reducers.append(reducer)
        return self.replicas[share], self.losses[share]

    @contextlib.contextmanager
    def running(self) -> Iterator[StepExecutor]:
        with limit_blas_threads(self.backend, 1):
            yield self

    def shares(self, n: int) -> list[tuple[int, int]]:
        """The rows of each share of a batch of ``n`` images."""
        if not self.chunk:
            return share_bounds(n, self.threads)
        return share_bounds(n, max(-(-n // self.chunk), min(self.min_shares, n)))

    def gradients(self, x: Array, y: Array, noise: dict | None = None) -> Array:
        """Forward and backward of the whole batch as shares; leaves the summed gradients in the
        model's layers (and the new running statistics in its buffers) and returns the batch loss
        (a device array).  No update.  ``noise`` (the whole batch's) is sliced along the batch axis
        for each share."""
        n = x.shape[0]
        shares = self.shares(n)
        params = list(self.model.named_parameters())
        buffers = list(self.model.named_buffers())
        turns = threading.Semaphore(self.threads)
        meeting = ShareExchange(len(shares), turns)
        for k in range(len(shares)):
            self._replica(k)
            self.reducers[k].meeting = meeting

        def run_share(k: int) -> tuple[Array, list[dict]]:
            """Share k: its weighted loss and its layers' gradients."""
            lo, hi = shares[k]
            replica, loss_fn = self.replicas[k], self.losses[k]
            with turns:
                try:
                    for name, value in params:
                        replica.set_parameter(name, value)
                    for name, value in buffers:
                        replica.set_buffer(name, value)
                    share_noise = {name: value[lo:hi, ...] for name, value in noise.items()} if noise else None
                    loss = forward_backward(replica, loss_fn, x[lo:hi, ...], y[lo:hi, ...], share_noise, (hi - lo) / n)
                except BaseException:
                    meeting.abort()  # the other shares stop waiting for this one
                    raise
            return loss, [dict(layer.grads) for layer in replica.layers]

        results: list[tuple[Array, list[dict]]] = []
        if len(shares) == 1:
            results.append(run_share(0))
        else:
            # Every share needs a thread of its own (they meet at BatchNorm's exchanges); the
            # calling thread runs share 0.
            if self.pool is None or self.pool_size < len(shares) - 1:
                if self.pool is not None:
                    self.pool.shutdown()
                self.pool_size = len(shares) - 1
                self.pool = ThreadPoolExecutor(self.pool_size, thread_name_prefix="xpcnn-share")
            futures: list[Future] = [self.pool.submit(run_share, k) for k in range(1, len(shares))]
            errors: list[tuple[int, BaseException]] = []
            for k in range(len(shares)):
                try:
                    results.append(run_share(0) if k == 0 else futures[k - 1].result())
                except threading.BrokenBarrierError as exc:  # another share's error broke the meeting
                    errors.append((1, exc))
                except BaseException as exc:
                    errors.append((0, exc))
            if errors:  # the share's own error, not the broken meetings it caused
                raise min(errors, key=lambda error: error[0])[1]
        for index, layer in enumerate(self.model.layers):
            layer.grads = {name: ordered_sum([grads[index][name] for _, grads in results])
                           for name in results[0][1][index]}
        if self.statistics:  # the running statistics, the same on every share: share 0's
            for name, value in self.replicas[0].named_buffers():
                self.model.set_buffer(name, value)
        return ordered_sum([loss for loss, _ in results])

    def step(self, batch: tuple) -> Array:
        loss = self.gradients(*batch)
        self.optimizer.step(self.model)
        return loss

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
            self.pool_size = 0

    def describe(self) -> str:
        at_least = f" (at least {self.min_shares})" if self.chunk and self.min_shares > 1 else ""
        cut = f"pieces of at most {self.chunk} images{at_least}" if self.chunk else f"{self.threads} shares per batch"
        return f"{cut}, {self.threads} thread{'s' if self.threads != 1 else ''}"


def make_executor(threads: int = 1, chunk: int | None = None) -> StepExecutor:
    """The executor for explicit ``threads``/``chunk``: the plain step unless either asks for shares.
    (What a run uses when given neither is :func:`~xpcnn.training.executors.default_executor`.)"""
    from xpcnn.training.executors.whole import WholeBatchStep

    return SplitStep(threads, chunk) if threads != 1 or chunk else WholeBatchStep()
