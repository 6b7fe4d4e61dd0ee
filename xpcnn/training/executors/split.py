"""A batch cut into shares: pieces of at most ``chunk`` images, over ``threads`` threads (``train.py``'s
``--threads`` and ``--chunk``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from xpcnn.backends import Array, Backend, limit_blas_threads
from xpcnn.training.executors.base import (
    StepExecutor,
    forward_backward,
    ordered_sum,
    refuse_batch_statistics,
    share_bounds,
)
from xpcnn.training.executors.whole import WholeBatchStep

if TYPE_CHECKING:
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SplitStep: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class SplitStep(StepExecutor):
    """A batch cut into shares: pieces of at most ``chunk`` images, run by ``threads`` threads.
    Every loss in xpcnn is a batch mean, so with share n_k / N of the batch:

        dE/dtheta = sum over shares k of (n_k / N) * dE_k/dtheta,    E = sum over k of (n_k / N) * E_k

    which is the whole-batch step up to float rounding, and the same rounding on every run: share k
    always goes to thread k mod threads, and sums run in a fixed order.

    Why it is faster on a CPU (measured in docs/performance.md):

    * chunks: a batch's arrays (im2col's columns are 25x the images) outgrow the cache at some size;
      two steps on 64 images then cost less than one on 128.
    * threads: NumPy (and PyTorch) release the GIL inside their array operations, so two threads keep
      two cores busy.  Matrix products then run single-threaded (:func:`~xpcnn.backends.limit_blas_threads`
      while the executor runs), or BLAS's worker threads and ours fight over the cores.

    Each thread runs its shares on its own copy of the layers (layers keep their activations from
    forward to backward, so two threads cannot share one).  On a GPU neither helps: use neither."""

    def __init__(self, threads: int = 1, chunk: int | None = None) -> None:
        self.threads = _count(threads, "threads", 1)
        self.chunk = None if chunk is None else _count(chunk, "chunk", 1)
        if self.threads == 1 and self.chunk is None:
            raise ValueError("SplitStep: give threads >= 2 or a chunk size (otherwise there is nothing to split)")
        self.pool: ThreadPoolExecutor | None = None

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        refuse_batch_statistics(model, "SplitStep", "--threads/--chunk")
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.replicas = [copy.deepcopy(model) for _ in range(self.threads)]
        self.losses = [copy.deepcopy(loss_fn) for _ in range(self.threads)]
        if self.threads > 1 and self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="xpcnn-step")

    @contextlib.contextmanager
    def running(self) -> Iterator[StepExecutor]:
        if self.threads == 1:
            yield self
        else:
            with limit_blas_threads(self.backend, 1):
                yield self

    def gradients(self, x: Array, y: Array, noise: dict | None = None) -> Array:
        """Forward and backward of the whole batch as shares; leaves the summed gradients in the
        model's layers and returns the batch loss (a device array).  No update.  ``noise`` (the
        whole batch's) is sliced along the batch axis for each share."""
        n = x.shape[0]
        pieces = max(self.threads, -(-n // self.chunk)) if self.chunk else self.threads
        shares = share_bounds(n, pieces)
        params = list(self.model.named_parameters())

        def run_thread(t: int) -> tuple[Array, Any]:
            """Thread t's shares t, t + threads, ...: (weighted loss, summed gradients per layer)."""
            replica, loss_fn = self.replicas[t], self.losses[t]
            for name, value in params:
                replica.set_parameter(name, value)
            total_loss, total_grads = None, None
            for lo, hi in shares[t::self.threads]:
                share_noise = {name: value[lo:hi, ...] for name, value in noise.items()} if noise else None
                loss = forward_backward(replica, loss_fn, x[lo:hi, ...], y[lo:hi, ...], share_noise, (hi - lo) / n)
                grads = [dict(layer.grads) for layer in replica.layers]
                total_loss = loss if total_loss is None else total_loss + loss
                total_grads = grads if total_grads is None else [
                    {name: total[name] + grad[name] for name in total} for total, grad in zip(total_grads, grads)]
            return total_loss, total_grads

        # The calling thread runs thread 0's shares itself while the pool runs the others.
        busy = range(min(self.threads, len(shares)))
        if len(busy) > 1 and self.pool is None:
            raise RuntimeError("SplitStep: a step with threads runs inside executor.running()")
        others = [self.pool.submit(run_thread, t) for t in busy[1:]] if self.pool is not None else []
        results = [run_thread(0)] + [future.result() for future in others]
        for index, layer in enumerate(self.model.layers):
            layer.grads = {name: ordered_sum([grads[index][name] for _, grads in results])
                           for name in results[0][1][index]}
        return ordered_sum([loss for loss, _ in results])

    def step(self, batch: tuple) -> Array:
        loss = self.gradients(*batch)
        self.optimizer.step(self.model)
        return loss

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def describe(self) -> str:
        return ", ".join(filter(None, [f"{self.threads} threads per batch" if self.threads != 1 else "",
                                       f"pieces of at most {self.chunk} images" if self.chunk else ""]))


def make_executor(threads: int = 1, chunk: int | None = None) -> StepExecutor:
    """The executor for ``train.py``'s ``--threads``/``--chunk``: the plain step unless either asks for shares."""
    return SplitStep(threads, chunk) if threads != 1 or chunk else WholeBatchStep()
