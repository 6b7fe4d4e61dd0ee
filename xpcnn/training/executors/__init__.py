"""Step executors: how one training step runs.  The training loop (:class:`~xpcnn.training.Trainer`)
decides *which* images form each batch and when; an executor decides *how* forward, backward and the
optimizer update run on them: whole, cut into shares over threads, over MPI ranks, compiled.

The contract
------------
An executor is built with its own options, then the Trainer binds it once and closes it once::

    executor.bind(model, loss_fn, optimizer, backend, dtype)
    with executor.running():                        # around each fit (e.g. BLAS thread limits)
        batch = executor.to_device(images, targets)   # host batch -> what step() takes
        loss = executor.step(batch)                   # forward, backward, optimizer update
        stop = executor.should_stop(requested)        # every rank agrees on a stop request
    executor.close()                                # threads, communicators, compiled functions

* ``to_device(images, targets)`` receives the whole batch on the host (uint8 images (N, H, W) and
  the task's targets, already augmented) and returns whatever ``step`` needs on the device.  The
  default is the whole batch, scaled to [0, 1] in ``dtype``; a data-parallel executor keeps only its
  share.
* ``step(batch)`` runs forward, backward and the optimizer update, and returns the mean loss of the
  whole batch as a 0-d array **on the device**.  Nothing inside a step reads back to the host: the
  loop reads the losses of several steps at once.  After ``step`` returns, ``model``'s parameters
  and ``optimizer``'s state and step count are those after the update (the loop, evaluation and
  checkpoints read them there).  The optimizer's learning rate ``optimizer.lr`` is set by the loop
  (an extension) before the step and must be honoured.
* Determinism: the same batches from the same state give the same parameters, every run, so a
  checkpointed and resumed run ends bitwise where an uninterrupted one does.
* Noise (Dropout): for a model that needs random noise the Trainer draws each step's on the host
  from (seed, epoch, step) (:mod:`~xpcnn.training.noise`) and calls ``to_device(images, targets,
  noise=...)``; the batch is then ``(x, y, noise)`` with the noise on the device, and ``step`` hands
  it to the model (``model.set_noise``, sliced along the batch axis for a share) before the forward.
  Without noise (every other model) the call and the batch are the plain ``(x, y)`` ones.
* ``is_main`` is False on every process but one (data-parallel ranks): extensions that print or
  write files do so only where it is True.
* ``should_stop(requested)`` turns this process's stop request (a signal) into a decision all
  processes share, so that they all stop after the same step; ``barrier()`` waits for every process
  (after the main one wrote a checkpoint).
* ``evaluation_batches(count)`` and ``gather_evaluation(parts)`` shard an evaluation: the Trainer
  evaluates only the batches the first names and the second hands every process all batches' results
  in order, so every process gets the single-process metrics (defaults: all batches, no exchange).
* ``close()`` may be called more than once.

:class:`WholeBatchStep` is the plain step; :class:`SplitStep` cuts each batch into shares;
:class:`~xpcnn.distributed.DataParallelStep` (mpi4py) gives each MPI rank one share.
"""

from __future__ import annotations

import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor

from xpcnn.backends import from_numpy, limit_blas_threads
from xpcnn.data import DataError, targets_to_batch, to_batch


class StepExecutor:
    """Base class: the contract in the module docstring, with the defaults every executor shares."""

    is_main = True

    def bind(self, model, loss_fn, optimizer, backend, dtype: str) -> None:
        self.model, self.loss_fn, self.optimizer, self.backend, self.dtype = model, loss_fn, optimizer, backend, dtype

    @contextlib.contextmanager
    def running(self):
        yield self

    normalize = None  # (mean, std) per channel, set by the Trainer when the run normalises its images

    def to_device(self, images, targets, noise: dict | None = None):
        refuse_empty_batch(images, type(self).__name__)
        x = to_batch(images, self.backend, self.dtype, normalize=self.normalize)
        y = targets_to_batch(targets, self.backend, self.dtype)
        if not noise:
            return x, y
        return x, y, {name: from_numpy(value, self.backend, self.dtype) for name, value in noise.items()}

    def step(self, batch):
        raise NotImplementedError

    def should_stop(self, requested: bool) -> bool:
        return requested

    def barrier(self) -> None:
        """Wait until every process got here (data-parallel ranks); a no-op in one process."""

    def evaluation_batches(self, count: int) -> range:
        """Which of an evaluation's ``count`` batches this process evaluates (all of them in one
        process; a contiguous run of them on each data-parallel rank)."""
        return range(count)

    def gather_evaluation(self, parts: list) -> list:
        """The per-batch results of every process's :meth:`evaluation_batches`, in batch order, on
        every process (in one process: ``parts`` itself)."""
        return parts

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """A few words for the run's header line ('' for the plain step)."""
        return ""


