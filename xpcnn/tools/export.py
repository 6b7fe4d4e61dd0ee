"""ONNX export: a trained network as an ``.onnx`` file that ONNX Runtime, TensorRT, OpenVINO,
onnx2torch ... run without xpcnn (``xpcnn export CKPT model.onnx``)::

    from xpcnn.tools.export import export_checkpoint

    export_checkpoint("runs/latest/checkpoint.npz", "model.onnx")

Needs the ``onnx`` package (``pip install 'xpcnn[export]'``, which brings onnxruntime too).

The graph (ONNX opset :data:`OPSET`, IR version :data:`IR_VERSION`, float32):

* input ``images``: float32 (N, C, H, W) with pixels scaled to [0, 1] (uint8 pixels / 255), the
  batch size N free; the run's per-channel normalisation, (x - mean) / std, is folded into the
  graph as its first two nodes, so callers never apply it;
* output ``output``: (N, K) logits for a multiclass network (apply softmax for probabilities), or
  (N, 1) the sigmoid output O of the binary task;
* inference mode: Dropout is left out, BatchNorm1D/2D is ``BatchNormalization`` with the running
  statistics (affine=False: scale 1, shift 0);
* every layer xpcnn has: Conv2D (``Conv``: padding, stride, dilation, groups), Dense (``Gemm``),
  ReLU, Sigmoid, Tanh, LeakyReLU, GELU (its tanh form from Mul/Add/Tanh, as xpcnn computes it),
  Flatten, MaxPool2D / AvgPool2D (an explicit ``Pad`` -- -inf for max, zeros for average, which
  count in the mean as in PyTorch -- then the pool; ceil_mode's overhanging last window is padded
  on the right, and an average pool's divisor corrected by a constant where PyTorch's differs),
  GlobalAvgPool2D (``GlobalAveragePool``, ``Flatten``), Residual (its paths and ``Add``).

A float64 checkpoint is exported in float32 (ONNX runtimes run float32 convolutions everywhere).
The file's metadata holds the image shape, the task and the class names.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from xpcnn.backends import to_numpy
from xpcnn.data.targets import class_names as task_class_names
from xpcnn.io.files import atomic_write
from xpcnn.nn.base import Layer
from xpcnn.nn.pooling import pool_output_size
from xpcnn.nn.sequential import Sequential

OPSET = 17  # ONNX Runtime >= 1.11, TensorRT 8.5+, OpenVINO 2022.3+; every op used here exists since 13
IR_VERSION = 8  # the IR version of opset 17


class ExportError(ValueError):
    """A network that cannot be exported, or the onnx package missing; the message is one line."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError("export needs the onnx package; install the 'export' extra: "
                          "pip install 'xpcnn[export]'") from None
    return onnx


