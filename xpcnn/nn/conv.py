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
from xpcnn.nn.im2col import Pair, col2im, conv_columns, gather_columns, gather_index, output_size
from xpcnn.nn.validate import integer, pair

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


def _compact(value: tuple[int, int]) -> Pair:
    """A pair as its record writes it: one int when both axes agree (the old records' form)."""
    return value[0] if value[0] == value[1] else value


def conv_geometry(in_channels: object, out_channels: object, kernel_size: object, stride: object,
                  padding: object, dilation: object, groups: object, where: str) -> dict[str, Any]:
    """Check a convolution's shape arguments as :class:`Conv2D` takes them, with one-line errors
    naming ``where``, and return them per axis: ``kernel``, ``stride``, ``dilation`` and
    ``padding`` as (height, width) pairs (``"same"`` resolved to d(k - 1) / 2), ``groups``,
    and ``same`` (whether the padding was given as "same")."""
    in_channels = integer(in_channels, "in_channels", where, 1)
    out_channels = integer(out_channels, "out_channels", where, 1)
    kernel = pair(kernel_size, "kernel_size", where, 1)
    strides = pair(stride, "stride", where, 1)
    dilations = pair(dilation, "dilation", where, 1)
    groups = integer(groups, "groups", where, 1)
    if in_channels % groups or out_channels % groups:
        which, count = ("in_channels", in_channels) if in_channels % groups else ("out_channels", out_channels)
        raise ValueError(f"{where}: {which} ({count}) must be divisible by groups ({groups})")
    spans = tuple(d * (k - 1) + 1 for d, k in zip(dilations, kernel))
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"{where}: padding must be an int, a pair of ints or 'same', got {padding!r}")
        if spans[0] % 2 == 0 or spans[1] % 2 == 0:
            raise ValueError(f"{where}: padding 'same' needs an odd kernel span d*(k-1)+1 on both axes, "
                             f"got {spans[0]}x{spans[1]} (kernel {kernel[0]}x{kernel[1]}, "
                             f"dilation {dilations[0]}x{dilations[1]})")
        paddings = ((spans[0] - 1) // 2, (spans[1] - 1) // 2)
    else:
        paddings = pair(padding, "padding", where, 0)
    return dict(in_channels=in_channels, out_channels=out_channels, kernel=kernel, stride=strides,
                padding=paddings, dilation=dilations, groups=groups, same=isinstance(padding, str))


class Conv2D(Layer):
    """Z1 = X * f + b: cross-correlation of the input with ``out_channels`` filters.

    With stride s, padding p, dilation d and groups g (each of the first three per axis):
        Z1[n, o, r, c] = b[o] + sum over k, i, j of f[o, k, i, j] . X[n, G(o) + k, r*s + i*d, c*s + j*d]
    (X zero-padded by p), where filter o sees only the C/g input channels of its group,
    G(o) = (o // (out/g)) * C/g; g = 1 is the plain convolution, g = C (``dw`` in a spec) the
    depthwise one.  Output size per axis: (n + 2p - d(k - 1) - 1) // s + 1 (the article's
    n - f + 1); padding "same" is d(k - 1)/2 on both sides (odd spans d(k - 1) + 1 only), so that
    the output has ceil(n / s) positions for any stride (PyTorch takes "same" with stride 1 only).

    Computed per image n as one product Z1_n = [f | b] . [cols_n ; 1]: the filters (flattened)
    and the bias as one matrix, times the input patches (:func:`conv_columns`) with a row of ones.
    With groups, the columns of all groups are built at once and multiplied in one batched
    product, (g, out/g, C/g*kh*kw) . (N, g, C/g*kh*kw, L) -> (N, g, out/g, L), the bias added after.
    Backward, with G = dE/dZ1 (per group k, G_k its out/g rows, cols_k its C/g*kh*kw rows):
        dE/df_k = X * G    (sum over n of G_n,k . cols_n,k^T: each filter correlates its input with G)
        dE/db = sum of G over batch and positions   (with g = 1: the last column of the same product)
        dE/dX = G convolved "full" with f rotated 180 degrees (here: col2im of f_k^T.G_k per group,
                the taps d apart as in the forward)
    The patches come from strided slices on a CPU and from one gather on a GPU (``im2col``).
    Derivation: docs/math.md, "Grouped and dilated convolution".
    """

    IM2COL = ("auto", "slices", "gather")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair, stride: Pair = 1,
                 padding: Pair | str = 0, bias: bool = True, init: str = "he", rng: Any = 0, im2col: str = "auto",
                 dilation: Pair = 1, groups: int = 1) -> None:
        super().__init__()
        if im2col not in self.IM2COL:
            raise ValueError(f"Conv2D: im2col must be one of {', '.join(self.IM2COL)}, got {im2col!r}")
        # How the input patches are built: strided slices (fastest on a CPU), one gather (fastest
        # on a GPU), or "auto": gather on a CUDA device, slices elsewhere.  The same columns either
        # way (bit for bit); not part of config(): a way to compute, not the architecture.
        self.im2col = im2col
        self._gather_index: dict = {}
        geometry = conv_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, "Conv2D")
        self.in_channels, self.out_channels = geometry["in_channels"], geometry["out_channels"]
        self.kh, self.kw = geometry["kernel"]
        self.sh, self.sw = geometry["stride"]
        self.ph, self.pw = geometry["padding"]
        self.dh, self.dw = geometry["dilation"]
        self.groups = geometry["groups"]
        # As config() records them: an int when both axes agree (the old records' form), else a pair.
        self.stride = _compact((self.sh, self.sw))
        self.padding: Pair | str = "same" if geometry["same"] else _compact((self.ph, self.pw))
        self.dilation = _compact((self.dh, self.dw))
        self.bias, self.init = bool(bias), init
        rng = initialisers.as_generator(rng)
        # Fan-in and fan-out as PyTorch counts them: a filter sees C/g channels.
        fan_in = self.in_channels // self.groups * self.kh * self.kw
        shape = (self.out_channels, self.in_channels // self.groups, self.kh, self.kw)
        fan_out = self.out_channels * self.kh * self.kw
        self.params["weight"] = initialisers.make_weight(rng, shape, fan_in, fan_out, init)
        if self.bias:
            self.params["bias"] = initialisers.make_bias(rng, self.out_channels, init)

    def config(self) -> dict:
        """The layer's record.  ``dilation`` and ``groups`` appear only when they are not 1, so that a
        plain convolution's record is the one checkpoints have always stored (a resume compares them)."""
        record = dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=(self.kh, self.kw),
                      stride=self.stride, padding=self.padding, bias=self.bias)
        if self.dilation != 1:
            record["dilation"] = self.dilation
        if self.groups != 1:
            record["groups"] = self.groups
        return record

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        geometry = conv_geometry(arguments["in_channels"], arguments["out_channels"], arguments["kernel_size"],
                                 arguments.get("stride", 1), arguments.get("padding", 0),
                                 arguments.get("dilation", 1), arguments.get("groups", 1), cls.__name__)
        out = geometry["out_channels"]
        weight = (out, geometry["in_channels"] // geometry["groups"], *geometry["kernel"])
        return {"weight": weight, **({"bias": (out,)} if arguments["bias"] else {})}

    def infer_shape(self, shape: tuple) -> tuple:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise shape_error(self, f"(N, {self.in_channels}, H, W)", shape)
        return self.output_shape(shape[1], shape[2])

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        span_h, span_w = self.dh * (self.kh - 1) + 1, self.dw * (self.kw - 1) + 1
        padded_h, padded_w = height + 2 * self.ph, width + 2 * self.pw
        if padded_h < span_h or padded_w < span_w:
            dilated = "" if self.dh == self.dw == 1 else f" with dilation {self.dh}x{self.dw} (span {span_h}x{span_w})"
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw}{dilated} is larger than the padded input "
                             f"{padded_h}x{padded_w}")
        return (self.out_channels, output_size(height, self.kh, self.sh, self.ph, self.dh),
                output_size(width, self.kw, self.sw, self.pw, self.dw))

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
        ph, pw = self.ph, self.pw
        padded = xpx.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), xp=xp) if ph or pw else x
        grouped = self.groups > 1
        cols = self._columns(xp, padded, out_h, out_w, ones_row=bias is not None and not grouped)
        if not grouped:
            z = xp.matmul(self._filters_and_bias(xp), cols)  # (N, out, L)
        else:  # every group's filters times its channels' columns, one batched product
            g, positions = self.groups, out_h * out_w
            filters = xp.reshape(weight, (g, self.out_channels // g, -1))  # (g, out/g, C/g*kh*kw)
            z = xp.matmul(filters, xp.reshape(cols, (n, g, -1, positions)))  # (N, g, out/g, L)
            z = xp.reshape(z, (n, self.out_channels, positions))
            if bias is not None:
                z = z + bias[:, None]
        self.save_for_backward(cols, tuple(padded.shape))
        return xp.reshape(z, (n, self.out_channels, out_h, out_w))

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Conv2D:
        self._gather_index = {}  # keep no index on a device the layer leaves
        super().to(backend, device, dtype)
        return self

    def _columns(self, xp: Namespace, padded: Array, out_h: int, out_w: int, ones_row: bool) -> Array:
        """[cols ; 1] of every image: :func:`conv_columns` or :func:`gather_columns` (see im2col)."""
        stride, dilation = (self.sh, self.sw), (self.dh, self.dw)
        if self.im2col == "slices" or (self.im2col == "auto" and not on_gpu(padded)):
            return conv_columns(xp, padded, self.kh, self.kw, stride, out_h, out_w, ones_row, dilation)
        device = device_of(padded)
        key = (type(padded).__module__, tuple(padded.shape[1:]), ones_row, device_name(device))
        if key not in self._gather_index:  # made once per input size and device, on the device
            self._gather_index[key] = gather_index(xp, device, self.in_channels, padded.shape[2], padded.shape[3],
                                                   self.kh, self.kw, stride, out_h, out_w, ones_row, dilation)
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
        positions = out_h * out_w
        if self.groups == 1:
            grad_z = xp.reshape(grad_out, (n, self.out_channels, positions))  # G = dE/dZ1
            # [dE/df | dE/db] = sum over images of G_n.[cols_n ; 1]^T (one batched product, a sum over N)
            grad_both = xp.sum(xp.matmul(grad_z, xp.permute_dims(cols, (0, 2, 1))), axis=0)
            patch = self.in_channels * self.kh * self.kw
            self.grads["weight"] = xp.reshape(grad_both[:, :patch], weight.shape)
            if self.bias:
                self.grads["bias"] = grad_both[:, patch]
            if not input_grad:
                return None
            grad_cols = xp.matmul(xp.reshape(weight, (self.out_channels, -1)).T, grad_z)  # (N, C*K, L)
        else:  # per group k: dE/df_k = sum over n of G_n,k . cols_n,k^T; dE/dcols_k = f_k^T . G_k
            g = self.groups
            grad_z = xp.reshape(grad_out, (n, g, self.out_channels // g, positions))  # G per group
            cols = xp.reshape(cols, (n, g, -1, positions))  # (N, g, C/g*K, L)
            grad_filters = xp.sum(xp.matmul(grad_z, xp.permute_dims(cols, (0, 1, 3, 2))), axis=0)
            self.grads["weight"] = xp.reshape(grad_filters, weight.shape)
            if self.bias:
                self.grads["bias"] = xp.sum(grad_out, axis=(0, 2, 3))
            if not input_grad:
                return None
            filters = xp.reshape(weight, (g, self.out_channels // g, -1))
            grad_cols = xp.matmul(xp.permute_dims(filters, (0, 2, 1)), grad_z)  # (N, g, C/g*K, L)
        grad_cols = xp.reshape(grad_cols, (n, self.in_channels, self.kh * self.kw, out_h, out_w))
        grad_padded = col2im(xp, grad_cols, padded_shape, self.kh, self.kw, (self.sh, self.sw), (self.dh, self.dw))
        ph, pw = self.ph, self.pw
        return grad_padded[:, :, ph:padded_shape[2] - ph, pw:padded_shape[3] - pw] if ph or pw else grad_padded


_SIZE = r"\d+(?:x\d+)?"  # A, or AxB: height x width


def _size(text: str) -> Pair:
    """'3' -> 3, '3x1' -> (3, 1): a spec's size, one int or a (height, width) pair."""
    if "x" in text:
        height, width = text.split("x")
        return int(height), int(width)
    return int(text)


def _conv_token(match: re.Match, spec: SpecContext) -> Conv2D:
    if len(spec.shape) != 3:
        raise ValueError(f"a conv layer needs images (C, H, W), it gets shape {spec.shape}")
    filters, kernel, stride, padding, dilation, groups, depthwise, nobias = match.groups()
    channels = spec.shape[0]
    if depthwise and int(filters) % channels:
        raise ValueError(f"depthwise (dw) needs a multiple of the {channels} input channels as filters, got {filters}")
    return Conv2D(channels, int(filters), _size(kernel), stride=_size(stride or "1"),
                  padding="same" if padding == "same" else _size(padding or "0"),
                  bias=spec.bias and not nobias, init=spec.init, rng=spec.rng, im2col=spec.im2col,
                  dilation=_size(dilation or "1"), groups=channels if depthwise else int(groups or 1))


register(Conv2D, tokens=[Token(
    rf"conv(\d+)k({_SIZE})(?:s({_SIZE}))?(?:p(same|{_SIZE}))?(?:d({_SIZE}))?(?:g(\d+)|(dw))?(nb)?",
    "conv<F>k<K>[s<S>][p<P>][d<D>][g<G>|dw][nb]",
    "\nConv2D: F filters of K x K, stride S (1), zero padding P (0); nb: no bias\n"
    "K, S, P, D: A or AxB (height x width); P may be same (output ceil(n/S))\n"
    "dD: dilation (taps D apart); gG: G groups; dw: depthwise (groups = channels)",
    _conv_token)])
