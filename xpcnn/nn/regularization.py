"""Regularisation layers: :class:`Dropout` (inverted) and batch normalisation
(:class:`BatchNorm2D` for (N, C, H, W) feature maps, :class:`BatchNorm1D` for (N, F) features).

Both behave differently in training and in inference, and both switch on the layer's ``saving``
flag, which :meth:`xpcnn.nn.sequential.Sequential.inference` turns off: a forward that keeps activations
for a backward pass is a training forward; one under ``model.inference()`` is an inference forward
(Dropout the identity, BatchNorm with its running statistics).

Dropout's randomness is not the layer's: the layer owns no generator.  Before each training forward
the caller hands the model the step's *noise* -- U[0, 1) uniforms drawn on the host from the run's
seed (:func:`xpcnn.training.noise.draw_noise`), cast there to the model's dtype, so that every
backend receives the same bits and a resumed run draws the same masks -- with
``model.set_noise(noise)`` (names and shapes from ``model.noise_shapes(batch, input_shape)``).  The
layer keeps an element where ``noise >= p``.  Each noise array serves one training forward.

BatchNorm's running statistics are *buffers*: arrays in ``layer.buffers`` (a dict, replaced and
never mutated, like parameters) that are state but not parameters.  They are in
``Sequential.state_dict()`` (``"3.running_mean"``, ``"3.running_var"``), checkpoints and parity
comparisons; no gradient is computed for them and no optimizer updates them.  A training forward
computes new ones; the compiled executors take them in and hand them out of the pure step.
"""

from __future__ import annotations

import math

import numpy as np

from xpcnn.backends import Backend, namespace, resolve, transfer
from xpcnn.nn.layers import LAYER_TYPES, Layer, _check_input, _size


