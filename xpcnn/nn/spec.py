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

import inspect
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from xpcnn.io.checkpoint import short_repr
from xpcnn.nn.base import LAYERS, TOKENS, Layer, Token, build_layer
from xpcnn.nn.init import as_generator
from xpcnn.nn.sequential import Sequential
from xpcnn.nn.validate import MAX_PARAMETERS, count_text, shape_values

MAX_JSON_DEPTH = 32  # nesting of lists and objects in a model file (a residual block is 3-4 levels)
MAX_MODEL_FILE = 16 << 20  # bytes of a JSON model file

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
                shape_values(shape, layer.name, f"its output per image, of shape {_shape(shape)},")
                layers.append(layer)
            check_parameter_count(layers)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}: {exc}") from None
    return layers, shape


def _shape(shape: tuple) -> str:
    return "x".join(count_text(int(d)) for d in shape)


def parameter_count(layers: list[Layer]) -> int:
    """How many values the layers' parameters hold."""
    return sum(math.prod(int(d) for d in value.shape) for layer in layers for _, value in layer.named_parameters())


def check_parameter_count(layers: list[Layer], limit: int = MAX_PARAMETERS) -> int:
    """The layers' parameter count, or a ValueError when it exceeds ``limit``
    (:data:`~xpcnn.nn.validate.MAX_PARAMETERS`)."""
    count = parameter_count(layers)
    if count > limit:
        raise ValueError(f"the network would have {count_text(count)} parameters, more than the cap of "
                         f"{count_text(limit)}")
    return count


def activation_values(model: Sequential, image_shape: tuple) -> int:
    """The values one image's pass through ``model`` produces, layer by layer (the top-level layers'
    outputs): what a forward pass keeps per image for backward, to estimate a batch's memory."""
    total, shape = 0, tuple(image_shape)
    for layer in model.layers:
        shape = layer.infer_shape(shape)
        total += math.prod(int(d) for d in shape)
    return total


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
    if spec.lstrip()[:1] in ("[", "{"):  # JSON layer records, not tokens
        return architecture_network(spec, image_shape, outputs, init, seed)
    layers, shape = _parse(spec.lower(), tuple(image_shape), outputs, init, as_generator(seed), im2col, 0, "token")
    if shape != (outputs,):
        raise SpecError(f"the network ends in shape {shape}; the task needs {outputs} output(s)"
                        + (" (end the spec with 'dense')" if len(shape) == 1 else " (end it with 'flatten-dense')"))
    return Sequential(*layers)


