"""The text forms of a network that ``--model`` takes: a compact spec of layer tokens
(``conv32k3p1-relu-maxpool2-flatten-dense``, :func:`parse_spec`; a residual block ``res(...)`` holds
tokens of its own) and a JSON list of layer records as checkpoints store them
(:func:`architecture_network`).

The grammar is the layer families': each declares its tokens (a :class:`~xpcnn.nn.base.Token`:
pattern, builder, help line) in its :func:`~xpcnn.nn.base.register` line, and :data:`SPEC_HELP`
(``--help``) lists them in that order.  A token's builder gets a :class:`SpecContext`: the input
shape that shape inference has reached, and how to initialise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from xpcnn.io.checkpoint import short_repr
from xpcnn.nn.base import TOKENS, Layer, Token, build_layer
from xpcnn.nn.init import as_generator
from xpcnn.nn.sequential import Sequential

_HEADER = "A network spec is layer tokens joined by '-', applied in order to the images (C, H, W):"
_FOOTER = """\
Input sizes (channels, features) follow from the images by shape inference.  Example:
  conv32k3p1-relu-maxpool2-conv64k3-relu-maxpool2-flatten-dense128-relu-dropout0.5-dense
A residual network (the second block halves the size and doubles the width, so its shortcut projects):
  conv16k3p1-bn-relu-res(conv16k3p1-bn-relu-conv16k3p1-bn)-relu-res(conv32k3s2p1-bn-relu-conv32k3p1-bn|conv32k1s2-bn)-relu-gap-dense"""


def spec_help() -> str:
    """The spec grammar as ``--help`` shows it: one entry per registered token, in registration order."""
    lines = [_HEADER]
    for token in TOKENS:
        first, *rest = token.help.split("\n")
        lines.append(f"  {token.usage:<29}{first}")
        lines += [" " * 31 + line for line in rest]
    return "\n".join([*lines, _FOOTER])


SPEC_HELP = spec_help()


class SpecError(ValueError):
    """A network spec that does not parse or does not fit the data; names the token or the layer."""


@dataclass(frozen=True)
class SpecContext:
    """What a token's builder knows: ``shape``, the per-example input shape of the layer it builds
    (inferred from the images); ``outputs``, the width the task needs; ``last``, whether the token
    ends the spec; ``bias``, False when the next token's layer cancels a bias (``bn``); ``init``
    and ``rng``, how to initialise (the run's scheme, a NumPy generator shared in spec order);
    ``im2col``, Conv2D's way to build its columns; ``depth``, how many residual blocks
    (``res(...)``) the token is inside."""

    shape: tuple
    outputs: int
    last: bool
    bias: bool
    init: str
    rng: Any
    im2col: str
    depth: int = 0


def _match(token: str) -> tuple[Token, re.Match] | None:
    for kind in TOKENS:
        match = re.fullmatch(kind.pattern, token)
        if match:
            return kind, match
    return None


def split_top_level(text: str, separator: str) -> list[str]:
    """``text`` cut at each ``separator`` outside parentheses: the tokens of a spec (``-``), the
    paths of a residual block (``|``).  A stray ')' closes nothing; :func:`balanced` tells a piece
    whose parentheses do not pair up."""
    pieces, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth = max(0, depth + (char == "(") - (char == ")"))
        if char == separator and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    return [*pieces, text[start:]]


def balanced(text: str) -> bool:
    """Whether every '(' in ``text`` has its ')' after it, and every ')' its '(' before it."""
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if depth < 0:
            return False
    return depth == 0


def _parse(text: str, shape: tuple, outputs: int, init: str, rng: Any, im2col: str, depth: int,
           label: str) -> tuple[list[Layer], tuple]:
    """The layers of the tokens in ``text`` and the shape they end in, from per-example input
    ``shape``; ``label`` names the tokens in errors (``token``, ``body token``); ``depth`` > 0 inside a
    residual block, where no token ends the spec."""
    tokens = [t.strip() for t in split_top_level(text.strip(), "-")]
    for index, token in enumerate(tokens):
        if not balanced(token):
            raise SpecError(f"{label} {index + 1} {short_repr(token)}: unbalanced parentheses (each '(' needs its ')')")
    matches = [_match(token) for token in tokens]
    layers: list[Layer] = []
    for index, (token, found) in enumerate(zip(tokens, matches)):
        where = f"{label} {index + 1} {short_repr(token)}"
        if found is None:
            raise SpecError(f"{where}: not a layer token (see --help for the spec syntax)")
        kind, match = found
        following = matches[index + 1] if index + 1 < len(tokens) else None
        # A bias right before batch normalisation is cancelled by it (its gradient is zero, and Adam
        # turns that zero's rounding noise into steps): such a conv or dense layer has none.
        context = SpecContext(shape, outputs, last=depth == 0 and index + 1 == len(tokens),
                              bias=not (following and following[0].cancels_bias), init=init, rng=rng, im2col=im2col,
                              depth=depth)
        try:
            built = kind.build(match, context)
            for layer in built if isinstance(built, list) else [built]:
                shape = layer.infer_shape(shape)
                layers.append(layer)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}: {exc}") from None
    return layers, shape


def parse_tokens(text: str, context: SpecContext, part: str) -> tuple[list[Layer], tuple]:
    """The layers of a residual block's path (``part``: body or shortcut) from its tokens ``text``,
    built as a spec's are from the block's input shape ``context.shape``, one level deeper; and the
    shape they end in.  Raises :class:`SpecError` naming the token within the path."""
    return _parse(text, context.shape, context.outputs, context.init, context.rng, context.im2col, context.depth + 1,
                  f"{part} token")


def parse_spec(spec: str, image_shape: tuple, outputs: int, init: str = "he", seed: Any = 0,
               im2col: str = "auto") -> Sequential:
    """The :class:`Sequential` a spec describes (:data:`SPEC_HELP`), its input sizes inferred from
    ``image_shape`` (C, H, W), initialised on the host from ``seed``.  ``outputs`` is the width a
    trailing ``dense`` takes (1: a sigmoid follows).  Tokens are split at the '-' outside
    parentheses: a residual block ``res(...)`` holds its own tokens.  Raises :class:`SpecError`
    naming the token."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("the network spec is empty")
    layers, shape = _parse(spec.lower(), tuple(image_shape), outputs, init, as_generator(seed), im2col, 0, "token")
    if shape != (outputs,):
        raise SpecError(f"the network ends in shape {shape}; the task needs {outputs} output(s)"
                        + (" (end the spec with 'dense')" if len(shape) == 1 else " (end it with 'flatten-dense')"))
    return Sequential(*layers)


def architecture_network(architecture: str | list, image_shape: tuple, outputs: int, init: str = "he",
                         seed: Any = 0) -> Sequential:
    """A network from layer configs as checkpoints store them (``Sequential.config()``: a JSON list of
    ``{"type": "Conv2D", "in_channels": 1, ...}``), initialised from ``seed`` like a spec; checked by
    shape inference.  Raises :class:`SpecError` naming the layer."""
    if isinstance(architecture, str):
        try:
            architecture = json.loads(architecture)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise SpecError(f"the architecture is not valid JSON ({exc})") from None
    if not isinstance(architecture, list) or not architecture or not all(isinstance(e, dict) for e in architecture):
        raise SpecError("the architecture must be a non-empty JSON list of layer records ({\"type\": ...})")
    rng, layers, shape = as_generator(seed), [], tuple(image_shape)
    for index, record in enumerate(architecture):
        try:
            layer = build_layer(record, init=init, rng=rng)
            shape = layer.infer_shape(shape)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"layer {index} ({record.get('type')}): {exc}") from None
        layers.append(layer)
    if shape != (outputs,):
        raise SpecError(f"the network ends in shape {shape}; the task needs {outputs} output(s)")
    return Sequential(*layers)

