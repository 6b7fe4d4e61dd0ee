"""Conv2D's options: padding "same", pairs (kernel, stride, padding, dilation), dilation, groups
(depthwise): finite differences on every backend, im2col with dilation and pair strides against
naive loops, the spec grammar's new forms, one-line errors, records and checkpoints.
The torch.nn.functional.conv2d references are in test_conv_reference.py."""

import json

import numpy as np
import pytest
from helpers import normal_array, xp_assert_close

from xpcnn import Conv2D, Flatten, Sequential, to_numpy
from xpcnn.backends import device_name
from xpcnn.nn.base import build_layer, state_shapes
from xpcnn.nn.im2col import channels_first, col2im, conv_columns, gather_columns, gather_index, im2col, output_size
from xpcnn.nn.spec import SPEC_HELP, SpecError, parse_spec
from xpcnn.tools.gradcheck import assert_gradients_ok

# -- finite differences in float64 on every backend -------------------------------------------------------------------

GRADIENT_CASES = {
    "pairs": dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), shape=(2, 2, 6, 5)),
    "same-s2": dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding="same", shape=(2, 2, 5, 6)),
    "dilation2": dict(in_channels=2, out_channels=2, kernel_size=3, padding=2, dilation=2, shape=(1, 2, 6, 5)),
    "dilation-pair": dict(in_channels=1, out_channels=2, kernel_size=(2, 3), dilation=(3, 1), shape=(2, 1, 6, 5)),
    "groups2": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2, shape=(2, 4, 4, 5)),
    "depthwise": dict(in_channels=3, out_channels=6, kernel_size=3, padding=1, groups=3, shape=(2, 3, 5, 4)),
    "mix": dict(in_channels=4, out_channels=2, kernel_size=(3, 2), stride=(1, 2), padding="same", dilation=(2, 2),
                groups=2, bias=False, shape=(2, 4, 6, 7)),
}


@pytest.mark.parametrize("case,im2col", [(case, "slices") for case in GRADIENT_CASES]
                         + [("groups2", "gather"), ("mix", "gather")])
def test_conv_option_gradients(backend, rng, case, im2col):
    case = dict(GRADIENT_CASES[case])
    shape = case.pop("shape")
    conv = Conv2D(**case, rng=3, im2col=im2col)
    assert_gradients_ok(conv, normal_array(backend, rng, shape))


# dE/dX two ways: col2im of f^T.G (any stride) and, with stride 1, the "full" correlation of the padded G with the
# flipped filters; Conv2D picks one by size (_full_correlation), both are checked here on the same layers.
INPUT_GRAD_CASES = {
    "same": dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, shape=(2, 2, 5, 6)),
    "valid-5x5": dict(in_channels=2, out_channels=2, kernel_size=5, shape=(2, 2, 7, 8)),
    "rect-dilated": dict(in_channels=2, out_channels=2, kernel_size=(3, 2), padding=(2, 1), dilation=(1, 2),
                         shape=(1, 2, 5, 6)),
    "groups2": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2, shape=(2, 4, 4, 5)),
    "depthwise-nb": dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, groups=3, bias=False,
                         shape=(2, 3, 4, 4)),
}


@pytest.mark.parametrize("way", ["full", "col2im"])
@pytest.mark.parametrize("case", INPUT_GRAD_CASES)
def test_conv_input_gradient_both_ways(backend, rng, case, way):
    case = dict(INPUT_GRAD_CASES[case])
    shape = case.pop("shape")
    conv = Conv2D(**case, rng=3)
    conv._input_grad = way
    assert_gradients_ok(conv, normal_array(backend, rng, shape))


