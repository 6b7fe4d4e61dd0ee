"""Compiled step executors: the same hand-written step, handed whole to a backend's own compiler.

Eagerly, a step is ~50 array operations dispatched one by one from Python; on a GPU the host's
dispatching, not the GPU, sets the pace (docs/performance.md).  These executors run the unchanged
layer, loss and optimizer code once under the backend's tracer and replay the result:

* :class:`~xpcnn.training.executors.jax_jit.JaxJitStep` -- ``jax.jit`` of the pure function
  (parameters, optimizer slots, step scalars, x, y, buffers, noise) -> (loss, new parameters, new
  slots, new buffers).
* :class:`~xpcnn.training.executors.cuda_graph.TorchGraphStep` -- on ``torch:cuda``, the whole step
  captured in one CUDA graph (``torch.cuda.CUDAGraph``) over static buffers that the executor owns.

What makes a compiled step equal to the eager one (each of these was a measured trap):

* The learning rate and Adam's bias corrections are *inputs*, computed on the host by
  ``optimizer.scalars()`` each step (:mod:`xpcnn.optim`): a naive trace freezes them as constants.
  They are Python floats (JAX: weakly typed), so ``lr * grad`` stays in the parameters' dtype, as
  eagerly; no integer step count enters the trace (an int64 one promoted Adam's update to float64).
* The optimizer's slots are inputs too: the first step (no momentum yet) and later steps are
  traced separately, as they are different functions.
* Parameters are replaced, never mutated, by the layer code; the executor owns the arrays the
  compiled function reads and writes, and after every step puts the new parameters and slots back
  into the model and optimizer, where the loop, evaluation and checkpoints read them.
* Buffers (BatchNorm's running statistics) that a training forward replaces are inputs and outputs
  of the pure step, and Dropout's noise (drawn on the host) is an input: nothing random and no
  state hides inside the trace.
* Layers cache device arrays made from constants (Conv2D's gather index): the executor runs one
  eager forward before tracing, so the cache holds concrete arrays, not the tracer of a trace.

Which executor compiles a backend's steps, and whether it does so by default, is the backend's
adapter's to say (:meth:`xpcnn.backends.Adapter.compiled_executor`); this module holds what the
compiled executors share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from xpcnn.backends import Array, Backend, BackendError
from xpcnn.training.executors.base import StepExecutor, forward_backward

if TYPE_CHECKING:
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer


def pure_step(model: Sequential, loss_fn: Loss,
              optimizer: Optimizer) -> Callable[..., tuple[Array, dict, dict, dict]]:
    """(params, slots, scalars, x, y, buffers, noise) -> (loss, new params, new slots, new buffers):
    one training step as a function of its inputs alone (it sets the model's parameters and buffers
    from ``params`` and ``buffers``, and hands it ``noise``, first)."""

    def step(params: dict, slots: dict, scalars: dict, x: Array, y: Array, buffers: dict | None = None,
             noise: dict | None = None) -> tuple[Array, dict, dict, dict]:
        for name, value in params.items():
            model.set_parameter(name, value)
        for name, value in (buffers or {}).items():
            model.set_buffer(name, value)
        loss = forward_backward(model, loss_fn, x, y, noise)
        new_params, new_slots = {}, {}
        for name, grad in model.named_gradients():
            new_params[name], new_slots[name] = optimizer.update_named(name, params[name], grad, slots[name], scalars)
        return loss, new_params, new_slots, dict(model.named_buffers())

    return step


class CompiledStep(StepExecutor):
    """What both compiled executors share: the eager priming forward, and putting a step's results
    back into the model and the optimizer."""

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.primed: set[tuple] = set()

    def _prime(self, x: Array) -> None:
        """One eager forward per input shape before tracing: layer caches get concrete arrays."""
        key = tuple(x.shape[1:])
        if key not in self.primed:
            with self.model.inference():
                self.model(x[:1, ...])
            self.primed.add(key)

    def _inputs(self) -> tuple[dict, dict]:
        params = dict(self.model.named_parameters())
        slots = {name: dict(self.optimizer.state.get(name, {})) for name in params}
        return params, slots

    def _buffers(self) -> dict:
        return dict(self.model.named_buffers())

    def _store(self, params: dict, slots: dict, buffers: dict | None = None) -> None:
        for name, value in params.items():
            self.model.set_parameter(name, value)
        for name, value in (buffers or {}).items():
            self.model.set_buffer(name, value)
        self.optimizer.state = {name: value for name, value in slots.items() if value}
        for layer in self.model.layers:  # the trace's gradients are not arrays of this step
            layer.grads = {}


def compiled_executor(backend: Backend) -> StepExecutor:
    """The compiled executor for a backend: jax.jit on JAX, a CUDA graph on torch:cuda (its adapter's
    :meth:`~xpcnn.backends.Adapter.compiled_executor`)."""
    executor = backend.adapter.compiled_executor(backend)
    if executor is None:
        raise BackendError(f"--compile: {backend.label} has no compiled executor here (JAX compiles with jax.jit, "
                           "PyTorch on CUDA with CUDA graphs; CuPy cannot capture cuBLAS calls, docs/performance.md)")
    return executor


def has_compiled_executor(backend: Backend) -> bool:
    return backend.adapter.compiled_executor(backend) is not None


def compiles_by_default(backend: Backend) -> bool:
    """JAX compiles unless told not to (measured: docs/performance.md); torch:cuda only with --compile."""
    return backend.adapter.compiles_by_default
