"""Lockstep parity: every training step, every target starts from the reference's state and its
result is compared, layer by layer, against the reference's, in units of rounding.

A free-running float32 comparison cannot tell a backend bug from a rounding flip (a ReLU or
max-pool decision that one rounding error moved, carried on by momentum; docs/parity.md).  Lockstep
never lets the runs drift apart:

* the reference target (the first, always run eagerly) trains as usual; before each of its steps
  its parameters, buffers and optimizer state are copied to the host, bit for bit;
* every other target loads that state, gets the same batch, noise and learning rate, and runs the
  same step.  An *eager* target (``numpy``, ``torch:cpu``) is also teacher-forced layer by layer:
  each layer's forward gets the reference's input of that layer and its backward the reference's
  output gradient, and the optimizer gets the reference's gradients, so that each compared tensor
  holds the rounding of one operation only.  An *executor* target (``numpy@threads=2``,
  ``jax@compiled``) runs its executor's whole step unforced and is compared on the loss and the
  state after the update;
* a float64 *judge* (NumPy, teacher-forced from the reference's values cast up) computes the same
  operations almost exactly.

For each tensor T (a layer's output ``out``, its input gradient ``grad_in``, a parameter gradient
``grad.<name>``, a parameter after the update ``param.<name>``, a buffer, a slot of the optimizer,
the loss), with b the target's, r the reference's and t the judge's values, eps the dtype's machine
epsilon and M = max |t|::

    error        e = max_i |b_i - r_i| / (eps M)          the difference, in eps units
    conditioning c = max(1, max_i |r_i - t_i| / (eps M))  the reference's own rounding, in eps units
    ratio        q = e / c

c measures the operation's conditioning where it is exercised: a sum of n terms of mixed sign
rounds to about n eps sum|terms|, and the reference's error on that very sum shows how much. Two
correct implementations that round differently stay within a few times each other's error (q of
order 1); a wrong one differs by the size of the result (q of order 1/eps).  A step fails when
q > ``threshold`` (``DEFAULT_THRESHOLD``, set from the clean ratios measured in docs/parity.md), or
when a tensor's dtype or shape differs from the reference's; the report names the first step,
layer and tensor that failed, the worst element and its three values.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xpcnn.backends import Array, Backend, resolve, split_spec, to_numpy, transfer
from xpcnn.data import Split
from xpcnn.training import Config, Extension, StepExecutor, Trainer, build_model
from xpcnn.training import executors as executors_module
from xpcnn.training.executors import WholeBatchStep

# Clean float32 runs of numpy, torch, jax and array_api_strict (default, lenet5, vgg and resnet20
# presets) stay below q = 25, the largest being PyTorch's batch statistics against NumPy's pairwise
# sums (docs/parity.md); the planted faults of tests/tools/test_lockstep.py reach 5.9e4 to 1e7.
DEFAULT_THRESHOLD = 256.0
EXECUTOR_CHOICES = "threads=N, chunk=N, threads=N/chunk=N, compiled, eager"


class TargetError(ValueError):
    """A target spec that cannot be read (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One thing to compare: a backend spec and how its step runs (``executor`` None: eager and
    teacher-forced; else ``{"threads": 2}``, ``{"chunk": 16}``, ``{"compiled": True}``)."""

    spec: str
    backend: str
    executor: dict | None = None

    @property
    def forced(self) -> bool:
        return self.executor is None


def parse_target(spec: str) -> Target:
    """``"numpy"``, ``"torch:cuda"``, ``"numpy@threads=2"``, ``"numpy@threads=2/chunk=16"``,
    ``"jax@compiled"``, ``"jax@eager"`` (the last: the plain step, unforced)."""
    backend, _, rest = spec.strip().partition("@")
    if not backend:
        raise TargetError(f"{spec!r}: no backend before '@'")
    if not rest:
        return Target(spec.strip(), backend)
    options: dict = {}
    for part in rest.split("/"):
        key, _, value = part.partition("=")
        if key in ("compiled", "eager") and not value:
            options[key] = True
        elif key in ("threads", "chunk") and value.isdigit() and int(value) >= 1:
            options[key] = int(value)
        else:
            raise TargetError(f"{spec!r}: unknown executor {part!r} after '@' (choose from {EXECUTOR_CHOICES})")
    if len(options) > 1 and ("compiled" in options or "eager" in options):
        raise TargetError(f"{spec!r}: 'compiled' and 'eager' take no other executor option")
    return Target(spec.strip(), backend, options)


def make_target_executor(target: Target, backend: Backend) -> StepExecutor:
    """The executor a target names (the plain step for a forced or ``eager`` target)."""
    options = target.executor or {}
    if options.get("compiled"):
        return executors_module.compiled_executor(backend)
    if "threads" in options or "chunk" in options:
        return executors_module.make_executor(options.get("threads", 1), options.get("chunk"))
    return WholeBatchStep()


# -- capturing and forcing layers ------------------------------------------------------------------

class Recorder:
    """Wraps every layer of a model (instance attributes over ``forward``/``backward``) to keep
    each layer's output, input gradient and parameter gradients on the host; with ``source`` (the
    reference's Recorder) it also forces each layer's input, output gradient and parameter
    gradients to the reference's values (cast to ``dtype``)."""

    def __init__(self, model: Any, backend: Backend, dtype: str, source: Recorder | None = None) -> None:
        self.model, self.backend, self.dtype, self.source = model, backend, dtype, source
        self.inputs: dict[int, np.ndarray] = {}
        self.grad_outs: dict[int, np.ndarray] = {}
        self.tensors: dict[int, dict[str, np.ndarray]] = {}
        self.host_grads: dict[int, dict[str, np.ndarray]] = {}
        for index, layer in enumerate(model.layers):
            layer.forward = self._forward(index, layer, layer.forward)
            layer.backward = self._backward(index, layer, layer.backward)

    def reset(self) -> None:
        self.inputs, self.grad_outs, self.tensors, self.host_grads = {}, {}, {}, {}

    def _device(self, host: np.ndarray) -> Array:
        return transfer(host, self.backend, self.dtype)

    def _forward(self, index: int, layer: Any, original: Callable) -> Callable:
        def forward(x: Any) -> Any:
            if self.source is not None:
                x = self._device(self.source.inputs[index])
            self.inputs[index] = to_numpy(x).copy()
            out = original(x)
            self.tensors.setdefault(index, {})["out"] = to_numpy(out).copy()
            return out
        return forward

    def _backward(self, index: int, layer: Any, original: Callable) -> Callable:
        def backward(grad_out: Any, input_grad: bool = True) -> Any:
            if self.source is not None:
                grad_out = self._device(self.source.grad_outs[index])
            self.grad_outs[index] = to_numpy(grad_out).copy()
            grad_in = original(grad_out, input_grad=input_grad)
            record = self.tensors.setdefault(index, {})
            if grad_in is not None:
                record["grad_in"] = to_numpy(grad_in).copy()
            grads = {name: to_numpy(g).copy() for name, g in layer.grads.items()}
            for name, g in grads.items():
                record[f"grad.{name}"] = g
            self.host_grads[index] = grads
            if self.source is not None:  # the optimizer steps with the reference's gradients
                layer.grads = {name: self._device(g) for name, g in self.source.host_grads[index].items()}
            return grad_in
        return backward


# -- state moves -------------------------------------------------------------------------------------

def snapshot(model: Any, optimizer: Any) -> dict:
    """The model's parameters and buffers and the optimizer's state and learning rate, on the host."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr": optimizer.lr}


def load(trainer: Trainer, state: dict, dtype: str) -> None:
    """Put a snapshot into ``trainer`` (cast to ``dtype`` on the host: exact upwards)."""
    cast = np.dtype(dtype)
    model = trainer.model
    buffers = dict(model.named_buffers())
    for name, value in state["model"].items():  # set one by one: a faulty step may have changed a dtype
        (model.set_buffer if name in buffers else model.set_parameter)(
            name, transfer(value.astype(cast), trainer.backend, dtype))
    flat = {k: (v if k == "steps" else np.asarray(v).astype(cast)) for k, v in state["optimizer"].items()}
    trainer.optimizer.load_state_dict(flat, trainer.model)
    trainer.optimizer.lr = state["lr"]


def after_step(model: Any, optimizer: Any) -> dict[str, np.ndarray]:
    """Host copies of everything a step leaves: parameters, buffers, optimizer slots."""
    flat = dict(model.state_dict())
    for key, value in optimizer.state_dict().items():
        if key != "steps":
            flat[key] = value
    return flat


def _layer_of(qualified: str) -> tuple[int, str]:
    """``"3.weight"`` -> (3, "param.weight"); ``"3.weight/velocity"`` -> (3, "velocity.weight");
    ``"3.running_var"`` -> (3, "running_var")."""
    name, _, slot = qualified.partition("/")
    index, _, attribute = name.partition(".")
    if slot:
        return int(index), f"{slot}.{attribute}"
    return int(index), attribute if attribute.startswith("running_") else f"param.{attribute}"


# -- comparison -----------------------------------------------------------------------------------------

def measure(b: np.ndarray, r: np.ndarray, t: np.ndarray, eps: float) -> dict:
    """The figures of one tensor (see the module docstring): e, c, q and the worst element."""
    if b.dtype != r.dtype or b.shape != r.shape:
        return {"error_eps": math.inf, "conditioning_eps": 1.0, "ratio": math.inf,
                "problem": f"{b.dtype}{list(b.shape)} where the reference has {r.dtype}{list(r.shape)}"}
    b64, r64, t64 = b.astype(np.float64), r.astype(np.float64), t.astype(np.float64)
    if not np.all(np.isfinite(b64)) and np.all(np.isfinite(r64)):
        return {"error_eps": math.inf, "conditioning_eps": 1.0, "ratio": math.inf, "problem": "non-finite values"}
    scale = max(float(np.max(np.abs(t64), initial=0.0)), float(np.max(np.abs(r64), initial=0.0)))
    unit = eps * (scale if scale > 0 else 1.0)  # an all-zero tensor: absolute eps units
    diff = np.abs(b64 - r64)
    error = float(np.max(diff, initial=0.0)) / unit
    conditioning = max(1.0, float(np.max(np.abs(r64 - t64), initial=0.0)) / unit)
    figures: dict[str, Any] = {"error_eps": error, "conditioning_eps": conditioning, "ratio": error / conditioning}
    if diff.size and error > 0:
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
        figures["element"] = [int(i) for i in worst]
        figures["values"] = {"target": float(b64[worst]), "reference": float(r64[worst]), "float64": float(t64[worst])}
        figures["elements_over"] = 0  # filled in by the caller, who knows the threshold
        figures["_diff_units"] = diff / (unit * conditioning)
    return figures


class LockstepStep(StepExecutor):
    """The reference's step (eager, captured), then every target's and the judge's from the same
    state; appends one record per step to ``steps``."""

    def __init__(self, targets: list[tuple[Target, Trainer]], judge: Trainer, threshold: float,
                 stop_at_failure: bool, on_step: Callable[[dict], None] | None = None) -> None:
        self.inner = WholeBatchStep()
        self.targets, self.judge, self.threshold = targets, judge, threshold
        self.stop_at_failure, self.on_step = stop_at_failure, on_step
        self.steps: list[dict] = []
        self.failed = False

    def bind(self, model: Any, loss_fn: Any, optimizer: Any, backend: Backend, dtype: str) -> None:
        super().bind(model, loss_fn, optimizer, backend, dtype)
        self.inner.bind(model, loss_fn, optimizer, backend, dtype)
        self.eps = float(np.finfo(np.dtype(dtype)).eps)
        self.recorder = Recorder(model, backend, dtype)
        self.judge_recorder = Recorder(self.judge.model, self.judge.backend, "float64", source=self.recorder)
        self.recorders = [Recorder(trainer.model, trainer.backend, dtype, source=self.recorder)
                          if target.forced else None for target, trainer in self.targets]

    def to_device(self, images: np.ndarray, targets: np.ndarray, noise: dict | None = None) -> tuple:
        self.host = (images, targets, noise)
        self.inner.normalize = self.normalize
        return self.inner.to_device(images, targets, noise=noise) if noise else self.inner.to_device(images, targets)

    @staticmethod
    def _run(trainer: Trainer, host: tuple) -> Array:
        images, targets, noise = host
        executor = trainer.executor
        batch = executor.to_device(images, targets, noise=noise) if noise else executor.to_device(images, targets)
        return executor.step(batch)

    def step(self, batch: tuple) -> Array:
        state = snapshot(self.model, self.optimizer)
        self.recorder.reset()
        loss = self.inner.step(batch)
        reference = {"loss": np.asarray(to_numpy(loss)).copy(), "after": after_step(self.model, self.optimizer)}
        load(self.judge, state, "float64")
        self.judge.executor.normalize = self.normalize
        self.judge_recorder.reset()
        judge_loss = self._run(self.judge, self.host)
        judge = {"loss": np.asarray(to_numpy(judge_loss)), "after": after_step(self.judge.model, self.judge.optimizer)}
        record: dict = {"step": len(self.steps) + 1, "targets": []}
        for (target, trainer), recorder in zip(self.targets, self.recorders):
            load(trainer, state, self.dtype)
            trainer.executor.normalize = self.normalize
            if recorder is not None:
                recorder.reset()
            with trainer.executor.running():
                target_loss = self._run(trainer, self.host)
            other = {"loss": np.asarray(to_numpy(target_loss)), "after": after_step(trainer.model, trainer.optimizer)}
            record["targets"].append(self._compare(target, recorder, other, reference, judge))
        self.steps.append(record)
        if self.on_step:
            self.on_step(record)
        return loss

    def _compare(self, target: Target, recorder: Recorder | None, other: dict, reference: dict, judge: dict) -> dict:
        tensors: dict[tuple[int, str], dict] = {}
        if recorder is not None:
            for index, record in recorder.tensors.items():
                for name, value in record.items():
                    ref = self.recorder.tensors[index].get(name)
                    if ref is None:
                        tensors[(index, name)] = {"error_eps": math.inf, "conditioning_eps": 1.0, "ratio": math.inf,
                                                  "problem": "the reference has no such tensor"}
                        continue
                    tensors[(index, name)] = measure(value, ref, self.judge_recorder.tensors[index][name], self.eps)
        for qualified, value in other["after"].items():
            index, name = _layer_of(qualified)
            ref = reference["after"].get(qualified)
            if ref is None:
                tensors[(index, name)] = {"error_eps": math.inf, "conditioning_eps": 1.0, "ratio": math.inf,
                                          "problem": "the reference has no such state"}
                continue
            tensors[(index, name)] = measure(value, ref, judge["after"][qualified], self.eps)
        for qualified in reference["after"]:
            if qualified not in other["after"]:
                index, name = _layer_of(qualified)
                tensors[(index, name)] = {"error_eps": math.inf, "conditioning_eps": 1.0, "ratio": math.inf,
                                          "problem": "missing on this target"}
        loss = measure(np.asarray(other["loss"]).reshape(1), np.asarray(reference["loss"]).reshape(1),
                       np.asarray(judge["loss"]).reshape(1), self.eps)
        layers: dict[int, dict] = {}
        failures = []
        for (index, name), figures in sorted(tensors.items(), key=lambda item: (item[0][0], _order(item[0][1]))):
            units = figures.pop("_diff_units", None)
            if units is not None:
                figures["elements_over"] = int(np.count_nonzero(units > self.threshold))
            entry = layers.setdefault(index, {"ratio": 0.0, "tensor": None})
            if figures["ratio"] >= entry["ratio"]:
                entry["ratio"], entry["tensor"] = figures["ratio"], name
            if figures["ratio"] > self.threshold:
                failures.append({"layer": index, "tensor": name, **figures})
        loss.pop("_diff_units", None)
        if loss["ratio"] > self.threshold and not failures:
            failures.append({"layer": None, "tensor": "loss", **loss})
        return {"target": target.spec, "loss": loss, "layers": layers,
                "max_ratio": max([loss["ratio"], *(e["ratio"] for e in layers.values())]),
                "failures": failures,
                "tensors": {f"{index}.{name}": figures["ratio"] for (index, name), figures in tensors.items()}}


ORDER = ("out", "grad_in", "grad.", "param.", "running_", "velocity.", "m.", "v.")


def _order(name: str) -> int:
    """Tensors in the order a step computes them: forward, backward, update."""
    return next((i for i, prefix in enumerate(ORDER) if name.startswith(prefix)), len(ORDER))


def lockstep(specs: Sequence[str], config: Config, train: Split, threshold: float = DEFAULT_THRESHOLD,
             steps: int | None = None, on_target: Callable[[str], object] | None = None,
             extensions: Sequence[Extension] = (), stop_at_failure: bool = False) -> dict:
    """Run ``config`` on ``train`` in lockstep over ``specs`` (the first is the reference, run
    eagerly) and return the report (a dict, JSON-ready; see :func:`format_lockstep`).  ``steps``
    stops after that many steps (all of ``config.epochs`` otherwise); ``stop_at_failure`` stops
    after the first step at which any target fails."""
    if len(specs) < 2:
        raise ValueError("lockstep needs at least two targets, e.g. numpy,torch")
    targets = [parse_target(spec) for spec in specs]
    if not targets[0].forced:
        raise TargetError(f"{targets[0].spec!r}: the reference (the first target) runs eagerly; put an executor "
                          f"target after it")
    backends = [resolve(*split_spec(target.backend)) for target in targets]
    if steps is not None:
        per_epoch = math.ceil(min(len(train), config.train_count or len(train)) / config.batch_size)
        config = dataclasses.replace(config, epochs=min(config.epochs, math.ceil(steps / per_epoch)))
    model = build_model(config)
    others = []
    for target, backend in zip(targets[1:], backends[1:]):
        if on_target:
            on_target(target.spec)
        others.append((target, Trainer(config, backend, build_model(config),
                                       executor=make_target_executor(target, backend))))
    judge_config = dataclasses.replace(config, dtype="float64")
    judge = Trainer(judge_config, resolve("numpy"), build_model(judge_config), executor=WholeBatchStep())
    driver = LockstepStep(others, judge, threshold, stop_at_failure)
    limit = _Limit(driver, steps, stop_at_failure)
    started = time.perf_counter()
    try:
        with Trainer(config, backends[0], model, executor=driver, extensions=[limit, *extensions]) as trainer:
            trainer.fit(train)
    except _Stopped:
        pass
    finally:
        for _, other in others:
            other.close()
        judge.close()
    return _report(targets, backends, driver, config, threshold, time.perf_counter() - started)


class _Stopped(Exception):
    pass


class _Limit(Extension):
    """Stops the reference's loop after ``steps`` steps, or at the first failure if asked."""

    def __init__(self, driver: LockstepStep, steps: int | None, stop_at_failure: bool) -> None:
        self.driver, self.steps, self.stop_at_failure = driver, steps, stop_at_failure

    def on_step_start(self, trainer: Trainer) -> None:
        done = len(self.driver.steps)
        failed = self.stop_at_failure and any(t["failures"] for s in self.driver.steps[-1:] for t in s["targets"])
        if (self.steps is not None and done >= self.steps) or failed:
            raise _Stopped


def _report(targets: list[Target], backends: list[Backend], driver: LockstepStep, config: Config,
            threshold: float, seconds: float) -> dict:
    layer_names = [f"{i}.{layer.name}" for i, layer in enumerate(driver.model.layers)]
    comparisons = []
    for position, (target, backend) in enumerate(zip(targets[1:], backends[1:])):
        records = [step["targets"][position] for step in driver.steps]
        heat = [[rec["layers"].get(i, {"ratio": None})["ratio"] for i in range(len(layer_names))] for rec in records]
        first = next(({"step": step["step"], **rec["failures"][0]} for step, rec in zip(driver.steps, records)
                      if rec["failures"]), None)
        worst_by_layer = []
        for i in range(len(layer_names)):
            values = [(rec["layers"][i]["ratio"], rec["layers"][i]["tensor"], step["step"])
                      for step, rec in zip(driver.steps, records) if i in rec["layers"]]
            ratio, tensor, step_no = max(values, default=(None, None, None), key=lambda v: v[0])
            worst_by_layer.append({"layer": layer_names[i], "max_ratio": ratio, "tensor": tensor, "step": step_no})
        comparisons.append({
            "target": target.spec, "backend": backend.label, "forced": target.forced,
            "against": targets[0].spec, "pass": first is None, "first_failure": first,
            "max_ratio": max((rec["max_ratio"] for rec in records), default=0.0),
            "failed_steps": sum(1 for rec in records if rec["failures"]),
            "loss_ratio": [rec["loss"]["ratio"] for rec in records],
            "layers": worst_by_layer, "heat": heat,
            "steps": [{"step": step["step"], "tensors": rec["tensors"]} for step, rec in zip(driver.steps, records)],
        })
    ok = all(c["pass"] for c in comparisons)
    return {"mode": "lockstep", "result": "PASS" if ok else "FAIL", "dtype": config.dtype, "threshold": threshold,
            "eps": driver.eps if driver.steps else float(np.finfo(np.dtype(config.dtype)).eps),
            "steps": len(driver.steps), "seconds": seconds, "layers": layer_names,
            "reference": targets[0].spec, "config": dict(vars(config)), "comparisons": comparisons}


def _fmt(value: float | None) -> str:
    return "-" if value is None else ("inf" if math.isinf(value) else f"{value:.3g}")


def format_lockstep(report: dict) -> str:
    """The human-readable table: per target, the worst ratio of each layer over all steps, and the
    first failure in full."""
    lines = [f"lockstep: {report['steps']} step(s), {report['dtype']}, reference {report['reference']}; "
             f"ratio = |target - reference| / (reference's own rounding), fail above {report['threshold']:g}"]
    for c in report["comparisons"]:
        lines.append("")
        how = "teacher-forced per layer" if c["forced"] else "whole step, unforced"
        lines.append(f"{c['target']} ({c['backend']}, {how}) vs {c['against']}")
        width = max([12] + [len(entry["layer"]) for entry in c["layers"]])
        lines.append(f"  {'layer':<{width}} {'max ratio':>10}  {'tensor':<22} {'step':>5}")
        for entry in c["layers"]:
            lines.append(f"  {entry['layer']:<{width}} {_fmt(entry['max_ratio']):>10}  {entry['tensor'] or '-':<22} "
                         f"{entry['step'] if entry['step'] is not None else '-':>5}")
        lines.append(f"  loss: max ratio {_fmt(max(c['loss_ratio'], default=0.0))}")
        first = c["first_failure"]
        if first is None:
            lines.append(f"  PASS (max ratio {_fmt(c['max_ratio'])})")
        else:
            where = "the loss" if first["layer"] is None else f"layer {report['layers'][first['layer']]}"
            lines.append(f"  FAIL at step {first['step']}, {where}, tensor {first['tensor']}: " + _describe(first))
            lines.append(f"  ({c['failed_steps']} of {report['steps']} step(s) failed)")
    lines.append("")
    lines.append(f"lockstep parity {report['result']} ({report['dtype']}, threshold {report['threshold']:g}; "
                 f"{report['seconds']:.1f}s)")
    return "\n".join(lines)


def _describe(failure: dict) -> str:
    if "problem" in failure:
        return failure["problem"]
    text = (f"ratio {_fmt(failure['ratio'])} (difference {_fmt(failure['error_eps'])} eps, reference's own "
            f"rounding {_fmt(failure['conditioning_eps'])} eps)")
    if "element" in failure:
        v = failure["values"]
        text += (f"; worst element {tuple(failure['element'])}: {v['target']:.9g} vs {v['reference']:.9g} "
                 f"(float64 {v['float64']:.9g}); {failure['elements_over']} element(s) over the threshold")
    return text


__all__ = ["DEFAULT_THRESHOLD", "LockstepStep", "Recorder", "Target", "TargetError", "format_lockstep", "lockstep",
           "make_target_executor", "measure", "parse_target"]