class WholeBatchStep(StepExecutor):
    """The plain step: E = loss(model(x), y) on the whole batch, dE/dtheta by backpropagation
    (the first layer skips dE/dX, which nothing uses), then the optimizer's update."""

    def step(self, batch):
        x, y, noise = unpack(batch)
        if noise:
            self.model.set_noise(noise)
        loss = self.loss_fn(self.model(x), y)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.optimizer.step(self.model)
        return loss


def unpack(batch) -> tuple:
    """(x, y, noise or None) of a batch from ``to_device``."""
    return (*batch, None) if len(batch) == 2 else tuple(batch)


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SplitStep: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def refuse_batch_statistics(model, executor: str, flags: str) -> None:
    """Executors that cut a batch into shares cannot run layers that need the whole batch's
    statistics (BatchNorm: each share would use its own); a ValueError names the layer."""
    for index, layer in enumerate(getattr(model, "layers", ())):
        if getattr(layer, "buffers", None):
            raise ValueError(f"{executor}: layer {index} ({layer.name}) computes statistics over the whole batch, "
                             f"which shares cannot give (each share would use its own): train this model without "
                             f"{flags}")


def refuse_empty_batch(images, where: str) -> None:
    """One clear error for a step given no images (a custom loop's filter that left a batch empty),
    instead of a shape error deep in a layer or the gradient exchange."""
    if len(images) == 0:
        raise DataError(f"{where}.to_device: a training step needs at least one image, got an empty batch "
                        f"(images of shape {tuple(images.shape)})")


def share_bounds(n: int, pieces: int) -> list[tuple[int, int]]:
    """Cut ``n`` rows into ``pieces`` contiguous shares as even as possible (empty ones dropped):
    share k is rows [n*k // pieces, n*(k+1) // pieces)."""
    bounds = [n * k // pieces for k in range(pieces + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(pieces) if bounds[k + 1] > bounds[k]]


def ordered_sum(arrays):
    """Sum in list order (fixed, so the result is the same on every run)."""
    total = arrays[0]
    for array in arrays[1:]:
        total = total + array
    return total


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

    def __init__(self, threads: int = 1, chunk: int | None = None):
        self.threads = _count(threads, "threads", 1)
        self.chunk = None if chunk is None else _count(chunk, "chunk", 1)
        if self.threads == 1 and self.chunk is None:
            raise ValueError("SplitStep: give threads >= 2 or a chunk size (otherwise there is nothing to split)")
        self.pool = None

    def bind(self, model, loss_fn, optimizer, backend, dtype):
        refuse_batch_statistics(model, "SplitStep", "--threads/--chunk")
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.replicas = [copy.deepcopy(model) for _ in range(self.threads)]
        self.losses = [copy.deepcopy(loss_fn) for _ in range(self.threads)]
        if self.threads > 1 and self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="xpcnn-step")

    @contextlib.contextmanager
    def running(self):
        if self.threads == 1:
            yield self
        else:
            with limit_blas_threads(self.backend, 1):
                yield self

    def gradients(self, x, y, noise: dict | None = None):
        """Forward and backward of the whole batch as shares; leaves the summed gradients in the
        model's layers and returns the batch loss (a device array).  No update.  ``noise`` (the
        whole batch's) is sliced along the batch axis for each share."""
        n = x.shape[0]
        pieces = max(self.threads, -(-n // self.chunk)) if self.chunk else self.threads
        shares = share_bounds(n, pieces)
        params = list(self.model.named_parameters())

        def run_thread(t):
            """Thread t's shares t, t + threads, ...: (weighted loss, summed gradients per layer)."""
            replica, loss_fn = self.replicas[t], self.losses[t]
            for name, value in params:
                replica.set_parameter(name, value)
            total_loss, total_grads = None, None
            for lo, hi in shares[t::self.threads]:
                weight = (hi - lo) / n
                if noise:
                    replica.set_noise({name: value[lo:hi, ...] for name, value in noise.items()})
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
            layer.grads = {name: ordered_sum([grads[index][name] for _, grads in results])
                           for name in results[0][1][index]}
        return ordered_sum([loss for loss, _ in results])

    def step(self, batch):
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
