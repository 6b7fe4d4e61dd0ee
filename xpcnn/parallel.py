"""Data parallelism over threads on one CPU: the batch is cut into ``threads`` shares.

Each thread runs forward and backward on its share with its own copy of the layers (layers
keep their activations for the backward pass, so two threads cannot share one), and the shares'
gradients are summed in a fixed order.  Every loss in xpcnn is a batch mean, so with share
n_k / N of the batch:

    dE/dtheta = sum over shares k of (n_k / N) * dE_k/dtheta,    E = sum over k of (n_k / N) * E_k

which is the whole-batch step up to float rounding, and the same rounding on every run.

Why it is faster: NumPy (and PyTorch) release the GIL inside their array operations, so two
threads keep two cores busy with the elementwise work and copies that one thread runs on one
core.  Matrix products must then run single-threaded, or BLAS's own worker threads and ours fight
over the cores: :func:`single_threaded_blas` sets that for the duration (threadpoolctl).
Measured in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor


class ThreadedStep:
    """``step(x, y)``: forward and backward of ``model`` on a device batch, split over threads.
    Leaves the summed gradients in ``model``'s layers (for the optimizer) and returns the
    batch loss as a device array, exactly like the single-threaded step it replaces."""

    def __init__(self, model, loss_fn, threads: int):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 2:
            raise ValueError(f"ThreadedStep: threads must be an integer >= 2, got {threads!r}")
        self.model, self.threads = model, threads
        self.replicas = [copy.deepcopy(model) for _ in range(threads)]
        self.losses = [copy.deepcopy(loss_fn) for _ in range(threads)]
        self.pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="xpcnn-step")

    def __call__(self, x, y):
        n = x.shape[0]
        bounds = [n * k // self.threads for k in range(self.threads + 1)]
        shares = [k for k in range(self.threads) if bounds[k + 1] > bounds[k]]  # a batch smaller than threads
        params = list(self.model.named_parameters())

        def run_share(k):
            replica, loss_fn = self.replicas[k], self.losses[k]
            for name, value in params:
                replica.set_parameter(name, value)
            lo, hi = bounds[k], bounds[k + 1]
            weight = (hi - lo) / n
            loss = loss_fn(replica(x[lo:hi, ...]), y[lo:hi, ...])
            replica.backward(loss_fn.backward() * weight, input_grad=False)
            return loss * weight

        # The calling thread takes the first share itself while the pool runs the others.
        others = [self.pool.submit(run_share, k) for k in shares[1:]]
        share_losses = [run_share(shares[0])] + [future.result() for future in others]
        for index, layer in enumerate(self.model.layers):
            layer.grads = {name: _sum([self.replicas[k].layers[index].grads[name] for k in shares])
                           for name in self.replicas[shares[0]].layers[index].grads}
        return _sum(share_losses)

    def close(self) -> None:
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

