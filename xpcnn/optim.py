"""Optimizers.  ``step(model)`` reads ``model.named_gradients()`` and *replaces*
each parameter with ``model.set_parameter`` (no in-place update, so JAX's
immutable arrays work).  State is saved by parameter name.

Each rule is a pure function, ``update(param, grad, slots, scalars) -> (new_param, new_slots)``:
arrays in, arrays out, and the step's scalars (learning rate, Adam's bias corrections) computed on
the host by ``scalars()`` and passed in.  ``step`` applies it to every parameter; a compiled
executor (:mod:`xpcnn.training.executors.compiled`) traces the same function with the scalars as inputs,
so a new learning rate or step count never needs a new compilation.

Weight decay (``weight_decay`` wd >= 0, default 0: none) applies to *every* parameter the model has
(weights, biases, BatchNorm's gamma and beta alike; BatchNorm's running statistics are buffers, not
parameters, and are never touched), as in PyTorch when it is given ``model.parameters()``:

* :class:`SGD` and :class:`Adam`: L2 regularisation, ``grad = grad + wd * param`` before the rule
  (``torch.optim.SGD``/``Adam``'s ``weight_decay``);
* :class:`AdamW`: decoupled, ``param = param * (1 - lr * wd)`` and then Adam's update with the plain
  gradient (``torch.optim.AdamW``; Loshchilov & Hutter).  ``1 - lr * wd`` is a host scalar of the step.

``decay_filter`` (optional, any optimizer): a function of the qualified parameter name
(``"3.bias"``) that returns False for parameters to exempt from weight decay, e.g.
``lambda name: not name.endswith("bias")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xpcnn.backends import Array, backend_of, namespace, to_numpy, transfer
from xpcnn.nn.validate import is_number, number, within


class Optimizer:
    SLOTS: tuple = ()  # the names of the per-parameter state arrays

    def __init__(self, lr: float, weight_decay: float = 0.0, decay_filter: Callable[[str], bool] | None = None) -> None:
        if not (is_number(lr) and lr > 0):
            raise ValueError(f"{type(self).__name__}: learning rate must be a positive number, got {lr!r}")
        if not (is_number(weight_decay) and weight_decay >= 0):
            raise ValueError(f"{type(self).__name__}: weight_decay must be a number >= 0, got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decay_filter = decay_filter
        self.state: dict[str, dict] = {}
        self.steps = 0

    def slots(self) -> tuple[str, ...]:
        """The names of the state arrays this optimizer keeps for each parameter once it has stepped."""
        return self.SLOTS

    def decays(self, name: str) -> bool:
        """Whether parameter ``name`` gets weight decay (all do, unless ``decay_filter`` says not)."""
        return self.weight_decay != 0.0 and (self.decay_filter is None or bool(self.decay_filter(name)))

    def update_named(self, name: str, param: Any, grad: Any, slots: dict, scalars: dict) -> tuple[Any, dict]:
        """:meth:`update` for parameter ``name`` (``decay_filter`` decides its weight decay): what
        ``step`` and the compiled executors call."""
        if self.weight_decay and not self.decays(name):
            scalars = {**scalars, "no_decay": True}  # a Python constant, also inside a trace
        return self.update(param, grad, slots, scalars)

    def step(self, model: Any) -> None:
        self.steps += 1
        scalars = self.scalars()
        params = dict(model.named_parameters())
        for name, grad in model.named_gradients():
            param = params[name]
            namespace(param, grad, where=f"{type(self).__name__}.step({name})")
            new, slots = self.update_named(name, param, grad, self.state.get(name, {}), scalars)
            if slots:
                self.state[name] = slots
            model.set_parameter(name, new)

    def scalars(self) -> dict:
        """The host scalars of step number ``self.steps`` (counted from 1)."""
        return {"lr": self.lr}

    def _l2(self, param: Array, grad: Array, scalars: dict) -> Array:
        """grad + wd * param (L2 regularisation); the gradient itself without weight decay.
        (wd is the optimizer's constant, not a step input: it never changes during a run.)"""
        if self.weight_decay and not scalars.get("no_decay", False):
            return grad + self.weight_decay * param
        return grad

    def update(self, param: Any, grad: Any, slots: dict, scalars: dict) -> tuple[Any, dict]:
        """(new parameter, new slots) from the old ones: pure, no state changed."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Host NumPy copies: ``{"steps": n, "<param>/<slot>": array}``."""
        flat = {"steps": self.steps}
        for name, slots in self.state.items():
            for slot, value in slots.items():
                flat[f"{name}/{slot}"] = to_numpy(value).copy()
        return flat

    def load_state_dict(self, flat: dict, like_model: Any) -> None:
        """Load state saved by :meth:`state_dict`, moved to ``like_model``'s backend."""
        params = dict(like_model.named_parameters())
        state: dict[str, dict] = {}
        for key, value in flat.items():
            if key == "steps":
                continue
            name, _, slot = key.partition("/")
            if name not in params:
                raise ValueError(f"optimizer state names parameter {name!r}, which the model does not have")
            if slot not in self.SLOTS:
                raise ValueError(f"optimizer state {key!r}: {type(self).__name__} has no slot {slot!r} "
                                 f"(its slots: {', '.join(self.SLOTS) or 'none'})")
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)}, the parameter "
                                 f"{tuple(params[name].shape)}")
            state.setdefault(name, {})[slot] = transfer(value, backend_of(params[name]))
        self.state = state
        self.steps = int(flat.get("steps", 0))


