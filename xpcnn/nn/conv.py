"""The convolution layer, :class:`Conv2D` (batch-first, NCHW), and its spec token ``conv``.

Every layer takes its array namespace from its inputs (``namespace(...)``), creates new arrays on
the inputs' device and dtype, and never mutates a parameter in place: an optimizer *replaces*
``layer.params[name]``.  Notation follows the source article: X input, f filters, Z1 = X * f,
A = sigma(Z1).  ``*`` is cross-correlation (what deep-learning libraries call convolution).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import array_api_extra as xpx
from array_api_compat import device as device_of

from xpcnn.backends import Array, Backend, Namespace, device_name, namespace, on_gpu
from xpcnn.nn import init as initialisers
from xpcnn.nn.base import Layer, Token, check_dtype, check_input, register, shape_error
from xpcnn.nn.im2col import col2im, conv_columns, gather_columns, gather_index, output_size
from xpcnn.nn.validate import integer, pair

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


class Conv2D(Layer):
    """Z1 = X * f + b: cross-correlation of the input with ``out_channels`` filters.

    Output size per spatial axis: (n + 2p - f) // s + 1 (the article's n - f + 1).
    Computed per image n as one product Z1_n = [f | b] . [cols_n ; 1]: the filters (flattened)
    and the bias as one matrix, times the input patches (:func:`conv_columns`) with a row of ones.
    Backward, with G = dE/dZ1:
        dE/df = X * G    (each filter's gradient correlates its input with G, summed over the batch)
        dE/db = sum of G over batch and positions   (both: sum over n of G_n . [cols_n ; 1]^T)
        dE/dX = G convolved "full" with f rotated 180 degrees (here: col2im of f^T.G)
    The patches come from strided slices on a CPU and from one gather on a GPU (``im2col``).
    """

    IM2COL = ("auto", "slices", "gather")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, bias: bool = True, init: str = "he", rng: Any = 0, im2col: str = "auto") -> None:
        super().__init__()
        if im2col not in self.IM2COL:
            raise ValueError(f"Conv2D: im2col must be one of {', '.join(self.IM2COL)}, got {im2col!r}")
        # How the input patches are built: strided slices (fastest on a CPU), one gather (fastest
        # on a GPU), or "auto": gather on a CUDA device, slices elsewhere.  The same columns either
        # way (bit for bit); not part of config(): a way to compute, not the architecture.
        self.im2col = im2col
        self._gather_index: dict = {}
        self.in_channels = integer(in_channels, "in_channels", "Conv2D", 1)
        self.out_channels = integer(out_channels, "out_channels", "Conv2D", 1)
        self.kh, self.kw = pair(kernel_size, "kernel_size", "Conv2D", 1)
        self.stride = integer(stride, "stride", "Conv2D", 1)
        self.padding = integer(padding, "padding", "Conv2D", 0)
        self.bias, self.init = bool(bias), init
        rng = initialisers.as_generator(rng)
        fan_in = self.in_channels * self.kh * self.kw
        shape = (self.out_channels, self.in_channels, self.kh, self.kw)
        fan_out = self.out_channels * self.kh * self.kw
        self.params["weight"] = initialisers.make_weight(rng, shape, fan_in, fan_out, init)
        if self.bias:
            self.params["bias"] = initialisers.make_bias(rng, self.out_channels, init)

    def config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=(self.kh, self.kw),
                    stride=self.stride, padding=self.padding, bias=self.bias)

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        out = integer(arguments["out_channels"], "out_channels", cls.__name__, 1)
        weight = (out, integer(arguments["in_channels"], "in_channels", cls.__name__, 1),
                  *pair(arguments["kernel_size"], "kernel_size", cls.__name__, 1))
        return {"weight": weight, **({"bias": (out,)} if arguments["bias"] else {})}

    def infer_shape(self, shape: tuple) -> tuple:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise shape_error(self, f"(N, {self.in_channels}, H, W)", shape)
        return self.output_shape(shape[1], shape[2])

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        p = self.padding
        if height + 2 * p < self.kh or width + 2 * p < self.kw:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} is larger than the padded input "
                             f"{height + 2 * p}x{width + 2 * p}")
        return (self.out_channels, output_size(height, self.kh, self.stride, p),
                output_size(width, self.kw, self.stride, p))

    def forward(self, x: Any) -> Any:
        weight, bias = self.params["weight"], self.params.get("bias")
        xp = namespace(x, weight, bias, where=f"{self.name}.forward")
        check_input(xp, x, self, 4, f"(N, {self.in_channels}, H, W)")
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        _, out_h, out_w = self.output_shape(h, w)
        check_dtype(self, x, weight)
        # One strided slice of the (padded) input per kernel offset, so that image n's columns
        # form a (C*kh*kw + 1, L) matrix (the last row ones); filters and bias then multiply
        # every image at once: [f | b] (out, C*kh*kw + 1) @ cols (N, C*kh*kw + 1, L) -> Z1 (N, out, L),
        # already batch-first, with no separate pass to add the bias (measured: docs/performance.md).
        p = self.padding
        padded = xpx.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), xp=xp) if p else x
        cols = self._columns(xp, padded, out_h, out_w, ones_row=bias is not None)
        z = xp.matmul(self._filters_and_bias(xp), cols)  # (N, out, L)
        self.save_for_backward(cols, tuple(padded.shape))
        return xp.reshape(z, (n, self.out_channels, out_h, out_w))

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Conv2D:
        self._gather_index = {}  # keep no index on a device the layer leaves
        super().to(backend, device, dtype)
        return self

    def _columns(self, xp: Namespace, padded: Array, out_h: int, out_w: int, ones_row: bool) -> Array:
        """[cols ; 1] of every image: :func:`conv_columns` or :func:`gather_columns` (see im2col)."""
        if self.im2col == "slices" or (self.im2col == "auto" and not on_gpu(padded)):
            return conv_columns(xp, padded, self.kh, self.kw, self.stride, out_h, out_w, ones_row)
        device = device_of(padded)
        key = (type(padded).__module__, tuple(padded.shape[1:]), ones_row, device_name(device))
        if key not in self._gather_index:  # made once per input size and device, on the device
            self._gather_index[key] = gather_index(xp, device, self.in_channels, padded.shape[2], padded.shape[3],
                                                   self.kh, self.kw, self.stride, out_h, out_w, ones_row)
        return gather_columns(xp, padded, self._gather_index[key], out_h * out_w, ones_row)

    def _filters_and_bias(self, xp: Namespace) -> Array:
        """[f | b]: the filters flattened to (out, C*kh*kw), the bias (if any) as one more column."""
        filters = xp.reshape(self.params["weight"], (self.out_channels, -1))
        if not self.bias:
            return filters
        return xp.concat([filters, self.params["bias"][:, None]], axis=1)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """``input_grad=False`` skips dE/dX (the first layer of a network needs none)."""
        cols, padded_shape = self.saved_for_backward()
        weight = self.params["weight"]
        xp = namespace(grad_out, weight, where=f"{self.name}.backward")
        n, _, out_h, out_w = grad_out.shape
        grad_z = xp.reshape(grad_out, (n, self.out_channels, out_h * out_w))  # G = dE/dZ1
        # [dE/df | dE/db] = sum over images of G_n.[cols_n ; 1]^T (one batched product, a sum over N)
        grad_both = xp.sum(xp.matmul(grad_z, xp.permute_dims(cols, (0, 2, 1))), axis=0)
        patch = self.in_channels * self.kh * self.kw
        self.grads["weight"] = xp.reshape(grad_both[:, :patch], weight.shape)
        if self.bias:
            self.grads["bias"] = grad_both[:, patch]
        if not input_grad:
            return None
        grad_cols = xp.matmul(xp.reshape(weight, (self.out_channels, -1)).T, grad_z)  # (N, C*K, L)
        grad_cols = xp.reshape(grad_cols, (n, self.in_channels, self.kh * self.kw, out_h, out_w))
        grad_padded = col2im(xp, grad_cols, padded_shape, self.kh, self.kw, self.stride)
        p = self.padding
        return grad_padded[:, :, p:padded_shape[2] - p, p:padded_shape[3] - p] if p else grad_padded


def _conv_token(match: re.Match, spec: SpecContext) -> Conv2D:
    if len(spec.shape) != 3:
        raise ValueError(f"a conv layer needs images (C, H, W), it gets shape {spec.shape}")
    filters, kernel, stride, padding, nobias = match.groups()
    return Conv2D(spec.shape[0], int(filters), int(kernel), stride=int(stride or 1), padding=int(padding or 0),
                  bias=spec.bias and not nobias, init=spec.init, rng=spec.rng, im2col=spec.im2col)


register(Conv2D, tokens=[Token(r"conv(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?(nb)?", "conv<F>k<K>[s<S>][p<P>][nb]",
                               "Conv2D: F filters of K x K, stride S (1), zero padding P (0); nb: no bias",
                               _conv_token)])
