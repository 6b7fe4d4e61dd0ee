"""The pooling options (padding, ceil_mode, pairs), GlobalAvgPool2D, LeakyReLU, GELU and BatchNorm's
affine=False: against a naive window-by-window loop with PyTorch's rules, finite differences in
float64 on every backend, the spec tokens, JSON records and model files (old records included).
The torch.nn.functional references are in test_options_reference.py."""

from __future__ import annotations

import json
import math

import array_api_compat
import numpy as np
import pytest
from helpers import normal_array, xp_assert_close

from xpcnn import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    Sequential,
    assert_gradients_ok,
    to_numpy,
)
from xpcnn.nn.base import build_layer, state_shapes
from xpcnn.nn.spec import SPEC_HELP, SpecError, architecture_network, parse_spec


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def torch_output_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooling_output_shape (dilation 1), written as it is there."""
    out = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def naive_pool(x, g, kernel, stride, padding, ceil_mode, maximum):
    """PyTorch's CPU kernels, window by window: each window clipped to the input; the max and the
    gradient to its first maximum (row by row), or the sum divided by the cells the window covers
    within input + padding (count_include_pad=True), the gradient spread likewise."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride or kernel), _pair(padding)
    n, c, h, w = x.shape
    out_h, out_w = torch_output_size(h, kh, sh, ph, ceil_mode), torch_output_size(w, kw, sw, pw, ceil_mode)
    out, grad = np.zeros((n, c, out_h, out_w)), np.zeros_like(x)
    for r in range(out_h):
        for t in range(out_w):
            top, left = r * sh - ph, t * sw - pw
            bottom, right = min(top + kh, h + ph), min(left + kw, w + pw)
            size = (bottom - top) * (right - left)
            rows, cols = slice(max(top, 0), min(bottom, h)), slice(max(left, 0), min(right, w))
            for b in range(n):
                for ch in range(c):
                    window = x[b, ch, rows, cols]
                    if maximum:
                        out[b, ch, r, t] = window.max()
                        i, j = divmod(int(np.argmax(window)), window.shape[1])
                        grad[b, ch, rows.start + i, cols.start + j] += g[b, ch, r, t]
                    else:
                        out[b, ch, r, t] = window.sum() / size
                        grad[b, ch, rows, cols] += g[b, ch, r, t] / size
    return out, grad


# (input H, W), kernel, stride, padding, ceil_mode
POOL_OPTIONS = [
    ((7, 7), 3, 2, 1, False), ((5, 6), 2, 2, 1, False), ((7, 8), 3, 2, 0, True),
    ((6, 5), 3, 2, 1, True), ((5, 5), 2, 2, 1, True), ((8, 7), (3, 2), (2, 1), (1, 0), False),
    ((7, 9), (2, 3), (3, 2), (1, 1), True), ((3, 3), 4, 2, 0, True), ((9, 6), 4, 3, 2, True),
]
POOL_IDS = [f"{h}x{w}-k{k}-s{s}-p{p}" + ("-ceil" if c else "") for (h, w), k, s, p, c in POOL_OPTIONS]


@pytest.mark.parametrize("windows", ["views", "im2col"])
@pytest.mark.parametrize("maximum", [True, False], ids=["max", "avg"])
@pytest.mark.parametrize("size,kernel,stride,padding,ceil_mode", POOL_OPTIONS, ids=POOL_IDS)
def test_pools_with_options_match_torchs_rules(backend, rng, size, kernel, stride, padding, ceil_mode, maximum,
                                               windows):
    """Forward and backward against the naive loop, on inputs full of ties (and of negative values:
    a padded cell must never win a max) on every backend, both ways of reading the windows."""
    host = np.round(rng.standard_normal((2, 2, *size)) * 2) - 1.0
    layer = (MaxPool2D if maximum else AvgPool2D)(kernel, stride, padding=padding, ceil_mode=ceil_mode)
    layer.windows = windows
    x = backend.asarray(host, "float64")
    out = layer(x)
    g_host = rng.standard_normal(tuple(out.shape))
    expected_out, expected_grad = naive_pool(host, g_host, kernel, stride, padding, ceil_mode, maximum)
    assert layer.infer_shape(tuple(host.shape[1:])) == tuple(expected_out.shape[1:])
    on_backend = dict(xp=backend.xp, device=backend.device, dtype="float64", rtol=1e-14, atol=1e-14)
    xp_assert_close(out, expected_out, **on_backend)
    xp_assert_close(layer.backward(backend.asarray(g_host, "float64")), expected_grad, **on_backend)


