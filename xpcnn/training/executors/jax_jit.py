"""``jax.jit`` of the whole training step (the traps it avoids: :mod:`~xpcnn.training.executors.compiled`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xpcnn.backends import Array, Backend, BackendError, JaxAdapter
from xpcnn.training.executors.base import unpack
from xpcnn.training.executors.compiled import CompiledStep, pure_step

if TYPE_CHECKING:
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer


class JaxJitStep(CompiledStep):
    """``jax.jit`` of the whole training step (module docstring).  Traced once per batch shape
    and optimizer-slot structure (so: the first step, the full batches, the last partial batch);
    every other step replays the compiled function with no Python in between."""

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        if not isinstance(backend.adapter, JaxAdapter):
            raise BackendError(f"JaxJitStep compiles JAX steps; the backend is {backend.label}")
        import jax

        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.traces = 0
        pure = pure_step(model, loss_fn, optimizer)

        def counted(*args: Any) -> tuple[Array, dict, dict, dict]:
            self.traces += 1  # runs only while JAX traces
            return pure(*args)

        self.compiled = jax.jit(counted)

    def step(self, batch: tuple) -> Array:
        x, y, noise = unpack(batch)
        self._prime(x)
        self.optimizer.steps += 1
        params, slots = self._inputs()
        buffers = self._buffers()
        extra = (buffers, noise or {}) if buffers or noise else ()  # a model without either: the 5-input step
        try:
            loss, new_params, new_slots, new_buffers = self.compiled(params, slots, self.optimizer.scalars(), x, y,
                                                                     *extra)
        except BaseException:
            self.optimizer.steps -= 1
            self._store(params, slots, buffers)  # the model gets its own arrays back, not a trace's
            raise
        self._store(new_params, new_slots, new_buffers)
        return loss

    def describe(self) -> str:
        return "steps compiled by jax.jit"
