"""Pooling over kh x kw windows: :class:`MaxPool2D` and :class:`AvgPool2D` (NCHW), with PyTorch's
padding and ``ceil_mode``; :class:`GlobalAvgPool2D`; and their spec tokens ``maxpool``, ``avgpool``
and ``gap``.

Window geometry, per axis (rows shown; columns alike), for an input of n rows, a kernel of k, a
stride s and a padding p (p <= k // 2, as PyTorch requires):

* the output has ``(n + 2p - k) // s + 1`` rows, or with ``ceil_mode`` ``ceil((n + 2p - k) / s) + 1``
  less one if the last window would start in the right padding (PyTorch's rule: a window starts
  inside the input or the left padding) (:func:`pool_output_size`);
* output row r reads padded rows r*s .. r*s + k - 1, i.e. input rows r*s - p .. r*s - p + k - 1.
  The input is padded by p on each side -- and with ``ceil_mode`` by as much more on the right as
  the last window hangs over -- so that every window is a plain slice (:func:`_window`): max
  pooling pads with -inf (a padded cell never wins), average pooling with zeros.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import array_api_extra as xpx
from array_api_compat import device as device_of

from xpcnn.backends import Array, Namespace, namespace, on_gpu
from xpcnn.nn.base import Layer, Token, check_input, register, shape_error
from xpcnn.nn.validate import pair

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size along one axis: floor((n + 2p - k) / s) + 1, or with ``ceil_mode``
    ceil((n + 2p - k) / s) + 1, less one if that last window would start in the right padding
    ((out - 1) s >= n + p).  Below 1: the kernel does not fit."""
    span = size + 2 * padding - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def _window(i: int, j: int, sh: int, sw: int, out_h: int, out_w: int) -> tuple[slice, slice, slice, slice]:
    """The strided slice of the padded input that kernel offset (i, j) sees at every output position:
    [n, c, r*sh + i, t*sw + j] over (r, t)."""
    return (slice(None), slice(None), slice(i, i + sh * (out_h - 1) + 1, sh), slice(j, j + sw * (out_w - 1) + 1, sw))


def _im2col(xp: Namespace, x: Array, kh: int, kw: int, sh: int, sw: int, out_h: int, out_w: int) -> Array:
    """Every window's cells side by side, (N, C, H, W) -> (N, C, kh*kw, out_h, out_w), entry
    [n, c, i*kw + j, r, t] = x[n, c, r*sh + i, t*sw + j]: :func:`xpcnn.nn.im2col.im2col` with a
    stride per axis (the same two passes: the kw column shifts of every row, then their kh row shifts)."""
    col_span, row_span = sw * (out_w - 1) + 1, sh * (out_h - 1) + 1
    shifted = xp.stack([x[:, :, :, j:j + col_span:sw] for j in range(kw)], axis=2)  # (N, C, kw, H, out_w)
    return xp.reshape(xp.stack([shifted[:, :, :, i:i + row_span:sh, :] for i in range(kh)], axis=2),
                      (x.shape[0], x.shape[1], kh * kw, out_h, out_w))


def _add_windows(xp: Namespace, parts: Sequence[Array], shape: tuple[int, ...], kh: int, kw: int, sh: int,
                 sw: int) -> Array:
    """The adjoint of :func:`_im2col` for the kh*kw offsets' (N, C, out_h, out_w) arrays given one by
    one: each added back onto the cells it came from (array-api-extra ``at``), a plain ``set`` where
    windows do not overlap (sh >= kh and sw >= kw: each cell written at most once)."""
    out_h, out_w = parts[0].shape[-2], parts[0].shape[-1]
    overlap = sh < kh or sw < kw
    grad = xp.zeros(shape, dtype=parts[0].dtype, device=device_of(parts[0]))
    for k, part in enumerate(parts):
        at = xpx.at(grad)[_window(*divmod(k, kw), sh, sw, out_h, out_w)]
        grad = at.add(part, xp=xp) if overlap else at.set(part, xp=xp)
    return grad


def _compact(value: tuple[int, int]) -> int | tuple[int, int]:
    """A pair as a record stores it: one int when both axes agree."""
    return value[0] if value[0] == value[1] else value


