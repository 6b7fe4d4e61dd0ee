"""Batch normalisation: :class:`BatchNorm2D` for (N, C, H, W) feature maps, :class:`BatchNorm1D`
for (N, F) features, and their spec tokens ``bn`` and ``bnnoaffine`` (``affine=False``).

It behaves differently in training and in inference: a training forward (``layer.training``, the
default) normalises with the batch's statistics; one under ``model.inference()`` with the running
statistics.  Its ``BATCH_STATISTICS`` say so to the executors: one that cuts a batch into shares
refuses the layer, and BatchNorm1D (statistics over the batch axis alone) needs two examples in
every batch.

The running statistics are *buffers*: arrays in ``layer.buffers`` (a dict, replaced and never
mutated, like parameters) that are state but not parameters.  They are in
``Sequential.state_dict()`` (``"3.running_mean"``, ``"3.running_var"``), checkpoints and parity
comparisons; no gradient is computed for them and no optimizer updates them.  A training forward
computes new ones; the compiled executors take them in and hand them out of the pure step.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from xpcnn.backends import namespace
from xpcnn.nn import init as initialisers
from xpcnn.nn.base import Layer, Token, check_dtype, check_input, register, shape_error
from xpcnn.nn.validate import integer, number, within

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


def _flag(value: object, name: str, where: str) -> bool:
    """True or False: a TypeError for anything else (a record's 1 or "false")."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return value


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
    (zeros) and ``running_var`` (ones).

    ``affine=False`` (``torch.nn.BatchNorm2d(affine=False)``): no gamma and beta, y = xhat, no
    parameters at all (the running statistics stay); the backward above with gamma = 1."""

    SIZE_NAME = ""  # the constructor's name for the number of features
    LAYOUT = ""  # the input's shape, with the size filled in ({size})

    def __init__(self, size: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        self.size = integer(size, self.SIZE_NAME, self.name, 1)
        self.eps = number(eps, "eps", self.name)
        self.momentum = within(number(momentum, "momentum", self.name), "momentum", self.name, 0, 1)
        if self.eps <= 0:
            raise ValueError(f"{self.name}: eps must be > 0, got {eps!r}")
        self.affine = _flag(affine, "affine", self.name)
        if self.affine:
            self.params["weight"] = initialisers.ones(self.size)
            self.params["bias"] = initialisers.zeros(self.size)
        self.buffers = {"running_mean": initialisers.zeros(self.size), "running_var": initialisers.ones(self.size)}

    def config(self) -> dict:
        """``affine`` only when False: a record without it means True (the records written before it)."""
        record = {self.SIZE_NAME: self.size, "eps": self.eps, "momentum": self.momentum}
        return record if self.affine else {**record, "affine": False}

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        """Parameters (with ``affine``) and buffers, one value per feature."""
        size = (integer(arguments[cls.SIZE_NAME], "size", cls.__name__, 1),)
        buffers: dict[str, tuple[int, ...]] = {"running_mean": size, "running_var": size}
        if not _flag(arguments.get("affine", True), "affine", cls.__name__):
            return buffers
        return {"weight": size, "bias": size, **buffers}

    def infer_shape(self, shape: tuple) -> tuple:
        # an example has as many axes as the statistics reduce over: the feature axis in place of the batch's
        if len(shape) != len(self.BATCH_STATISTICS) or shape[0] != self.size:
            raise shape_error(self, self.LAYOUT.format(size=self.size), shape)
        return tuple(shape)

    def _view(self, xp: Any, vector: Any) -> Any:
        """A per-feature vector shaped to broadcast against the input: (1, C, 1, 1) for feature
        maps, itself for features."""
        return vector if self.BATCH_STATISTICS == (0,) else xp.reshape(vector, (1, self.size, 1, 1))

    def forward(self, x: Any) -> Any:
        mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        xp = namespace(x, *self.params.values(), mean, var, where=f"{self.name}.forward")
        layout, axes = self.LAYOUT.format(size=self.size), self.BATCH_STATISTICS
        check_input(xp, x, self, len(axes) + 1, layout)  # the reduced axes and the feature axis
        if x.shape[1] != self.size:
            raise ValueError(f"{self.name}: expected input of shape {layout}, got shape {tuple(x.shape)}")
        check_dtype(self, x, self.params["weight"] if self.affine else mean)
        view = lambda vector: self._view(xp, vector)  # noqa: E731
        if self.training:  # the batch's statistics
            count = math.prod(x.shape[axis] for axis in axes)
            if count < 2:
                raise ValueError(f"{self.name}: training needs more than one value per feature for the batch "
                                 f"statistics, got input shape {tuple(x.shape)}")
            mean = xp.mean(x, axis=axes)
            centred = x - view(mean)
            var = xp.mean(centred * centred, axis=axes)
            invstd = 1.0 / xp.sqrt(var + self.eps)
            xhat = centred * view(invstd)
            self.save_for_backward(xhat, invstd, count)
            m = self.momentum
            self.buffers = {"running_mean": (1.0 - m) * self.buffers["running_mean"] + m * mean,
                            "running_var": (1.0 - m) * self.buffers["running_var"]
                            + m * (var * (count / (count - 1)))}
        else:  # inference: the running statistics
            xhat = (x - view(mean)) * view(1.0 / xp.sqrt(var + self.eps))
        if not self.affine:
            return xhat
        return xhat * view(self.params["weight"]) + view(self.params["bias"])

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        xhat, invstd, count = self.saved_for_backward()
        xp = namespace(grad_out, *self.params.values(), where=f"{self.name}.backward")
        if not (self.affine or input_grad):
            return None
        sum_g = xp.sum(grad_out, axis=self.BATCH_STATISTICS)
        sum_gx = xp.sum(grad_out * xhat, axis=self.BATCH_STATISTICS)
        if self.affine:
            self.grads["weight"] = sum_gx
            self.grads["bias"] = sum_g
        if not input_grad:
            return None
        view = lambda vector: self._view(xp, vector)  # noqa: E731
        scale = self.params["weight"] * invstd if self.affine else invstd  # gamma / sqrt(var + eps)
        return view(scale / count) * (count * grad_out - view(sum_g) - xhat * view(sum_gx))


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) feature maps per channel (statistics over N, H, W);
    ``torch.nn.BatchNorm2d``.  See :class:`_BatchNorm` for the math."""

    BATCH_STATISTICS = (0, 2, 3)
    SIZE_NAME = "channels"
    LAYOUT = "(N, {size}, H, W)"

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__(channels, eps, momentum, affine)


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, F) features per feature (statistics over N), for dense layers;
    ``torch.nn.BatchNorm1d`` on 2-d input.  See :class:`_BatchNorm` for the math."""

    BATCH_STATISTICS = (0,)
    SIZE_NAME = "features"
    LAYOUT = "(N, {size})"

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__(features, eps, momentum, affine)


def _bn_token(match: re.Match, spec: SpecContext) -> Layer:
    affine = match.group(0) != "bnnoaffine"
    return (BatchNorm2D(spec.shape[0], affine=affine) if len(spec.shape) == 3
            else BatchNorm1D(spec.shape[0], affine=affine))


register(BatchNorm2D, BatchNorm1D, tokens=[
    Token("bn", "bn", "BatchNorm2D after a conv layer, BatchNorm1D after flatten/dense (the\n"
                      "conv or dense layer right before it has no bias: bn cancels it)", _bn_token, cancels_bias=True),
    Token("bnnoaffine", "bnnoaffine", "bn without its learnable scale and shift (affine=False)", _bn_token,
          cancels_bias=True)])
