"""Elementwise activations A = sigma(Z) -- :class:`Sigmoid`, :class:`Tanh`, :class:`ReLU`,
:class:`LeakyReLU`, :class:`GELU` -- and their spec tokens ``relu``, ``sigmoid``, ``tanh``,
``leakyrelu[<slope>]``, ``gelu``.  Each keeps what its derivative needs."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from xpcnn.backends import namespace
from xpcnn.nn.base import Layer, Token, register
from xpcnn.nn.validate import number

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


class LeakyReLU(Layer):
    """A = Z where Z > 0, else a Z (a: ``negative_slope``, 0.01 as PyTorch's); backward
    dA/dZ = 1 where Z > 0, else a.  Both through one factor D = M + a (1 - M), M = [Z > 0]:
    A = D Z, dE/dZ = D G (D is exactly 1 or a: no rounding).  ``torch.nn.functional.leaky_relu``."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = number(negative_slope, "negative_slope", "LeakyReLU")

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        mask = xp.astype(x > 0, x.dtype)
        factor = mask + self.negative_slope * (1.0 - mask)
        self.save_for_backward(factor)
        return x * factor

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (factor,) = self.saved_for_backward()
        return grad_out * factor if input_grad else None


class GELU(Layer):
    """The Gaussian error linear unit in its tanh form (Hendrycks & Gimpel 2016;
    ``torch.nn.functional.gelu(approximate="tanh")``), with c = sqrt(2/pi) and k = 0.044715:
        u = c (Z + k Z^3),  T = tanh(u),  A = 0.5 Z (1 + T).
    Backward, its exact derivative (the product rule, then dT/du = 1 - T^2):
        dA/dZ = 0.5 (1 + T) + 0.5 Z (1 - T^2) c (1 + 3 k Z^2)."""

    C = math.sqrt(2.0 / math.pi)
    K = 0.044715

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        t = xp.tanh(self.C * (x + self.K * (x * x * x)))
        self.save_for_backward(x, t)
        return 0.5 * x * (1.0 + t)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        x, t = self.saved_for_backward()
        if not input_grad:
            return None
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (self.C * (1.0 + 3.0 * self.K * (x * x)))
        return grad_out * slope


def _activation_token(match: re.Match, spec: SpecContext) -> Layer:
    return {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": GELU}[match.group(0)]()


def _leaky_relu_token(match: re.Match, spec: SpecContext) -> Layer:
    return LeakyReLU() if match.group(1) is None else LeakyReLU(float(match.group(1)))


register(Sigmoid, Tanh, ReLU, LeakyReLU, GELU, tokens=[
    Token("relu|sigmoid|tanh|gelu", "relu | sigmoid | tanh | gelu", "activations (gelu: GELU, tanh form)",
          _activation_token),
    Token(r"leakyrelu(\d+(?:\.\d*)?|\.\d+)?", "leakyrelu[<S>]",
          "LeakyReLU: Z where Z > 0, else S*Z (S: 0.01), e.g. leakyrelu0.2", _leaky_relu_token)])
