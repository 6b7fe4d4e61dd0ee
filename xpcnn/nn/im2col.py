"""im2col and col2im: a convolution (or a pooling) as matrix products over input patches.

For a padded input x of shape (N, C, H, W) and a kh x kw kernel moved by ``stride`` (s_h, s_w)
with its taps ``dilation`` (d_h, d_w) apart, the output has out_h x out_w positions,
(n + 2p - d(f - 1) - 1) // s + 1 per axis (:func:`output_size`).  The patch under output
position (r, s) is x[n, c, r*s_h + i*d_h, s*s_w + j*d_w] for the kernel offsets 0 <= i < kh,
0 <= j < kw, and the layouts here put those numbers side by side:

* :func:`im2col`: (N, C, kh*kw, out_h, out_w), entry [n, c, i*kw + j, r, s] -- what pooling
  reduces over (axis 2);
* :func:`conv_columns` / :func:`gather_columns`: (N, C*kh*kw [+ 1], out_h*out_w), row
  c*kh*kw + i*kw + j of image n -- what a convolution multiplies its flattened filters with,
  Z1_n = [f | b] . [cols_n ; 1], the optional last row of ones carrying the bias;
* :func:`col2im`: the adjoint (transpose) of :func:`im2col`: every entry of the columns added
  back to the input position it came from, so that <im2col(x), c> = <x, col2im(c)>.  That is
  the backward pass: dE/dX = col2im(dE/dcols).

``stride`` and ``dilation`` are an int (both axes) or a pair (height, width); with dilation 1
(the default) every function is the plain one, the same operations as without the argument.

The same columns are built two ways, bit for bit equal (the same numbers copied to the same
places):

* strided slices (:func:`conv_columns`, :func:`im2col`): kh*kw slices of the input, each one
  kernel offset's view of every output position, stacked in two passes (first the kw column
  shifts of whole rows, then the kh row shifts of those as whole (out_h, out_w) blocks).
  Many small copies: fastest on a CPU.
* one gather (:func:`gather_index`, :func:`gather_columns`): a precomputed integer index into
  the flattened input and a single ``take``.  Few, large operations: fastest on a GPU, where
  each operation costs 10-100 us of host time (measured: docs/performance.md).

Only array API standard functions (plus array-api-extra's ``at`` for col2im's scatter-add);
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


def conv_columns(xp: Namespace, x: Array, kh: int, kw: int, stride: Pair, out_h: int, out_w: int,
                 ones_row: bool, dilation: Pair = 1) -> Array:
    """im2col laid out for the convolution's product: (N, C*kh*kw [+ 1], out_h*out_w), row
    c*kh*kw + i*kw + j of image n holding x[n, c, r*s_h + i*d_h, s*s_w + j*d_w] over the output
    positions (r, s), and with ``ones_row`` a last row of ones that multiplies the bias.
    Same two passes as :func:`im2col`; the second writes the rows and the ones in one ``concat``.
    The rows of channel group k (channels k*C/g ... (k+1)*C/g - 1) are consecutive, so a grouped
    convolution reshapes these columns to (N, g, C/g*kh*kw, L) without a copy."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)
    n, channels, row_span = x.shape[0], x.shape[1], sh * (out_h - 1) + 1
    shifted = _column_shifts(xp, x, kw, sw, out_w, dw)
    rows = [xp.reshape(shifted[:, c, :, i * dh:i * dh + row_span:sh, :], (n, kw, out_h * out_w))
            for c in range(channels) for i in range(kh)]
    if ones_row:
        rows.append(xp.ones((n, 1, out_h * out_w), dtype=x.dtype, device=device_of(x)))
    return xp.concat(rows, axis=1)


def gather_index(xp: Namespace, device: Any, channels: int, h: int, w: int, kh: int, kw: int, stride: Pair,
                 out_h: int, out_w: int, ones_row: bool, dilation: Pair = 1) -> Array:
    """Where each entry of :func:`conv_columns` comes from in the flattened (C*H*W) input, for
    :func:`gather_columns`: row c*kh*kw + i*kw + j, column r*out_w + s holds position
    c*H*W + (r*s_h + i*d_h)*W + s*s_w + j*d_w; with ``ones_row`` a last row pointing at position
    C*H*W (the 1 that :func:`gather_columns` appends).  Shape ((C*kh*kw [+ 1]) * out_h*out_w,)."""
    (sh, sw), (dh, dw) = pair_of(stride), pair_of(dilation)

    def ramp(count: int, step: int, shape: tuple[int, ...]) -> Array:  # 0, step, 2*step, ... laid out in ``shape``
        return xp.reshape(xp.arange(count, dtype=xp.int64, device=device) * step, shape)

    rows = ramp(channels, h * w, (-1, 1, 1)) + ramp(kh, dh * w, (1, -1, 1)) + ramp(kw, dw, (1, 1, -1))
    columns = ramp(out_h, sh * w, (-1, 1)) + ramp(out_w, sw, (1, -1))
    rows, columns = xp.reshape(rows, (-1, 1)), xp.reshape(columns, (1, -1))
    index = rows + columns
    if ones_row:
        index = xp.concat([index, xp.full((1, out_h * out_w), channels * h * w, dtype=xp.int64, device=device)])
    return xp.reshape(index, (-1,))


def gather_columns(xp: Namespace, x: Array, index: Array, positions: int, ones_row: bool) -> Array:
    """:func:`conv_columns` as one gather (``take``) instead of strided slices and a ``concat``:
    (N, C, H, W) -> (N, C*kh*kw [+ 1], positions).  Fewer, larger operations, which is what a GPU
    wants (each costs 10-100 us of host time there); on a CPU the slices are 2-3x faster
    (measured: docs/performance.md)."""
    n = x.shape[0]
    flat = xp.reshape(x, (n, -1))
    if ones_row:
        flat = xp.concat([flat, xp.ones((n, 1), dtype=x.dtype, device=device_of(x))], axis=1)
    return xp.reshape(xp.take(flat, index, axis=1), (n, -1, positions))


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