def test_conv_input_gradient_ways_agree_and_auto_picks_by_size(rng):
    for case in INPUT_GRAD_CASES.values():
        case = dict(case)
        x = rng.standard_normal(case.pop("shape"))
        grads = []
        for way in ("full", "col2im"):
            conv = Conv2D(**case, rng=3)
            conv._input_grad = way
            out = conv(x)
            grads.append(conv.backward(np.cos(out)))
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    same, wide, strided = Conv2D(8, 8, 3, padding=1), Conv2D(2, 16, 3, padding=1), Conv2D(8, 8, 3, 2, padding=1)
    # (out * H*W) vs 2 * (C * out_h*out_w): 8*64 <= 2*8*64 (full); 16*64 > 2*2*64 (col2im); stride 2: col2im
    assert same._full_correlation((8, 2, 10, 10), 8, 8)
    assert not wide._full_correlation((2, 2, 10, 10), 8, 8)
    assert not strided._full_correlation((8, 2, 10, 10), 4, 4)
    assert not Conv2D(8, 8, 3, padding=3)._full_correlation((8, 2, 14, 14), 12, 12)  # p > d(k - 1)


@pytest.mark.parametrize("case", ["groups2", "dilation-pair", "same-s2"])
def test_conv_in_chunks_of_one_image(backend, rng, case):
    """COLUMN_BYTES = 1: every image's columns built, multiplied and let go on their own, forward and
    backward: still the gradients of finite differences."""
    case = dict(GRADIENT_CASES[case])
    shape = case.pop("shape")
    conv = Conv2D(**case, rng=3)
    conv.COLUMN_BYTES = 1
    assert conv._chunks(backend.xp, backend.asarray(np.zeros(shape)), 2, 2) == [(i, i + 1) for i in range(shape[0])]
    assert_gradients_ok(conv, normal_array(backend, rng, shape))


def test_conv_chunks_give_the_whole_batch_results(rng):
    x = rng.standard_normal((5, 4, 7, 6))
    results = []
    for budget in (1 << 30, 2 * 4 * 9 * 42 * 8):  # every image at once; two images a chunk (5 = 2 + 2 + 1)
        conv = Conv2D(4, 4, 3, padding=1, rng=3)
        conv.COLUMN_BYTES = budget
        out = conv(x)
        results.append([out, conv.backward(np.cos(out)), *conv.grads.values()])
    assert conv._chunks(np, x, 7, 6) == [(0, 2), (2, 4), (4, 5)]
    for whole, chunked in zip(*results):
        np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)


# -- the patches with pair strides and dilation, against naive loops --------------------------------------------------

