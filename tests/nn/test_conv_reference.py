"""Conv2D's options against torch.nn.functional.conv2d: outputs and the three gradients (input,
weight, bias) through torch.autograd, float64, on the same weights, for strides, paddings and
dilations as pairs, "same", groups and depthwise, with and without a bias, both im2col ways."""

import numpy as np
import pytest

from xpcnn import Conv2D, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (in, out, kernel, stride, padding, dilation, groups, input height x width, bias): bias on and off in turn
CASES = {
    "stride-pair": (3, 4, 3, (2, 1), 1, 1, 1, (7, 6), True),
    "padding-pair": (2, 3, (3, 2), 1, (2, 0), 1, 1, (5, 6), False),
    "kernel-stride-padding-pairs": (2, 4, (3, 1), (2, 1), (1, 0), 1, 1, (8, 5), True),
    "dilation": (2, 3, 3, 1, 2, 2, 1, (7, 7), False),
    "dilation-pair-stride": (3, 2, (2, 3), 2, (1, 2), (3, 2), 1, (9, 8), True),
    "same": (2, 3, 3, 1, "same", 1, 1, (5, 6), False),
    "same-rectangular-dilated": (2, 2, (3, 5), 1, "same", (2, 1), 1, (6, 7), True),
    "same-stride2": (2, 3, 3, 2, "same", 1, 1, (7, 6), False),
    "same-stride-pair-dilated": (2, 2, (2, 3), (3, 2), "same", (2, 2), 1, (8, 7), True),
    "groups2": (4, 6, 3, 1, 1, 1, 2, (5, 5), False),
    "groups3-strided-dilated": (6, 3, (3, 2), (2, 1), (2, 1), (2, 1), 3, (8, 6), True),
    "depthwise": (3, 3, 3, 1, 1, 1, 3, (6, 5), False),
    "depthwise-multiplier": (2, 6, (3, 1), 2, "same", (1, 1), 2, (7, 6), True),
    "pointwise-groups": (4, 8, 1, 1, 0, 1, 4, (3, 4), False),
}


def _torch_padding(padding, kernel, dilation, stride):
    """torch takes "same" with stride 1 only; xpcnn's "same" is d(k-1)/2 per axis with any stride."""
    if padding != "same":
        return padding
    if stride == 1:
        return "same"
    kernel, dilation = (np.broadcast_to(np.asarray(v), 2) for v in (kernel, dilation))
    return tuple(int(d * (k - 1) // 2) for d, k in zip(dilation, kernel))


@pytest.mark.parametrize("im2col", ["slices", "gather"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv_options_match_torch(cpu_backend, rng, case, im2col):
    if im2col == "slices" and cpu_backend.name == "jax":  # eager jax compiles each of the many slices: ~2 s a case
        pytest.skip("jax's slices are checked by finite differences (test_conv_options.py); here its gather")
    in_channels, out_channels, kernel, stride, padding, dilation, groups, (h, w), bias = CASES[case]
    layer = Conv2D(in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, bias=bias, init="glorot", rng=7, im2col=im2col)
    weight = layer.params["weight"].copy()
    assert weight.shape[1] == in_channels // groups
    bias_values = rng.standard_normal(out_channels) if bias else None
    if bias:
        layer.params["bias"] = bias_values.copy()
    x = rng.standard_normal((2, in_channels, h, w))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    tb = torch.tensor(bias_values, requires_grad=True) if bias else None
    tout = F.conv2d(tx, tw, tb, stride=stride, padding=_torch_padding(padding, kernel, dilation, stride),
                    dilation=dilation, groups=groups)
    grad_out = rng.standard_normal(tuple(tout.shape))
    tout.backward(torch.tensor(grad_out))

    layer.to(cpu_backend, dtype="float64")
    assert layer.infer_shape((in_channels, h, w)) == tuple(tout.shape[1:])
    out = layer(cpu_backend.asarray(x, "float64"))
    grad_in = layer.backward(cpu_backend.asarray(grad_out, "float64"))
    np.testing.assert_allclose(to_numpy(out), tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(grad_in), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.grads["weight"]), tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(to_numpy(layer.grads["bias"]), tb.grad.numpy(), rtol=1e-12, atol=1e-12)
    else:
        assert "bias" not in layer.grads


def test_same_padding_with_stride_one_is_torchs(rng):
    """With stride 1, "same" is PyTorch's padding="same" for every odd span, pairs included."""
    for kernel, dilation in ((3, 1), (5, 2), ((3, 1), (1, 1)), ((2, 3), (2, 3)), (1, 4)):
        layer = Conv2D(2, 2, kernel, padding="same", dilation=dilation, bias=False, rng=1)
        x = rng.standard_normal((1, 2, 6, 7))
        expected = F.conv2d(torch.tensor(x), torch.tensor(layer.params["weight"]), padding="same", dilation=dilation)
        np.testing.assert_allclose(layer(x), expected.numpy(), rtol=1e-12, atol=1e-12)
