"""Outputs and gradients against torch.autograd on the same weights (float64)."""

import numpy as np
import pytest

from xpcnn import (AvgPool2D, BCELoss, Conv2D, Dense, MaxPool2D, MSELoss, SoftmaxCrossEntropyLoss, Sigmoid,
                   to_numpy)

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _run(layer, x, grad_out, backend):
    layer.to(backend, dtype="float64")
    out = layer(backend.asarray(x, "float64"))
    grad_in = layer.backward(backend.asarray(grad_out, "float64"))
    return to_numpy(out), to_numpy(grad_in), {k: to_numpy(v) for k, v in layer.grads.items()}


@pytest.mark.parametrize("im2col", ["slices", "gather"])
@pytest.mark.parametrize("stride,padding,kernel", [(1, 0, 5), (2, 1, 3), (3, 2, 4), (1, 1, (3, 2))])
def test_conv_matches_torch(cpu_backend, rng, stride, padding, kernel, im2col):
    layer = Conv2D(3, 4, kernel, stride=stride, padding=padding, rng=7, im2col=im2col)
    w, b = layer.params["weight"].copy(), layer.params["bias"].copy()
    x = rng.standard_normal((2, 3, 9, 8))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    grad_out = rng.standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(grad_out))
    out, grad_in, grads = _run(layer, x, grad_out, cpu_backend)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_in, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["bias"], tb.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,fn,kernel,stride", [
    (MaxPool2D, F.max_pool2d, 2, None), (MaxPool2D, F.max_pool2d, 3, 2),
    (AvgPool2D, F.avg_pool2d, 2, None), (AvgPool2D, F.avg_pool2d, 3, 1)])
def test_pool_matches_torch(cpu_backend, rng, cls, fn, kernel, stride):
    x = rng.standard_normal((2, 3, 8, 9))
    tx = torch.tensor(x, requires_grad=True)
    tout = fn(tx, kernel, stride)
    grad_out = rng.standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(grad_out))
    out, grad_in, _ = _run(cls(kernel, stride), x, grad_out, cpu_backend)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad_in, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_dense_and_sigmoid_match_torch(cpu_backend, rng):
    layer = Dense(7, 3, rng=2)
    w, b = layer.params["weight"].copy(), layer.params["bias"].copy()
    x = rng.standard_normal((5, 7))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.sigmoid(tx @ tw + tb)
    grad_out = rng.standard_normal((5, 3))
    tout.backward(torch.tensor(grad_out))
    layer.to(cpu_backend, dtype="float64")
    sigmoid = Sigmoid()
    out = sigmoid(layer(cpu_backend.asarray(x, "float64")))
    grad_in = layer.backward(sigmoid.backward(cpu_backend.asarray(grad_out, "float64")))
    np.testing.assert_allclose(to_numpy(out), tout.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(grad_in), tx.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(layer.grads["weight"]), tw.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(layer.grads["bias"]), tb.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_losses_match_torch(cpu_backend, rng):
    probs = rng.uniform(0.05, 0.95, (6, 1))
    target = (rng.random((6, 1)) > 0.5).astype(float)
    logits = rng.standard_normal((6, 10)) * 4
    labels = rng.integers(0, 10, 6)
    cases = [
        (MSELoss(), probs, target, lambda o, y: 0.5 * ((o - y) ** 2).sum() / o.shape[0]),
        (BCELoss(), probs, target, lambda o, y: F.binary_cross_entropy(o, y)),
        (SoftmaxCrossEntropyLoss(), logits, labels, lambda o, y: F.cross_entropy(o, y)),
    ]
    for loss, output, y, reference in cases:
        to = torch.tensor(output, requires_grad=True)
        tvalue = reference(to, torch.tensor(y))
        tvalue.backward()
        value = loss(cpu_backend.asarray(output, "float64"), cpu_backend.asarray(y, None if y.dtype.kind == "i" else "float64"))
        assert float(to_numpy(value)) == pytest.approx(float(tvalue.detach()), rel=1e-12)
        np.testing.assert_allclose(to_numpy(loss.backward()), to.grad.numpy(), rtol=1e-10, atol=1e-15)