def naive_im2col(x, kh, kw, stride, dilation, out_h, out_w):
    (sh, sw), (dh, dw) = stride, dilation
    cols = np.zeros((x.shape[0], x.shape[1], kh * kw, out_h, out_w), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for r in range(out_h):
                for s in range(out_w):
                    cols[:, :, i * kw + j, r, s] = x[:, :, r * sh + i * dh, s * sw + j * dw]
    return cols


def naive_col2im(cols, shape, kh, kw, stride, dilation):
    (sh, sw), (dh, dw) = stride, dilation
    grad = np.zeros(shape, cols.dtype)
    for i in range(kh):
        for j in range(kw):
            for r in range(cols.shape[3]):
                for s in range(cols.shape[4]):
                    grad[:, :, r * sh + i * dh, s * sw + j * dw] += cols[:, :, i * kw + j, r, s]
    return grad


PATCH_CASES = [((2, 3, 9, 8), 3, 2, (2, 1), (2, 3)), ((1, 2, 7, 7), 2, 2, (1, 3), (3, 1)),
               ((1, 2, 5, 5), 1, 2, (3, 1), (1, 4))]


@pytest.mark.parametrize("shape,kh,kw,stride,dilation", PATCH_CASES)
def test_patches_with_dilation_and_pair_strides_match_naive_loops(backend, dtype, rng, shape, kh, kw, stride,
                                                                   dilation):
    """im2col, conv_columns and the gather: the same numbers as the naive loop, bit for bit; col2im
    the loop's scatter-add (rounding aside, the sums run in another order)."""
    out_h = output_size(shape[2], kh, stride[0], 0, dilation[0])
    out_w = output_size(shape[3], kw, stride[1], 0, dilation[1])
    host = rng.standard_normal(shape).astype(dtype)
    x = backend.asarray(host)
    expected = naive_im2col(host, kh, kw, stride, dilation, out_h, out_w)
    on = dict(xp=backend.xp, device=backend.device, dtype=backend.dtype(dtype))
    xp_assert_close(im2col(backend.xp, x, kh, kw, stride, out_h, out_w, dilation), expected, rtol=0, **on)
    columns = expected.transpose(1, 2, 0, 3, 4).reshape(shape[1] * kh * kw, -1)  # (C*K, N*L)
    first = channels_first(backend.xp, x, (0, 0))
    sliced = conv_columns(backend.xp, first, kh, kw, stride, out_h, out_w, dilation)
    xp_assert_close(sliced, columns, rtol=0, **on)
    index = gather_index(backend.xp, backend.device, tuple(first.shape), kh, kw, stride, out_h, out_w, dilation)
    xp_assert_close(gather_columns(backend.xp, first, index, shape[1] * kh * kw), columns, rtol=0, **on)
    cols = rng.standard_normal(expected.shape).astype(dtype)
    got = col2im(backend.xp, backend.asarray(cols), shape, kh, kw, stride, dilation)
    xp_assert_close(got, naive_col2im(cols, shape, kh, kw, stride, dilation), **on)


def test_output_size_with_dilation():
    assert output_size(28, 5, 1, 0) == 24  # the four-argument call pooling makes
    assert output_size(7, 3, 1, 2, 2) == 7  # (7 + 4 - 4 - 1) // 1 + 1: "same" for a dilated 3x3
    assert output_size(10, 3, 2, 0, 3) == 2  # span 7: windows start at 0 and 2 (one at 4 would end at 11)
    assert output_size(6, 3, 1, 0, 3) == 0  # span 7 > 6: no position (Conv2D says so before)
    for n in range(1, 12):  # "same" padding d(k-1)/2 gives ceil(n / s) positions for every stride
        for s in (1, 2, 3):
            for k, d in ((3, 1), (5, 1), (3, 2), (2, 2), (3, 3)):
                assert output_size(n, k, s, d * (k - 1) // 2, d) == -(-n // s)


# -- the layer: shapes, options as attributes and records --------------------------------------------------------------

def test_same_padding_keeps_the_size_and_divides_it_by_the_stride(rng):
    for stride, expected in ((1, (7, 6)), (2, (4, 3)), ((3, 1), (3, 6))):
        conv = Conv2D(2, 3, (5, 3), stride=stride, padding="same", dilation=(1, 2))
        assert (conv.ph, conv.pw) == (2, 2)
        assert conv.infer_shape((2, 7, 6)) == (3, *expected)
        assert conv(rng.standard_normal((1, 2, 7, 6))).shape == (1, 3, *expected)


def test_grouped_weight_shape_fan_in_and_isolation(rng):
    """Weight (out, in/g, kh, kw), He's N(0, 2 / (in/g * kh * kw)); a group's outputs do not move
    when another group's input channels change."""
    conv = Conv2D(6, 4, 3, groups=2, padding=1, rng=0)
    assert conv.params["weight"].shape == (4, 3, 3, 3)
    reference = np.random.default_rng(0).normal(0.0, np.sqrt(2.0 / 27), size=(4, 3, 3, 3))
    np.testing.assert_array_equal(conv.params["weight"], reference)
    x = rng.standard_normal((2, 6, 5, 5))
    y = x.copy()
    y[:, 3:] += 1.0  # the second group's channels
    a, b = conv(x), conv(y)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    assert not np.allclose(a[:, 2:], b[:, 2:])


def test_default_options_give_the_old_layer_bit_for_bit(rng):
    """groups=1, dilation=1 and pairs equal on both axes are the plain convolution: the same
    weights, outputs and gradients, bit for bit, as int arguments."""
    x = rng.standard_normal((2, 3, 7, 6))
    plain = Conv2D(3, 4, 3, stride=2, padding=1, rng=5)
    paired = Conv2D(3, 4, (3, 3), stride=(2, 2), padding=(1, 1), rng=5, dilation=(1, 1), groups=1)
    assert paired.config() == plain.config()
    assert (paired.stride, paired.padding, paired.dilation) == (2, 1, 1)
    outs = [layer(x) for layer in (plain, paired)]
    grads = [layer.backward(out) for layer, out in zip((plain, paired), outs)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(plain.grads[name], paired.grads[name])


def test_config_records_the_options_and_rebuilds_the_layer():
    conv = Conv2D(4, 8, (3, 1), stride=(2, 1), padding="same", dilation=(1, 2), groups=4, bias=False, rng=2)
    record = conv.config()
    assert record == dict(in_channels=4, out_channels=8, kernel_size=(3, 1), stride=(2, 1), padding="same",
                          bias=False, dilation=(1, 2), groups=4)
    again = build_layer(json.loads(json.dumps({"type": "Conv2D", **record})), rng=2)
    assert again.config() == record
    np.testing.assert_array_equal(again.params["weight"], conv.params["weight"])
    assert state_shapes({"type": "Conv2D", **record}) == {"weight": (8, 1, 3, 1)}
    assert state_shapes({"type": "Conv2D", "in_channels": 6, "out_channels": 9, "kernel_size": [3, 2],
                         "groups": 3, "bias": True}) == {"weight": (9, 2, 3, 2), "bias": (9,)}


def test_old_records_without_the_new_options_build_the_same_layer(rng):
    """A record written before dilation and groups (int stride and padding) builds the layer it did."""
    old = {"type": "Conv2D", "in_channels": 2, "out_channels": 3, "kernel_size": [3, 3], "stride": 2, "padding": 1,
           "bias": True}
    layer = build_layer(old, rng=4)
    assert layer.config() == {**{k: v for k, v in old.items() if k != "type"}, "kernel_size": (3, 3)}  # unchanged
    assert state_shapes(old) == {"weight": (3, 2, 3, 3), "bias": (3,)}
    reference = Conv2D(2, 3, 3, stride=2, padding=1, rng=4)
    x = rng.standard_normal((1, 2, 6, 6))
    np.testing.assert_array_equal(layer(x), reference(x))


def test_save_and_load_a_grouped_dilated_conv(tmp_path, backend, rng):
    model = Sequential(Conv2D(4, 6, (3, 2), stride=(1, 2), padding="same", dilation=(2, 2), groups=2, rng=1),
                       Conv2D(6, 6, 3, padding=1, groups=6, bias=False, rng=2), Flatten()).to("numpy",
                                                                                              dtype="float64")
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = Sequential.load(path, backend.name, device_name(backend.device))
    assert loaded.config() == model.config()
    assert loaded.layers[0].params["weight"].shape == (6, 2, 3, 2)
    x = rng.standard_normal((2, 4, 6, 6))
    np.testing.assert_allclose(to_numpy(loaded(backend.asarray(x, "float64"))), to_numpy(model(x)), rtol=1e-12)


# -- the spec grammar -------------------------------------------------------------------------------------------------

def _conv(spec, image=(4, 9, 9)):
    model = parse_spec(spec + "-flatten-dense", image, 2)
    return model.layers[0], model.infer_shape(image)


@pytest.mark.parametrize("spec,options,shape", [
    ("conv32k3psame", dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1), (32, 9, 9)),
    ("conv32k3s2psame", dict(stride=(2, 2), padding=(1, 1)), (32, 5, 5)),
    ("conv64k3x1s2x1p1x0", dict(kernel=(3, 1), stride=(2, 1), padding=(1, 0)), (64, 5, 9)),
    ("conv32k3p2d2", dict(padding=(2, 2), dilation=(2, 2), groups=1), (32, 9, 9)),
    ("conv32k3p1dw", dict(groups=4, padding=(1, 1)), (32, 9, 9)),
    ("conv64k3p1g4", dict(groups=4), (64, 9, 9)),
    ("conv8k3x5pSamed2x1", dict(kernel=(3, 5), padding=(2, 2), dilation=(2, 1)), (8, 9, 9)),
    ("conv8k1g2nb", dict(kernel=(1, 1), groups=2, bias=False), (8, 9, 9)),
    ("conv4k3dwnb", dict(groups=4, bias=False), (4, 7, 7)),
    ("conv8k3s2p1", dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1, bias=True), (8, 5, 5)),
])
def test_spec_conv_options(spec, options, shape):
    layer, _ = _conv(spec)
    got = dict(kernel=(layer.kh, layer.kw), stride=(layer.sh, layer.sw), padding=(layer.ph, layer.pw),
               dilation=(layer.dh, layer.dw), groups=layer.groups, bias=layer.bias)
    assert {k: got[k] for k in options} == options
    assert layer.infer_shape((4, 9, 9)) == shape


def test_spec_same_is_recorded_as_same():
    layer, _ = _conv("conv8k3psame")
    assert layer.config()["padding"] == "same" and layer.padding == "same"


@pytest.mark.parametrize("spec,message", [
    ("conv30k3dw", r"token 1 'conv30k3dw': depthwise \(dw\) needs a multiple of the 4 input channels as "
                   "filters, got 30"),
    ("conv8k3g3", r"Conv2D: in_channels \(4\) must be divisible by groups \(3\)"),
    ("conv6k3g4", r"Conv2D: out_channels \(6\) must be divisible by groups \(4\)"),
    ("conv8k2psame", r"padding 'same' needs an odd kernel span d\*\(k-1\)\+1 on both axes, got 2x2"),
    ("conv8k3x2psame", "got 3x2"),
    ("conv8k3d5", r"Conv2D: kernel 3x3 with dilation 5x5 \(span 11x11\) is larger than the padded input 9x9"),
    ("conv8k3x0", "Conv2D: kernel_size must be >= 1, got 0"),
    ("conv8k3s0x1", "Conv2D: stride must be >= 1, got 0"),
    ("conv8k3d0", "Conv2D: dilation must be >= 1, got 0"),
    ("conv8k3g0", "Conv2D: groups must be >= 1, got 0"),
    ("conv8k3x3x3", "not a layer token"),
    ("conv8k3pvalid", "not a layer token"),
    ("conv8k3dwg2", "not a layer token"),
])
def test_spec_conv_option_errors(spec, message):
    with pytest.raises(SpecError, match=message) as info:
        _conv(spec)
    assert "\n" not in str(info.value)


def test_spec_help_lists_the_conv_grammar():
    assert "conv<F>k<K>[s<S>][p<P>][d<D>][g<G>|dw][nb]" in SPEC_HELP
    assert "depthwise" in SPEC_HELP and "same" in SPEC_HELP


# -- one-line errors of the constructor and the records ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(padding="valid"), ValueError, "Conv2D: padding must be an int, a pair of ints or 'same', got 'valid'"),
    (dict(kernel_size=4, padding="same"), ValueError, "padding 'same' needs an odd kernel span"),
    (dict(kernel_size=(3, 2), dilation=(1, 3), padding="same"), ValueError, r"got 3x4 \(kernel 3x2, dilation 1x3\)"),
    (dict(stride=(1, 2, 3)), ValueError, "Conv2D: stride must be an int or a pair of ints"),
    (dict(padding=(1, -1)), ValueError, "Conv2D: padding must be >= 0, got -1"),
    (dict(dilation=0), ValueError, "Conv2D: dilation must be >= 1, got 0"),
    (dict(dilation=1.5), TypeError, "Conv2D: dilation must be an integer, got 1.5"),
    (dict(groups=True), TypeError, "Conv2D: groups must be an integer, got True"),
    (dict(groups=4), ValueError, r"Conv2D: in_channels \(6\) must be divisible by groups \(4\)"),
    (dict(groups=3, out_channels=4), ValueError, r"Conv2D: out_channels \(4\) must be divisible by groups \(3\)"),
])
def test_conv_option_errors(kwargs, error, message):
    arguments = {**dict(in_channels=6, out_channels=12, kernel_size=3), **kwargs}
    with pytest.raises(error, match=message) as info:
        Conv2D(**arguments)
    assert "\n" not in str(info.value)
    with pytest.raises(error, match=message):  # the same check before a checkpoint's arrays are read
        state_shapes({"type": "Conv2D", "bias": True, **arguments})


def test_dilated_kernel_larger_than_the_input(rng):
    conv = Conv2D(1, 1, 3, dilation=(1, 4))
    with pytest.raises(ValueError, match=r"kernel 3x3 with dilation 1x4 \(span 3x9\) is larger than the padded "
                                         r"input 9x8"):
        conv(rng.standard_normal((1, 1, 9, 8)))
    assert conv.infer_shape((1, 9, 9)) == (1, 7, 1)
