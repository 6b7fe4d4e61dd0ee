"""Inverted dropout, :class:`Dropout`, and its spec token ``dropout<P>``.

It behaves differently in training and in inference: a training forward (``layer.training``, the
default) drops elements; one under ``model.inference()`` is the identity.

Dropout's randomness is not the layer's: the layer owns no generator.  Before each training forward
the caller hands the model the step's *noise* -- U[0, 1) uniforms drawn on the host from the run's
seed (:func:`xpcnn.training.noise.draw_noise`), cast there to the model's dtype, so that every
backend receives the same bits and a resumed run draws the same masks -- with
``model.set_noise(noise)`` (names and shapes from ``model.noise_shapes(batch, input_shape)``).  The
layer keeps an element where ``noise >= p``.  Each noise array serves one training forward.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from xpcnn.backends import Backend, namespace
from xpcnn.nn.base import Layer, Token, register
from xpcnn.nn.validate import number, within

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


class Dropout(Layer):
    """Inverted dropout: in training y = x * mask / (1 - p) with mask = (noise >= p), an element
    kept with probability 1 - p (noise ~ U[0, 1)); backward dE/dX = G * mask / (1 - p).
    In inference (``Sequential.inference()``), and for p = 0, the identity.

    The noise of a training forward comes from :meth:`set_noise` (``Sequential.set_noise``): an array
    of the input's shape and dtype on its device; it is used by one forward and then let go.  A
    training forward without it raises a RuntimeError naming the layer."""

    TAKES_NOISE = True

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = within(number(p, "p", "Dropout"), "p (the probability of dropping an element)", "Dropout",
                        0, 1, high_open=True)
        self.noise: Any = None

    def config(self) -> dict:
        return {"p": self.p}

    def noise_shape(self, shape: tuple) -> tuple | None:
        """The input's own per-example shape; None when p = 0 (nothing to draw)."""
        return tuple(shape) if self.p > 0 else None

    def set_noise(self, noise: Any) -> None:
        """The next training forward's U[0, 1) noise (input shape and dtype, input device)."""
        self.noise = noise

    def forward(self, x: Any) -> Any:
        namespace(x, where=f"{self.name}.forward")  # an array of a known library, also in inference
        if not self.training or self.p == 0.0:
            self.save_for_backward(None)  # (kept only in training)
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

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (mask,) = self.saved_for_backward()
        if not input_grad:
            return None
        return grad_out if mask is None else grad_out * mask / (1.0 - self.p)

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Dropout:
        self.noise = None  # noise is drawn for the device and dtype it is used on
        super().to(backend, device, dtype)
        return self


def _dropout_token(match: re.Match, spec: SpecContext) -> Dropout:
    return Dropout(float(match.group(1)))


register(Dropout, tokens=[Token(r"dropout((?:0|1)?\.\d+|0|1)", "dropout<P>",
                                "Dropout with drop probability P, e.g. dropout0.5", _dropout_token)])