class _Graph:
    """The nodes and constant tensors (initialisers) of the graph being built."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.count = onnx, 0
        self.nodes: list[Any] = []
        self.constants: list[Any] = []

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def constant(self, hint: str, array: Any, dtype: Any = np.float32) -> str:
        name = self.name(hint)
        self.constants.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype)), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        out = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _pool(graph: _Graph, layer: Any, x: str, shape: tuple, where: str) -> str:
    """Pad (p on each side, and as much more on the right as ceil_mode's last window hangs over)
    then MaxPool / AveragePool without padding: the windows xpcnn's pooling reads."""
    _, h, w = shape
    kh, kw, sh, sw, ph, pw = layer.kh, layer.kw, layer.sh, layer.sw, layer.ph, layer.pw
    out_h = pool_output_size(h, kh, sh, ph, layer.ceil_mode)
    out_w = pool_output_size(w, kw, sw, pw, layer.ceil_mode)
    extra_h = max(0, (out_h - 1) * sh + kh - (h + 2 * ph))
    extra_w = max(0, (out_w - 1) * sw + kw - (w + 2 * pw))
    is_max = layer.name == "MaxPool2D"
    if ph or pw or extra_h or extra_w:
        pads = graph.constant(f"{where}.pads", [0, 0, ph, pw, 0, 0, ph + extra_h, pw + extra_w], np.int64)
        fill = graph.constant(f"{where}.fill", -np.inf if is_max else 0.0)
        x = graph.node("Pad", [x, pads, fill], f"{where}.pad", mode="constant")
    y = graph.node("MaxPool" if is_max else "AveragePool", [x], where, kernel_shape=[kh, kw], strides=[sh, sw])
    if not is_max:  # PyTorch's divisor D of a ceil_mode window over the edge: counts input + padding cells only
        rows = [min(r * sh - ph + kh, h + ph) - (r * sh - ph) for r in range(out_h)]
        cols = [min(t * sw - pw + kw, w + pw) - (t * sw - pw) for t in range(out_w)]
        if any(c != kh for c in rows) or any(c != kw for c in cols):
            factor = (kh * kw) / (np.asarray(rows, np.float64)[:, None] * np.asarray(cols, np.float64)[None, :])
            y = graph.node("Mul", [y, graph.constant(f"{where}.divisor", factor)], f"{where}.rescale")
    return y


def _gelu(graph: _Graph, x: str, where: str, layer: Any) -> str:
    """A = 0.5 Z (1 + tanh(c (Z + k Z^3))), as :class:`xpcnn.nn.activations.GELU` computes it."""
    cube = graph.node("Mul", [graph.node("Mul", [x, x], f"{where}.sq"), x], f"{where}.cube")
    inner = graph.node("Add", [x, graph.node("Mul", [cube, graph.constant(f"{where}.k", layer.K)], f"{where}.kz3")],
                       f"{where}.inner")
    t = graph.node("Tanh", [graph.node("Mul", [inner, graph.constant(f"{where}.c", layer.C)], f"{where}.u")],
                   f"{where}.tanh")
    one_plus = graph.node("Add", [t, graph.constant(f"{where}.one", 1.0)], f"{where}.onept")
    half = graph.node("Mul", [x, graph.constant(f"{where}.half", 0.5)], f"{where}.halfz")
    return graph.node("Mul", [half, one_plus], where)


def _layers(graph: _Graph, layers: list[Layer], x: str, shape: tuple, prefix: str) -> tuple[str, tuple]:
    for index, layer in enumerate(layers):
        where = f"{prefix}{index}"
        x = _layer(graph, layer, x, tuple(shape), where)
        shape = tuple(layer.infer_shape(tuple(shape)))
    return x, shape


def _layer(graph: _Graph, layer: Any, x: str, shape: tuple, where: str) -> str:
    """The nodes of one layer on input ``x`` of per-example ``shape``; returns the output's name."""
    name = layer.name
    p = {key: to_numpy(value) for key, value in layer.params.items()}
    if name == "Conv2D":
        inputs = [x, graph.constant(f"{where}.weight", p["weight"])]
        if "bias" in p:
            inputs.append(graph.constant(f"{where}.bias", p["bias"]))
        return graph.node("Conv", inputs, where, kernel_shape=[layer.kh, layer.kw], strides=[layer.sh, layer.sw],
                          pads=[layer.ph, layer.pw, layer.ph, layer.pw], dilations=[layer.dh, layer.dw],
                          group=layer.groups)
    if name == "Dense":
        inputs = [x, graph.constant(f"{where}.weight", p["weight"])]  # (in, out): O = X W + b
        if "bias" in p:
            inputs.append(graph.constant(f"{where}.bias", p["bias"]))
        return graph.node("Gemm", inputs, where)
    if name in ("ReLU", "Sigmoid", "Tanh"):
        return graph.node({"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh"}[name], [x], where)
    if name == "LeakyReLU":
        return graph.node("LeakyRelu", [x], where, alpha=float(layer.negative_slope))
    if name == "GELU":
        return _gelu(graph, x, where, layer)
    if name == "Flatten":
        return graph.node("Flatten", [x], where, axis=1)
    if name == "Dropout":  # inference: the identity
        return x
    if name in ("MaxPool2D", "AvgPool2D"):
        return _pool(graph, layer, x, shape, where)
    if name == "GlobalAvgPool2D":
        return graph.node("Flatten", [graph.node("GlobalAveragePool", [x], f"{where}.gap")], where, axis=1)
    if name in ("BatchNorm1D", "BatchNorm2D"):
        b = {key: to_numpy(value) for key, value in layer.buffers.items()}
        size = b["running_mean"].shape
        scale = p.get("weight", np.ones(size))
        shift = p.get("bias", np.zeros(size))
        inputs = [x, graph.constant(f"{where}.weight", scale), graph.constant(f"{where}.bias", shift),
                  graph.constant(f"{where}.running_mean", b["running_mean"]),
                  graph.constant(f"{where}.running_var", b["running_var"])]
        return graph.node("BatchNormalization", inputs, where, epsilon=float(layer.eps))
    if name == "Residual":
        through, _ = _layers(graph, layer.body.layers, x, shape, f"{where}.body.")
        around = x if layer.shortcut is None else _layers(graph, layer.shortcut.layers, x, shape,
                                                          f"{where}.shortcut.")[0]
        return graph.node("Add", [through, around], where)
    raise ExportError(f"layer {where} ({name}): no ONNX export for this layer type")


def to_onnx(model: Sequential, image_shape: tuple, normalization: dict | None = None,
            metadata: dict | None = None) -> Any:
    """The ``onnx.ModelProto`` of ``model`` (inference mode) for per-example ``image_shape``
    (C, H, W); ``normalization`` {"mean": [...], "std": [...]} folded in; ``metadata`` (str -> str)
    stored in the file.  Checked by ``onnx.checker`` with shape inference."""
    onnx = _onnx()
    helper = onnx.helper
    try:
        output_shape = model.infer_shape(tuple(image_shape))
    except ValueError as exc:
        raise ExportError(f"the network does not take {image_shape} images ({exc})") from None
    graph = _Graph(onnx)
    x = "images"
    if normalization is not None:
        channels = image_shape[0]
        mean = np.asarray(normalization["mean"], np.float64).reshape(1, channels, 1, 1)
        std = np.asarray(normalization["std"], np.float64).reshape(1, channels, 1, 1)
        x = graph.node("Sub", [x, graph.constant("normalize.mean", mean)], "normalize.centre")
        x = graph.node("Div", [x, graph.constant("normalize.std", std)], "normalize.scale")
    y, _ = _layers(graph, model.layers, x, tuple(image_shape), "")
    graph.nodes.append(helper.make_node("Identity", [y], ["output"], name="output"))
    float32 = onnx.TensorProto.FLOAT
    proto = helper.make_graph(
        graph.nodes, "xpcnn",
        [helper.make_tensor_value_info("images", float32, ["N", *map(int, image_shape)])],
        [helper.make_tensor_value_info("output", float32, ["N", *map(int, output_shape)])], graph.constants)
    onnx_model = helper.make_model(proto, producer_name="xpcnn", opset_imports=[helper.make_opsetid("", OPSET)],
                                   ir_version=IR_VERSION)
    onnx_model.doc_string = ("input 'images': float32 (N, C, H, W) pixels in [0, 1] (the run's normalisation is "
                             "in the graph); output 'output': logits (multiclass) or the sigmoid output (binary)")
    helper.set_model_props(onnx_model, {key: str(value) for key, value in (metadata or {}).items()})
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"the exported graph does not check ({type(exc).__name__}: {exc})") from None
    return onnx_model


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike) -> dict:
    """Write the network of a training checkpoint to ``path`` as ONNX (module docstring), atomically;
    returns what was written (path, opset, image shape, output shape, nodes).  Raises
    CheckpointError (the checkpoint), ExportError (the network or the onnx package)."""
    from xpcnn.training.snapshot import read as read_checkpoint

    _onnx()  # fail before reading anything when onnx is missing
    saved = read_checkpoint(checkpoint)
    config = saved.config
    model = Sequential.from_config(saved.architecture).to("numpy", dtype="float32")
    model.load_state_dict({name: np.asarray(value, np.float32) for name, value in saved.model_state.items()})
    names = task_class_names(config.task, config.classes, saved.class_names)
    onnx_model = to_onnx(model, config.image_shape, saved.normalization,
                         {"xpcnn.image_shape": ",".join(map(str, config.image_shape)), "xpcnn.task": config.task,
                          "xpcnn.class_names": "\n".join(names), "xpcnn.preprocessing":
                          "float32 pixels in [0, 1] (uint8 / 255); normalisation folded into the graph"})
    with atomic_write(path) as handle:
        handle.write(onnx_model.SerializeToString())
    return {"path": str(path), "opset": OPSET, "image_shape": list(config.image_shape),
            "output_shape": [int(d) for d in model.infer_shape(config.image_shape)],
            "nodes": len(onnx_model.graph.node), "parameters": int(sum(math.prod(v.shape)
                                                                       for v in saved.model_state.values()))}