class _Pool2D(Layer):
    WINDOWS = ("auto", "views", "im2col")
    PAD_VALUE = 0.0  # what padded cells hold

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kh, self.kw = pair(kernel_size, "kernel_size", self.name, 1)
        self.sh, self.sw = (self.kh, self.kw) if stride is None else pair(stride, "stride", self.name, 1)
        self.ph, self.pw = pair(padding, "padding", self.name, 0)
        if self.ph > self.kh // 2 or self.pw > self.kw // 2:
            raise ValueError(f"{self.name}: padding {self.ph}x{self.pw} must be at most half the kernel "
                             f"{self.kh}x{self.kw} (PyTorch's limit)")
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"{self.name}: ceil_mode must be True or False, got {ceil_mode!r}")
        self.ceil_mode = ceil_mode
        # How the windows are read: elementwise passes over one strided view per offset (fastest
        # on a CPU), or im2col's copy reduced along its offset axis (fewer, larger operations, as a
        # GPU wants; the code before views were measured); "auto": im2col on a CUDA device, views
        # elsewhere.  The same numbers either way; not part of config(): a way to compute.
        self.windows = "auto"

    @property
    def stride(self) -> int | tuple[int, int]:
        """The stride as the record stores it: an int, or (rows, columns) when they differ."""
        return _compact((self.sh, self.sw))

    @property
    def padding(self) -> int | tuple[int, int]:
        """The padding as the record stores it: an int, or (rows, columns) when they differ."""
        return _compact((self.ph, self.pw))

    def config(self) -> dict:
        """kernel_size and stride always; padding and ceil_mode only when set (a record without them
        means none, so a network without them keeps the record it always had: checkpoints resume)."""
        record: dict = dict(kernel_size=(self.kh, self.kw), stride=self.stride)
        if self.ph or self.pw:
            record["padding"] = self.padding
        if self.ceil_mode:
            record["ceil_mode"] = True
        return record

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        return (pool_output_size(h, self.kh, self.sh, self.ph, self.ceil_mode),
                pool_output_size(w, self.kw, self.sw, self.pw, self.ceil_mode))

    def infer_shape(self, shape: tuple) -> tuple:
        out_h, out_w = self._output_size(*shape[1:]) if len(shape) == 3 else (0, 0)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} does not fit input shape (N, "
                             + ", ".join(map(str, shape)) + ")"
                             + (f" with padding {self.ph}x{self.pw}" if self.ph or self.pw else ""))
        return (shape[0], out_h, out_w)

    def _padded(self, xp: Namespace, x: Array, out_h: int, out_w: int) -> Array:
        """x with p cells of PAD_VALUE before each spatial axis and as many after as the last window
        needs (p, or more with ceil_mode); x itself when there are none."""
        h, w = x.shape[2], x.shape[3]
        bottom = max(self.ph, (out_h - 1) * self.sh + self.kh - h - self.ph)
        right = max(self.pw, (out_w - 1) * self.sw + self.kw - w - self.pw)
        if not (self.ph or self.pw or bottom or right):
            return x
        return xpx.pad(x, ((0, 0), (0, 0), (self.ph, bottom), (self.pw, right)), constant_values=self.PAD_VALUE,
                       xp=xp)

    def _geometry(self, x: Array) -> tuple[Namespace, int, int, bool]:
        """Check x; return xp, the output size and whether to read the windows as views."""
        xp = namespace(x, where=f"{self.name}.forward")
        check_input(xp, x, self, 4, "(N, C, H, W)")
        h, w = x.shape[2], x.shape[3]
        out_h, out_w = self._output_size(h, w)
        if out_h < 1 or out_w < 1:
            padded = f"padded input {h + 2 * self.ph}x{w + 2 * self.pw}" if self.ph or self.pw else f"input {h}x{w}"
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} is larger than the {padded} "
                             f"(input shape {tuple(x.shape)})")
        if self.windows not in self.WINDOWS:
            raise ValueError(f"{self.name}: windows must be one of {', '.join(self.WINDOWS)}, got {self.windows!r}")
        views = self.windows == "views" or (self.windows == "auto" and not on_gpu(x))
        return xp, out_h, out_w, views

    def _views(self, x: Array, out_h: int, out_w: int) -> list:
        """X_k for each window offset k = i*kw + j: the strided view of the padded x that offset
        (i, j) sees at every output position, X_k[n, c, r, t] = x[n, c, r*sh + i, t*sw + j] (im2col's
        rows, not copied)."""
        return [x[_window(i, j, self.sh, self.sw, out_h, out_w)] for i in range(self.kh) for j in range(self.kw)]

    def _im2col(self, xp: Namespace, x: Array, out_h: int, out_w: int) -> Array:
        return _im2col(xp, x, self.kh, self.kw, self.sh, self.sw, out_h, out_w)

    def _unpad(self, grad: Array, input_shape: tuple[int, ...]) -> Array:
        """dE/dX from dE/d(padded X): the padded cells' gradients dropped."""
        h, w = input_shape[2], input_shape[3]
        if tuple(grad.shape) == tuple(input_shape):
            return grad
        return grad[:, :, self.ph:self.ph + h, self.pw:self.pw + w]


