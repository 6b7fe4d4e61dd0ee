"""The whole training step on ``torch:cuda`` captured as one CUDA graph and replayed (the traps it
avoids: :mod:`~xpcnn.training.executors.compiled`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xpcnn.backends import Array, Backend, BackendError, TorchAdapter
from xpcnn.training.executors.base import unpack
from xpcnn.training.executors.compiled import CompiledStep, pure_step
from xpcnn.training.executors.whole import WholeBatchStep

if TYPE_CHECKING:
    from xpcnn.nn.losses import Loss
    from xpcnn.nn.sequential import Sequential
    from xpcnn.optim import Optimizer


class TorchGraphStep(CompiledStep):
    """The whole step on ``torch:cuda`` as one CUDA graph, replayed every step.

    The executor owns static tensors: the batch (x, y, noise), the parameters, buffers, optimizer slots and the
    step scalars (0-d float64 tensors, refilled before each replay; in ``lr * grad`` a 0-d tensor
    takes the other operand's dtype, as a Python float does eagerly).  The first ``WARMUP`` steps
    run eagerly (the slots come into being, PyTorch's lazy initialisations happen); then the step is
    captured.  Inside the graph the layer code computes new parameters as new tensors (replace, not
    mutate) and the graph's last nodes copy them into the static parameters.  A batch of another
    size (an epoch's last, partial one) runs eagerly, and the static tensors take its result.

    ``capture(body, buffers, torch) -> (graph, loss)`` is the capture mechanism: by default
    :func:`cuda_graph_capture`; the tests substitute an eager stand-in (``tests/training/executors/
    graph_stand_in.py``) to check the static-buffer bookkeeping on a CPU."""

    WARMUP = 3
    graph: Any  # the captured torch.cuda.CUDAGraph; None before the capture
    static: Any  # {"x": ..., "params": {...}, ...}: the tensors the graph reads and writes (None before)
    shape: tuple | None  # the batch shape the graph was captured for

    def __init__(self,
                 capture: Callable[[Callable[[dict], Array], dict, Any], tuple[Any, Array]] | None = None) -> None:
        self.capture = capture

    def bind(self, model: Sequential, loss_fn: Loss, optimizer: Optimizer, backend: Backend, dtype: str) -> None:
        if not isinstance(backend.adapter, TorchAdapter):
            raise BackendError(f"TorchGraphStep captures PyTorch CUDA steps; the backend is {backend.label}")
        if self.capture is None and backend.device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device; the backend is {backend.label}")
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.eager = WholeBatchStep()
        self.eager.bind(model, loss_fn, optimizer, backend, dtype)
        self.graph, self.static, self.shape, self.eager_steps, self.replays = None, None, None, 0, 0

    def step(self, batch: tuple) -> Array:
        x, y, noise = unpack(batch)
        if self.graph is not None and tuple(x.shape) == self.shape:
            static = self.static
            static["x"].copy_(x)
            static["y"].copy_(y)
            for name, value in (noise or {}).items():
                static["noise"][name].copy_(value)
            self.optimizer.steps += 1
            for key, value in self.optimizer.scalars().items():
                static["scalars"][key].fill_(value)
            self.graph.replay()
            self.replays += 1
            self._store(static["params"], static["slots"], static["buffers"])
            return static["loss"].clone()  # the next replay overwrites the static loss
        loss = self.eager.step(batch)
        self.eager_steps += 1
        if self.graph is not None:
            self._adopt_eager_result()
        elif self.eager_steps >= self.WARMUP:
            self._record(x, y, noise or {})
        return loss

    def _adopt_eager_result(self) -> None:
        """After an eager step, the static tensors take the new values (the graph reads them)."""
        params, slots = self._inputs()
        for name, value in params.items():
            self.static["params"][name].copy_(value)
            for slot, array in slots[name].items():
                self.static["slots"][name][slot].copy_(array)
        for name, value in self._buffers().items():
            self.static["buffers"][name].copy_(value)
        self._store(self.static["params"], self.static["slots"], self.static["buffers"])

    def _record(self, x: Array, y: Array, noise: dict) -> None:
        import torch

        params, slots = self._inputs()
        buffers = {"x": x.clone(), "y": y.clone(),
                   "buffers": {name: value.clone() for name, value in self._buffers().items()},
                   "noise": {name: value.clone() for name, value in noise.items()},
                   "params": {name: value.clone() for name, value in params.items()},
                   "slots": {name: {slot: a.clone() for slot, a in s.items()} for name, s in slots.items()},
                   "scalars": {key: torch.tensor(value, dtype=torch.float64, device=x.device)
                               for key, value in self.optimizer.scalars().items()}}
        pure = pure_step(self.model, self.loss_fn, self.optimizer)

        def body(b: dict) -> Array:
            loss, new_params, new_slots, new_buffers = pure(b["params"], b["slots"], b["scalars"], b["x"], b["y"],
                                                            b["buffers"], b["noise"])
            for name, value in new_params.items():
                b["params"][name].copy_(value)
                for slot, array in new_slots[name].items():
                    b["slots"][name][slot].copy_(array)
            for name, value in new_buffers.items():
                b["buffers"][name].copy_(value)
            return loss

        self.graph, buffers["loss"] = (self.capture or cuda_graph_capture)(body, buffers, torch)
        self.static, self.shape = buffers, tuple(x.shape)
        self._store(buffers["params"], buffers["slots"], buffers["buffers"])

    def describe(self) -> str:
        return "steps replayed as one CUDA graph"


def _clone(buffers: Any) -> Any:
    if isinstance(buffers, dict):
        return {key: _clone(value) for key, value in buffers.items()}
    return buffers.clone()


def cuda_graph_capture(body: Callable[[dict], Array], buffers: dict, torch: Any) -> tuple[Any, Array]:
    """PyTorch's recipe: run ``body`` a few times on a side stream (here on copies of the buffers,
    so the real ones keep their values), then capture it on the real buffers.  Capturing runs
    nothing; every ``graph.replay()`` runs the whole step.  Returns (graph, the graph's loss tensor)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            body(_clone(buffers))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = body(buffers)
    return graph, loss
