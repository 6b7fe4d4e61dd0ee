"""Batch normalisation: :class:`BatchNorm2D` for (N, C, H, W) feature maps, :class:`BatchNorm1D`
for (N, F) features, and their spec tokens ``bn`` and ``bnnoaffine`` (``affine=False``).

It behaves differently in training and in inference: a training forward (``layer.training``, the
default) normalises with the batch's statistics; one under ``model.inference()`` with the running
statistics.  Its ``BATCH_STATISTICS`` say so to the executors, and BatchNorm1D (statistics over
the batch axis alone) needs two examples in every batch.

Synchronised batch statistics: an executor that runs a batch as shares (threads, MPI ranks) gives
each share's layer a ``reducer`` (:class:`StatisticsReducer`).  The layer hands it its share's
partial statistics, gets every share's back in share order, and combines them in that fixed order
(:func:`combine_moments`, the pairwise formula of Chan, Golub and LeVeque): every share normalises
with the whole batch's mean and variance, and backward uses the whole batch's sums, so a step run
as shares is the whole-batch step up to float rounding, the same bits whatever runs the shares.
Without a reducer (the default) the layer's input is the whole batch.

The running statistics are *buffers*: arrays in ``layer.buffers`` (a dict, replaced and never
mutated, like parameters) that are state but not parameters.  They are in
``Sequential.state_dict()`` (``"3.running_mean"``, ``"3.running_var"``), checkpoints and parity
comparisons; no gradient is computed for them and no optimizer updates them.  A training forward
computes new ones; the compiled executors take them in and hand them out of the pure step.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Protocol

from xpcnn.backends import namespace
from xpcnn.nn import init as initialisers
from xpcnn.nn.base import Layer, Token, check_dtype, check_input, register, shape_error
from xpcnn.nn.validate import integer, number, within

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


class StatisticsReducer(Protocol):
    """What a BatchNorm layer that computes one share of a batch asks of its executor: ``exchange``
    takes this share's values (a tuple of per-feature arrays and Python numbers) and returns every
    share's tuple, in share order (0, 1, 2, ...), to every share.  Every share of a step makes the
    same calls in the same order; a reducer must not reorder them."""

    def exchange(self, values: tuple) -> list[tuple]: ...


def combine_moments(parts: list[tuple[int, Any, Any]]) -> tuple[int, Any, Any]:
    """(count, mean, M2) of a whole batch from its shares' (count_k, mean_k, M2_k), M2 the sum of
    squared deviations from the mean, combined pairwise left to right (Chan, Golub & LeVeque 1979):

        n = n_a + n_b,   d = mean_b - mean_a,   mean = mean_a + d n_b / n,
        M2 = M2_a + M2_b + d^2 n_a n_b / n.

    No sum of squares is ever formed, so float32 loses nothing to cancellation when the mean is
    large against the spread; the fixed order makes the result the same on every run."""
    count, mean, m2 = parts[0]
    for other_count, other_mean, other_m2 in parts[1:]:
        total = count + other_count
        delta = other_mean - mean
        mean = mean + delta * (other_count / total)
        m2 = m2 + other_m2 + delta * delta * (count * other_count / total)
        count = total
    return count, mean, m2


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

    Computed in few passes over the data: with xc = x - mean and s = gamma / sqrt(var + eps),
    forward is sum(x), xc, sum(xc xc) (one fused dot product per feature: ``vecdot``), then
    y = xc s + beta; backward is sum(G), sum(G xc) (fused), then
        dE/dX = s G - (xc s sum(G xhat) / (M sqrt(var + eps)) + s sum(G) / M),
    the formula above with each per-feature factor folded into one vector.

    With a ``reducer`` (a share of a batch: :class:`StatisticsReducer`) mean, var, M, sum(G) and
    sum(G xhat) are the whole batch's: the shares' (count, mean, M2) combined by
    :func:`combine_moments`, their sums added in share order.  ``grads`` stay this share's sums
    (the executor adds the shares' gradients up).

    ``affine=False`` (``torch.nn.BatchNorm2d(affine=False)``): no gamma and beta, y = xhat, no
    parameters at all (the running statistics stay); the backward above with gamma = 1."""

    SIZE_NAME = ""  # the constructor's name for the number of features
    reducer: StatisticsReducer | None = None  # set by an executor on the layers of a share's replica
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

    def _dot(self, xp: Any, a: Any, b: Any) -> Any:
        """sum(a * b) over the batch axes, per feature: one fused dot product per feature (``vecdot``
        over H*W, then a sum over N), without the product as a whole array."""
        if self.BATCH_STATISTICS == (0,):
            return xp.vecdot(a, b, axis=-2)
        n, c = a.shape[0], a.shape[1]
        flat = lambda array: xp.reshape(array, (n, c, -1))  # noqa: E731
        return xp.sum(xp.vecdot(flat(a), flat(b), axis=-1), axis=0)

    def _sum(self, xp: Any, a: Any) -> Any:
        """sum(a) over the batch axes, per feature: over H*W first (contiguous), then over N."""
        if self.BATCH_STATISTICS == (0,):
            return xp.sum(a, axis=0)
        return xp.sum(xp.sum(xp.reshape(a, (a.shape[0], a.shape[1], -1)), axis=-1), axis=0)

    def forward(self, x: Any) -> Any:
        mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        xp = namespace(x, *self.params.values(), mean, var, where=f"{self.name}.forward")
        layout, axes = self.LAYOUT.format(size=self.size), self.BATCH_STATISTICS
        check_input(xp, x, self, len(axes) + 1, layout)  # the reduced axes and the feature axis
        if x.shape[1] != self.size:
            raise ValueError(f"{self.name}: expected input of shape {layout}, got shape {tuple(x.shape)}")
        check_dtype(self, x, self.params["weight"] if self.affine else mean)
        view = lambda vector: self._view(xp, vector)  # noqa: E731
        if not self.training:  # inference: the running statistics
            scale = 1.0 / xp.sqrt(var + self.eps)
            if self.affine:
                scale = scale * self.params["weight"]
                return (x - view(mean)) * view(scale) + view(self.params["bias"])
            return (x - view(mean)) * view(scale)
        # training: the batch's statistics (the whole batch's, with a reducer)
        count = math.prod(x.shape[axis] for axis in axes)
        mean = self._sum(xp, x) / count
        centred = x - view(mean)
        m2 = self._dot(xp, centred, centred)
        if self.reducer is not None:
            parts = self.reducer.exchange((count, mean, m2))
            if len(parts) > 1:
                count, whole_mean, m2 = combine_moments(parts)
                centred = centred - view(whole_mean - mean)
                mean = whole_mean
        if count < 2:
            raise ValueError(f"{self.name}: training needs more than one value per feature for the batch "
                             f"statistics, got input shape {tuple(x.shape)}")
        var = m2 / count
        invstd = 1.0 / xp.sqrt(var + self.eps)
        scale = self.params["weight"] * invstd if self.affine else invstd  # s = gamma / sqrt(var + eps)
        self.save_for_backward(centred, invstd, scale, count)
        m = self.momentum
        self.buffers = {"running_mean": (1.0 - m) * self.buffers["running_mean"] + m * mean,
                        "running_var": (1.0 - m) * self.buffers["running_var"] + m * (m2 / (count - 1))}
        y = centred * view(scale)
        return y + view(self.params["bias"]) if self.affine else y

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        centred, invstd, scale, count = self.saved_for_backward()
        xp = namespace(grad_out, *self.params.values(), where=f"{self.name}.backward")
        if not (self.affine or input_grad):
            return None
        sum_g = self._sum(xp, grad_out)
        sum_gx = self._dot(xp, grad_out, centred) * invstd  # sum(G xhat)
        if self.affine:
            self.grads["weight"] = sum_gx
            self.grads["bias"] = sum_g
        if self.reducer is not None:  # the whole batch's sums, added in share order
            parts = self.reducer.exchange((sum_g, sum_gx))
            sum_g, sum_gx = parts[0]
            for other_g, other_gx in parts[1:]:
                sum_g, sum_gx = sum_g + other_g, sum_gx + other_gx
        if not input_grad:
            return None
        view = lambda vector: self._view(xp, vector)  # noqa: E731
        return grad_out * view(scale) - (centred * view(scale * invstd * sum_gx / count) + view(scale * sum_g / count))


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
