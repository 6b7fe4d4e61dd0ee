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
from xpcnn.nn.im2col import Pair, add_windows, channels_first, conv_columns, gather_columns, gather_index, output_size
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

    Computed for many images at once as one matrix product (per group, one batched product): the
    whole batch, or chunks of it when its columns would take more than ``COLUMN_BYTES``:
        cols = the patches of the channels-first padded input (C, N, H + 2p_h, W + 2p_w), one row
               per (channel, kernel offset), one column per (image, output position):
               (C*kh*kw, N*L), L = out_h*out_w (:func:`conv_columns`: one ``stack`` of the kh*kw
               strided slices)
        Z1 = f . cols + b    f flattened to (out, C*kh*kw); (out, N*L), seen as (N, out, out_h, out_w)
    With groups, (g, out/g, C/g*kh*kw) . (g, C/g*kh*kw, N*L): the columns of group k are its rows.
    Backward, with G = dE/dZ1 as (out, N*L) (per group k, G_k its out/g rows, cols_k its rows):
        dE/df_k = G_k . cols_k^T   (each filter correlates its input with G, summed over images)
        dE/db   = sum of G over images and positions
        dE/dX   = G convolved "full" with f rotated 180 degrees, computed the cheaper of two ways:
                  col2im of f_k^T . G_k (any stride: each kernel offset's rows added back where
                  they came from, the taps d apart as in the forward); or, with stride 1, the
                  correlation of G zero-padded by d(k - 1) - p with the flipped filters, in and out
                  swapped, as a product like the forward's (:meth:`_full_correlation` decides by size).
    Memory: cols are built for chunks of images of at most ``COLUMN_BYTES`` (8 MiB) at a time, so
    no array kh*kw times a large batch's size is ever made (nor in inference, at an evaluation's
    large batches).  When the whole batch is one chunk, forward keeps its cols for backward (at
    most COLUMN_BYTES a layer); otherwise it keeps only its input (which the layer before keeps
    anyway) and backward builds each chunk's cols again: one more ``stack``, which measured no
    slower than keeping all of them (vgg's 32-channel layer at batch 128, one thread).  8 MiB rather
    than 32: the same step time within the noise on lenet5, vgg and the benchmark network, and a
    vgg step's peak memory at the default split 210 MB instead of 331 (docs/performance.md).
    The patches come from strided slices on a CPU and from one gather on a GPU (``im2col``).
    Derivation: docs/math.md, "Grouped and dilated convolution".
    """

    IM2COL = ("auto", "slices", "gather")
    COLUMN_BYTES = 8 << 20  # the most bytes of columns (a chunk of images') built at once

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
        self._input_grad = "auto"  # how dE/dX is computed: "auto", "full" or "col2im" (tests pin one)
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
        # The whole batch in one product: the input channels-first and padded, (C, N, Hp, Wp), its
        # patches as one matrix cols (C*kh*kw, N*L) (one stack of kh*kw strided slices), then
        # Z1 = f (out, C*kh*kw) @ cols -> (out, N*L), the bias added to that, and the result seen as
        # (N, out, oh, ow); in chunks of images whose columns take at most COLUMN_BYTES.
        filters, outputs, cols = self._filters(xp), [], None
        chunks = self._chunks(xp, x, out_h, out_w, backward=False)
        for start, stop in chunks:
            part = x if stop - start == n else x[start:stop, ...]
            cols = self._columns(xp, channels_first(xp, part, (self.ph, self.pw)), out_h, out_w)
            z = xp.reshape(xp.matmul(filters, cols), (self.out_channels, -1))  # groups: (g, out/g, N*L) before
            if bias is not None:
                z = z + bias[:, None]
            outputs.append(xp.permute_dims(xp.reshape(z, (self.out_channels, stop - start, out_h, out_w)),
                                           (1, 0, 2, 3)))
        # one chunk: its columns (at most COLUMN_BYTES) are kept for backward; more: only the input
        self.save_for_backward(x, cols if len(chunks) == 1 else None, (c, n, h + 2 * self.ph, w + 2 * self.pw))
        return outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=0)

    def _chunks(self, xp: Namespace, x: Array, out_h: int, out_w: int, backward: bool = True) -> list[tuple[int, int]]:
        """(start, stop) of the chunks of images whose columns -- the input's, C*kh*kw rows, and in
        backward also G's, out*kh*kw rows over the input's positions -- take at most COLUMN_BYTES
        (at least one image a chunk)."""
        n, _, h, w = x.shape
        rows = self.kh * self.kw * max(self.in_channels * out_h * out_w, self.out_channels * h * w * backward)
        size = max(1, self.COLUMN_BYTES // (rows * (xp.finfo(x.dtype).bits // 8)))
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Conv2D:
        self._gather_index = {}  # keep no index on a device the layer leaves
        super().to(backend, device, dtype)
        return self

    def _columns(self, xp: Namespace, padded: Array, out_h: int, out_w: int) -> Array:
        """cols (C*kh*kw, N*L) of the channels-first padded input: :func:`conv_columns` or
        :func:`gather_columns` (see im2col), with groups seen as (g, C/g*kh*kw, N*L)."""
        stride, dilation = (self.sh, self.sw), (self.dh, self.dw)
        rows = self.in_channels * self.kh * self.kw
        if self.im2col == "slices" or (self.im2col == "auto" and not on_gpu(padded)):
            cols = conv_columns(xp, padded, self.kh, self.kw, stride, out_h, out_w, dilation)
        else:
            device = device_of(padded)
            key = (type(padded).__module__, tuple(padded.shape), device_name(device))
            if key not in self._gather_index:  # made once per input size and device, on the device
                self._gather_index[key] = gather_index(xp, device, tuple(padded.shape), self.kh, self.kw, stride,
                                                       out_h, out_w, dilation)
            cols = gather_columns(xp, padded, self._gather_index[key], rows)
        return cols if self.groups == 1 else xp.reshape(cols, (self.groups, rows // self.groups, -1))

    def _filters(self, xp: Namespace) -> Array:
        """f flattened to (out, C/g*kh*kw), or per group (g, out/g, C/g*kh*kw)."""
        if self.groups == 1:
            return xp.reshape(self.params["weight"], (self.out_channels, -1))
        return xp.reshape(self.params["weight"], (self.groups, self.out_channels // self.groups, -1))

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """``input_grad=False`` skips dE/dX (the first layer of a network needs none)."""
        saved, kept, (c, n, padded_h, padded_w) = self.saved_for_backward()
        weight = self.params["weight"]
        xp = namespace(grad_out, weight, where=f"{self.name}.backward")
        _, _, out_h, out_w = grad_out.shape
        if self.bias:  # dE/db = the sum of G over images and positions
            self.grads["bias"] = xp.sum(grad_out, axis=(0, 2, 3))
        grad_weight, grad_x = None, []
        chunks = [(0, n)] if kept is not None else self._chunks(xp, saved, out_h, out_w)
        for start, stop in chunks:
            whole = stop - start == n
            # G = dE/dZ1 in the forward's layout, (out, N*L) (per group (g, out/g, N*L))
            grad_z = xp.reshape(xp.permute_dims(grad_out if whole else grad_out[start:stop, ...], (1, 0, 2, 3)),
                                (self.out_channels, -1))
            if self.groups > 1:
                grad_z = xp.reshape(grad_z, (self.groups, self.out_channels // self.groups, -1))
            if kept is not None:
                cols, kept = kept, None
            else:  # built again from the input (which the layer before keeps anyway)
                part = saved if whole else saved[start:stop, ...]
                cols = self._columns(xp, channels_first(xp, part, (self.ph, self.pw)), out_h, out_w)
            # dE/df = G @ cols^T: each filter correlates its input with G, over every image at once
            product = xp.matmul(grad_z, xp.matrix_transpose(cols))
            grad_weight = product if grad_weight is None else grad_weight + product
            del cols  # let the columns go before dE/dX makes arrays of the same size
            if input_grad:
                padded_shape = (c, stop - start, padded_h, padded_w)
                if self._full_correlation(padded_shape, out_h, out_w):
                    part_x = self._input_grad_full(xp, xp.reshape(grad_z, (self.out_channels, -1, out_h, out_w)))
                else:
                    part_x = self._input_grad_col2im(xp, grad_z, padded_shape, stop - start, out_h, out_w)
                grad_x.append(xp.permute_dims(part_x, (1, 0, 2, 3)))
        self.grads["weight"] = xp.reshape(grad_weight, weight.shape)
        if not input_grad:
            return None
        return grad_x[0] if len(grad_x) == 1 else xp.concat(grad_x, axis=0)

    def _full_correlation(self, padded_shape: tuple[int, ...], out_h: int, out_w: int) -> bool:
        """Whether dE/dX is cheaper as the "full" correlation of G with the flipped filters than as
        col2im of f^T.G: stride 1 only, padding at most the span d(k - 1), and the columns of
        padded G (out*kh*kw rows over the input's positions) at most twice col2im's
        (C*kh*kw rows over the output's positions), which it reads and writes about 2.5 times."""
        if (self.sh, self.sw) != (1, 1) or self.ph > self.dh * (self.kh - 1) or self.pw > self.dw * (self.kw - 1):
            return False
        if self._input_grad != "auto":
            return self._input_grad == "full"
        in_positions = (padded_shape[2] - 2 * self.ph) * (padded_shape[3] - 2 * self.pw)
        return self.out_channels * in_positions <= 2 * self.in_channels * out_h * out_w

    def _input_grad_col2im(self, xp: Namespace, grad_z: Array, padded_shape: tuple[int, ...], n: int, out_h: int,
                           out_w: int) -> Array:
        """dE/dX (C, N, H, W) as col2im of dE/dcols = f^T.G (C*kh*kw, N*L): each kernel offset's rows
        added back to the input positions they came from, the padding then cut off."""
        grad_cols = xp.matmul(xp.matrix_transpose(self._filters(xp)), grad_z)
        grad_cols = xp.reshape(grad_cols, (self.in_channels, self.kh * self.kw, n, out_h, out_w))
        grad_padded = add_windows(xp, [grad_cols[:, k, ...] for k in range(self.kh * self.kw)], padded_shape,
                                  self.kh, self.kw, (self.sh, self.sw), (self.dh, self.dw))
        ph, pw = self.ph, self.pw
        if ph or pw:
            grad_padded = grad_padded[:, :, ph:padded_shape[2] - ph, pw:padded_shape[3] - pw]
        return grad_padded

    def _input_grad_full(self, xp: Namespace, grad_z: Array) -> Array:
        """dE/dX (C, N, H, W) from G (out, N, out_h, out_w), with stride 1, as a convolution of its own:
            dE/dX[n, c, y, x] = sum over o, i, j of f[o, c, kh-1-i, kw-1-j] . Gq[n, o, y + i*d_h, x + j*d_w]
        with Gq = G zero-padded by q = d(k - 1) - p per axis: G's columns (:func:`conv_columns`,
        out*kh*kw rows) times the filters flipped and with in and out swapped, (C, out*kh*kw);
        per group k its own out/g filters and C/g channels."""
        g, kernel = self.groups, self.kh * self.kw
        qh, qw = self.dh * (self.kh - 1) - self.ph, self.dw * (self.kw - 1) - self.pw
        padded = xpx.pad(grad_z, ((0, 0), (0, 0), (qh, qh), (qw, qw)), xp=xp)  # (out, N, oh + 2q_h, ow + 2q_w)
        height, width = padded.shape[2] - self.dh * (self.kh - 1), padded.shape[3] - self.dw * (self.kw - 1)
        cols = conv_columns(xp, padded, self.kh, self.kw, 1, height, width, (self.dh, self.dw))
        flipped = xp.flip(self.params["weight"], axis=(2, 3))  # (out, C/g, kh, kw)
        per_group = (g, self.out_channels // g, self.in_channels // g, kernel)
        filters = xp.reshape(xp.permute_dims(xp.reshape(flipped, per_group), (0, 2, 1, 3)),
                             (g, self.in_channels // g, -1))  # (g, C/g, out/g*kh*kw)
        grad_x = xp.matmul(filters, xp.reshape(cols, (g, self.out_channels // g * kernel, -1)))
        return xp.reshape(grad_x, (self.in_channels, grad_z.shape[1], height, width))


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