GRADCHECK_POOLS = [((5, 5), 3, 2, 1, False), ((5, 6), 3, 2, 1, True), ((5, 4), (2, 3), (1, 2), (1, 1), True)]


@pytest.mark.parametrize("windows", ["views", "im2col"])
@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D], ids=["max", "avg"])
@pytest.mark.parametrize("size,kernel,stride,padding,ceil_mode", GRADCHECK_POOLS,
                         ids=["k3s2p1", "k3s2p1-ceil", "k2x3s1x2p1-ceil"])
def test_pool_option_gradients(backend, rng, size, kernel, stride, padding, ceil_mode, cls, windows):
    layer = cls(kernel, stride, padding=padding, ceil_mode=ceil_mode)
    layer.windows = windows
    assert_gradients_ok(layer, normal_array(backend, rng, (1, 2, *size)), max_elements=24)


@pytest.mark.parametrize("make,shape", [
    (GlobalAvgPool2D, (2, 3, 3, 4)), (LeakyReLU, (3, 2, 2, 3)), (lambda: LeakyReLU(0.2), (3, 5)), (GELU, (3, 2, 2, 3)),
    (lambda: BatchNorm2D(3, affine=False), (3, 3, 2, 2)), (lambda: BatchNorm1D(4, affine=False), (5, 4)),
], ids=["gap", "leakyrelu", "leakyrelu0.2", "gelu", "bn2d-noaffine", "bn1d-noaffine"])
def test_new_layer_gradients(backend, rng, make, shape):
    results = assert_gradients_ok(make(), normal_array(backend, rng, shape), max_elements=24)
    assert [r.name for r in results] == ["input"]  # none of them has parameters


def test_global_average_pool(backend, rng):
    x = normal_array(backend, rng, (2, 3, 4, 5))
    layer = GlobalAvgPool2D()
    out = layer(x)
    host = to_numpy(x)
    on_backend = dict(xp=backend.xp, device=backend.device, dtype="float64", rtol=1e-14, atol=1e-15)
    xp_assert_close(out, host.mean(axis=(2, 3)), **on_backend)
    g = rng.standard_normal((2, 3))
    xp_assert_close(layer.backward(backend.asarray(g, "float64")),
                    np.broadcast_to(g[:, :, None, None] / 20, host.shape), **on_backend)
    assert layer.infer_shape((3, 4, 5)) == (3,)
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D: expected input of shape \(N, C, H, W\), got shape "
                                         r"\(N, 12\)"):
        layer.infer_shape((12,))


def test_leaky_relu_and_gelu_values(backend):
    z = np.array([-3.0, -0.5, 0.0, 0.25, 2.0])
    x = backend.asarray(z, "float64")
    on_backend = dict(xp=backend.xp, device=backend.device, dtype="float64")
    leaky = LeakyReLU(0.2)
    xp_assert_close(leaky(x), np.where(z > 0, z, 0.2 * z), rtol=0, **on_backend)
    xp_assert_close(leaky.backward(backend.asarray(np.ones(5), "float64")), np.where(z > 0, 1.0, 0.2), rtol=0,
                    **on_backend)
    gelu = GELU()
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (z + 0.044715 * z ** 3))
    xp_assert_close(gelu(x), 0.5 * z * (1 + t), rtol=1e-12, **on_backend)
    slope = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)
    xp_assert_close(gelu.backward(backend.asarray(np.ones(5), "float64")), slope, rtol=1e-12, **on_backend)


def test_float32_stays_float32(backend, rng):
    x = normal_array(backend, rng, (2, 2, 5, 5), "float32")
    for layer in [MaxPool2D(3, 2, padding=1, ceil_mode=True), AvgPool2D((2, 3), (2, 1), padding=1, ceil_mode=True),
                  GlobalAvgPool2D(), LeakyReLU(), GELU(), BatchNorm2D(2, affine=False).to(backend, dtype="float32")]:
        out = layer(x)
        grad = layer.backward(backend.xp.ones_like(out))
        assert out.dtype == grad.dtype == x.dtype, layer.name
        assert array_api_compat.device(out) == array_api_compat.device(grad) == backend.device, layer.name


def test_batchnorm_without_affine(backend, rng):
    layer = BatchNorm2D(3, affine=False).to(backend, dtype="float64")
    assert layer.params == {} and set(layer.buffers) == {"running_mean", "running_var"}
    x = normal_array(backend, rng, (4, 3, 2, 2))
    out = to_numpy(layer(x))
    host = to_numpy(x)
    mean, var = host.mean(axis=(0, 2, 3), keepdims=True), host.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, (host - mean) / np.sqrt(var + 1e-5), rtol=1e-12, atol=1e-12)
    assert layer.backward(backend.xp.ones_like(layer(x)), input_grad=False) is None and layer.grads == {}
    model = Sequential(layer)
    assert dict(model.named_parameters()) == {} and set(model.state_dict()) == {"0.running_mean", "0.running_var"}