class MaxPool2D(_Pool2D):
    """O = the maximum of each kh x kw window: O = max over offsets k of X_k (X_k: the padded input
    under offset k of every window, :meth:`_views`).  Backward routes the gradient to the (first)
    maximum of each window:
        dE/dX_k = G where X_k = O and no earlier offset k' < k has X_k' = O, else 0,
    added back onto the input where windows overlap (col2im), the padding's share dropped.

    ``padding`` pads with -inf: a padded cell never wins (every window holds an input cell, by
    PyTorch's limits on padding and ceil_mode), as in ``torch.nn.functional.max_pool2d``.

    On a CPU, forward folds the views with ``maximum`` and backward hands G down the offsets in
    order, each taking it where it holds the maximum: elementwise passes only, no im2col copy, no
    argmax along a copied axis (5-8x faster forward, measured: docs/performance.md).  On a GPU,
    im2col's copy and one argmax (fewer operations)."""

    PAD_VALUE = -math.inf

    def forward(self, x: Any) -> Any:
        xp, out_h, out_w, views = self._geometry(x)
        padded = self._padded(xp, x, out_h, out_w)
        if not views:
            cols = self._im2col(xp, padded, out_h, out_w)  # (N, C, K, oh, ow)
            self.save_for_backward((padded, tuple(x.shape)), xp.argmax(cols, axis=2))
            return xp.max(cols, axis=2)
        windows = self._views(padded, out_h, out_w)
        output = windows[0]
        for view in windows[1:]:
            output = xp.maximum(output, view)
        if len(windows) == 1:
            output = xp.asarray(output, copy=True)  # a 1x1 pool: not a view of its input
        self.save_for_backward((padded, tuple(x.shape)), output)
        return output

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (padded, input_shape), saved = self.saved_for_backward()  # saved: O, or the argmax (im2col)
        if not input_grad:
            return None
        xp = namespace(grad_out, padded, where=f"{self.name}.backward")
        n, c, out_h, out_w = grad_out.shape
        shape, k = tuple(padded.shape), self.kh * self.kw
        if xp.isdtype(saved.dtype, "integral"):  # the im2col way: saved is each window's argmax
            offsets = xp.arange(k, device=device_of(grad_out))[:, None, None]
            mask = xp.astype(saved[:, :, None, ...] == offsets, grad_out.dtype)
            parts = mask * grad_out[:, :, None, ...]
            grad = _add_windows(xp, [parts[:, :, i, ...] for i in range(k)], shape, self.kh, self.kw, self.sh,
                                self.sw)
            return self._unpad(grad, input_shape)
        parts, unrouted = [], grad_out  # saved is O; unrouted: the part of G no earlier offset took
        for index, view in enumerate(self._views(padded, out_h, out_w)):
            part = unrouted * xp.astype(view == saved, grad_out.dtype)
            parts.append(part)
            if index + 1 < k:
                unrouted = unrouted - part
        return self._unpad(_add_windows(xp, parts, shape, self.kh, self.kw, self.sh, self.sw), input_shape)


