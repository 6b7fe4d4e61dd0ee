"""A public gradient checker: central finite differences in float64 against the
analytic ``backward`` of any layer, loss or whole model, on any backend.

The layer is moved to float64 on the backend of ``x``; the scalar objective is
``E = sum(R * layer(x))`` for a fixed random ``R`` (or the loss itself), so the
analytic gradients come from ``layer.backward(R)``.  Each input or parameter
element is nudged by +-eps on the host and the objective recomputed on the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpcnn.backends import Array, backend_of, from_numpy, to_numpy
from xpcnn.nn.losses import Loss


@dataclass
class GradCheckResult:
    name: str
    max_abs_error: float
    max_rel_error: float
    ok: bool


def _numeric(objective: Callable[[Array], float], host_value: np.ndarray, rebuild: Callable[[np.ndarray], Array],
             eps: float, max_elements: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    flat = host_value.reshape(-1)
    indices = np.arange(flat.size)
    if max_elements is not None and flat.size > max_elements:
        indices = rng.choice(flat.size, size=max_elements, replace=False)
    numeric = np.empty(indices.size)
    for out_index, index in enumerate(indices):
        original = flat[index]
        flat[index] = original + eps
        plus = objective(rebuild(host_value))
        flat[index] = original - eps
        minus = objective(rebuild(host_value))
        flat[index] = original
        numeric[out_index] = (plus - minus) / (2 * eps)
    return indices, numeric


def check_gradients(layer: Any, x: Array, loss: Loss | None = None, target: Array | None = None, eps: float = 1e-6,
                    rtol: float = 1e-5, atol: float = 1e-7, max_elements: int | None = 64,
                    seed: int = 0) -> list[GradCheckResult]:
    """Compare ``layer.backward`` with central differences for the input and every
    parameter.  With ``loss`` (and ``target``) the objective is ``loss(layer(x), target)``;
    without, ``sum(R * layer(x))``.  ``layer`` may be a loss (then ``target`` is needed
    and only the input is checked).  Returns one result per checked array; raise
    nothing, so callers decide.  The layer is left in float64 on x's backend."""
    backend = backend_of(x)
    rng = np.random.default_rng(seed)
    host_x = to_numpy(x).astype(np.float64)
    is_loss = not hasattr(layer, "params")  # losses have forward/backward but no parameters
    if not is_loss:
        layer.to(backend, dtype="float64")
    to_device = lambda host: from_numpy(host, backend, "float64")  # noqa: E731
    target_dev = None
    if target is not None:
        host_target = to_numpy(target)
        target_dev = from_numpy(host_target, backend) if host_target.dtype.kind in "iu" else to_device(host_target)

    if is_loss:
        def objective(x_dev: Array) -> float:
            return float(to_numpy(layer.forward(x_dev, target_dev)))

        objective(to_device(host_x))
        analytic = {"input": to_numpy(layer.backward())}
        params = {}
    else:
        output = layer.forward(to_device(host_x))
        weights = rng.standard_normal(tuple(output.shape))
        weights_dev = to_device(weights)

        def objective(x_dev: Array) -> float:
            result = layer.forward(x_dev)
            if loss is not None:
                return float(to_numpy(loss.forward(result, target_dev)))
            return float(np.sum(to_numpy(result) * weights))

        if loss is not None:
            loss.forward(output, target_dev)
            grad_in = layer.backward(loss.backward())
        else:
            grad_in = layer.backward(weights_dev)
        analytic = {"input": to_numpy(grad_in)}
        params = {name: to_numpy(value).astype(np.float64).copy() for name, value in layer.named_parameters()}
        grads = dict(layer.named_gradients())
        for name in params:
            analytic[name] = to_numpy(grads[name])

    results = []
    indices, numeric = _numeric(objective, host_x.copy(), to_device, eps, max_elements, rng)
    results.append(_compare("input", analytic["input"].reshape(-1)[indices], numeric, rtol, atol))
    for name, host_value in params.items():
        def objective_for(value_dev: Array, name: str = name) -> float:
            layer.set_parameter(name, value_dev)
            return objective(to_device(host_x))

        indices, numeric = _numeric(objective_for, host_value, to_device, eps, max_elements, rng)
        layer.set_parameter(name, to_device(host_value))
        results.append(_compare(name, analytic[name].reshape(-1)[indices], numeric, rtol, atol))
    return results


def _compare(name: str, analytic: np.ndarray, numeric: np.ndarray, rtol: float, atol: float) -> GradCheckResult:
    error = np.abs(analytic - numeric)
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    rel = error / np.maximum(scale, 1e-12)
    ok = bool(np.all(error <= atol + rtol * scale))
    return GradCheckResult(name, float(error.max(initial=0.0)), float(rel.max(initial=0.0)), ok)


def assert_gradients_ok(*args, **kwargs) -> list[GradCheckResult]:
    """:func:`check_gradients`, raising AssertionError with every failing array."""
    results = check_gradients(*args, **kwargs)
    bad = [r for r in results if not r.ok]
    if bad:
        raise AssertionError("gradient check failed: " + "; ".join(
            f"{r.name}: max abs err {r.max_abs_error:.3g}, max rel err {r.max_rel_error:.3g}" for r in bad))
    return results
