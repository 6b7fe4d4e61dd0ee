"""The networks xpcnn trains, in one place: the presets of ``train.py``, the benchmark's
network and the errata's.  Each is a :class:`~xpcnn.nn.sequential.Sequential` initialised on the host from
a NumPy generator (so every backend starts from the same bits).

``outputs`` is the width of the last layer: 1 gives the article's single sigmoid output
O = sigma(W^T.A + b) (binary task), 10 gives ten logits for softmax cross-entropy.
"""

from __future__ import annotations

import re

from xpcnn.nn.init import as_generator
from xpcnn.nn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid, Tanh
from xpcnn.nn.sequential import Sequential

IMAGE_SHAPE = (1, 28, 28)  # MNIST: one channel of 28 x 28 pixels


def _head(width: int, outputs: int, init: str, rng) -> list:
    dense = Dense(width, outputs, init=init, rng=rng)
    return [dense, Sigmoid()] if outputs == 1 else [dense]


def article_network(outputs: int = 1, init: str = "uniform", rng=0, im2col: str = "auto") -> Sequential:
    """The article's network: Z1 = X * f (three 5x5 filters, no bias), A = sigma(Z1), flattened,
    Z2 = W^T.A + b (1728 -> ``outputs``), O = sigma(Z2) for one output."""
    rng = as_generator(rng)
    return Sequential(Conv2D(1, 3, 5, bias=False, init=init, rng=rng, im2col=im2col), Sigmoid(), Flatten(),
                      *_head(3 * 24 * 24, outputs, init, rng))


def default_network(outputs: int = 10, init: str = "he", rng=0, im2col: str = "auto") -> Sequential:
    """conv 5x5 x16 (+ bias), ReLU, 2x2 max-pool, dense 2304 -> ``outputs``.  With ``init="he"``
    the dense layer takes Glorot's (He's suits the ReLU before it, not the logits)."""
    rng = as_generator(rng)
    dense_init = "glorot" if init == "he" else init
    return Sequential(Conv2D(1, 16, 5, init=init, rng=rng, im2col=im2col), ReLU(), MaxPool2D(2), Flatten(),
                      *_head(16 * 12 * 12, outputs, dense_init, rng))


def bench_network(filters: int = 16, outputs: int = 10, rng=0, im2col: str = "auto") -> Sequential:
    """The benchmark's workload "bench": conv 5x5 x ``filters``, sigmoid, dense -> ``outputs``
    (He and Glorot initialisation)."""
    rng = as_generator(rng)
    return Sequential(Conv2D(1, filters, 5, rng=rng, im2col=im2col), Sigmoid(), Flatten(),
                      *_head(filters * 24 * 24, outputs, "glorot", rng))


def preset_network(preset: str, outputs: int, init: str, seed, image_shape: tuple = IMAGE_SHAPE,
                   model: str | None = None) -> Sequential:
    """The network of a run: the ``model`` spec when given (:func:`parse_spec`), else the named
    preset's architecture; checked against ``image_shape`` by shape inference."""
    if model is not None:
        if model.lstrip().startswith("["):
            return architecture_network(model, image_shape, outputs, init, seed)
        return parse_spec(model, image_shape, outputs, init, seed)
    if preset in ("default", "article"):
        if tuple(image_shape) != IMAGE_SHAPE:
            raise SpecError(f"preset {preset!r} is MNIST's network (1x28x28 images); these images are "
                            f"{'x'.join(map(str, image_shape))}: choose lenet5, vgg or a --model spec")
        network = default_network if preset == "default" else article_network
        model_ = network(outputs=outputs, init=init, rng=seed)
        model_.infer_shape(IMAGE_SHAPE)  # checks the geometry now, not at the first batch
        return model_
    builders = {"lenet5": _lenet5, "vgg": _vgg}
    if preset not in builders:
        raise ValueError(f"unknown preset {preset!r}; choose one of default, article, {', '.join(builders)}")
    return builders[preset](outputs, init, seed, tuple(image_shape))


# -- any architecture: a compact text spec -----------------------------------------------------------