def _number(value, name: str, layer: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{layer}: {name} must be a finite number, got {value!r}")
    return float(value)


class Dropout(Layer):
    """Inverted dropout: in training y = x * mask / (1 - p) with mask = (noise >= p), an element
    kept with probability 1 - p (noise ~ U[0, 1)); backward dE/dX = G * mask / (1 - p).
    In inference (``Sequential.inference()``), and for p = 0, the identity.

    The noise of a training forward comes from :meth:`set_noise` (``Sequential.set_noise``): an array
    of the input's shape and dtype on its device; it is used by one forward and then let go.  A
    training forward without it raises a RuntimeError naming the layer."""

    def __init__(self, p=0.5):
        super().__init__()
        p = _number(p, "p", "Dropout")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p (the probability of dropping an element) must be in [0, 1), got {p!r}")
        self.p = p
        self.noise = None
        self.where = ""  # "layer 5" once a Sequential named it (noise_shapes / set_noise): for messages

    def config(self):
        return {"p": self.p}

    def noise_shape(self, shape: tuple) -> tuple | None:
        """The per-example shape of the noise a training forward on per-example input ``shape``
        needs: the input's own; None when p = 0 (nothing to draw)."""
        return tuple(shape) if self.p > 0 else None

    def set_noise(self, noise) -> None:
        """The next training forward's U[0, 1) noise (input shape and dtype, input device)."""
        self.noise = noise

    def forward(self, x):
        xp = namespace(x, where=f"{self.name}.forward")
        if not self.saving or self.p == 0.0:
            if self.saving:
                self.save_for_backward(None)
            return x
        noise, self.noise = self.noise, None
        label = f"{self.name}(p={self.p})" + (f" ({self.where})" if self.where else "")
        if noise is None:
            raise RuntimeError(f"{label}: a training forward needs this step's noise: call "
                               "model.set_noise(draw_noise(model.noise_shapes(batch, input_shape), seed)) "
                               "before it (xpcnn.training.noise; the Trainer's executors do), or run the "
                               "forward under model.inference() (dropout off)")
        xp = namespace(x, noise, where=f"{self.name}.forward")
        if tuple(noise.shape) != tuple(x.shape):
            raise ValueError(f"{label}: noise of shape {tuple(noise.shape)} for an input of shape {tuple(x.shape)}")
        if noise.dtype != x.dtype:
            raise TypeError(f"{label}: noise dtype {noise.dtype} does not match the input's {x.dtype}")
        mask = xp.astype(noise >= self.p, x.dtype)
        self.save_for_backward(mask)
        return x * mask / (1.0 - self.p)

    def backward(self, grad_out, input_grad: bool = True):
        (mask,) = self.saved_for_backward()
        if not input_grad:
            return None
        return grad_out if mask is None else grad_out * mask / (1.0 - self.p)

    def to(self, backend, device=None, dtype: str | None = None):
        self.noise = None  # noise is drawn for the device and dtype it is used on
        return super().to(backend, device, dtype)


class _BatchNorm(Layer):
    """Batch normalisation over every axis but the feature axis 1 (Ioffe & Szegedy 2015).

    Training: with M = the number of values per feature in the batch (N, or N*H*W),
        mean = sum(x) / M,  var = sum((x - mean)^2) / M  (biased),  xhat = (x - mean) / sqrt(var + eps),
        y = gamma * xhat + beta,
    and the running statistics (buffers) become
        running_mean = (1 - momentum) running_mean + momentum mean,
        running_var  = (1 - momentum) running_var  + momentum var * M / (M - 1)   (unbiased, as PyTorch).
    Inference: the same with running_mean and running_var in place of the batch's.
    Backward (training), with G = dE/dY and sums over the batch axes:
        dE/dgamma = sum(G xhat),  dE/dbeta = sum(G),
        dE/dX = gamma / (M sqrt(var + eps)) * (M G - sum(G) - xhat sum(G xhat)).
    Parameters ``weight`` (gamma, ones) and ``bias`` (beta, zeros); buffers ``running_mean``
    (zeros) and ``running_var`` (ones)."""

    AXES: tuple = ()
    SIZE_NAME = ""
    LAYOUT = ""

    def __init__(self, size, eps=1e-5, momentum=0.1):
        super().__init__()
        self.size = _size(size, self.SIZE_NAME, self.name, 1)
        self.eps = _number(eps, "eps", self.name)
        self.momentum = _number(momentum, "momentum", self.name)
        if self.eps <= 0:
            raise ValueError(f"{self.name}: eps must be > 0, got {eps!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{self.name}: momentum must be in [0, 1], got {momentum!r}")
        self.params["weight"] = np.ones(self.size)
        self.params["bias"] = np.zeros(self.size)
        self.buffers = {"running_mean": np.zeros(self.size), "running_var": np.ones(self.size)}

    def config(self):
        return {self.SIZE_NAME: self.size, "eps": self.eps, "momentum": self.momentum}

    def named_buffers(self):
        return iter(self.buffers.items())

    def set_buffer(self, name: str, value) -> None:
        """Replace (never mutate) one buffer."""
        if name not in self.buffers:
            raise KeyError(f"{self.name} has no buffer {name!r} (its buffers: {', '.join(self.buffers)})")
        self.buffers = {**self.buffers, name: value}

    def to(self, backend, device=None, dtype: str | None = None):
        if not isinstance(backend, Backend):
            backend = resolve(backend, device)
        super().to(backend, dtype=dtype)
        self.buffers = {k: transfer(v, backend, dtype) for k, v in self.buffers.items()}
        return self

    def _view(self, xp, vector):
        """A per-feature vector shaped to broadcast against the input."""
        return vector

    def forward(self, x):
        weight, bias = self.params["weight"], self.params["bias"]
        mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        xp = namespace(x, weight, bias, mean, var, where=f"{self.name}.forward")
        _check_input(xp, x, self, len(self.AXES) + 1, self.LAYOUT)
        if x.shape[1] != self.size:
            raise ValueError(f"{self.name}: expected input of shape {self.LAYOUT}, got shape {tuple(x.shape)}")
        if x.dtype != weight.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match parameter dtype {weight.dtype}")
        view = lambda vector: self._view(xp, vector)  # noqa: E731
        if self.saving:  # training: the batch's statistics
            count = math.prod(x.shape[axis] for axis in self.AXES)
            if count < 2:
                raise ValueError(f"{self.name}: training needs more than one value per feature for the batch "
                                 f"statistics, got input shape {tuple(x.shape)}")
            mean = xp.mean(x, axis=self.AXES)
            centred = x - view(mean)
            var = xp.mean(centred * centred, axis=self.AXES)
            invstd = 1.0 / xp.sqrt(var + self.eps)
            xhat = centred * view(invstd)
            self.save_for_backward(xhat, invstd, count)
            m = self.momentum
            self.buffers = {"running_mean": (1.0 - m) * self.buffers["running_mean"] + m * mean,
                            "running_var": (1.0 - m) * self.buffers["running_var"]
                            + m * (var * (count / (count - 1)))}
        else:  # inference: the running statistics
            xhat = (x - view(mean)) * view(1.0 / xp.sqrt(var + self.eps))
        return xhat * view(weight) + view(bias)

    def backward(self, grad_out, input_grad: bool = True):
        xhat, invstd, count = self.saved_for_backward()
        weight = self.params["weight"]
        xp = namespace(grad_out, weight, where=f"{self.name}.backward")
        sum_g = xp.sum(grad_out, axis=self.AXES)
        sum_gx = xp.sum(grad_out * xhat, axis=self.AXES)
        self.grads["weight"] = sum_gx
        self.grads["bias"] = sum_g
        if not input_grad:
            return None
        view = lambda vector: self._view(xp, vector)  # noqa: E731
        return view(weight * invstd / count) * (count * grad_out - view(sum_g) - xhat * view(sum_gx))


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) feature maps per channel (statistics over N, H, W);
    ``torch.nn.BatchNorm2d``.  See :class:`_BatchNorm` for the math."""

    AXES = (0, 2, 3)
    SIZE_NAME = "channels"

    def __init__(self, channels, eps=1e-5, momentum=0.1):
        self.LAYOUT = f"(N, {channels}, H, W)"
        super().__init__(channels, eps, momentum)

    def _view(self, xp, vector):
        return xp.reshape(vector, (1, self.size, 1, 1))

    def infer_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.size:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.size}, H, W), got shape (N, "
                             + ", ".join(map(str, shape)) + ")")
        return tuple(shape)


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, F) features per feature (statistics over N), for dense layers;
    ``torch.nn.BatchNorm1d`` on 2-d input.  See :class:`_BatchNorm` for the math."""

    AXES = (0,)
    SIZE_NAME = "features"

    def __init__(self, features, eps=1e-5, momentum=0.1):
        self.LAYOUT = f"(N, {features})"
        super().__init__(features, eps, momentum)

    def infer_shape(self, shape):
        if tuple(shape) != (self.size,):
            raise ValueError(f"{self.name}: expected input of shape (N, {self.size}), got shape (N, "
                             + ", ".join(map(str, shape)) + ")")
        return tuple(shape)


REGULARIZATION_TYPES = {cls.__name__: cls for cls in (Dropout, BatchNorm2D, BatchNorm1D)}
# One registry of layer types for Sequential.from_config and Sequential.load (xpcnn.nn.sequential imports
# this module, so the names are there whenever a model can be rebuilt).
LAYER_TYPES.update(REGULARIZATION_TYPES)
