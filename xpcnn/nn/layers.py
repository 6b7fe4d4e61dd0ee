"""Layers with hand-written forward and backward passes (batch-first, NCHW).

Every layer takes its array namespace from its inputs (``namespace(...)``),
creates new arrays on the inputs' device and dtype, and never mutates a
parameter in place: an optimizer *replaces* ``layer.params[name]``.

Notation follows the source article: X input, f filters, Z1 = X * f,
A = sigma(Z1), Z2 = W^T.A + b, O = sigma(Z2).  ``*`` is cross-correlation
(what deep-learning libraries call convolution).
"""

from __future__ import annotations

import array_api_extra as xpx
from array_api_compat import device as device_of

from xpcnn.nn import init as initialisers
from xpcnn.backends import Backend, device_name, namespace, on_gpu, resolve, transfer
from xpcnn.nn.im2col import _output_size, _window, add_windows, col2im, conv_columns, gather_columns, gather_index, im2col


def _size(value, name: str, layer: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value}")
    return value


def _pair(value, name: str, layer: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
        return _size(value[0], name, layer, minimum), _size(value[1], name, layer, minimum)
    value = _size(value, name, layer, minimum)
    return value, value


def _check_input(xp, x, layer: "Layer", ndim: int, expected: str):
    if x.ndim != ndim:
        raise ValueError(f"{layer.name}: expected input of shape {expected}, got shape {tuple(x.shape)}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{layer.name}: expected a floating-point input, got dtype {x.dtype}; "
                        f"scale images to float first (xpcnn.data.to_batch does)")


class Layer:
    """A layer: ``forward(x)``, ``backward(grad_out, input_grad=True) -> grad_in``, and named
    ``params`` / ``grads`` dictionaries (empty for parameter-free layers).

    ``backward`` fills ``grads`` (dE/d of each parameter) and returns dE/dX; with
    ``input_grad=False`` it may skip dE/dX and return None (the first layer of a network: nothing
    uses its input gradient).  Every layer takes the flag, so ``Sequential.backward`` treats them alike.

    ``forward`` keeps what ``backward`` needs with :meth:`save_for_backward`; ``backward`` takes
    it back with :meth:`saved_for_backward`, which lets it go.  Nothing a step computed stays
    alive into the next step: less memory held between steps, and on NumPy a step 25% faster when
    the allocator keeps the freed memory for the next one (:mod:`xpcnn.hostmem`,
    docs/performance.md).  With ``saving = False``
    (``Sequential.inference()``) forward keeps nothing: prediction and evaluation."""

    saving = True

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self._saved = None

    def save_for_backward(self, *values) -> None:
        if self.saving:
            self._saved = values

    def saved_for_backward(self) -> tuple:
        saved, self._saved = getattr(self, "_saved", None), None
        if saved is None:
            raise RuntimeError(f"{self.name}.backward: no forward pass to go back through (backward runs "
                               "once per training forward; not after an inference() forward)")
        return saved

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, x):
        return self.forward(x)

    def named_parameters(self):
        """(name, array) pairs; a Sequential prefixes them with the layer's index."""
        return iter(self.params.items())

    def named_gradients(self):
        return iter(self.grads.items())

    def set_parameter(self, name: str, value) -> None:
        """Replace (never mutate) one parameter: what optimizers call."""
        self.params[name] = value

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {}

    def infer_shape(self, shape: tuple) -> tuple:
        """Per-example output shape for a per-example input shape (no batch axis);
        raises a ValueError naming this layer if the input cannot fit."""
        return tuple(shape)

    def to(self, backend, device=None, dtype: str | None = None):
        """Move parameters to ``backend`` (a :class:`Backend` or a name) and ``dtype``."""
        if not isinstance(backend, Backend):
            backend = resolve(backend, device)
        self.params = {k: transfer(v, backend, dtype) for k, v in self.params.items()}
        self.grads = {}
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"


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

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 init="he", rng=0, im2col="auto"):
        super().__init__()
        if im2col not in self.IM2COL:
            raise ValueError(f"Conv2D: im2col must be one of {', '.join(self.IM2COL)}, got {im2col!r}")
        # How the input patches are built: strided slices (fastest on a CPU), one gather (fastest
        # on a GPU), or "auto": gather on a CUDA device, slices elsewhere.  The same columns either
        # way (bit for bit); not part of config(): a way to compute, not the architecture.
        self.im2col, self._gather_index = im2col, {}
        self.in_channels = _size(in_channels, "in_channels", "Conv2D", 1)
        self.out_channels = _size(out_channels, "out_channels", "Conv2D", 1)
        self.kh, self.kw = _pair(kernel_size, "kernel_size", "Conv2D", 1)
        self.stride = _size(stride, "stride", "Conv2D", 1)
        self.padding = _size(padding, "padding", "Conv2D", 0)
        self.bias, self.init = bool(bias), init
        rng = initialisers.as_generator(rng)
        fan_in = self.in_channels * self.kh * self.kw
        shape = (self.out_channels, self.in_channels, self.kh, self.kw)
        self.params["weight"] = initialisers.make_weight(rng, shape, fan_in, self.out_channels * self.kh * self.kw, init)
        if self.bias:
            self.params["bias"] = initialisers.make_bias(rng, self.out_channels, init)

    def config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=(self.kh, self.kw),
                    stride=self.stride, padding=self.padding, bias=self.bias)

    def infer_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_channels}, H, W), got shape (N, "
                             + ", ".join(map(str, shape)) + ")")
        return self.output_shape(shape[1], shape[2])

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        p = self.padding
        if height + 2 * p < self.kh or width + 2 * p < self.kw:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} is larger than the padded input "
                             f"{height + 2 * p}x{width + 2 * p}")
        return (self.out_channels, _output_size(height, self.kh, self.stride, p),
                _output_size(width, self.kw, self.stride, p))

    def forward(self, x):
        weight, bias = self.params["weight"], self.params.get("bias")
        xp = namespace(x, weight, bias, where=f"{self.name}.forward")
        _check_input(xp, x, self, 4, f"(N, {self.in_channels}, H, W)")
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        _, out_h, out_w = self.output_shape(h, w)
        if x.dtype != weight.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match parameter dtype {weight.dtype}")
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

    def to(self, backend, device=None, dtype: str | None = None):
        self._gather_index = {}  # keep no index on a device the layer leaves
        return super().to(backend, device, dtype)

    def _columns(self, xp, padded, out_h: int, out_w: int, ones_row: bool):
        """[cols ; 1] of every image: :func:`conv_columns` or :func:`gather_columns` (see im2col)."""
        if self.im2col == "slices" or (self.im2col == "auto" and not on_gpu(padded)):
            return conv_columns(xp, padded, self.kh, self.kw, self.stride, out_h, out_w, ones_row)
        device = device_of(padded)
        key = (type(padded).__module__, tuple(padded.shape[1:]), ones_row, device_name(device))
        if key not in self._gather_index:  # made once per input size and device, on the device
            self._gather_index[key] = gather_index(xp, device, self.in_channels, padded.shape[2], padded.shape[3],
                                                   self.kh, self.kw, self.stride, out_h, out_w, ones_row)
        return gather_columns(xp, padded, self._gather_index[key], out_h * out_w, ones_row)

    def _filters_and_bias(self, xp):
        """[f | b]: the filters flattened to (out, C*kh*kw), the bias (if any) as one more column."""
        filters = xp.reshape(self.params["weight"], (self.out_channels, -1))
        if not self.bias:
            return filters
        return xp.concat([filters, self.params["bias"][:, None]], axis=1)

    def backward(self, grad_out, input_grad: bool = True):
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