SPEC_HELP = """\
A network spec is layer tokens joined by '-', applied in order to the images (C, H, W):
  conv<F>k<K>[s<S>][p<P>][nb]  Conv2D: F filters of K x K, stride S (1), zero padding P (0); nb: no bias
  maxpool<K>[s<S>]             MaxPool2D over K x K windows, stride S (K)
  avgpool<K>[s<S>]             AvgPool2D likewise
  relu | sigmoid | tanh        activations
  flatten                      (C, H, W) -> C*H*W, before the first dense layer
  dense<N> | dense             Dense with N outputs; a last 'dense' without N gets the task's outputs
                               (K classes, or 1 for the binary task, then followed by a sigmoid)
  dropout<P>                   Dropout with drop probability P, e.g. dropout0.5
  bn                           BatchNorm2D after a conv layer, BatchNorm1D after flatten/dense (the
                               conv or dense layer right before it has no bias: bn cancels it)
Input sizes (channels, features) follow from the images by shape inference.  Example:
  conv32k3p1-relu-maxpool2-conv64k3-relu-maxpool2-flatten-dense128-relu-dropout0.5-dense"""

_TOKENS = {
    "conv": re.compile(r"conv(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?(nb)?"),
    "maxpool": re.compile(r"maxpool(\d+)(?:s(\d+))?"),
    "avgpool": re.compile(r"avgpool(\d+)(?:s(\d+))?"),
    "dense": re.compile(r"dense(\d+)?"),
    "dropout": re.compile(r"dropout((?:0|1)?\.\d+|0|1)"),
}


class SpecError(ValueError):
    """A network spec that does not parse or does not fit the data; names the token or the layer."""


