"""The layer options against torch.nn.functional through torch.autograd (float64): pooling with
padding, ceil_mode and pairs, the global average pool, LeakyReLU, GELU (tanh form) and batch
normalisation without affine parameters, in training and in inference."""

import numpy as np
import pytest

from xpcnn import GELU, AvgPool2D, BatchNorm1D, BatchNorm2D, GlobalAvgPool2D, LeakyReLU, MaxPool2D, Sequential, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _check(layer, x, reference, backend, rng, rtol=1e-12):
    """layer(x) and its input gradient for a random G against reference(x) and torch.autograd."""
    tx = torch.tensor(x, requires_grad=True)
    tout = reference(tx)
    grad_out = rng.standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(grad_out))
    out = layer(backend.asarray(x, "float64"))
    grad_in = layer.backward(backend.asarray(grad_out, "float64"))
    np.testing.assert_allclose(to_numpy(out), tout.detach().numpy(), rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(to_numpy(grad_in), tx.grad.numpy(), rtol=rtol, atol=1e-14)


# (input H, W), kernel, stride, padding, ceil_mode
POOLS = [
    ((8, 9), 3, 2, 1, False), ((7, 7), 2, 2, 1, True), ((8, 7), 3, 2, 1, True), ((9, 8), (3, 2), (2, 1), (1, 1), False),
    ((7, 10), (2, 4), (3, 3), (1, 2), True), ((5, 6), 3, 1, 1, True), ((3, 3), 4, 2, 0, True), ((10, 9), 5, 3, 2, True),
]


@pytest.mark.parametrize("windows", ["views", "im2col"])
@pytest.mark.parametrize("maximum", [True, False], ids=["max", "avg"])
@pytest.mark.parametrize("size,kernel,stride,padding,ceil_mode", POOLS,
                         ids=[f"{h}x{w}-k{k}-s{s}-p{p}" + ("-ceil" if c else "") for (h, w), k, s, p, c in POOLS])
def test_pool_options_match_torch(cpu_backend, rng, size, kernel, stride, padding, ceil_mode, maximum, windows):
    layer = (MaxPool2D if maximum else AvgPool2D)(kernel, stride, padding=padding, ceil_mode=ceil_mode)
    layer.windows = windows
    function = F.max_pool2d if maximum else F.avg_pool2d
    _check(layer, rng.standard_normal((2, 3, *size)),
           lambda tx: function(tx, kernel, stride, padding=padding, ceil_mode=ceil_mode), cpu_backend, rng)


def test_global_average_pool_matches_torch(cpu_backend, rng):
    _check(GlobalAvgPool2D(), rng.standard_normal((2, 3, 5, 4)),
           lambda tx: torch.flatten(F.adaptive_avg_pool2d(tx, 1), 1), cpu_backend, rng)


@pytest.mark.parametrize("slope", [0.01, 0.2, 1.5])
def test_leaky_relu_matches_torch(cpu_backend, rng, slope):
    x = rng.standard_normal((3, 2, 4, 4))
    x[0, 0, 0, :2] = 0.0  # torch's derivative at 0 is the slope: ours too
    _check(LeakyReLU(slope), x, lambda tx: F.leaky_relu(tx, slope), cpu_backend, rng, rtol=1e-15)


def test_gelu_matches_torch(cpu_backend, rng):
    x = rng.standard_normal((3, 2, 4, 4)) * 3
    _check(GELU(), x, lambda tx: F.gelu(tx, approximate="tanh"), cpu_backend, rng)


@pytest.mark.parametrize("cls,shape", [(BatchNorm2D, (4, 3, 3, 2)), (BatchNorm1D, (6, 4))], ids=["2d", "1d"])
def test_batchnorm_without_affine_matches_torch(cpu_backend, rng, cls, shape):
    """Three training steps (output, input gradient, running statistics after each), then inference
    with the running statistics: F.batch_norm with weight=None and bias=None."""
    channels = shape[1]
    model = Sequential(cls(channels, momentum=0.2, affine=False)).to(cpu_backend, dtype="float64")
    running_mean, running_var = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        _check(model, x, lambda tx: F.batch_norm(tx, running_mean, running_var, None, None, training=True,
                                                 momentum=0.2, eps=1e-5), cpu_backend, rng, rtol=1e-10)
        state = model.state_dict()
        np.testing.assert_allclose(state["0.running_mean"], running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state["0.running_var"], running_var.numpy(), rtol=1e-12)
    assert dict(model.named_parameters()) == {} and model.grads == {}
    x = rng.standard_normal(shape)
    with model.inference():
        out = model(cpu_backend.asarray(x, "float64"))
    expected = F.batch_norm(torch.tensor(x), running_mean, running_var, None, None, training=False, eps=1e-5)
    np.testing.assert_allclose(to_numpy(out), expected.numpy(), rtol=1e-12, atol=1e-12)
