"""The layer base class and the layer registry.

A :class:`Layer` states what it needs from the code that runs it, as class attributes and
methods a runner reads, never guesses:

* ``training`` -- True for a training forward (the default), False under
  :meth:`~xpcnn.nn.sequential.Sequential.inference`: forward then keeps nothing for a backward
  pass, and Dropout and BatchNorm switch to their inference behaviour;
* ``buffers`` -- state that is not a parameter (BatchNorm's running statistics), always a dict;
* ``BATCH_STATISTICS`` -- the input axes over which a training forward computes statistics of the
  whole batch (BatchNorm), () for a layer that treats each example alone;
* ``TAKES_NOISE`` -- whether a training forward needs host-drawn noise (Dropout), with
  :meth:`Layer.noise_shape` saying what shape;
* :meth:`Layer.state_shapes` -- the shapes of the parameters and buffers a layer built from a
  record would have, without building it.

The registry maps a layer's type name to its class (:data:`LAYERS`) and holds the spec tokens the
layer families declare (:data:`TOKENS`, read by :mod:`xpcnn.nn.spec`).  Each family module ends with
one :func:`register` line; :func:`build_layer` is how every path that rebuilds a model from layer
records (``Sequential.from_config``, ``Sequential.load``, JSON architectures) makes a layer.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from xpcnn.backends import Backend, resolve, transfer
from xpcnn.io.checkpoint import short_repr
from xpcnn.nn.validate import count_text, shape_values

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext


def check_input(xp: Any, x: Any, layer: Layer, ndim: int, expected: str) -> None:
    """One-line errors for an input of the wrong rank or a non-floating dtype."""
    if x.ndim != ndim:
        raise ValueError(f"{layer.name}: expected input of shape {expected}, got shape {tuple(x.shape)}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{layer.name}: expected a floating-point input, got dtype {x.dtype}; "
                        f"scale images to float first (xpcnn.data.to_batch does)")


def check_dtype(layer: Layer, x: Any, parameter: Any) -> None:
    if x.dtype != parameter.dtype:
        raise TypeError(f"{layer.name}: input dtype {x.dtype} does not match parameter dtype {parameter.dtype}")


def shape_error(layer: Layer, expected: str, shape: tuple) -> ValueError:
    """The error of :meth:`Layer.infer_shape` for a per-example input ``shape`` that does not fit."""
    return ValueError(f"{layer.name}: expected input of shape {expected}, got shape (N, "
                      + ", ".join(map(str, shape)) + ")")


class Layer:
    """A layer: ``forward(x)``, ``backward(grad_out, input_grad=True) -> grad_in``, and named
    ``params`` / ``grads`` / ``buffers`` dictionaries (empty for parameter-free layers).

    ``backward`` fills ``grads`` (dE/d of each parameter) and returns dE/dX; with
    ``input_grad=False`` it may skip dE/dX and return None (the first layer of a network: nothing
    uses its input gradient).  Every layer takes the flag, so ``Sequential.backward`` treats them alike.

    ``forward`` keeps what ``backward`` needs with :meth:`save_for_backward`; ``backward`` takes
    it back with :meth:`saved_for_backward`, which lets it go.  Nothing a step computed stays
    alive into the next step: less memory held between steps, and on NumPy a step 25% faster when
    the allocator keeps the freed memory for the next one (:mod:`xpcnn.training.hostmem`,
    docs/performance.md).  With ``training = False`` (``Sequential.inference()``) forward keeps
    nothing: prediction and evaluation."""

    training: bool = True
    BATCH_STATISTICS: tuple[int, ...] = ()
    TAKES_NOISE: bool = False
    where: str = ""  # "layer 5" once a Sequential named a layer that takes noise: for its messages

    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self._saved: tuple | None = None

    def save_for_backward(self, *values: Any) -> None:
        if self.training:
            self._saved = values

    def saved_for_backward(self) -> tuple:
        saved, self._saved = self._saved, None
        if saved is None:
            raise RuntimeError(f"{self.name}.backward: no forward pass to go back through (backward runs "
                               "once per training forward; not after an inference() forward)")
        return saved

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        raise NotImplementedError

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """(name, array) pairs; a Sequential prefixes them with the layer's index."""
        return iter(self.params.items())

    def named_gradients(self) -> Iterator[tuple[str, Any]]:
        return iter(self.grads.items())

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        """(name, array) pairs of the state that is not a parameter: no gradient, no optimizer."""
        return iter(self.buffers.items())

    def set_parameter(self, name: str, value: Any) -> None:
        """Replace (never mutate) one parameter: what optimizers call."""
        self.params[name] = value

    def set_buffer(self, name: str, value: Any) -> None:
        """Replace (never mutate) one buffer."""
        if name not in self.buffers:
            raise KeyError(f"{self.name} has no buffer {name!r} (its buffers: {', '.join(self.buffers)})")
        self.buffers = {**self.buffers, name: value}

    def noise_shape(self, shape: tuple) -> tuple | None:
        """The per-example shape of the noise a training forward on per-example input ``shape``
        needs, or None (nothing to draw).  Only a layer with ``TAKES_NOISE`` is asked."""
        return None

    def set_noise(self, noise: Any) -> None:
        """The next training forward's U[0, 1) noise: only a layer with ``TAKES_NOISE`` takes any."""
        raise TypeError(f"{self.name} takes no noise")

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the architecture."""
        return {}

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        """The shapes of the parameters and buffers ``cls(**arguments)`` would have (``arguments``:
        every constructor argument, defaults filled in), worked out -- and checked as the constructor
        checks them -- without allocating anything: how ``Sequential.load`` checks an untrusted file."""
        return {}

    @classmethod
    def initialiser(cls, scheme: str) -> str:
        """The weight initialiser this layer takes in a network built with ``scheme``."""
        return scheme

    def infer_shape(self, shape: tuple) -> tuple:
        """Per-example output shape for a per-example input shape (no batch axis);
        raises a ValueError naming this layer if the input cannot fit."""
        return tuple(shape)

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Layer:
        """Move parameters and buffers to ``backend`` (a :class:`Backend` or a name) and ``dtype``."""
        if not isinstance(backend, Backend):
            backend = resolve(backend, device)
        self.params = {k: transfer(v, backend, dtype) for k, v in self.params.items()}
        self.buffers = {k: transfer(v, backend, dtype) for k, v in self.buffers.items()}
        self.grads = {}
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"


# -- the registry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    """One token of the network spec grammar (:mod:`xpcnn.nn.spec`): ``pattern`` (a regular
    expression the whole lower-case token matches), ``build(match, context)`` (the layer, or list
    of layers, it stands for), and its ``--help`` line(s): ``usage`` and ``help``.
    ``cancels_bias``: the layer normalises its input, so the conv or dense layer before it is built
    without a bias (batch normalisation cancels it)."""

    pattern: str
    usage: str
    help: str
    build: Callable[[re.Match, SpecContext], Any]
    cancels_bias: bool = False


LAYERS: dict[str, type[Layer]] = {}
TOKENS: list[Token] = []
L = TypeVar("L", bound=type[Layer])


class UnknownLayerError(ValueError):
    """A layer record whose type is not a registered layer."""


def register(*classes: L, tokens: Sequence[Token] = ()) -> L:
    """Make layer classes known by their names (records, checkpoints) and their family's spec
    tokens known to the spec parser: ``register(Conv2D, tokens=[Token(...)])``.  Returns the
    first class, so ``@register`` also decorates one."""
    for cls in classes:
        LAYERS[cls.__name__] = cls
    TOKENS.extend(tokens)
    return classes[0]


def layer_class(record: dict) -> type[Layer]:
    """The registered class of a layer record ``{"type": "Conv2D", ...}``."""
    kind = record.get("type")
    if not isinstance(kind, str) or kind not in LAYERS:
        raise UnknownLayerError(f"unknown layer type {short_repr(kind)}; choose one of {', '.join(sorted(LAYERS))}")
    return LAYERS[kind]


def layer_arguments(record: dict, **defaults: Any) -> dict:
    """Every constructor argument of the record's layer: the record's own (all but ``type``), then
    ``defaults`` for those the layer takes and the record leaves out (how to initialise: ``init``,
    as the layer takes it (:meth:`Layer.initialiser`), ``rng``), then the constructor's defaults.
    A missing or unknown argument is a TypeError."""
    cls = layer_class(record)
    accepted = inspect.signature(cls).parameters
    given = {key: value for key, value in defaults.items() if key in accepted}
    if "init" in given:
        given["init"] = cls.initialiser(given["init"])
    bound = inspect.signature(cls).bind(**{**given, **{k: v for k, v in record.items() if k != "type"}})
    bound.apply_defaults()
    return dict(bound.arguments)


def build_layer(record: dict, **defaults: Any) -> Layer:
    """The layer a record describes (``Sequential.config()`` writes them; JSON lists stand for
    tuples), with ``defaults`` as :func:`layer_arguments` takes them.  Raises
    :class:`UnknownLayerError`, or the constructor's TypeError / ValueError; a ValueError, before
    anything is allocated, for a parameter or buffer over :data:`~xpcnn.nn.validate.MAX_ARRAY_VALUES`
    values."""
    if not isinstance(record, dict):
        raise TypeError(f"a layer record must be an object ({{\"type\": ...}}), got {short_repr(record)}")
    cls = layer_class(record)
    arguments = layer_arguments(record, **defaults)
    for name, shape in cls.state_shapes(arguments).items():
        shape_values(shape, cls.__name__, f"its {name} of shape {'x'.join(count_text(int(d)) for d in shape)}")
    return cls(**arguments)


def state_shapes(record: dict) -> dict[str, tuple[int, ...]]:
    """The parameter and buffer shapes of the layer a record describes, nothing built
    (:meth:`Layer.state_shapes`); raises as :func:`build_layer` does."""
    return layer_class(record).state_shapes(layer_arguments(record))
