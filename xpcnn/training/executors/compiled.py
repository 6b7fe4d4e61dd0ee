"""Compiled step executors: the same hand-written step, handed whole to a backend's own compiler.

Eagerly, a step is ~50 array operations dispatched one by one from Python; on a GPU the host's
dispatching, not the GPU, sets the pace (docs/performance.md).  These executors run the unchanged
layer, loss and optimizer code once under the backend's tracer and replay the result:

* :class:`JaxJitStep` -- ``jax.jit`` of the pure function
  (parameters, optimizer slots, step scalars, x, y, buffers, noise) -> (loss, new parameters, new
  slots, new buffers).
* :class:`TorchGraphStep` -- on ``torch:cuda``, the whole step captured in one CUDA graph
  (``torch.cuda.CUDAGraph``) over static buffers that the executor owns.

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
"""

from __future__ import annotations

from xpcnn.backends import BackendError
from xpcnn.training.executors import StepExecutor, WholeBatchStep, unpack


def _pure_step(model, loss_fn, optimizer):
    """(params, slots, scalars, x, y, buffers, noise) -> (loss, new params, new slots, new buffers):
    one training step as a function of its inputs alone (it sets the model's parameters and buffers
    from ``params`` and ``buffers``, and hands it ``noise``, first)."""

    def step(params, slots, scalars, x, y, buffers=None, noise=None):
        for name, value in params.items():
            model.set_parameter(name, value)
        for name, value in (buffers or {}).items():
            model.set_buffer(name, value)
        if noise:
            model.set_noise(noise)
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        new_params, new_slots = {}, {}
        for name, grad in model.named_gradients():
            new_params[name], new_slots[name] = optimizer.update_named(name, params[name], grad, slots[name], scalars)
        return loss, new_params, new_slots, dict(model.named_buffers())

    return step


class _Compiled(StepExecutor):
    """What both compiled executors share: the eager priming forward, and putting a step's results
    back into the model and the optimizer."""

    def bind(self, model, loss_fn, optimizer, backend, dtype):
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.primed = set()

    def _prime(self, x) -> None:
        """One eager forward per input shape before tracing: layer caches get concrete arrays."""
        key = tuple(x.shape[1:])
        if key not in self.primed:
            with self.model.inference():
                self.model(x[:1, ...])
            self.primed.add(key)

    def _inputs(self):
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


class JaxJitStep(_Compiled):
    """``jax.jit`` of the whole training step (module docstring).  Traced once per batch shape
    and optimizer-slot structure (so: the first step, the full batches, the last partial batch);
    every other step replays the compiled function with no Python in between."""

    def bind(self, model, loss_fn, optimizer, backend, dtype):
        if backend.name != "jax":
            raise BackendError(f"JaxJitStep compiles JAX steps; the backend is {backend.label}")
        import jax

        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.traces = 0
        pure = _pure_step(model, loss_fn, optimizer)

        def counted(*args):
            self.traces += 1  # runs only while JAX traces
            return pure(*args)

        self.compiled = jax.jit(counted)

    def step(self, batch):
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


class TorchGraphStep(_Compiled):
    """The whole step on ``torch:cuda`` as one CUDA graph, replayed every step.

    The executor owns static tensors: the batch (x, y, noise), the parameters, buffers, optimizer slots and the
    step scalars (0-d float64 tensors, refilled before each replay; in ``lr * grad`` a 0-d tensor
    takes the other operand's dtype, as a Python float does eagerly).  The first ``WARMUP`` steps
    run eagerly (the slots come into being, PyTorch's lazy initialisations happen); then the step is
    captured.  Inside the graph the layer code computes new parameters as new tensors (replace, not
    mutate) and the graph's last nodes copy them into the static parameters.  A batch of another
    size (an epoch's last, partial one) runs eagerly, and the static tensors take its result.

    ``capture(body, buffers, torch) -> (graph, loss)`` is the capture mechanism: by default
    :func:`cuda_graph_capture`; the tests substitute :class:`EagerGraphStandIn` to check the
    static-buffer bookkeeping on a CPU."""

    WARMUP = 3

    def __init__(self, capture=None):
        self.capture = capture

    def bind(self, model, loss_fn, optimizer, backend, dtype):
        if backend.name != "torch":
            raise BackendError(f"TorchGraphStep captures PyTorch CUDA steps; the backend is {backend.label}")
        if self.capture is None and backend.device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device; the backend is {backend.label}")
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.eager = WholeBatchStep()
        self.eager.bind(model, loss_fn, optimizer, backend, dtype)
        self.graph, self.static, self.shape, self.eager_steps, self.replays = None, None, None, 0, 0

    def step(self, batch):
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

    def _record(self, x, y, noise: dict) -> None:
        import torch

        params, slots = self._inputs()
        buffers = {"x": x.clone(), "y": y.clone(),
                   "buffers": {name: value.clone() for name, value in self._buffers().items()},
                   "noise": {name: value.clone() for name, value in noise.items()},
                   "params": {name: value.clone() for name, value in params.items()},
                   "slots": {name: {slot: a.clone() for slot, a in s.items()} for name, s in slots.items()},
                   "scalars": {key: torch.tensor(value, dtype=torch.float64, device=x.device)
                               for key, value in self.optimizer.scalars().items()}}
        pure = _pure_step(self.model, self.loss_fn, self.optimizer)

        def body(b):
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


def _clone(buffers):
    if isinstance(buffers, dict):
        return {key: _clone(value) for key, value in buffers.items()}
    return buffers.clone()


def cuda_graph_capture(body, buffers, torch):
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


class EagerGraphStandIn:
    """For tests on a CPU: 'capturing' runs nothing, and each replay calls the body on the static
    buffers, so :class:`TorchGraphStep`'s bookkeeping is checked without CUDA."""

    def __call__(self, body, buffers, torch):
        loss = torch.zeros((), dtype=buffers["params"][next(iter(buffers["params"]))].dtype,
                           device=buffers["x"].device)

        class Replay:
            def replay(self):
                loss.copy_(body(buffers).detach())

        return Replay(), loss


def compiled_executor(backend) -> StepExecutor:
    """The compiled executor for a backend: jax.jit on JAX, a CUDA graph on torch:cuda."""
    if backend.name == "jax":
        return JaxJitStep()
    if backend.name == "torch" and backend.device.type == "cuda":
        return TorchGraphStep()
    raise BackendError(f"--compile: {backend.label} has no compiled executor here (JAX compiles with jax.jit, "
                       "PyTorch on CUDA with CUDA graphs; CuPy cannot capture cuBLAS calls, docs/performance.md)")


def has_compiled_executor(backend) -> bool:
    return backend.name == "jax" or (backend.name == "torch" and backend.device.type == "cuda")


def compiles_by_default(backend) -> bool:
    """JAX compiles unless told not to (measured: docs/performance.md); torch:cuda only with --compile."""
    return backend.name == "jax"