class Dense(Layer):
    """Z2 = X.W + b with W of shape (in_features, out_features), the article's
    W (m inputs x n neurons), so one row of Z2 is W^T.A + b.

    Backward, with G = dE/dZ2: dE/dW = X^T.G, dE/db = sum of G over the batch, dE/dX = G.W^T.
    """

    def __init__(self, in_features, out_features, bias=True, init="glorot", rng=0):
        super().__init__()
        self.in_features = _size(in_features, "in_features", "Dense", 1)
        self.out_features = _size(out_features, "out_features", "Dense", 1)
        self.bias, self.init = bool(bias), init
        rng = initialisers.as_generator(rng)
        shape = (self.in_features, self.out_features)
        self.params["weight"] = initialisers.make_weight(rng, shape, self.in_features, self.out_features, init)
        if self.bias:
            self.params["bias"] = initialisers.make_bias(rng, self.out_features, init)

    def config(self):
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias)

    def infer_shape(self, shape):
        if tuple(shape) != (self.in_features,):
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), got shape (N, "
                             + ", ".join(map(str, shape)) + ")")
        return (self.out_features,)

    def forward(self, x):
        weight, bias = self.params["weight"], self.params.get("bias")
        xp = namespace(x, weight, bias, where=f"{self.name}.forward")
        _check_input(xp, x, self, 2, f"(N, {self.in_features})")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), got shape {tuple(x.shape)}")
        if x.dtype != weight.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match parameter dtype {weight.dtype}")
        self.save_for_backward(x)
        z = xp.matmul(x, weight)
        return z + bias if bias is not None else z

    def backward(self, grad_out, input_grad: bool = True):
        (x,), weight = self.saved_for_backward(), self.params["weight"]
        xp = namespace(grad_out, weight, where=f"{self.name}.backward")
        self.grads["weight"] = xp.matmul(x.T, grad_out)
        if self.bias:
            self.grads["bias"] = xp.sum(grad_out, axis=0)
        return xp.matmul(grad_out, weight.T) if input_grad else None


