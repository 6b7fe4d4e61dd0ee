"""A network's summary: per layer its output shape, parameter count, multiply-adds and activation
memory for one image, and the totals (``Sequential.summary(input_shape)``, ``xpcnn summary``).

What is counted, per image (no batch axis):

* parameters: the learnable arrays' elements (BatchNorm's running statistics are buffers, not counted);
* multiply-adds of the inference forward pass: a Conv2D's H_out * W_out * C_out * (C_in / groups) * kh * kw,
  a Dense layer's in * out, a BatchNorm's one per element (x * scale + shift); activations, pooling,
  Flatten and Dropout count none; a residual block counts its paths;
* activation memory: the layer's output elements times the bytes of the network's dtype, what a
  batch of one image holds per layer in inference.

A residual block is one row, its paths' layers listed under it (``3.body.0``) and not counted twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from xpcnn.nn.base import Layer

BYTES = {"float32": 4, "float64": 8}


@dataclass
class LayerRow:
    """One layer's line: ``index`` its position ("3", or "3.body.0" inside a block), ``depth`` 0 for
    the network's own layers."""

    index: str
    name: str
    output_shape: tuple
    parameters: int
    mult_adds: int
    activation_bytes: int
    depth: int = 0


@dataclass
class Summary:
    """The rows of a network for one input shape, and their totals (the network's own layers only)."""

    input_shape: tuple
    dtype: str
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def output_shape(self) -> tuple:
        top = [row for row in self.rows if row.depth == 0]
        return top[-1].output_shape if top else self.input_shape

    @property
    def parameters(self) -> int:
        return sum(row.parameters for row in self.rows if row.depth == 0)

    @property
    def mult_adds(self) -> int:
        return sum(row.mult_adds for row in self.rows if row.depth == 0)

    @property
    def activation_bytes(self) -> int:
        return sum(row.activation_bytes for row in self.rows if row.depth == 0)

    def as_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "dtype": self.dtype, "output_shape": list(self.output_shape),
                "parameters": self.parameters, "mult_adds": self.mult_adds,
                "activation_bytes": self.activation_bytes,
                "layers": [{"index": row.index, "type": row.name, "output_shape": list(row.output_shape),
                            "parameters": row.parameters, "mult_adds": row.mult_adds,
                            "activation_bytes": row.activation_bytes} for row in self.rows]}

    def one_line(self) -> str:
        """'image 1x28x28 -> 10 outputs; 37,066 parameters (145 KiB float32); 0.29M multiply-adds per image'."""
        outputs = shape_text(self.output_shape) + (" output" if self.output_shape == (1,) else " outputs")
        return (f"image {shape_text(self.input_shape)} -> {outputs}; "
                f"{self.parameters:,} parameters ({size_text(self.parameters * BYTES[self.dtype])} {self.dtype}); "
                f"{count_text(self.mult_adds)} multiply-adds per image")

    def __str__(self) -> str:
        header = ("layer", "output", "parameters", "mult-adds", "activations")
        lines = [(("  " * row.depth) + f"{row.index} {row.name}", shape_text(row.output_shape), f"{row.parameters:,}",
                  f"{row.mult_adds:,}", size_text(row.activation_bytes)) for row in self.rows]
        total = ("total", shape_text(self.output_shape), f"{self.parameters:,}", f"{self.mult_adds:,}",
                 size_text(self.activation_bytes))
        first = ("input", shape_text(self.input_shape), "", "", size_text(math.prod(self.input_shape)
                                                                           * BYTES[self.dtype]))
        table = [header, first, *lines, total]
        widths = [max(len(line[column]) for line in table) for column in range(len(header))]

        def row_text(cells: tuple) -> str:
            return "  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                             for column, (cell, width) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(row_text(header))
        return "\n".join([row_text(header), rule, row_text(first), *map(row_text, lines), rule, row_text(total),
                          f"per image, {self.dtype}; activations: each layer's output"])


def shape_text(shape: tuple) -> str:
    """(16, 12, 12) -> '16x12x12'."""
    return "x".join(str(int(d)) for d in shape)


def size_text(n_bytes: int) -> str:
    """Bytes in B, KiB or MiB (one decimal above 1 KiB)."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    if n_bytes < 1024 ** 2:
        return f"{n_bytes / 1024:.1f} KiB"
    return f"{n_bytes / 1024 ** 2:.1f} MiB"


def count_text(n: int) -> str:
    """1234567 -> '1.23M', 12345 -> '12.3K'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def parameter_count(layer: Layer) -> int:
    return sum(math.prod(tuple(value.shape)) for value in layer.params.values())


def mult_adds(layer: Layer, shape: tuple, output: tuple) -> int:
    """The multiply-adds of one layer's inference forward from per-example ``shape`` to ``output``
    (module docstring); a residual block's are its paths' (counted by :func:`summarize`)."""
    name = layer.name
    if name == "Conv2D":
        conv: Any = layer
        return math.prod(output) * (conv.in_channels // conv.groups) * conv.kh * conv.kw
    if name == "Dense":
        dense: Any = layer
        return int(dense.in_features) * int(dense.out_features)
    if name in ("BatchNorm1D", "BatchNorm2D"):
        return math.prod(output)
    return 0


def _rows(layers: list[Layer], shape: tuple, prefix: str, depth: int, itemsize: int) -> tuple[list[LayerRow], tuple]:
    rows: list[LayerRow] = []
    for index, layer in enumerate(layers):
        where = f"{prefix}{index}"
        try:
            output = tuple(layer.infer_shape(tuple(shape)))
        except ValueError as exc:
            raise ValueError(f"layer {where} ({exc})") from None
        if layer.name == "Residual":
            block: Any = layer
            inner: list[LayerRow] = []
            for part, path in block.paths():
                found, _ = _rows(path.layers, shape, f"{where}.{part}.", depth + 1, itemsize)
                inner += found
            own = [row for row in inner if row.depth == depth + 1]
            rows.append(LayerRow(where, layer.name, output, parameter_count(layer), sum(r.mult_adds for r in own),
                                 math.prod(output) * itemsize, depth))
            rows += inner
        else:
            rows.append(LayerRow(where, layer.name, output, parameter_count(layer), mult_adds(layer, shape, output),
                                 math.prod(output) * itemsize, depth))
        shape = output
    return rows, shape


def summarize(layers: list[Layer], input_shape: tuple, dtype: str = "float32") -> Summary:
    """The :class:`Summary` of ``layers`` (a Sequential's) on per-example ``input_shape`` (C, H, W).
    A layer that cannot take its input raises a ValueError naming it."""
    if dtype not in BYTES:
        raise ValueError(f"summary: dtype must be float32 or float64, got {dtype!r}")
    rows, _ = _rows(list(layers), tuple(input_shape), "", 0, BYTES[dtype])
    return Summary(tuple(input_shape), dtype, rows)
