"""Residual blocks, :class:`Residual`, and the spec token ``res(<body>)`` / ``res(<body>|<shortcut>)``.

A residual block (He et al. 2016) adds its input, or a projection of it, to what a stack of layers
makes of it:

    Y = body(X) + shortcut(X)          (shortcut(X) = X, the identity, when there is none)

The fork sends X down both paths; the join adds them.  Backward, with G = dE/dY: the sum passes G
unchanged to both of its terms, so each path backpropagates G, and the two gradients that reach the
fork add up (X feeds both paths):

    dE/dX = body.backward(G) + shortcut.backward(G)       (+ G for the identity)

and each path's parameters get their gradients from its own backward.  The derivation is in
docs/math.md ("Residual blocks").

To everything that runs a model the block is one layer: its ``params``, ``grads`` and ``buffers``
are its paths' under the names ``body.<i>.<name>`` and ``shortcut.<i>.<name>`` (in a Sequential
``"3.body.0.weight"``, ``"3.shortcut.1.running_mean"``), set through ``set_parameter`` /
``set_buffer`` and assigned as a whole (``block.grads = {...}``, as the executors do); its
``training`` flag reaches every inner layer; it reports its inner layers' batch statistics
(``BATCH_STATISTICS``: the executors refuse to split a batch through a BatchNorm) and noise
(``TAKES_NOISE``: the Dropouts inside take one slice each of the block's noise array); its record
``{"type": "Residual", "body": [records], "shortcut": [records] | null}`` nests its paths' records,
rebuilt by :func:`~xpcnn.nn.base.build_layer` up to :data:`MAX_DEPTH` levels of blocks in blocks.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from xpcnn.backends import Array, Backend, namespace, resolve
from xpcnn.io.checkpoint import short_repr
from xpcnn.nn.base import Layer, Token, build_layer, register, state_shapes
from xpcnn.nn.init import as_generator
from xpcnn.nn.sequential import Sequential

if TYPE_CHECKING:
    from xpcnn.nn.spec import SpecContext

MAX_DEPTH = 8  # residual blocks inside residual blocks: how deep a record or a spec may nest them

PARTS = ("body", "shortcut")


def nesting_depth(records: object, limit: int = MAX_DEPTH) -> int:
    """How deeply Residual records nest in ``records`` (a list of layer records: 0 without any
    Residual, 1 with blocks of plain layers, ...), counted without recursion, and no further than
    ``limit + 1``: a hostile file's nesting costs nothing and raises no RecursionError."""
    deepest, stack = 0, [(records, 0)]
    while stack:
        value, level = stack.pop()
        if not isinstance(value, list):
            continue
        for record in value:
            if isinstance(record, dict) and record.get("type") == "Residual":
                deepest = max(deepest, level + 1)
                if deepest > limit:
                    return deepest
                stack.extend((record.get(part), level + 1) for part in PARTS)
    return deepest


def _path(value: object, part: str, defaults: dict, depth: int) -> Sequential:
    """A path of the block: a Sequential as given, or one of a list of layers or layer records."""
    if isinstance(value, Sequential):
        return value
    if isinstance(value, Layer):
        return Sequential(value)
    if not isinstance(value, list | tuple) or not value:
        raise TypeError(f"Residual: {part} must be a Sequential or a non-empty list of layers or layer records, "
                        f"got {short_repr(value)}")
    if nesting_depth(list(value), MAX_DEPTH - depth) > MAX_DEPTH - depth:
        raise ValueError(f"Residual: blocks nest more than {MAX_DEPTH} deep")
    layers = []
    for index, entry in enumerate(value):
        if isinstance(entry, Layer):
            layers.append(entry)
        elif isinstance(entry, dict):
            try:
                layers.append(build_layer(entry, **defaults))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"Residual {part}[{index}]: {exc}") from None
        else:
            raise TypeError(f"Residual: {part}[{index}] must be a layer or a layer record (an object with a type), "
                            f"got {short_repr(entry)}")
    return Sequential(*layers)


def _depth_of(path: Sequential | None) -> int:
    return max((layer.depth for layer in path.layers if isinstance(layer, Residual)), default=0) if path else 0


def _shape_text(shape: tuple) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"