class AvgPool2D(_Pool2D):
    """O = the mean of each kh x kw window, (sum over offsets k of X_k) / D; backward spreads G / D
    over the window: dE/dX_k = G / D for every offset k (col2im), the padding's share dropped.

    ``padding`` pads with zeros that count in the mean (PyTorch's default ``count_include_pad=True``):
    D = kh*kw for every window that lies within the padded input.  With ``ceil_mode`` the last
    window may hang over the right (bottom) padding; as in PyTorch its D counts only the cells it
    covers within input + padding: D[r, t] = (min(r*sh - ph + kh, H + ph) - (r*sh - ph))
    * (min(t*sw - pw + kw, W + pw) - (t*sw - pw)).
    On a CPU the views are summed one by one; on a GPU im2col's copy is averaged at once."""

    def _divisor(self, xp: Namespace, x: Array, out_h: int, out_w: int) -> Array | int:
        """D per output position: kh*kw (an int) unless a ceil_mode window hangs over the edge,
        else an (out_h, out_w) array of D (made on the host, tiny)."""
        h, w = x.shape[2], x.shape[3]
        rows = [min(r * self.sh - self.ph + self.kh, h + self.ph) - (r * self.sh - self.ph) for r in range(out_h)]
        cols = [min(t * self.sw - self.pw + self.kw, w + self.pw) - (t * self.sw - self.pw) for t in range(out_w)]
        if all(count == self.kh for count in rows) and all(count == self.kw for count in cols):
            return self.kh * self.kw
        dtype, device = x.dtype, device_of(x)
        return (xp.reshape(xp.asarray(rows, dtype=dtype, device=device), (out_h, 1))
                * xp.reshape(xp.asarray(cols, dtype=dtype, device=device), (1, out_w)))

    def forward(self, x: Any) -> Any:
        xp, out_h, out_w, views = self._geometry(x)
        divisor = self._divisor(xp, x, out_h, out_w)
        padded = self._padded(xp, x, out_h, out_w)
        self.save_for_backward(tuple(padded.shape), tuple(x.shape), divisor)
        if not views:
            cols = self._im2col(xp, padded, out_h, out_w)
            return xp.mean(cols, axis=2) if isinstance(divisor, int) else xp.sum(cols, axis=2) / divisor
        windows = self._views(padded, out_h, out_w)
        total = windows[0]
        for view in windows[1:]:
            total = total + view
        return total / divisor

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        padded_shape, input_shape, divisor = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, where=f"{self.name}.backward")
        share = grad_out / divisor
        grad = _add_windows(xp, [share] * (self.kh * self.kw), padded_shape, self.kh, self.kw, self.sh, self.sw)
        return self._unpad(grad, input_shape)


class GlobalAvgPool2D(Layer):
    """O = the mean of each channel over its H x W positions, (N, C, H, W) -> (N, C):
        O[n, c] = sum over (i, j) of X[n, c, i, j] / (H W)
    (``torch.nn.functional.adaptive_avg_pool2d(x, 1)`` flattened).  Backward spreads each G[n, c]
    evenly: dE/dX[n, c, i, j] = G[n, c] / (H W)."""

    def infer_shape(self, shape: tuple) -> tuple:
        if len(shape) != 3:
            raise shape_error(self, "(N, C, H, W)", shape)
        return (shape[0],)

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        check_input(xp, x, self, 4, "(N, C, H, W)")
        self.save_for_backward(tuple(x.shape))
        return xp.mean(x, axis=(2, 3))

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (shape,) = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, where=f"{self.name}.backward")
        share = grad_out / (shape[2] * shape[3])
        return xp.zeros(shape, dtype=grad_out.dtype, device=device_of(grad_out)) + share[:, :, None, None]


def _pair_of(text: str) -> int | tuple[int, int]:
    """'3' -> 3, '3x2' -> (3, 2): a size in a pooling token."""
    rows, _, cols = text.partition("x")
    return (int(rows), int(cols)) if cols else int(rows)


def _pool_token(match: re.Match, spec: SpecContext) -> Layer:
    kind, kernel, stride, padding, ceil = match.groups()
    cls = MaxPool2D if kind == "max" else AvgPool2D
    return cls(_pair_of(kernel), stride=_pair_of(stride) if stride else None,
               padding=_pair_of(padding) if padding else 0, ceil_mode=bool(ceil))


_SIZE = r"(\d+(?:x\d+)?)"  # A, or AxB (rows x columns)

register(MaxPool2D, AvgPool2D, GlobalAvgPool2D, tokens=[
    Token(rf"(max)pool{_SIZE}(?:s{_SIZE})?(?:p{_SIZE})?(c)?", "maxpool<K>[s<S>][p<P>][c]",
          "MaxPool2D over K x K windows, stride S (K), padding P (0; at most K/2);\n"
          "K, S, P: A or AxB (height x width); c: ceil_mode (PyTorch's rule)", _pool_token),
    Token(rf"(avg)pool{_SIZE}(?:s{_SIZE})?(?:p{_SIZE})?(c)?", "avgpool<K>[s<S>][p<P>][c]",
          "AvgPool2D likewise (padded zeros count in the mean, as PyTorch's default)", _pool_token),
    Token("gap", "gap", "GlobalAvgPool2D: each channel's mean, (C, H, W) -> (C,); dense may follow",
          lambda match, spec: GlobalAvgPool2D())])