class Sigmoid(Layer):
    """A = sigma(Z) = 1 / (1 + e^-Z), computed as (1 + tanh(Z/2)) / 2: no overflow
    for any |Z|.  Backward: dA/dZ = A (1 - A).

    The arrays are as large as the convolution's output, so every pass over them counts: the
    scaling and the shift, and the backward's products, update the fresh temporary they just
    made with in-place operators (array API; JAX rebinds the name instead).  Nothing a caller
    holds is changed."""

    def forward(self, x):
        xp = namespace(x, where=f"{self.name}.forward")
        output = xp.tanh(0.5 * x)
        output *= 0.5
        output += 0.5
        self.save_for_backward(output)
        return output

    def backward(self, grad_out, input_grad: bool = True):
        (a,) = self.saved_for_backward()
        if not input_grad:
            return None
        grad = 1.0 - a      # dE/dZ = G * A (1 - A), in one temporary
        grad *= a
        grad *= grad_out
        return grad


class Tanh(Layer):
    """A = tanh(Z); backward dA/dZ = 1 - A^2."""

    def forward(self, x):
        xp = namespace(x, where=f"{self.name}.forward")
        output = xp.tanh(x)
        self.save_for_backward(output)
        return output

    def backward(self, grad_out, input_grad: bool = True):
        (a,) = self.saved_for_backward()
        return grad_out * (1.0 - a * a) if input_grad else None


class ReLU(Layer):
    """A = max(Z, 0); backward passes the gradient where Z > 0."""

    def forward(self, x):
        xp = namespace(x, where=f"{self.name}.forward")
        mask = xp.astype(x > 0, x.dtype)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, grad_out, input_grad: bool = True):
        (mask,) = self.saved_for_backward()
        return grad_out * mask if input_grad else None


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), the article's flattening of the feature maps before the dense layer."""

    def forward(self, x):
        xp = namespace(x, where=f"{self.name}.forward")
        self.save_for_backward(tuple(x.shape))
        return xp.reshape(x, (x.shape[0], -1))

    def backward(self, grad_out, input_grad: bool = True):
        (shape,) = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, where=f"{self.name}.backward")
        return xp.reshape(grad_out, shape)

    def infer_shape(self, shape):
        size = 1
        for extent in shape:
            size *= extent
        return (size,)