class Residual(Layer):
    """Y = body(X) + shortcut(X): a residual block; ``shortcut=None`` is the identity, Y = body(X) + X.

    ``body`` and ``shortcut`` are Sequentials, or lists of layers, or lists of layer records (as
    :meth:`config` writes them; built with ``init`` and ``rng`` when given: how
    :func:`~xpcnn.nn.spec.architecture_network` initialises a JSON architecture).  Both paths must
    give the same shape (:meth:`infer_shape`); a projection shortcut (a 1x1 strided Conv2D and a
    BatchNorm2D) makes it so where the body changes the width or the size.

    Forward: A = body(X), B = shortcut(X) (or X), Y = A + B.
    Backward, with G = dE/dY: dE/dX = body.backward(G) + shortcut.backward(G) (or + G); the paths'
    backward passes fill their layers' gradients (docs/math.md, "Residual blocks")."""

    def __init__(self, body: Sequential | list | tuple, shortcut: Sequential | list | tuple | None = None,
                 init: str | None = None, rng: Any = None) -> None:
        defaults: dict[str, Any] = {}
        if init is not None:
            defaults["init"] = init
        if rng is not None:
            defaults["rng"] = as_generator(rng)  # one generator for every inner layer, in order
        self.body = _path(body, "body", defaults, 1)
        self.shortcut = None if shortcut is None else _path(shortcut, "shortcut", defaults, 1)
        self.depth = 1 + max(_depth_of(self.body), _depth_of(self.shortcut))
        if self.depth > MAX_DEPTH:
            raise ValueError(f"Residual: blocks nest more than {MAX_DEPTH} deep")
        self._training = True
        self.noise: Any = None
        super().__init__()

    # -- the paths --------------------------------------------------------------------------------
    def paths(self) -> list[tuple[str, Sequential]]:
        """("body", body) and, unless the shortcut is the identity, ("shortcut", shortcut)."""
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def inner_layers(self) -> Iterator[Layer]:
        """Every layer of both paths (a block inside counts as one layer)."""
        for _, path in self.paths():
            yield from path.layers

    def _owner(self, qualified: str) -> tuple[Sequential, str]:
        part, _, rest = qualified.partition(".")
        path = dict(self.paths()).get(part)
        if path is None:
            raise KeyError(f"Residual has no {part!r} path (name {qualified!r}; its paths: "
                           f"{', '.join(name for name, _ in self.paths())})")
        return path, rest

    def _collect(self, which: str) -> dict[str, Any]:
        return {f"{part}.{index}.{name}": value for part, path in self.paths()
                for index, layer in enumerate(path.layers) for name, value in getattr(layer, which).items()}

    @property
    def params(self) -> dict[str, Any]:
        return self._collect("params")

    @params.setter
    def params(self, value: dict[str, Any]) -> None:
        for name, array in value.items():
            self.set_parameter(name, array)

    @property
    def grads(self) -> dict[str, Any]:
        return self._collect("grads")

    @grads.setter
    def grads(self, value: dict[str, Any]) -> None:
        """Replace every inner layer's gradients with those named in ``value`` (what the executors
        assign after adding up shares, or {} to let them go)."""
        grouped: dict[tuple[str, int], dict[str, Any]] = {}
        for qualified, array in value.items():
            part, _, rest = qualified.partition(".")
            position, _, name = rest.partition(".")
            self._owner(qualified)
            grouped.setdefault((part, int(position)), {})[name] = array
        for part, path in self.paths():
            for index, layer in enumerate(path.layers):
                layer.grads = grouped.get((part, index), {})

    @property
    def buffers(self) -> dict[str, Any]:
        return self._collect("buffers")

    @buffers.setter
    def buffers(self, value: dict[str, Any]) -> None:
        for name, array in value.items():
            self.set_buffer(name, array)

    def set_parameter(self, name: str, value: Any) -> None:
        path, rest = self._owner(name)
        path.set_parameter(rest, value)

    def set_buffer(self, name: str, value: Any) -> None:
        path, rest = self._owner(name)
        path.set_buffer(rest, value)

    # -- what runners read --------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        return self._training

    @training.setter
    def training(self, value: bool) -> None:
        """The flag reaches every inner layer (``Sequential.inference()`` sets it on the block)."""
        self._training = value
        for layer in self.inner_layers():
            layer.training = value

    @property
    def BATCH_STATISTICS(self) -> tuple[int, ...]:  # type: ignore[override]  # noqa: N802  (every layer's attribute)
        """The inner layers': (0,) when one of them normalises each feature over the batch alone
        (BatchNorm1D: the stricter need, two images in every batch), else the first non-empty."""
        found = [layer.BATCH_STATISTICS for layer in self.inner_layers() if layer.BATCH_STATISTICS]
        return (0,) if (0,) in found else (found[0] if found else ())

    @property
    def TAKES_NOISE(self) -> bool:  # type: ignore[override]  # noqa: N802
        """Whether a layer inside needs noise (Dropout)."""
        return any(layer.TAKES_NOISE for layer in self.inner_layers())

    def _noise_layout(self, shape: tuple) -> tuple[list[tuple[Layer, tuple, int, int]], int]:
        """(layer, per-example shape, offset, size) of each inner layer that takes noise, and the
        total size: the inner noise arrays side by side in one row per example, body first."""
        layout, offset = [], 0
        for part, path in self.paths():
            current = tuple(shape)
            for index, layer in enumerate(path.layers):
                if layer.TAKES_NOISE:
                    layer.where = f"{self.where or self.name} {part}.{index}".strip()
                    per_example = layer.noise_shape(current)
                    if per_example is not None:
                        size = math.prod(per_example)
                        layout.append((layer, tuple(per_example), offset, size))
                        offset += size
                current = layer.infer_shape(current)
        return layout, offset

    def noise_shape(self, shape: tuple) -> tuple | None:
        """One row of U[0, 1) noise per example holding every inner layer's noise side by side
        (body first, in layer order), or None when no inner layer draws any."""
        _, total = self._noise_layout(shape)
        return (total,) if total else None

    def set_noise(self, noise: Any) -> None:
        """The next training forward's noise, (N, total) as :meth:`noise_shape` says; forward hands
        each inner layer its columns, reshaped to its own per-example shape."""
        self.noise = noise

    def _hand_out_noise(self, x: Array) -> None:
        noise, self.noise = self.noise, None
        if noise is None or not self.training:
            return  # (an inner Dropout without noise says what is missing)
        xp = namespace(x, noise, where=f"{self.name}.forward")
        layout, total = self._noise_layout(tuple(x.shape[1:]))
        if tuple(noise.shape) != (x.shape[0], total):
            raise ValueError(f"{self.name}{f' ({self.where})' if self.where else ''}: noise of shape "
                             f"{tuple(noise.shape)} for an input of shape {tuple(x.shape)} (expected "
                             f"{(x.shape[0], total)})")
        for layer, per_example, offset, size in layout:
            layer.set_noise(xp.reshape(noise[:, offset:offset + size], (x.shape[0], *per_example)))

    # -- forward and backward ------------------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        """Y = body(X) + shortcut(X), or body(X) + X."""
        namespace(x, where=f"{self.name}.forward")
        self._hand_out_noise(x)
        through = self.body.forward(x)
        around = x if self.shortcut is None else self.shortcut.forward(x)
        if tuple(through.shape) != tuple(around.shape):
            raise ValueError(f"{self.name}: the body gives shape {tuple(through.shape)} and the "
                             f"{'shortcut' if self.shortcut else 'identity shortcut'} {tuple(around.shape)}; "
                             "they must agree")
        return through + around

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array | None:
        """G = dE/dY goes down both paths; dE/dX = body.backward(G) + shortcut.backward(G) (or + G).
        With ``input_grad=False`` neither path computes its dE/dX (the paths' parameters still get
        their gradients) and None is returned."""
        through = self.body.backward(grad_out, input_grad=input_grad)
        around = grad_out if self.shortcut is None else self.shortcut.backward(grad_out, input_grad=input_grad)
        return through + around if input_grad else None

    # -- architecture ------------------------------------------------------------------------------
    def infer_shape(self, shape: tuple) -> tuple:
        """Both paths' output shape, which must be the same."""
        found = {}
        for part, path in self.paths():
            try:
                found[part] = path.infer_shape(tuple(shape))
            except ValueError as exc:
                raise ValueError(f"{self.name} {part}: {exc}") from None
        through, around = found["body"], found.get("shortcut", tuple(shape))
        if through != around:
            raise ValueError(f"{self.name}: the body gives shape {_shape_text(through)} and the "
                             f"{'shortcut' if self.shortcut else 'identity shortcut'} {_shape_text(around)}; "
                             "they must agree (a projection shortcut, e.g. a strided 1x1 Conv2D, changes the "
                             "width and size alike)")
        return through

    def config(self) -> dict:
        return {"body": self.body.config(), "shortcut": None if self.shortcut is None else self.shortcut.config()}

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        """The inner records' parameter and buffer shapes under ``body.<i>.`` and ``shortcut.<i>.``,
        worked out record by record (nothing built); the nesting is checked first."""
        shapes = {}
        for part in PARTS:
            records = arguments.get(part)
            if part == "shortcut" and records is None:
                continue
            if not isinstance(records, list) or not records:
                raise TypeError(f"Residual: {part} must be a non-empty list of layer records, "
                                f"got {short_repr(records)}")
            if nesting_depth(records, MAX_DEPTH - 1) > MAX_DEPTH - 1:
                raise ValueError(f"Residual: blocks nest more than {MAX_DEPTH} deep")
            for index, record in enumerate(records):
                if not isinstance(record, dict):
                    raise TypeError(f"Residual: {part}[{index}] must be a layer record (an object with a type), "
                                    f"got {short_repr(record)}")
                try:
                    inner = state_shapes(record)
                except (TypeError, ValueError, KeyError) as exc:
                    raise type(exc)(f"Residual {part}[{index}]: {exc}") from None
                shapes.update({f"{part}.{index}.{name}": shape for name, shape in inner.items()})
        return shapes

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Residual:
        if not isinstance(backend, Backend):
            backend = resolve(backend, device)
        self.noise = None
        for _, path in self.paths():
            path.to(backend, dtype=dtype)
        return self

    def __repr__(self) -> str:
        shortcut = "None" if self.shortcut is None else repr(self.shortcut.layers)
        return f"Residual(body={self.body.layers!r}, shortcut={shortcut})"