def json_depth(text: str) -> int:
    """How deeply the lists and objects of the JSON ``text`` nest (strings skipped), found without
    parsing it, so a hostile file cannot exhaust the parser's recursion."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
        depth = max(0, depth + (1 if bracket in "[{" else -1))
        deepest = max(deepest, depth)
    return deepest


def load_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)`` with its nesting bounded by ``max_depth``; a :class:`SpecError` naming
    ``where`` for text that is not JSON or nests deeper."""
    if (depth := json_depth(text)) > max_depth:
        raise SpecError(f"{where}: JSON nested {depth} levels deep, more than {max_depth}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"{where}: not valid JSON ({exc})") from None


def read_model_file(path: str, limit: int = MAX_MODEL_FILE) -> list:
    """The layer records of the JSON model file ``path`` (docs/models.md): a list of records, or an
    object ``{"layers": [...]}``.  A non-regular file (a FIFO, a device) is refused before it is
    opened, and so is a file over ``limit`` bytes.  Raises :class:`SpecError` naming the file."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(f"{path}: not a regular file")
    if info.st_size > limit:
        raise SpecError(f"{path}: {info.st_size:,} bytes, more than a model file's cap of {limit:,}")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(limit + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    return layer_records(load_json(text, path), path)


def layer_records(value: Any, where: str = "the architecture") -> list:
    """The list of layer records in a parsed JSON model: the list itself, or the ``"layers"`` of an
    object (Keras' ``{"layers": [...]}`` shape, with xpcnn's records).  Keras' own records
    (``{"class_name": ..., "config": ...}``) are refused with a hint, as is anything else."""
    if isinstance(value, dict):
        if set(value) != {"layers"}:
            keys = ", ".join(map(short_repr, list(value)[:5]))
            raise SpecError(f"{where}: a JSON model is a list of layer records, or {{\"layers\": [...]}} with "
                            f"nothing else; this object has keys {keys} (docs/models.md)")
        value = value["layers"]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: a JSON model is a non-empty list of layer records ({{\"type\": \"Conv2D\", ...}}), "
                        f"got {short_repr(value)}")
    for index, record in enumerate(value):
        if not isinstance(record, dict):
            raise SpecError(f"{where}: layer {index} must be a record ({{\"type\": ...}}), got {short_repr(record)}")
        if "type" not in record and "class_name" in record:
            raise SpecError(f"{where}: layer {index} is a Keras record ({{\"class_name\": ..., \"config\": ...}}); "
                            f"xpcnn reads its own records ({{\"type\": \"Conv2D\", \"out_channels\": 32, "
                            f"\"kernel_size\": 3}}: docs/models.md)")
    return value


# The constructor arguments shape inference fills in when a record leaves them out: the size of
# the input's first axis (channels of an image, features of a vector).
INFERRED_ARGUMENTS = ("in_channels", "in_features", "channels", "features")


def complete_record(record: dict, shape: tuple) -> dict:
    """``record`` with the input sizes it leaves out (:data:`INFERRED_ARGUMENTS`) taken from the
    per-example input ``shape``; ``in_features`` needs a flat input (a Flatten before it)."""
    kind = record.get("type")
    cls = LAYERS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return record
    if kind == "Residual":  # its paths start from the block's input, record by record
        paths = {name: _complete_path(record[name], shape, name) for name in ("body", "shortcut")
                 if isinstance(record.get(name), list) and all(isinstance(r, dict) for r in record[name])}
        return {**record, **paths}
    accepted = inspect.signature(cls).parameters
    missing = [name for name in INFERRED_ARGUMENTS if name in accepted and name not in record]
    if not missing:
        return record
    if any(name.endswith("features") for name in missing) and len(shape) != 1:
        raise ValueError(f"its input is {_shape(shape)}, not a vector: put {{\"type\": \"Flatten\"}} before it "
                         f"(or GlobalAvgPool2D)")
    return {**record, **{name: int(shape[0]) for name in missing}}


def _complete_path(records: list, shape: tuple, path: str) -> list:
    """The records of a residual block's ``path`` (body, shortcut), each completed from the shape the
    ones before it reach (built once to infer it); an error names the record as Residual does."""
    completed = []
    for index, record in enumerate(records):
        try:
            record = complete_record(record, shape)
            shape = build_layer(record).infer_shape(shape)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"Residual {path}[{index}]: {exc}") from None
        completed.append(record)
    return completed


def architecture_network(architecture: str | list | dict, image_shape: tuple, outputs: int, init: str = "he",
                         seed: Any = 0) -> Sequential:
    """A network from layer records as checkpoints store them (``Sequential.config()``: a JSON list
    of ``{"type": "Conv2D", "in_channels": 1, ...}``, or ``{"layers": [...]}``), initialised from
    ``seed`` like a spec; input sizes a record leaves out are inferred (:func:`complete_record`);
    each parameter, each layer's output and the parameter count checked against their caps before
    anything is allocated.  Raises :class:`SpecError` naming the layer.  docs/models.md has the format."""
    if isinstance(architecture, str):
        architecture = load_json(architecture, "the architecture")
    records = layer_records(architecture)
    rng, layers, shape = as_generator(seed), [], tuple(image_shape)
    for index, record in enumerate(records):
        try:
            record = complete_record(record, shape)
            layer = build_layer(record, init=init, rng=rng)
            shape = layer.infer_shape(shape)
            shape_values(shape, "", f"its output per image, of shape {_shape(shape)},")
            layers.append(layer)
            check_parameter_count(layers)
        except (TypeError, ValueError) as exc:
            kind = record.get("type")
            raise SpecError(f"layer {index} ({kind if isinstance(kind, str) else short_repr(kind)}): {exc}") from None
    if shape != (outputs,):
        raise SpecError(f"the network ends in shape {shape}; the task needs {outputs} output(s)")
    return Sequential(*layers)
