"""im2col and col2im: a convolution (or a pooling) as matrix products over input patches.

For a padded input x of shape (N, C, H, W) and a kh x kw kernel moved by ``stride`` (s_h, s_w)
with its taps ``dilation`` (d_h, d_w) apart, the output has out_h x out_w positions,
(n + 2p - d(f - 1) - 1) // s + 1 per axis (:func:`output_size`).  The patch under output
position (r, s) is x[n, c, r*s_h + i*d_h, s*s_w + j*d_w] for the kernel offsets 0 <= i < kh,
0 <= j < kw, and the layouts here put those numbers side by side:

* :func:`im2col`: (N, C, kh*kw, out_h, out_w), entry [n, c, i*kw + j, r, s] -- what pooling
  reduces over (axis 2);
* :func:`conv_columns` / :func:`gather_columns`: from the channels-first input (C, N, H, W)
  (:func:`channels_first`), one matrix for the whole batch, (C*kh*kw, N*out_h*out_w), row
  c*kh*kw + i*kw + j, column n*out_h*out_w + r*out_w + s -- what a convolution multiplies its
  flattened filters with, Z1 = f . cols, in one product;
* :func:`col2im`: the adjoint (transpose) of :func:`im2col`: every entry of the columns added
  back to the input position it came from, so that <im2col(x), c> = <x, col2im(c)>.  That is
  the backward pass: dE/dX = col2im(dE/dcols).

``stride`` and ``dilation`` are an int (both axes) or a pair (height, width); with dilation 1
(the default) every function is the plain one, the same operations as without the argument.

The same columns are built two ways, bit for bit equal (the same numbers copied to the same
places):

* strided slices: kh*kw slices of the input, each one kernel offset's view of every output
  position.  :func:`conv_columns` stacks them in one copy, which is already the matrix;
  :func:`im2col` in two passes (first the kw column shifts of whole rows, then the kh row
  shifts of those as whole (out_h, out_w) blocks).  Many small copies: fastest on a CPU.
* one gather (:func:`gather_index`, :func:`gather_columns`): a precomputed integer index into
  the flattened input and a single ``take``.  Few, large operations: fastest on a GPU, where
  each operation costs 10-100 us of host time (measured: docs/performance.md).

Only array API standard functions (plus array-api-extra's ``at`` for col2im's scatter-add and ``pad``);
every new array is made on the input's device with its dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_extra as xpx
from array_api_compat import device as device_of

from xpcnn.backends import Array, Namespace

Pair = int | tuple[int, int]


def pair_of(value: Pair) -> tuple[int, int]:
    """(value, value) for an int, the pair itself otherwise: a stride or dilation per axis."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """(n + 2p - d(f - 1) - 1) // s + 1 on one axis: the kernel's taps d apart span d(f - 1) + 1
    input positions.  With d = 1 that is (n + 2p - f) // s + 1, the article's n - f + 1 when
    s = 1 and p = 0."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def window(i: int, j: int, stride: Pair, out_h: int, out_w: int,
           dilation: Pair = 1) -> tuple[slice, slice, slice, slice]:
    """The strided slice of a padded input that kernel offset (i, j) sees: rows i*d_h + r*s_h,
    columns j*d_w + s*s_w over the output positions (r, s)."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)
    return (slice(None), slice(None),
            slice(i * dh, i * dh + sh * (out_h - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (out_w - 1) + 1, sw))


def _column_shifts(xp: Namespace, x: Array, kw: int, stride: int, out_w: int, dilation: int) -> Array:
    """First pass of im2col: the kw column shifts of every row, (N, C, H, W) -> (N, C, kw, H, out_w)."""
    col_span = stride * (out_w - 1) + 1
    return xp.stack([x[:, :, :, j * dilation:j * dilation + col_span:stride] for j in range(kw)], axis=2)


def im2col(xp: Namespace, x: Array, kh: int, kw: int, stride: Pair, out_h: int, out_w: int,
           dilation: Pair = 1) -> Array:
    """The input patch under every kernel offset: x (N, C, H, W) -> (N, C, kh*kw, out_h, out_w),
    entry [n, c, i*kw + j, r, s] = x[n, c, r*s_h + i*d_h, s*s_w + j*d_w].

    Built in two passes of strided slices: first the kw column shifts of every row, then the
    kh row shifts of those; the second pass copies whole (out_h, out_w) blocks at a time, which
    is faster than 25 slices of short rows (measured: docs/performance.md)."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)
    row_span = sh * (out_h - 1) + 1
    shifted = _column_shifts(xp, x, kw, sw, out_w, dw)
    return xp.reshape(xp.stack([shifted[:, :, :, i * dh:i * dh + row_span:sh, :] for i in range(kh)], axis=2),
                      (x.shape[0], x.shape[1], kh * kw, out_h, out_w))


