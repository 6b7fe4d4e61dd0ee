"""xpcnn.nn.im2col: the patch layouts against naive loops, bit for bit on every backend, and col2im
as the adjoint of im2col; then Conv2D's choice between strided slices and one gather."""

import numpy as np
import pytest
from helpers import xp_assert_close

from xpcnn import Conv2D
from xpcnn.nn.im2col import (
    add_windows,
    channels_first,
    col2im,
    conv_columns,
    gather_columns,
    gather_index,
    im2col,
    output_size,
)

# (input shape (N, C, H, W) of the padded input, kh, kw, stride)
CASES = [
    ((2, 3, 8, 8), 5, 5, 1),     # the article's 5x5 filters
    ((1, 2, 7, 9), 3, 2, 2),     # rectangular kernel, stride 2, sizes that do not divide
    ((2, 1, 9, 10), 3, 3, 3),    # stride = kernel: windows that touch
    ((1, 2, 7, 7), 2, 2, 3),     # stride > kernel: input positions no window sees
    ((1, 1, 4, 4), 4, 4, 1),     # kernel = input: one window
    ((3, 2, 5, 6), 1, 1, 1),     # 1x1 kernel
]
IDS = [f"{h}x{w}-k{kh}x{kw}-s{s}" for (_, _, h, w), kh, kw, s in CASES]


def _geometry(shape, kh, kw, stride):
    return output_size(shape[2], kh, stride, 0), output_size(shape[3], kw, stride, 0)


