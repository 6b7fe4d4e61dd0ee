"""Lockstep parity (xpcnn.tools.lockstep): clean float32 runs pass on every CPU backend, and faults
planted on one backend (by monkeypatching layer and optimizer methods for torch arrays only) are
named at the right step, layer and tensor, far above the threshold."""

import dataclasses

import array_api_compat
import numpy as np
import pytest

from xpcnn import data
from xpcnn.backends import available
from xpcnn.nn import conv as conv_module
from xpcnn.nn.batchnorm import BatchNorm1D
from xpcnn.nn.conv import Conv2D
from xpcnn.optim import SGD
from xpcnn.tools import lockstep as ls
from xpcnn.training import PRESETS, Config

CPU_SPECS = ["numpy", "torch:cpu", "jax:cpu", "array_api_strict:device1"]


def _torch(x) -> bool:
    return array_api_compat.is_torch_array(x)


@pytest.fixture(scope="module")
def digits():
    return data.load_embedded().train.take(48)


@pytest.fixture(scope="module")
def colour():
    """48 digits padded to 32x32 and given three differently scaled channels (for vgg, resnet20)."""
    train = data.load_embedded().train.take(48)
    grey = np.pad(train.images[:, 0], ((0, 0), (2, 2), (2, 2)))
    images = np.stack([grey, grey // 2, 255 - grey], axis=1).astype(np.uint8)
    return data.Split(images, train.labels)


def _torch_or_skip() -> None:
    if "torch:cpu" not in available(["torch:cpu"]):
        pytest.skip("the planted faults run on torch (not installed)")


def _failure(report: dict, target: str = "torch:cpu") -> dict:
    comparison = next(c for c in report["comparisons"] if c["target"] == target)
    assert not comparison["pass"], ls.format_lockstep(report)
    return comparison["first_failure"]


@pytest.mark.parametrize(("preset", "batch", "steps"), [
    ("default", 16, 2), ("lenet5", 16, 2),
    pytest.param("vgg", 4, 1, marks=pytest.mark.slow), pytest.param("resnet20", 4, 1, marks=pytest.mark.slow)])
def test_clean_float32_runs_pass_on_every_cpu_backend(preset, batch, steps, digits, colour):
    specs = available(CPU_SPECS)
    assert len(specs) >= 2
    train = colour if PRESETS[preset].image_shape[0] == 3 else digits
    config = dataclasses.replace(PRESETS[preset], dtype="float32", batch_size=batch, epochs=1)
    report = ls.lockstep(specs, config, train, steps=steps)
    assert report["result"] == "PASS", ls.format_lockstep(report)
    assert report["steps"] == steps
    for comparison in report["comparisons"]:
        assert comparison["max_ratio"] < ls.DEFAULT_THRESHOLD / 4  # margin under the threshold
        assert len(comparison["heat"]) == steps and len(comparison["heat"][0]) == len(report["layers"])
    if preset in ("default", "lenet5"):
        strict = [c for c in report["comparisons"] if c["target"].startswith("array_api_strict")]
        assert all(c["max_ratio"] == 0 for c in strict)  # NumPy underneath: the same bits


def test_executor_targets_are_compared(digits):
    specs = ["numpy", "numpy@threads=2", "numpy@chunk=5"] + (["jax@compiled"] if available(["jax"]) else [])
    report = ls.lockstep(specs, Config(dtype="float32", batch_size=16), digits, steps=2)
    assert report["result"] == "PASS", ls.format_lockstep(report)
    for comparison in report["comparisons"]:
        assert not comparison["forced"]
        assert any(name.endswith("param.weight") for name in comparison["steps"][0]["tensors"])


def test_transposed_weight_gradient_is_named(digits, monkeypatch):
    """Conv2D's dE/df with its kernel axes swapped (kh <-> kw), on torch only."""
    _torch_or_skip()
    original = Conv2D.backward

    def faulty(self, grad_out, input_grad=True):
        grad_in = original(self, grad_out, input_grad=input_grad)
        weight = self.grads["weight"]
        if _torch(weight):
            self.grads = {**self.grads, "weight": weight.transpose(-1, -2)}
        return grad_in

    monkeypatch.setattr(Conv2D, "backward", faulty)
    report = ls.lockstep(["numpy", "torch:cpu", "array_api_strict"], Config(dtype="float32", batch_size=16), digits,
                         steps=2)
    failure = _failure(report)
    assert (failure["step"], failure["layer"], failure["tensor"]) == (1, 0, "grad.weight")
    assert failure["ratio"] > 1000 * ls.DEFAULT_THRESHOLD
    assert failure["elements_over"] > 0
    assert next(c for c in report["comparisons"] if c["target"] == "array_api_strict")["pass"]
    assert "FAIL at step 1, layer 0.Conv2D, tensor grad.weight" in ls.format_lockstep(report)


def test_col2im_off_by_one_is_named(digits, monkeypatch):
    """Conv2D's dE/dX with each kernel offset's slice added at the next offset's window, on torch only."""
    _torch_or_skip()
    name = "add_windows" if hasattr(conv_module, "add_windows") else "col2im"
    original = getattr(conv_module, name)

    def faulty(xp, parts, *args, **kwargs):
        if name == "add_windows" and _torch(parts[0]):
            parts = [*parts[1:], parts[0]]
        elif name == "col2im" and _torch(parts):
            parts = xp.roll(parts, 1, axis=2)
        return original(xp, parts, *args, **kwargs)

    monkeypatch.setattr(conv_module, name, faulty)
    config = dataclasses.replace(PRESETS["lenet5"], dtype="float32", batch_size=16)
    report = ls.lockstep(["numpy", "torch:cpu"], config, digits, steps=2)
    second_conv = [i for i, layer in enumerate(report["layers"]) if layer.endswith("Conv2D")][1]
    failure = _failure(report)
    assert (failure["step"], failure["layer"], failure["tensor"]) == (1, second_conv, "grad_in")
    assert failure["ratio"] > 1000 * ls.DEFAULT_THRESHOLD


def test_float64_momentum_is_named(digits, monkeypatch):
    """SGD's momentum update in float64 on torch (the new parameter and velocity come out float64)."""
    _torch_or_skip()
    original = SGD.update

    def faulty(self, param, grad, slots, scalars):
        if _torch(param):
            import torch

            param, grad = param.to(torch.float64), grad.to(torch.float64)
            slots = {k: v.to(torch.float64) for k, v in slots.items()}
        return original(self, param, grad, slots, scalars)

    monkeypatch.setattr(SGD, "update", faulty)
    report = ls.lockstep(["numpy", "torch:cpu"], Config(dtype="float32", batch_size=16), digits, steps=2)
    failure = _failure(report)
    assert (failure["step"], failure["layer"], failure["tensor"]) == (1, 0, "param.weight")
    assert "float64" in failure["problem"] and "float32" in failure["problem"]


def test_running_variance_without_bessel_is_named(digits, monkeypatch):
    """BatchNorm1D's running variance updated with the biased batch variance (no M / (M - 1)), on
    torch only: planted by redoing the running update from the correct one."""
    _torch_or_skip()
    original = BatchNorm1D.forward

    def faulty(self, x):
        before = self.buffers["running_var"]
        out = original(self, x)
        after, m, count = self.buffers["running_var"], self.momentum, x.shape[0]
        if self.training and _torch(after):
            unbiased = (after - (1.0 - m) * before) / m
            self.buffers = {**self.buffers, "running_var": (1.0 - m) * before + m * unbiased * ((count - 1) / count)}
        return out

    monkeypatch.setattr(BatchNorm1D, "forward", faulty)
    config = Config(dtype="float32", batch_size=16, model="conv4k5-relu-maxpool2-flatten-dense32-bn-relu-dense")
    report = ls.lockstep(["numpy", "torch:cpu"], config, digits, steps=2)
    bn = next(i for i, layer in enumerate(report["layers"]) if layer.endswith("BatchNorm1D"))
    failure = _failure(report)
    assert (failure["step"], failure["layer"], failure["tensor"]) == (1, bn, "running_var")
    assert failure["ratio"] > 10 * ls.DEFAULT_THRESHOLD


def test_a_dtype_mismatch_fails_even_with_equal_values():
    figures = ls.measure(np.ones(3, np.float64), np.ones(3, np.float32), np.ones(3), 2.0 ** -23)
    assert figures["ratio"] == np.inf and "float64" in figures["problem"]


def test_measure_scales_by_the_reference_rounding():
    t = np.array([1.0, -1.0, 1e-3])
    eps = float(np.finfo(np.float32).eps)
    r = (t + np.array([0, 0, 8 * eps])).astype(np.float32)  # the reference is 8 eps off the float64 value
    b = (t + np.array([0, 0, 16 * eps])).astype(np.float32)
    figures = ls.measure(b, r, t, eps)
    assert figures["conditioning_eps"] == pytest.approx(8, rel=0.05)
    assert figures["error_eps"] == pytest.approx(8, rel=0.05)
    assert figures["ratio"] == pytest.approx(1, rel=0.1)
    assert figures["element"] == [2]


@pytest.mark.parametrize(("spec", "expected"), [
    ("numpy", ls.Target("numpy", "numpy")),
    ("torch:cuda", ls.Target("torch:cuda", "torch:cuda")),
    ("numpy@threads=2", ls.Target("numpy@threads=2", "numpy", {"threads": 2})),
    ("numpy@threads=2/chunk=8", ls.Target("numpy@threads=2/chunk=8", "numpy", {"threads": 2, "chunk": 8})),
    ("jax:cpu@compiled", ls.Target("jax:cpu@compiled", "jax:cpu", {"compiled": True})),
])
def test_parse_target(spec, expected):
    assert ls.parse_target(spec) == expected


@pytest.mark.parametrize("spec", ["numpy@threads=0", "numpy@fast", "@threads=2", "jax@compiled/threads=2"])
def test_parse_target_refuses(spec):
    with pytest.raises(ls.TargetError, match="@|backend"):
        ls.parse_target(spec)


def test_the_reference_must_run_eagerly(digits):
    with pytest.raises(ls.TargetError, match="reference"):
        ls.lockstep(["numpy@threads=2", "numpy"], Config(dtype="float32"), digits, steps=1)
