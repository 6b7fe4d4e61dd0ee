"""Outputs and gradients against torch.autograd on the same weights (float64)."""

import numpy as np
import pytest

from xpcnn import AvgPool2D, BCELoss, Conv2D, Dense, MaxPool2D, MSELoss, Sigmoid, SoftmaxCrossEntropyLoss, to_numpy

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
        target = cpu_backend.asarray(y, None if y.dtype.kind == "i" else "float64")
        value = loss(cpu_backend.asarray(output, "float64"), target)
        assert float(to_numpy(value)) == pytest.approx(float(tvalue.detach()), rel=1e-12)
        np.testing.assert_allclose(to_numpy(loss.backward()), to.grad.numpy(), rtol=1e-10, atol=1e-15)


# -- regularisation layers (xpcnn.nn.dropout, xpcnn.nn.batchnorm) ----------------------------------------------------
@pytest.mark.parametrize("kind,shape,eps,momentum", [("2d", (4, 3, 5, 6), 1e-5, 0.1), ("2d", (2, 2, 3, 3), 1e-3, 0.35),
                                                      ("1d", (8, 5), 1e-5, 0.1), ("1d", (3, 4), 0.01, 0.9)])
def test_batchnorm_matches_torch(cpu_backend, rng, kind, shape, eps, momentum):
    """Three training steps (outputs, input/gamma/beta gradients, running mean and unbiased running
    variance after each), then inference with the running statistics: torch.nn.BatchNorm1d/2d."""
    from xpcnn import Sequential
    from xpcnn.nn import BatchNorm1D, BatchNorm2D

    channels = shape[1]
    layer = (BatchNorm2D if kind == "2d" else BatchNorm1D)(channels, eps=eps, momentum=momentum)
    reference = (torch.nn.BatchNorm2d if kind == "2d" else torch.nn.BatchNorm1d)(channels, eps=eps, momentum=momentum)
    reference = reference.double()
    gamma, beta = rng.uniform(0.5, 2.0, channels), rng.standard_normal(channels)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(gamma))
        reference.bias.copy_(torch.tensor(beta))
    layer.params = {"weight": gamma.copy(), "bias": beta.copy()}
    model = Sequential(layer).to(cpu_backend, dtype="float64")
    reference.train()
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        grad_out = rng.standard_normal(shape)
        tx = torch.tensor(x, requires_grad=True)
        reference.zero_grad()
        tout = reference(tx)
        tout.backward(torch.tensor(grad_out))
        out = model(cpu_backend.asarray(x, "float64"))
        grad_in = model.backward(cpu_backend.asarray(grad_out, "float64"))
        np.testing.assert_allclose(to_numpy(out), tout.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_numpy(grad_in), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(to_numpy(layer.grads["weight"]), reference.weight.grad.numpy(), rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(to_numpy(layer.grads["bias"]), reference.bias.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_numpy(layer.buffers["running_mean"]), reference.running_mean.numpy(), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(to_numpy(layer.buffers["running_var"]), reference.running_var.numpy(), rtol=1e-12)
    reference.eval()
    x = rng.standard_normal(shape)
    with model.inference():
        out = model(cpu_backend.asarray(x, "float64"))
    with torch.no_grad():
        np.testing.assert_allclose(to_numpy(out), reference(torch.tensor(x)).numpy(), rtol=1e-12, atol=1e-12)
    state = model.state_dict()
    np.testing.assert_allclose(state["0.running_var"], reference.state_dict()["running_var"].numpy(), rtol=1e-12)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_matches_the_masked_formula(cpu_backend, rng, p):
    """torch's dropout draws its own masks, so the reference is x * mask / (1 - p) with the same mask
    (noise >= p) through torch.autograd; in eval mode torch's Dropout and ours are both the identity."""
    from xpcnn import Sequential
    from xpcnn.nn import Dropout

    x, noise, grad_out = rng.standard_normal((6, 3, 4)), rng.random((6, 3, 4)), rng.standard_normal((6, 3, 4))
    tx = torch.tensor(x, requires_grad=True)
    tout = tx * torch.tensor(noise >= p, dtype=torch.float64) / (1 - p)
    tout.backward(torch.tensor(grad_out))
    model = Sequential(Dropout(p)).to(cpu_backend, dtype="float64")
    model.set_noise({"0.noise": cpu_backend.asarray(noise, "float64")})
    out = model(cpu_backend.asarray(x, "float64"))
    np.testing.assert_allclose(to_numpy(out), tout.detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(to_numpy(model.backward(cpu_backend.asarray(grad_out, "float64"))), tx.grad.numpy(),
                               rtol=1e-15)
    with model.inference():
        np.testing.assert_array_equal(to_numpy(model(cpu_backend.asarray(x, "float64"))),
                                      torch.nn.Dropout(p).eval()(torch.tensor(x)).numpy())