def naive_im2col(x, kh, kw, stride, out_h, out_w):
    """out[n, c, i*kw + j, r, s] = x[n, c, r*stride + i, s*stride + j], one entry at a time."""
    n, c = x.shape[:2]
    out = np.zeros((n, c, kh * kw, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            for r in range(out_h):
                for s in range(out_w):
                    out[:, :, i * kw + j, r, s] = x[:, :, r * stride + i, s * stride + j]
    return out


def naive_conv_columns(x, kh, kw, stride, out_h, out_w):
    """Row c*kh*kw + i*kw + j, column n*out_h*out_w + r*out_w + s: the whole batch in one matrix."""
    n, c = x.shape[:2]
    cols = naive_im2col(x, kh, kw, stride, out_h, out_w).transpose(1, 2, 0, 3, 4)  # (C, K, N, oh, ow)
    return cols.reshape(c * kh * kw, n * out_h * out_w)


def naive_col2im(cols, padded_shape, kh, kw, stride):
    """grad[n, c, r*stride + i, s*stride + j] += cols[n, c, i*kw + j, r, s], offsets in order."""
    out_h, out_w = cols.shape[-2:]
    grad = np.zeros(padded_shape, dtype=cols.dtype)
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        for r in range(out_h):
            for s in range(out_w):
                grad[:, :, r * stride + i, s * stride + j] += cols[:, :, k, r, s]
    return grad


def _on(backend, dtype):
    return dict(xp=backend.xp, device=backend.device, dtype=dtype)


def test_output_size_formula():
    """(n + 2p - f) // s + 1, the article's n - f + 1 for s = 1, p = 0."""
    assert output_size(28, 5, 1, 0) == 24 == 28 - 5 + 1
    assert output_size(7, 3, 2, 1) == 4
    assert output_size(8, 4, 3, 2) == 3
    assert output_size(5, 5, 1, 0) == 1


@pytest.mark.parametrize("shape,kh,kw,stride", CASES, ids=IDS)
def test_im2col_matches_a_naive_loop(backend, dtype, rng, shape, kh, kw, stride):
    host = rng.standard_normal(shape).astype(dtype)
    out_h, out_w = _geometry(shape, kh, kw, stride)
    got = im2col(backend.xp, backend.asarray(host), kh, kw, stride, out_h, out_w)
    xp_assert_close(got, naive_im2col(host, kh, kw, stride, out_h, out_w), rtol=0, **_on(backend, dtype))


@pytest.mark.parametrize("shape,kh,kw,stride", CASES, ids=IDS)
def test_conv_columns_and_gather_columns_match_a_naive_loop(backend, dtype, rng, shape, kh, kw, stride):
    """The two ways (strided slices, one gather) give the naive layout bit for bit, from the
    channels-first input (C, N, H, W) that channels_first makes."""
    host = rng.standard_normal(shape).astype(dtype)
    out_h, out_w = _geometry(shape, kh, kw, stride)
    expected = naive_conv_columns(host, kh, kw, stride, out_h, out_w)
    x = channels_first(backend.xp, backend.asarray(host), (0, 0))
    sliced = conv_columns(backend.xp, x, kh, kw, stride, out_h, out_w)
    xp_assert_close(sliced, expected, rtol=0, **_on(backend, dtype))
    index = gather_index(backend.xp, backend.device, tuple(x.shape), kh, kw, stride, out_h, out_w)
    rows = shape[1] * kh * kw
    assert tuple(index.shape) == (rows * shape[0] * out_h * out_w,) and index.dtype == backend.xp.int64
    gathered = gather_columns(backend.xp, x, index, rows)
    xp_assert_close(gathered, expected, rtol=0, **_on(backend, dtype))


def test_channels_first_pads_the_transposed_input(backend, rng):
    host = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    got = channels_first(backend.xp, backend.asarray(host), (1, 2))
    expected = np.pad(host.transpose(1, 0, 2, 3), ((0, 0), (0, 0), (1, 1), (2, 2)))
    xp_assert_close(got, expected, rtol=0, **_on(backend, "float32"))


@pytest.mark.parametrize("shape,kh,kw,stride", CASES, ids=IDS)
def test_col2im_matches_a_naive_loop(backend, dtype, rng, shape, kh, kw, stride):
    out_h, out_w = _geometry(shape, kh, kw, stride)
    host = rng.standard_normal((shape[0], shape[1], kh * kw, out_h, out_w)).astype(dtype)
    got = col2im(backend.xp, backend.asarray(host), shape, kh, kw, stride)
    xp_assert_close(got, naive_col2im(host, shape, kh, kw, stride), rtol=0, **_on(backend, dtype))


@pytest.mark.parametrize("shape,kh,kw,stride", CASES, ids=IDS)
def test_col2im_is_the_adjoint_of_im2col(backend, rng, shape, kh, kw, stride):
    """<im2col(x), c> = <x, col2im(c)> for any x and c (float64): col2im is im2col's transpose,
    which is why it gives the input gradient."""
    xp = backend.xp
    out_h, out_w = _geometry(shape, kh, kw, stride)
    x = backend.asarray(rng.standard_normal(shape), "float64")
    c = backend.asarray(rng.standard_normal((shape[0], shape[1], kh * kw, out_h, out_w)), "float64")
    left = float(xp.sum(im2col(xp, x, kh, kw, stride, out_h, out_w) * c))
    right = float(xp.sum(x * col2im(xp, c, shape, kh, kw, stride)))
    assert left == pytest.approx(right, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("shape,kh,kw,stride", CASES, ids=IDS)
def test_add_windows_is_col2im_of_the_offsets_one_by_one(backend, dtype, rng, shape, kh, kw, stride):
    """Pooling's backward hands col2im its kh*kw offsets as separate arrays: the same sums, bit for
    bit, whether the windows overlap (added) or not (set)."""
    out_h, out_w = _geometry(shape, kh, kw, stride)
    host = rng.standard_normal((shape[0], shape[1], kh * kw, out_h, out_w)).astype(dtype)
    parts = [backend.asarray(host[:, :, k]) for k in range(kh * kw)]
    got = add_windows(backend.xp, parts, shape, kh, kw, stride)
    xp_assert_close(got, naive_col2im(host, shape, kh, kw, stride), rtol=0, **_on(backend, dtype))


# -- Conv2D's im2col option: slices on a CPU, one gather on a GPU --------------------------

CONV_CASES = [
    dict(in_channels=1, out_channels=3, kernel_size=5, stride=1, padding=0, shape=(2, 1, 8, 8)),
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1, shape=(3, 2, 7, 7)),
    dict(in_channels=3, out_channels=2, kernel_size=(2, 3), stride=1, padding=2, shape=(2, 3, 5, 6)),
    dict(in_channels=2, out_channels=2, kernel_size=3, stride=3, padding=0, shape=(1, 2, 9, 10), bias=False),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c['kernel_size']}s{c['stride']}p{c['padding']}")
def test_conv_gather_and_slices_agree_bit_for_bit(backend, rng, case):
    """The two ways of building the patches copy the same numbers to the same places."""
    case = dict(case)
    x = backend.asarray(rng.standard_normal(case.pop("shape")), "float32")
    results = []
    for way in ("slices", "gather"):
        conv = Conv2D(**case, rng=3, im2col=way).to(backend, dtype="float32")
        out = conv(x)
        grad_in = conv.backward(out)
        results.append([out, grad_in, *conv.grads.values()])
    for slices, gather in zip(*results):
        xp_assert_close(gather, slices, rtol=0)


def test_conv_im2col_auto_gathers_on_a_gpu_only(backend, rng):
    conv = Conv2D(1, 2, 3).to(backend, dtype="float32")
    conv(backend.asarray(rng.standard_normal((2, 1, 6, 6)), "float32"))
    gathered = bool(conv._gather_index)  # the gather path keeps its index for the next batch
    assert gathered == ("cuda" in backend.label), backend.label


def test_conv_gather_index_is_dropped_when_the_layer_moves(backend, rng):
    conv = Conv2D(1, 2, 3, im2col="gather").to(backend, dtype="float32")
    conv(backend.asarray(rng.standard_normal((2, 1, 6, 6)), "float32"))
    assert len(conv._gather_index) == 1
    conv.to("numpy")
    assert conv._gather_index == {}