def parse_spec(spec: str, image_shape: tuple, outputs: int, init: str = "he", seed=0,
               im2col: str = "auto") -> Sequential:
    """The :class:`Sequential` a spec describes (``SPEC_HELP``), its input sizes inferred from
    ``image_shape`` (C, H, W), initialised on the host from ``seed``.  ``outputs`` is the width a
    trailing ``dense`` takes (1: a sigmoid follows).  Raises :class:`SpecError` naming the token."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("the network spec is empty")
    rng = as_generator(seed)
    tokens = [t.strip() for t in spec.strip().lower().split("-")]
    layers, shape = [], tuple(image_shape)
    dense_init = "glorot" if init == "he" else init
    for index, token in enumerate(tokens):
        where = f"token {index + 1} {token!r}"
        last = index == len(tokens) - 1
        # A bias right before batch normalisation is cancelled by it (its gradient is zero, and Adam
        # turns that zero's rounding noise into steps): such a conv or dense layer has none.
        before_bn = not last and tokens[index + 1] == "bn"
        match = None
        for kind, pattern in _TOKENS.items():
            match = pattern.fullmatch(token)
            if match:
                break
        if token in ("relu", "sigmoid", "tanh", "flatten", "bn"):
            kind, match = token, True
        if not match:
            raise SpecError(f"{where}: not a layer token (see --help for the spec syntax)")
        try:
            if kind == "conv":
                if len(shape) != 3:
                    raise SpecError(f"{where}: a conv layer needs images (C, H, W), it gets shape {shape}")
                filters, kernel, stride, padding, nobias = match.groups()
                layer = Conv2D(shape[0], int(filters), int(kernel), stride=int(stride or 1), padding=int(padding or 0),
                               bias=not (nobias or before_bn), init=init, rng=rng, im2col=im2col)
            elif kind in ("maxpool", "avgpool"):
                kernel, stride = match.groups()
                cls = MaxPool2D if kind == "maxpool" else AvgPool2D
                layer = cls(int(kernel), stride=int(stride) if stride else None)
            elif kind == "dense":
                if len(shape) != 1:
                    raise SpecError(f"{where}: a dense layer needs a flat input, it gets shape {shape}; "
                                    "put 'flatten' before it")
                width = int(match.group(1)) if match.group(1) else (outputs if last else None)
                if width is None:
                    raise SpecError(f"{where}: give the width (dense<N>); only the last dense layer may omit it")
                layer = Dense(shape[0], width, bias=not before_bn, init=dense_init, rng=rng)
            elif kind == "dropout":
                from xpcnn.nn.regularization import Dropout

                layer = Dropout(float(match.group(1)))
            elif kind == "bn":
                from xpcnn.nn.regularization import BatchNorm1D, BatchNorm2D

                layer = BatchNorm2D(shape[0]) if len(shape) == 3 else BatchNorm1D(shape[0])
            else:
                layer = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "flatten": Flatten}[kind]()
            shape = layer.infer_shape(shape)
        except SpecError:
            raise
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}: {exc}") from None
        layers.append(layer)
        if kind == "dense" and last and outputs == 1 and not match.group(1):
            layers.append(Sigmoid())
    if shape != (outputs,):
        raise SpecError(f"the network ends in shape {shape}; the task needs {outputs} output(s)"
                        + (" (end the spec with 'dense')" if len(shape) == 1 else " (end it with 'flatten-dense')"))
    return Sequential(*layers)


def architecture_network(architecture, image_shape: tuple, outputs: int, init: str = "he", seed=0) -> Sequential:
    """A network from layer configs as checkpoints store them (``Sequential.config()``: a JSON list of
    ``{"type": "Conv2D", "in_channels": 1, ...}``), initialised from ``seed`` like a spec; checked by
    shape inference.  Raises :class:`SpecError` naming the layer."""
    import inspect
    import json

    from xpcnn.nn.layers import LAYER_TYPES as types  # (with Dropout and BatchNorm, which xpcnn.nn.sequential registers)

    if isinstance(architecture, str):
        try:
            architecture = json.loads(architecture)
        except ValueError as exc:
            raise SpecError(f"the architecture is not valid JSON ({exc})") from None
    if not isinstance(architecture, list) or not architecture or not all(isinstance(e, dict) for e in architecture):
        raise SpecError("the architecture must be a non-empty JSON list of layer records ({\"type\": ...})")
    rng, layers, shape = as_generator(seed), [], tuple(image_shape)
    for index, entry in enumerate(architecture):
        entry = dict(entry)
        kind = entry.pop("type", None)
        where = f"layer {index} ({kind})"
        if kind not in types:
            raise SpecError(f"{where}: unknown layer type; choose one of {', '.join(sorted(types))}")
        accepted = inspect.signature(types[kind]).parameters
        if "rng" in accepted:
            entry.setdefault("rng", rng)
            entry.setdefault("init", "glorot" if kind == "Dense" and init == "he" else init)
        try:
            layer = types[kind](**entry)
            shape = layer.infer_shape(shape)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}: {exc}") from None
        layers.append(layer)
    if shape != (outputs,):
        raise SpecError(f"the network ends in shape {shape}; the task needs {outputs} output(s)")
    return Sequential(*layers)


def _lenet5(outputs, init, rng, image_shape):
    """LeNet-5 (LeCun et al. 1998) adapted: 5x5 convolutions (6, then 16 filters; the first padded
    by 2 so a 28x28 image becomes the original's 32x32 input), ReLU and max-pooling for the
    original's tanh and subsampling, then dense 120, 84 and the outputs."""
    pad = 2 if image_shape[1] <= 28 else 0
    return parse_spec(f"conv6k5p{pad}-relu-maxpool2-conv16k5-relu-maxpool2-flatten-dense120-relu-dense84-relu-dense",
                      image_shape, outputs, init, rng)


def _vgg(outputs, init, rng, image_shape):
    """A small VGG-style network for 3x32x32 inputs: two blocks of two 3x3 convolutions (32, then 64
    filters) with batch normalisation and ReLU, each block max-pooled, then dense 128, dropout 0.5
    and the outputs."""
    return parse_spec("conv32k3p1-bn-relu-conv32k3p1-bn-relu-maxpool2-conv64k3p1-bn-relu-conv64k3p1-bn-relu-maxpool2"
                      "-flatten-dense128-relu-dropout0.5-dense", image_shape, outputs, init, rng)
