"""Elementwise activations A = sigma(Z) -- :class:`Sigmoid`, :class:`Tanh`, :class:`ReLU` -- and
their spec tokens ``relu``, ``sigmoid``, ``tanh``.  Each keeps what its derivative needs."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from xpcnn.backends import namespace
from xpcnn.nn.base import Layer, Token, register

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


class Sigmoid(Layer):
    """A = sigma(Z) = 1 / (1 + e^-Z), computed as (1 + tanh(Z/2)) / 2: no overflow
    for any |Z|.  Backward: dA/dZ = A (1 - A).

    The arrays are as large as the convolution's output, so every pass over them counts: the
    scaling and the shift, and the backward's products, update the fresh temporary they just
    made with in-place operators (array API; JAX rebinds the name instead).  Nothing a caller
    holds is changed."""

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        output = xp.tanh(0.5 * x)
        output *= 0.5
        output += 0.5
        self.save_for_backward(output)
        return output

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (a,) = self.saved_for_backward()
        if not input_grad:
            return None
        grad = 1.0 - a      # dE/dZ = G * A (1 - A), in one temporary
        grad *= a
        grad *= grad_out
        return grad


class Tanh(Layer):
    """A = tanh(Z); backward dA/dZ = 1 - A^2."""

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        output = xp.tanh(x)
        self.save_for_backward(output)
        return output

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (a,) = self.saved_for_backward()
        return grad_out * (1.0 - a * a) if input_grad else None


class ReLU(Layer):
    """A = max(Z, 0); backward passes the gradient where Z > 0."""

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        mask = xp.astype(x > 0, x.dtype)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (mask,) = self.saved_for_backward()
        return grad_out * mask if input_grad else None


def _activation_token(match: re.Match, spec: SpecContext) -> Layer:
    return {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}[match.group(0)]()


register(Sigmoid, Tanh, ReLU,
         tokens=[Token("relu|sigmoid|tanh", "relu | sigmoid | tanh", "activations", _activation_token)])