# -- records, specs, model files --------------------------------------------------------------------------------------

def test_records_keep_their_old_form_and_record_the_new_options():
    assert MaxPool2D(2).config() == {"kernel_size": (2, 2), "stride": 2}
    assert AvgPool2D(3, 1).config() == {"kernel_size": (3, 3), "stride": 1}
    assert MaxPool2D((2, 3), (1, 2), padding=(1, 0), ceil_mode=True).config() == \
        {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 0), "ceil_mode": True}
    assert MaxPool2D((2, 3)).config() == {"kernel_size": (2, 3), "stride": (2, 3)}  # stride: the kernel, as torch
    assert AvgPool2D(3, 2, padding=1).config() == {"kernel_size": (3, 3), "stride": 2, "padding": 1}
    assert BatchNorm2D(4).config() == {"channels": 4, "eps": 1e-5, "momentum": 0.1}
    assert BatchNorm1D(4, affine=False).config() == {"features": 4, "eps": 1e-5, "momentum": 0.1, "affine": False}
    assert LeakyReLU().config() == {"negative_slope": 0.01} and GELU().config() == {}
    assert GlobalAvgPool2D().config() == {}


def test_old_records_build_the_old_layers():
    pool = build_layer({"type": "MaxPool2D", "kernel_size": [2, 2], "stride": 2})
    assert (pool.ph, pool.pw, pool.ceil_mode) == (0, 0, False)
    bn = build_layer({"type": "BatchNorm2D", "channels": 3, "eps": 1e-5, "momentum": 0.1})
    assert bn.affine and set(bn.params) == {"weight", "bias"}
    assert state_shapes({"type": "BatchNorm1D", "features": 5}) == \
        {"weight": (5,), "bias": (5,), "running_mean": (5,), "running_var": (5,)}
    assert state_shapes({"type": "BatchNorm1D", "features": 5, "affine": False}) == \
        {"running_mean": (5,), "running_var": (5,)}
    with pytest.raises(TypeError, match="BatchNorm2D: affine must be True or False, got 1"):
        state_shapes({"type": "BatchNorm2D", "channels": 5, "affine": 1})


SPEC = "conv4k3p1-bnnoaffine-leakyrelu0.2-maxpool3s2p1c-conv4k3p1-bn-gelu-avgpool2x3s1x2p1x0c-gap-dense"


def test_spec_tokens_build_the_options():
    model = parse_spec(SPEC, (2, 9, 8), 5, seed=1)
    names = [layer.name for layer in model.layers]
    assert names == ["Conv2D", "BatchNorm2D", "LeakyReLU", "MaxPool2D", "Conv2D", "BatchNorm2D", "GELU", "AvgPool2D",
                     "GlobalAvgPool2D", "Dense"]
    conv, bn, leaky, pool, conv2, _, _, avg = model.layers[:8]
    assert not conv.bias and not bn.affine and leaky.negative_slope == 0.2  # bnnoaffine cancels the bias too
    assert not conv2.bias and model.layers[5].affine
    assert (pool.kh, pool.kw, pool.sh, pool.sw, pool.ph, pool.pw, pool.ceil_mode) == (3, 3, 2, 2, 1, 1, True)
    assert (avg.kh, avg.kw, avg.sh, avg.sw, avg.ph, avg.pw, avg.ceil_mode) == (2, 3, 1, 2, 1, 0, True)
    # 9x8 -> maxpool k3 s2 p1 ceil: 5x4 -> avgpool k2x3 s1x2 p1x0 ceil: 6x2 -> gap: (4,)
    assert model.infer_shape((2, 9, 8)) == (5,) and model.layers[-1].in_features == 4
    assert LeakyReLU().negative_slope == parse_spec("leakyrelu-flatten-dense", (1, 2, 2), 3).layers[0].negative_slope
    old = parse_spec("maxpool2-avgpool2s1-flatten-dense", (1, 6, 6), 3).layers
    assert old[0].config() == {"kernel_size": (2, 2), "stride": 2} and old[1].config() == {"kernel_size": (2, 2),
                                                                                            "stride": 1}
    for usage in ["maxpool<K>[s<S>][p<P>][c]", "avgpool<K>[s<S>][p<P>][c]", "gap", "gelu", "leakyrelu", "bnnoaffine"]:
        assert usage in SPEC_HELP