class SGD(Optimizer):
    """The article's rule, new = old - lr * grad; with ``momentum`` m > 0:
    v = m v + grad, new = old - lr * v (PyTorch's convention; v = grad on the first step).
    ``nesterov=True`` (needs m > 0): Nesterov's momentum as ``torch.optim.SGD(nesterov=True)``
    writes it, v = m v + grad, new = old - lr * (grad + m v): the step looks ahead along the new
    velocity.  ``weight_decay`` wd: grad + wd * old in place of grad (L2, as ``torch.optim.SGD``)."""

    SLOTS = ("velocity",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 decay_filter: Callable[[str], bool] | None = None, nesterov: bool = False) -> None:
        super().__init__(lr, weight_decay, decay_filter)
        self.momentum = within(number(momentum, "momentum", "SGD"), "momentum", "SGD", 0, 1, high_open=True)
        if not isinstance(nesterov, bool):
            raise TypeError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov needs a momentum > 0")
        self.nesterov = nesterov

    def slots(self) -> tuple[str, ...]:
        """The velocity with momentum; nothing without."""
        return self.SLOTS if self.momentum else ()

    def update(self, param: Any, grad: Any, slots: dict, scalars: dict) -> tuple[Any, dict]:
        lr = scalars["lr"]
        grad = self._l2(param, grad, scalars)
        if self.momentum == 0.0:
            return param - lr * grad, {}
        velocity = grad if "velocity" not in slots else self.momentum * slots["velocity"] + grad
        step = grad + self.momentum * velocity if self.nesterov else velocity
        return param - lr * step, {"velocity": velocity}


class Adam(Optimizer):
    """Adam (Kingma & Ba): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
    new = old - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected m_hat, v_hat.
    ``weight_decay`` wd: g = grad + wd * old (L2, as ``torch.optim.Adam``; see :class:`AdamW`)."""

    SLOTS = ("m", "v")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_filter: Callable[[str], bool] | None = None) -> None:
        super().__init__(lr, weight_decay, decay_filter)
        self.beta1, self.beta2 = map(float, betas)
        self.eps = float(eps)

    def scalars(self) -> dict:
        """lr and the bias corrections 1 - b1^t, 1 - b2^t of step t (host floats)."""
        return {**super().scalars(), "bias1": 1 - self.beta1 ** self.steps, "bias2": 1 - self.beta2 ** self.steps}

    def update(self, param: Any, grad: Any, slots: dict, scalars: dict) -> tuple[Any, dict]:
        grad = self._l2(param, grad, scalars)
        return self._adam(param, grad, slots, scalars)

    def _adam(self, param: Array, grad: Array, slots: dict, scalars: dict) -> tuple[Array, dict]:
        xp = namespace(param, grad)
        m = (1 - self.beta1) * grad if "m" not in slots else self.beta1 * slots["m"] + (1 - self.beta1) * grad
        v = ((1 - self.beta2) * grad * grad if "v" not in slots
             else self.beta2 * slots["v"] + (1 - self.beta2) * grad * grad)
        m_hat = m / scalars["bias1"]
        v_hat = v / scalars["bias2"]
        return param - scalars["lr"] * m_hat / (xp.sqrt(v_hat) + self.eps), {"m": m, "v": v}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; ``torch.optim.AdamW``):
    old * (1 - lr * wd), then Adam's update with the plain gradient.  Default wd 0.01, as PyTorch's."""

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, decay_filter: Callable[[str], bool] | None = None) -> None:
        super().__init__(lr, betas, eps, weight_decay, decay_filter)

    def scalars(self) -> dict:
        """Adam's scalars and ``decay`` = 1 - lr * wd (a host float: the compiled step takes it as an input)."""
        scalars = super().scalars()
        return {**scalars, "decay": 1 - scalars["lr"] * self.weight_decay}

    def update(self, param: Any, grad: Any, slots: dict, scalars: dict) -> tuple[Any, dict]:
        if self.weight_decay and not scalars.get("no_decay", False):
            param = param * scalars["decay"]
        return self._adam(param, grad, slots, scalars)
