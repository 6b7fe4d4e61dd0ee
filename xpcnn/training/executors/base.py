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

* Every executor runs forward and backward through :func:`forward_backward`, on the whole batch or
  on a share of it: that one function is why their results agree (bitwise where the docstrings say
  so).

:class:`~xpcnn.training.executors.whole.WholeBatchStep` is the plain step;
:class:`~xpcnn.training.executors.split.SplitStep` cuts each batch into shares;
:class:`~xpcnn.distributed.DataParallelStep` (mpi4py) gives each MPI rank one share; the compiled
executors (:mod:`~xpcnn.training.executors.compiled`) hand the whole step to a backend's compiler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from xpcnn.backends import Array, Backend, from_numpy
from xpcnn.data import DataError, targets_to_batch, to_batch

if TYPE_CHECKING:
    from xpcnn.nn.base import Layer
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer


def forward_backward(model: Layer, loss_fn: Loss, x: Array, y: Array, noise: dict | None = None,
                     weight: float | None = None) -> Array:
    """The forward and backward pass of every executor: the whole batch (:class:`WholeBatchStep`),
    a thread's or a rank's share of it (``SplitStep``, ``DataParallelStep``), the traced body of a
    compiled step.  With ``noise`` (Dropout's, for exactly the rows of ``x``) handed to the model
    first, it computes

        E = w * loss(model(x), y),        dE/dO = w * dloss/dO

    and backpropagates dE/dO, which leaves dE/dtheta in the model's layers (``layer.grads``; the
    first layer skips dE/dX, which nothing uses).  Returns E, a 0-d array on the device; nothing is
    read back to the host.  ``weight`` w is a share's n_k / N (every loss in xpcnn is a batch mean,
    so the shares' weighted losses and gradients add up to the whole batch's); None, the whole
    batch, multiplies by nothing.

    The contract the executors' agreement rests on: given the same model state, rows and noise, a
    call computes the same operations in the same order wherever it runs, so a share's E and
    gradients are the same bits in a thread, on an MPI rank or inside a trace, and the executors
    differ only in how they add the shares up (in a fixed order: :func:`ordered_sum`)."""
    if noise:
        model.set_noise(noise)
    loss = loss_fn(model(x), y)
    grad = loss_fn.backward()
    if weight is not None:
        loss, grad = loss * weight, grad * weight
    model.backward(grad, input_grad=False)
    return loss


class StepExecutor:
    """Base class: the contract in the module docstring, with the defaults every executor shares."""

    @property
    def is_main(self) -> bool:
        """False on every data-parallel rank but one (see the contract)."""
        return True

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        self.model, self.loss_fn, self.optimizer, self.backend, self.dtype = model, loss_fn, optimizer, backend, dtype

    @contextlib.contextmanager
    def running(self) -> Iterator[StepExecutor]:
        yield self

    # (mean, std) per channel, set by the Trainer when the run normalises its images
    normalize: tuple[np.ndarray, np.ndarray] | None = None

    def to_device(self, images: np.ndarray, targets: np.ndarray, noise: dict | None = None) -> tuple:
        refuse_empty_batch(images, type(self).__name__)
        x = to_batch(images, self.backend, self.dtype, normalize=self.normalize)
        y = targets_to_batch(targets, self.backend, self.dtype)
        if not noise:
            return x, y
        return x, y, {name: from_numpy(value, self.backend, self.dtype) for name, value in noise.items()}

    def step(self, batch: tuple) -> Array:
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


def unpack(batch: tuple) -> tuple:
    """(x, y, noise or None) of a batch from ``to_device``."""
    return (*batch, None) if len(batch) == 2 else tuple(batch)


def refuse_batch_statistics(model: Layer, executor: str, flags: str) -> None:
    """Executors that cut a batch into shares cannot run layers that need the whole batch's
    statistics (BatchNorm: each share would use its own); a ValueError names the layer."""
    for index, layer in enumerate(getattr(model, "layers", ())):
        if layer.BATCH_STATISTICS:
            raise ValueError(f"{executor}: layer {index} ({layer.name}) computes statistics over the whole batch, "
                             f"which shares cannot give (each share would use its own): train this model without "
                             f"{flags}")


def refuse_empty_batch(images: np.ndarray, where: str) -> None:
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


def ordered_sum(arrays: Sequence[Array]) -> Array:
    """Sum in list order (fixed, so the result is the same on every run)."""
    total = arrays[0]
    for array in arrays[1:]:
        total = total + array
    return total
