"""The fully connected layer, :class:`Dense`, and :class:`Flatten`, which feeds it feature maps;
their spec tokens ``flatten`` and ``dense``.  Notation of the source article: Z2 = W^T.A + b."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from xpcnn.backends import namespace
from xpcnn.nn import init as initialisers
from xpcnn.nn.activations import Sigmoid
from xpcnn.nn.base import Layer, Token, check_dtype, check_input, register, shape_error
from xpcnn.nn.validate import integer

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


class Dense(Layer):
    """Z2 = X.W + b with W of shape (in_features, out_features), the article's
    W (m inputs x n neurons), so one row of Z2 is W^T.A + b.

    Backward, with G = dE/dZ2: dE/dW = X^T.G, dE/db = sum of G over the batch, dE/dX = G.W^T.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "glorot",
                 rng: Any = 0) -> None:
        super().__init__()
        self.in_features = integer(in_features, "in_features", "Dense", 1)
        self.out_features = integer(out_features, "out_features", "Dense", 1)
        self.bias, self.init = bool(bias), init
        rng = initialisers.as_generator(rng)
        shape = (self.in_features, self.out_features)
        self.params["weight"] = initialisers.make_weight(rng, shape, self.in_features, self.out_features, init)
        if self.bias:
            self.params["bias"] = initialisers.make_bias(rng, self.out_features, init)

    def config(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias)

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        out = integer(arguments["out_features"], "out_features", cls.__name__, 1)
        weight = (integer(arguments["in_features"], "in_features", cls.__name__, 1), out)
        return {"weight": weight, **({"bias": (out,)} if arguments["bias"] else {})}

    @classmethod
    def initialiser(cls, scheme: str) -> str:
        """Glorot's for a network built with He's: He's suits the ReLU before a layer, not the logits."""
        return "glorot" if scheme == "he" else scheme

    def infer_shape(self, shape: tuple) -> tuple:
        if tuple(shape) != (self.in_features,):
            raise shape_error(self, f"(N, {self.in_features})", shape)
        return (self.out_features,)

    def forward(self, x: Any) -> Any:
        weight, bias = self.params["weight"], self.params.get("bias")
        xp = namespace(x, weight, bias, where=f"{self.name}.forward")
        check_input(xp, x, self, 2, f"(N, {self.in_features})")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), "
                             f"got shape {tuple(x.shape)}")
        check_dtype(self, x, weight)
        self.save_for_backward(x)
        z = xp.matmul(x, weight)
        return z + bias if bias is not None else z

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (x,), weight = self.saved_for_backward(), self.params["weight"]
        xp = namespace(grad_out, weight, where=f"{self.name}.backward")
        self.grads["weight"] = xp.matmul(x.T, grad_out)
        if self.bias:
            self.grads["bias"] = xp.sum(grad_out, axis=0)
        return xp.matmul(grad_out, weight.T) if input_grad else None


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), the article's flattening of the feature maps before the dense layer."""

    def forward(self, x: Any) -> Any:
        xp = namespace(x, where=f"{self.name}.forward")
        self.save_for_backward(tuple(x.shape))
        return xp.reshape(x, (x.shape[0], -1))

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (shape,) = self.saved_for_backward()
        if not input_grad:
            return None
        xp = namespace(grad_out, where=f"{self.name}.backward")
        return xp.reshape(grad_out, shape)

    def infer_shape(self, shape: tuple) -> tuple:
        return (math.prod(shape),)


def _dense_token(match: re.Match, spec: SpecContext) -> list[Layer]:
    """dense<N>, or a last ``dense`` with the task's width (then a sigmoid for one output)."""
    if len(spec.shape) != 1:
        raise ValueError(f"a dense layer needs a flat input, it gets shape {spec.shape}; put 'flatten' before it")
    width = int(match.group(1)) if match.group(1) else (spec.outputs if spec.last else None)
    if width is None:
        raise ValueError("give the width (dense<N>); only the last dense layer may omit it")
    dense = Dense(spec.shape[0], width, bias=spec.bias, init=Dense.initialiser(spec.init), rng=spec.rng)
    return [dense, Sigmoid()] if spec.last and spec.outputs == 1 and not match.group(1) else [dense]


register(Flatten, Dense, tokens=[
    Token("flatten", "flatten", "(C, H, W) -> C*H*W, before the first dense layer", lambda match, spec: Flatten()),
    Token(r"dense(\d+)?", "dense<N> | dense", "Dense with N outputs; a last 'dense' without N gets the task's outputs\n"
                                              "(K classes, or 1 for the binary task, then followed by a sigmoid)",
          _dense_token)])