def channels_first(xp: Namespace, x: Array, padding: tuple[int, int]) -> Array:
    """The convolution's input layout: x (N, C, H, W) -> (C, N, H + 2p_h, W + 2p_w), zero-padded.
    With padding, one copy (the padding writes the transposed input anyway); without, a view."""
    x = xp.permute_dims(x, (1, 0, 2, 3))
    (ph, pw) = padding
    return xpx.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), xp=xp) if ph or pw else x


def conv_columns(xp: Namespace, x: Array, kh: int, kw: int, stride: Pair, out_h: int, out_w: int,
                 dilation: Pair = 1) -> Array:
    """im2col laid out for the convolution's one product: x (C, N, H, W) (:func:`channels_first`)
    -> (C*kh*kw, N*out_h*out_w), row c*kh*kw + i*kw + j, column n*out_h*out_w + r*out_w + s
    holding x[c, n, r*s_h + i*d_h, s*s_w + j*d_w].

    One copy: a single ``stack`` of the kh*kw strided slices (each one kernel offset's view of every
    image and output position) along a new axis 1, (C, kh*kw, N, out_h, out_w), which is already
    this matrix.  The rows of channel group k (channels k*C/g ... (k+1)*C/g - 1) are consecutive, so
    a grouped convolution reshapes these columns to (g, C/g*kh*kw, N*L) without a copy."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)
    slices = [x[window(i, j, (sh, sw), out_h, out_w, (dh, dw))] for i in range(kh) for j in range(kw)]
    return xp.reshape(xp.stack(slices, axis=1), (x.shape[0] * kh * kw, -1))


def gather_index(xp: Namespace, device: Any, shape: tuple[int, ...], kh: int, kw: int, stride: Pair,
                 out_h: int, out_w: int, dilation: Pair = 1) -> Array:
    """Where each entry of :func:`conv_columns` comes from in the flattened input of ``shape``
    (C, N, H, W), for :func:`gather_columns`: row c*kh*kw + i*kw + j, column n*out_h*out_w +
    r*out_w + s holds position ((c*N + n)*H + r*s_h + i*d_h)*W + s*s_w + j*d_w.
    Shape (C*kh*kw * N*out_h*out_w,), int64."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)
    channels, n, h, w = shape

    def ramp(count: int, step: int, shape: tuple[int, ...]) -> Array:  # 0, step, 2*step, ... laid out in ``shape``
        return xp.reshape(xp.arange(count, dtype=xp.int64, device=device) * step, shape)

    rows = ramp(channels, n * h * w, (-1, 1, 1)) + ramp(kh, dh * w, (1, -1, 1)) + ramp(kw, dw, (1, 1, -1))
    columns = ramp(n, h * w, (-1, 1, 1)) + ramp(out_h, sh * w, (1, -1, 1)) + ramp(out_w, sw, (1, 1, -1))
    return xp.reshape(xp.reshape(rows, (-1, 1)) + xp.reshape(columns, (1, -1)), (-1,))


def gather_columns(xp: Namespace, x: Array, index: Array, rows: int) -> Array:
    """:func:`conv_columns` as one gather (``take``) instead of kh*kw strided slices:
    x (C, N, H, W) -> (rows, N*out_h*out_w) with rows = C*kh*kw.  Fewer, larger operations, which is
    what a GPU wants (each costs 10-100 us of host time there); on a CPU the slices are faster
    (measured: docs/performance.md)."""
    return xp.reshape(xp.take(xp.reshape(x, (-1,)), index, axis=0), (rows, -1))


def col2im(xp: Namespace, cols: Array, padded_shape: tuple[int, ...], kh: int, kw: int, stride: Pair,
           dilation: Pair = 1) -> Array:
    """Adjoint of :func:`im2col`: scatter-add each offset's slice back (array-api-extra ``at``)."""
    return add_windows(xp, [cols[:, :, k, ...] for k in range(kh * kw)], padded_shape, kh, kw, stride, dilation)


def add_windows(xp: Namespace, parts: Sequence[Array], padded_shape: tuple[int, ...], kh: int, kw: int,
                stride: Pair, dilation: Pair = 1) -> Array:
    """:func:`col2im` for the kh*kw offsets' (N, C, out_h, out_w) arrays given one by one, as
    pooling's backward makes them (no stacking copy first).  Windows that do not overlap
    (stride >= the span d(k - 1) + 1 of the kernel on both axes) write each input position at
    most once: a plain ``set`` then, which does not read the zeros back."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)
    out_h, out_w = parts[0].shape[-2], parts[0].shape[-1]
    overlap = sh < dh * (kh - 1) + 1 or sw < dw * (kw - 1) + 1
    grad = xp.zeros(padded_shape, dtype=parts[0].dtype, device=device_of(parts[0]))
    for k, part in enumerate(parts):
        at = xpx.at(grad)[window(*divmod(k, kw), (sh, sw), out_h, out_w, (dh, dw))]
        grad = at.add(part, xp=xp) if overlap else at.set(part, xp=xp)
    return grad