@pytest.mark.parametrize("spec,message", [
    ("maxpool2p2-flatten-dense", "token 1 'maxpool2p2': MaxPool2D: padding 2x2 must be at most half the kernel 2x2"),
    ("avgpool3x2p1x2-flatten-dense", "token 1 'avgpool3x2p1x2': AvgPool2D: padding 1x2 must be at most half"),
    ("maxpool9p1-flatten-dense", "MaxPool2D: kernel 9x9 does not fit input shape (N, 1, 6, 6) with padding 1x1"),
    ("gap-gap-dense", "token 2 'gap': GlobalAvgPool2D: expected input of shape (N, C, H, W), got shape (N, 1)"),
    ("leakyrelu0.2.1-flatten-dense", "token 1 'leakyrelu0.2.1': not a layer token"),
    ("maxpool2cc-flatten-dense", "token 1 'maxpool2cc': not a layer token"),
])
def test_bad_option_specs_name_the_token(spec, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec, (1, 6, 6), 3)
    assert message in str(info.value)


@pytest.mark.parametrize("make,message", [
    (lambda: MaxPool2D(3, padding=2), "MaxPool2D: padding 2x2 must be at most half the kernel 3x3"),
    (lambda: AvgPool2D(2, ceil_mode=1), "AvgPool2D: ceil_mode must be True or False, got 1"),
    (lambda: AvgPool2D(2, padding=-1), "AvgPool2D: padding must be >= 0"),
    (lambda: MaxPool2D(2, stride=(1, 0)), "MaxPool2D: stride must be >= 1"),
    (lambda: BatchNorm2D(2, affine="yes"), "BatchNorm2D: affine must be True or False, got 'yes'"),
    (lambda: LeakyReLU("0.1"), "LeakyReLU: negative_slope must be a finite number"),
])
def test_bad_options_are_one_line_errors(make, message):
    with pytest.raises((TypeError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        make()
    assert "\n" not in str(info.value)


def test_a_kernel_larger_than_the_padded_input_is_refused_in_forward(rng):
    with pytest.raises(ValueError, match=r"MaxPool2D: kernel 5x5 is larger than the padded input 4x4 "
                                         r"\(input shape \(1, 1, 2, 2\)\)"):
        MaxPool2D(5, padding=1)(rng.standard_normal((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"AvgPool2D: kernel 4x4 is larger than the input 3x3"):
        AvgPool2D(4)(rng.standard_normal((1, 1, 3, 3)))
    assert AvgPool2D(4, 2, ceil_mode=True)(rng.standard_normal((1, 1, 3, 3))).shape == (1, 1, 1, 1)  # as torch


def test_records_round_trip_through_json_and_model_files(tmp_path, rng):
    model = parse_spec(SPEC, (2, 9, 8), 5, seed=1)
    text = json.dumps(model.config())
    rebuilt = architecture_network(text, (2, 9, 8), 5, seed=1)
    assert rebuilt.config() == model.config()
    model.save(tmp_path / "options.npz")
    loaded = Sequential.load(tmp_path / "options.npz")
    assert loaded.config() == model.config()
    x = rng.standard_normal((2, 2, 9, 8))
    with model.inference(), loaded.inference():
        np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert "1.weight" not in model.state_dict() and "5.weight" in model.state_dict()


def test_the_options_train_under_jax_jit_as_eagerly():
    """A network of every new layer and option trained one step under jax.jit and eagerly:
    the same losses and state (float64)."""
    pytest.importorskip("jax")
    import dataclasses

    from xpcnn import data, resolve
    from xpcnn.training import PRESETS, Trainer
    from xpcnn.training.executors import JaxJitStep

    def train(executor):
        model = parse_spec("conv2k3p1-bnnoaffine-leakyrelu0.2-maxpool3s2p1c-bn-gelu-avgpool2s2p1c-gap-dense",
                           (1, 28, 28), 10, seed=3)
        config = dataclasses.replace(PRESETS["default"], dtype="float64", epochs=1, batch_size=40, optimizer="momentum",
                                     lr=0.05)
        with Trainer(config, resolve("jax", "cpu"), model=model, executor=executor) as trainer:
            trainer.fit(data.load_embedded().train.take(40))
        return trainer

    compiled, eager = train(JaxJitStep()), train(None)
    np.testing.assert_allclose(compiled.state.step_losses, eager.state.step_losses, rtol=1e-11)
    for name, value in eager.model.state_dict().items():
        np.testing.assert_allclose(compiled.model.state_dict()[name], value, rtol=1e-11, atol=1e-13, err_msg=name)
