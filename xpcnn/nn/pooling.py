"""Pooling over kh x kw windows: :class:`MaxPool2D` and :class:`AvgPool2D` (NCHW), and their
spec tokens ``maxpool`` and ``avgpool``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from array_api_compat import device as device_of

from xpcnn.backends import Array, Namespace, namespace, on_gpu
from xpcnn.nn.base import Layer, Token, check_input, register
from xpcnn.nn.im2col import add_windows, col2im, im2col, output_size, window
from xpcnn.nn.validate import integer, pair

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


class _Pool2D(Layer):
    WINDOWS = ("auto", "views", "im2col")

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | None = None) -> None:
        super().__init__()
        self.kh, self.kw = pair(kernel_size, "kernel_size", self.name, 1)
        self.stride = self.kh if stride is None else integer(stride, "stride", self.name, 1)
        if stride is None and self.kh != self.kw:
            raise ValueError(f"{self.name}: give a stride for a non-square kernel {self.kh}x{self.kw}")
        # How the windows are read: elementwise passes over one strided view per offset (fastest
        # on a CPU), or im2col's copy reduced along its offset axis (fewer, larger operations, as a
        # GPU wants; the code before views were measured); "auto": im2col on a CUDA device, views
        # elsewhere.  The same numbers either way; not part of config(): a way to compute.
        self.windows = "auto"

    def config(self) -> dict:
        return dict(kernel_size=(self.kh, self.kw), stride=self.stride)

    def infer_shape(self, shape: tuple) -> tuple:
        if len(shape) != 3 or shape[1] < self.kh or shape[2] < self.kw:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} does not fit input shape (N, "
                             + ", ".join(map(str, shape)) + ")")
        return (shape[0], output_size(shape[1], self.kh, self.stride, 0),
                output_size(shape[2], self.kw, self.stride, 0))

    def _geometry(self, x: Array) -> tuple[Namespace, int, int, bool]:
        """Check x; return xp, the output size and whether to read the windows as views."""
        xp = namespace(x, where=f"{self.name}.forward")
        check_input(xp, x, self, 4, "(N, C, H, W)")
        h, w = x.shape[2], x.shape[3]
        if h < self.kh or w < self.kw:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} is larger than the input {h}x{w} "
                             f"(input shape {tuple(x.shape)})")
        if self.windows not in self.WINDOWS:
            raise ValueError(f"{self.name}: windows must be one of {', '.join(self.WINDOWS)}, got {self.windows!r}")
        views = self.windows == "views" or (self.windows == "auto" and not on_gpu(x))
        return xp, output_size(h, self.kh, self.stride, 0), output_size(w, self.kw, self.stride, 0), views

    def _views(self, x: Array, out_h: int, out_w: int) -> list:
        """X_k for each window offset k = i*kw + j: the strided view of x that offset (i, j) sees at
        every output position, X_k[n, c, r, s] = x[n, c, r*stride + i, s*stride + j] (im2col's
        rows, not copied)."""
        return [x[window(i, j, self.stride, out_h, out_w)] for i in range(self.kh) for j in range(self.kw)]


class MaxPool2D(_Pool2D):
    """O = the maximum of each kh x kw window: O = max over offsets k of X_k (X_k: the input under
    offset k of every window, :meth:`_views`).  Backward routes the gradient to the (first) maximum
    of each window:
        dE/dX_k = G where X_k = O and no earlier offset k' < k has X_k' = O, else 0,
    added back onto the input where windows overlap (col2im).

    On a CPU, forward folds the views with ``maximum`` and backward hands G down the offsets in
    order, each taking it where it holds the maximum: elementwise passes only, no im2col copy, no
    argmax along a copied axis (5-8x faster forward, measured: docs/performance.md).  On a GPU,
    im2col's copy and one argmax (fewer operations)."""

    def forward(self, x: Any) -> Any:
        xp, out_h, out_w, views = self._geometry(x)
        if not views:
            cols = im2col(xp, x, self.kh, self.kw, self.stride, out_h, out_w)  # (N, C, K, oh, ow)
            self.save_for_backward(x, xp.argmax(cols, axis=2))
            return xp.max(cols, axis=2)
        windows = self._views(x, out_h, out_w)
        output = windows[0]
        for view in windows[1:]:
            output = xp.maximum(output, view)
        if len(windows) == 1:
            output = xp.asarray(output, copy=True)  # a 1x1 pool: not a view of its input
        self.save_for_backward(x, output)
        return output

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        x, saved = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, x, where=f"{self.name}.backward")
        n, c, out_h, out_w = grad_out.shape
        if xp.isdtype(saved.dtype, "integral"):  # the im2col way: saved is each window's argmax
            offsets = xp.arange(self.kh * self.kw, device=device_of(grad_out))[:, None, None]
            mask = xp.astype(saved[:, :, None, ...] == offsets, grad_out.dtype)
            return col2im(xp, mask * grad_out[:, :, None, ...], tuple(x.shape), self.kh, self.kw, self.stride)
        parts, unrouted = [], grad_out  # saved is O; unrouted: the part of G no earlier offset took
        for k, view in enumerate(self._views(x, out_h, out_w)):
            part = unrouted * xp.astype(view == saved, grad_out.dtype)
            parts.append(part)
            if k + 1 < self.kh * self.kw:
                unrouted = unrouted - part
        return add_windows(xp, parts, tuple(x.shape), self.kh, self.kw, self.stride)


class AvgPool2D(_Pool2D):
    """O = the mean of each kh x kw window, (sum over offsets k of X_k) / (kh*kw); backward
    spreads G / (kh*kw) over the window: dE/dX_k = G / (kh*kw) for every offset k (col2im).
    On a CPU the views are summed one by one; on a GPU im2col's copy is averaged at once."""

    def forward(self, x: Any) -> Any:
        xp, out_h, out_w, views = self._geometry(x)
        self.save_for_backward(tuple(x.shape))
        if not views:
            return xp.mean(im2col(xp, x, self.kh, self.kw, self.stride, out_h, out_w), axis=2)
        windows = self._views(x, out_h, out_w)
        total = windows[0]
        for view in windows[1:]:
            total = total + view
        return total / (self.kh * self.kw)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (input_shape,) = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, where=f"{self.name}.backward")
        share = grad_out / (self.kh * self.kw)
        return add_windows(xp, [share] * (self.kh * self.kw), input_shape, self.kh, self.kw, self.stride)


def _pool_token(match: re.Match, spec: SpecContext) -> Layer:
    kernel, stride = match.group(2), match.group(3)
    cls = MaxPool2D if match.group(1) == "max" else AvgPool2D
    return cls(int(kernel), stride=int(stride) if stride else None)


register(MaxPool2D, AvgPool2D, tokens=[
    Token(r"(max)pool(\d+)(?:s(\d+))?", "maxpool<K>[s<S>]", "MaxPool2D over K x K windows, stride S (K)", _pool_token),
    Token(r"(avg)pool(\d+)(?:s(\d+))?", "avgpool<K>[s<S>]", "AvgPool2D likewise", _pool_token)])
