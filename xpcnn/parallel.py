"""One training step on a batch cut into shares: pieces of at most ``chunk`` images, run by
``threads`` threads.  Every loss in xpcnn is a batch mean, so with share n_k / N of the batch:

    dE/dtheta = sum over shares k of (n_k / N) * dE_k/dtheta,    E = sum over k of (n_k / N) * E_k

which is the whole-batch step up to float rounding, and the same rounding on every run: share k
always goes to thread k mod threads, and sums run in a fixed order.

Why it is faster on a CPU (measured in docs/performance.md):
* chunks: a batch's arrays (im2col's columns are 25x the images) outgrow the cache at some size;
  two steps on 64 images then cost less than one on 128.
* threads: NumPy (and PyTorch) release the GIL inside their array operations, so two threads keep
  two cores busy with the elementwise work and copies that one thread runs on one core.  Matrix
  products must then run single-threaded, or BLAS's own worker threads and ours fight over the
  cores: :func:`single_threaded_blas` sets that for the duration (threadpoolctl).
Each thread runs its shares on its own copy of the layers (layers keep their activations from
forward to backward, so two threads cannot share one).  On a GPU neither helps: use neither.
"""

from __future__ import annotations

import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SplitStep: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class SplitStep:
    """``step(x, y)``: forward and backward of ``model`` on a device batch, cut into shares of
    at most ``chunk`` images (None: one share per thread) run by ``threads`` threads.  Leaves the
    summed gradients in ``model``'s layers (for the optimizer) and returns the batch loss as a
    device array, exactly like the whole-batch step it replaces."""

    def __init__(self, model, loss_fn, threads: int = 1, chunk: int | None = None):
        self.threads = _count(threads, "threads", 1)
        self.chunk = None if chunk is None else _count(chunk, "chunk", 1)
        if self.threads == 1 and self.chunk is None:
            raise ValueError("SplitStep: give threads >= 2 or a chunk size (otherwise there is nothing to split)")
        self.model = model
        self.replicas = [copy.deepcopy(model) for _ in range(self.threads)]
        self.losses = [copy.deepcopy(loss_fn) for _ in range(self.threads)]
        self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="xpcnn-step") if self.threads > 1 else None

    def __call__(self, x, y):
        n = x.shape[0]
        pieces = max(self.threads, -(-n // self.chunk)) if self.chunk else self.threads
        bounds = [n * k // pieces for k in range(pieces + 1)]
        shares = [(bounds[k], bounds[k + 1]) for k in range(pieces) if bounds[k + 1] > bounds[k]]
        params = list(self.model.named_parameters())

        def run_thread(t):
            """Thread t's shares t, t + threads, ...: (weighted loss, summed gradients per layer)."""
            replica, loss_fn = self.replicas[t], self.losses[t]
            for name, value in params:
                replica.set_parameter(name, value)
            total_loss, total_grads = None, None
            for lo, hi in shares[t::self.threads]:
                weight = (hi - lo) / n
                loss = loss_fn(replica(x[lo:hi, ...]), y[lo:hi, ...]) * weight
                replica.backward(loss_fn.backward() * weight, input_grad=False)
                grads = [dict(layer.grads) for layer in replica.layers]
                total_loss = loss if total_loss is None else total_loss + loss
                total_grads = grads if total_grads is None else [
                    {name: total[name] + grad[name] for name in total} for total, grad in zip(total_grads, grads)]
            return total_loss, total_grads

        # The calling thread runs thread 0's shares itself while the pool runs the others.
        busy = range(min(self.threads, len(shares)))
        others = [self.pool.submit(run_thread, t) for t in busy[1:]]
        results = [run_thread(0)] + [future.result() for future in others]
        for index, layer in enumerate(self.model.layers):
            layer.grads = {name: _sum([grads[index][name] for _, grads in results]) for name in results[0][1][index]}
        return _sum([loss for loss, _ in results])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _sum(arrays):
    """Sum in list order (fixed, so the result is the same on every run)."""
    total = arrays[0]
    for array in arrays[1:]:
        total = total + array
    return total


@contextlib.contextmanager
def single_threaded_blas(backend):
    """One BLAS thread per calling thread while the block runs (NumPy's OpenBLAS and similar,
    via threadpoolctl; PyTorch's intra-op threads via ``torch.set_num_threads``)."""
    from threadpoolctl import threadpool_limits

    torch_threads = None
    if backend.name == "torch":
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