class _Pool2D(Layer):
    WINDOWS = ("auto", "views", "im2col")

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kh, self.kw = _pair(kernel_size, "kernel_size", self.name, 1)
        self.stride = self.kh if stride is None else _size(stride, "stride", self.name, 1)
        if stride is None and self.kh != self.kw:
            raise ValueError(f"{self.name}: give a stride for a non-square kernel {self.kh}x{self.kw}")
        # How the windows are read: elementwise passes over one strided view per offset (fastest
        # on a CPU), or im2col's copy reduced along its offset axis (fewer, larger operations, as a
        # GPU wants; the code before views were measured); "auto": im2col on a CUDA device, views
        # elsewhere.  The same numbers either way; not part of config(): a way to compute.
        self.windows = "auto"

    def config(self):
        return dict(kernel_size=(self.kh, self.kw), stride=self.stride)

    def infer_shape(self, shape):
        if len(shape) != 3 or shape[1] < self.kh or shape[2] < self.kw:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} does not fit input shape (N, "
                             + ", ".join(map(str, shape)) + ")")
        return (shape[0], _output_size(shape[1], self.kh, self.stride, 0), _output_size(shape[2], self.kw, self.stride, 0))

    def _geometry(self, x):
        """Check x; return xp, the output size and whether to read the windows as views."""
        xp = namespace(x, where=f"{self.name}.forward")
        _check_input(xp, x, self, 4, "(N, C, H, W)")
        h, w = x.shape[2], x.shape[3]
        if h < self.kh or w < self.kw:
            raise ValueError(f"{self.name}: kernel {self.kh}x{self.kw} is larger than the input {h}x{w} "
                             f"(input shape {tuple(x.shape)})")
        if self.windows not in self.WINDOWS:
            raise ValueError(f"{self.name}: windows must be one of {', '.join(self.WINDOWS)}, got {self.windows!r}")
        views = self.windows == "views" or (self.windows == "auto" and not on_gpu(x))
        return xp, _output_size(h, self.kh, self.stride, 0), _output_size(w, self.kw, self.stride, 0), views

    def _views(self, x, out_h: int, out_w: int) -> list:
        """X_k for each window offset k = i*kw + j: the strided view of x that offset (i, j) sees at
        every output position, X_k[n, c, r, s] = x[n, c, r*stride + i, s*stride + j] (im2col's
        rows, not copied)."""
        return [x[_window(i, j, self.stride, out_h, out_w)] for i in range(self.kh) for j in range(self.kw)]


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

    def forward(self, x):
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

    def backward(self, grad_out, input_grad: bool = True):
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

    def forward(self, x):
        xp, out_h, out_w, views = self._geometry(x)
        self.save_for_backward(tuple(x.shape))
        if not views:
            return xp.mean(im2col(xp, x, self.kh, self.kw, self.stride, out_h, out_w), axis=2)
        windows = self._views(x, out_h, out_w)
        total = windows[0]
        for view in windows[1:]:
            total = total + view
        return total / (self.kh * self.kw)

    def backward(self, grad_out, input_grad: bool = True):
        (input_shape,) = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, where=f"{self.name}.backward")
        share = grad_out / (self.kh * self.kw)
        return add_windows(xp, [share] * (self.kh * self.kw), input_shape, self.kh, self.kw, self.stride)


LAYER_TYPES = {cls.__name__: cls for cls in (Conv2D, Dense, Sigmoid, Tanh, ReLU, Flatten, MaxPool2D, AvgPool2D)}
