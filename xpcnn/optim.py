"""Optimizers.  ``step(model)`` reads ``model.named_gradients()`` and *replaces*
each parameter with ``model.set_parameter`` (no in-place update, so JAX's
immutable arrays work).  State is saved by parameter name.

Each rule is a pure function, ``update(param, grad, slots, scalars) -> (new_param, new_slots)``:
arrays in, arrays out, and the step's scalars (learning rate, Adam's bias corrections) computed on
the host by ``scalars()`` and passed in.  ``step`` applies it to every parameter; a compiled
executor (:mod:`xpcnn.training.compiled`) traces the same function with the scalars as inputs,
so a new learning rate or step count never needs a new compilation."""

from __future__ import annotations

import math

from .backend import namespace, to_numpy, transfer, backend_of


class Optimizer:
    SLOTS: tuple = ()  # the names of the per-parameter state arrays

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{type(self).__name__}: learning rate must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.state: dict[str, dict] = {}
        self.steps = 0

    def step(self, model) -> None:
        self.steps += 1
        scalars = self.scalars()
        params = dict(model.named_parameters())
        for name, grad in model.named_gradients():
            param = params[name]
            namespace(param, grad, where=f"{type(self).__name__}.step({name})")
            new, slots = self.update(param, grad, self.state.get(name, {}), scalars)
            if slots:
                self.state[name] = slots
            model.set_parameter(name, new)

    def scalars(self) -> dict:
        """The host scalars of step number ``self.steps`` (counted from 1)."""
        return {"lr": self.lr}

    def update(self, param, grad, slots: dict, scalars: dict):
        """(new parameter, new slots) from the old ones: pure, no state changed."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Host NumPy copies: ``{"steps": n, "<param>/<slot>": array}``."""
        flat = {"steps": self.steps}
        for name, slots in self.state.items():
            for slot, value in slots.items():
                flat[f"{name}/{slot}"] = to_numpy(value).copy()
        return flat

    def load_state_dict(self, flat: dict, like_model) -> None:
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
    v = m v + grad, new = old - lr * v (PyTorch's convention)."""

    SLOTS = ("velocity",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.0):
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def update(self, param, grad, slots, scalars):
        lr = scalars["lr"]
        if self.momentum == 0.0:
            return param - lr * grad, {}
        velocity = grad if "velocity" not in slots else self.momentum * slots["velocity"] + grad
        return param - lr * velocity, {"velocity": velocity}


class Adam(Optimizer):
    """Adam (Kingma & Ba): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
    new = old - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected m_hat, v_hat."""

    SLOTS = ("m", "v")

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(lr)
        self.beta1, self.beta2 = map(float, betas)
        self.eps = float(eps)

    def scalars(self):
        """lr and the bias corrections 1 - b1^t, 1 - b2^t of step t (host floats)."""
        return {"lr": self.lr, "bias1": 1 - self.beta1 ** self.steps, "bias2": 1 - self.beta2 ** self.steps}

    def update(self, param, grad, slots, scalars):
        xp = namespace(param, grad)
        m = (1 - self.beta1) * grad if "m" not in slots else self.beta1 * slots["m"] + (1 - self.beta1) * grad
        v = (1 - self.beta2) * grad * grad if "v" not in slots else self.beta2 * slots["v"] + (1 - self.beta2) * grad * grad
        m_hat = m / scalars["bias1"]
        v_hat = v / scalars["bias2"]
        return param - scalars["lr"] * m_hat / (xp.sqrt(v_hat) + self.eps), {"m": m, "v": v}