# -- the spec token ----------------------------------------------------------------------------------

def _projection_hint(shape: tuple, through: tuple) -> str:
    """A shortcut that turns ``shape`` into ``through``, ``conv<C>k1s<S>-bn``, when a strided 1x1
    convolution does; else ``<shortcut>``."""
    if len(shape) == 3 and len(through) == 3:
        for stride in range(1, min(shape[1], 64) + 1):
            if (shape[1] - 1) // stride + 1 == through[1] and (shape[2] - 1) // stride + 1 == through[2]:
                return f"conv{through[0]}k1" + (f"s{stride}" if stride > 1 else "") + "-bn"
    return "<shortcut>"


def _res_token(match: re.Match, spec: SpecContext) -> Residual:
    """``res(<body>)`` and ``res(<body>|<shortcut>)``: the paths' tokens parsed as a spec is, from
    the block's input shape (:func:`xpcnn.nn.spec.parse_tokens`)."""
    from xpcnn.nn.spec import parse_tokens, split_top_level  # (spec imports the registry this module fills)

    levels = max(itertools.accumulate((char == "(") - (char == ")") for char in match.group(0)))
    if spec.depth + levels > MAX_DEPTH:  # said once, by the outermost block
        raise ValueError(f"residual blocks nest {spec.depth + levels} deep here, more than {MAX_DEPTH}")
    pieces = split_top_level(match.group(1), "|")
    if len(pieces) > 2:
        raise ValueError("a block has one body and at most one shortcut: res(<body>) or res(<body>|<shortcut>), "
                         f"got {len(pieces)} parts separated by '|'")
    paths, shapes = {}, {}
    for part, text in zip(PARTS, pieces):
        if not text.strip():
            raise ValueError(f"the {part} is empty: give its layer tokens, e.g. "
                             + ("res(conv32k3s2p1-bn-relu-conv32k3p1-bn|conv32k1s2-bn)" if part == "shortcut"
                                else "res(conv16k3p1-bn-relu-conv16k3p1-bn)"))
        layers, shapes[part] = parse_tokens(text, spec, part)
        paths[part] = Sequential(*layers)
    through, around = shapes["body"], shapes.get("shortcut", tuple(spec.shape))
    if through != around:
        if "shortcut" in paths:
            raise ValueError(f"the body gives shape {_shape_text(through)} and the shortcut {_shape_text(around)}; "
                             "they must agree")
        raise ValueError(f"the body gives shape {_shape_text(through)}, the input (the identity shortcut) is "
                         f"{_shape_text(around)}; use the projection form res(<body>|"
                         f"{_projection_hint(tuple(spec.shape), through)}) to change the shortcut alike")
    return Residual(paths["body"], paths.get("shortcut"))


register(Residual, tokens=[Token(r"res\((.*)\)", "res(<body>[|<shortcut>])",
                                 "a residual block: body(X) + X, the body's tokens joined by '-' as here, e.g.\n"
                                 "res(conv16k3p1-bn-relu-conv16k3p1-bn)-relu; with '|<shortcut>', body(X) +\n"
                                 "shortcut(X), a projection where the width or size changes, e.g.\n"
                                 "res(conv32k3s2p1-bn-relu-conv32k3p1-bn|conv32k1s2-bn)-relu "
                                 f"(nested {MAX_DEPTH} deep at most)",
                                 _res_token)])
