"""The networks xpcnn trains, in one place: the presets of ``train.py`` (default, article, lenet5,
vgg, resnet20, mobilenet), the benchmark's network and the errata's.  Each is a
:class:`~xpcnn.nn.sequential.Sequential` initialised on the host from a NumPy generator (so every
backend starts from the same bits).

``outputs`` is the width of the last layer: 1 gives the article's single sigmoid output
O = sigma(W^T.A + b) (binary task), 10 gives ten logits for softmax cross-entropy.

A run's ``--model`` text (a spec or a JSON architecture) is read by :mod:`xpcnn.nn.spec`; its names
are here too, so that ``xpcnn.networks`` offers every way to build a network.
"""

from __future__ import annotations

from typing import Any

from xpcnn.nn.activations import ReLU, Sigmoid
from xpcnn.nn.conv import Conv2D
from xpcnn.nn.dense import Dense, Flatten
from xpcnn.nn.init import as_generator
from xpcnn.nn.pooling import MaxPool2D
from xpcnn.nn.sequential import Sequential
from xpcnn.nn.spec import SPEC_HELP, SpecError, architecture_network, parse_spec

__all__ = ["IMAGE_SHAPE", "SPEC_HELP", "SpecError", "architecture_network", "article_network", "bench_network",
           "default_network", "mobilenet_spec", "parse_spec", "preset_network", "resnet20_spec"]

IMAGE_SHAPE = (1, 28, 28)  # MNIST: one channel of 28 x 28 pixels


def _head(width: int, outputs: int, init: str, rng: Any) -> list:
    dense = Dense(width, outputs, init=init, rng=rng)
    return [dense, Sigmoid()] if outputs == 1 else [dense]


def article_network(outputs: int = 1, init: str = "uniform", rng: Any = 0, im2col: str = "auto") -> Sequential:
    """The article's network: Z1 = X * f (three 5x5 filters, no bias), A = sigma(Z1), flattened,
    Z2 = W^T.A + b (1728 -> ``outputs``), O = sigma(Z2) for one output."""
    rng = as_generator(rng)
    return Sequential(Conv2D(1, 3, 5, bias=False, init=init, rng=rng, im2col=im2col), Sigmoid(), Flatten(),
                      *_head(3 * 24 * 24, outputs, init, rng))


def default_network(outputs: int = 10, init: str = "he", rng: Any = 0, im2col: str = "auto") -> Sequential:
    """conv 5x5 x16 (+ bias), ReLU, 2x2 max-pool, dense 2304 -> ``outputs``.  With ``init="he"``
    the dense layer takes Glorot's (He's suits the ReLU before it, not the logits)."""
    rng = as_generator(rng)
    return Sequential(Conv2D(1, 16, 5, init=init, rng=rng, im2col=im2col), ReLU(), MaxPool2D(2), Flatten(),
                      *_head(16 * 12 * 12, outputs, Dense.initialiser(init), rng))


def bench_network(filters: int = 16, outputs: int = 10, rng: Any = 0, im2col: str = "auto") -> Sequential:
    """The benchmark's workload "bench": conv 5x5 x ``filters``, sigmoid, dense -> ``outputs``
    (He and Glorot initialisation)."""
    rng = as_generator(rng)
    return Sequential(Conv2D(1, filters, 5, rng=rng, im2col=im2col), Sigmoid(), Flatten(),
                      *_head(filters * 24 * 24, outputs, "glorot", rng))


def preset_network(preset: str, outputs: int, init: str, seed: Any, image_shape: tuple = IMAGE_SHAPE,
                   model: str | None = None) -> Sequential:
    """The network of a run: the ``model`` text when given (a spec, :func:`parse_spec`, or a JSON
    architecture, :func:`architecture_network`), else the named preset's architecture; checked
    against ``image_shape`` by shape inference."""
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
    builders = {"lenet5": _lenet5, "vgg": _vgg, "resnet20": _resnet20, "mobilenet": _mobilenet}
    if preset not in builders:
        raise ValueError(f"unknown preset {preset!r}; choose one of default, article, {', '.join(builders)}")
    return builders[preset](outputs, init, seed, tuple(image_shape))


def _lenet5(outputs: int, init: str, rng: Any, image_shape: tuple) -> Sequential:
    """LeNet-5 (LeCun et al. 1998) adapted: 5x5 convolutions (6, then 16 filters; the first padded
    by 2 so a 28x28 image becomes the original's 32x32 input), ReLU and max-pooling for the
    original's tanh and subsampling, then dense 120, 84 and the outputs."""
    pad = 2 if image_shape[1] <= 28 else 0
    return parse_spec(f"conv6k5p{pad}-relu-maxpool2-conv16k5-relu-maxpool2-flatten-dense120-relu-dense84-relu-dense",
                      image_shape, outputs, init, rng)


def _vgg(outputs: int, init: str, rng: Any, image_shape: tuple) -> Sequential:
    """A small VGG-style network for 3x32x32 inputs: two blocks of two 3x3 convolutions (32, then 64
    filters) with batch normalisation and ReLU, each block max-pooled, then dense 128, dropout 0.5
    and the outputs."""
    return parse_spec("conv32k3p1-bn-relu-conv32k3p1-bn-relu-maxpool2-conv64k3p1-bn-relu-conv64k3p1-bn-relu-maxpool2"
                      "-flatten-dense128-relu-dropout0.5-dense", image_shape, outputs, init, rng)


def resnet20_spec(channels: int = 16) -> str:
    """He et al. 2016's CIFAR ResNet-20 ("Deep Residual Learning for Image Recognition", section 4.2)
    as a spec: a 3x3 convolution of ``channels`` filters with batch normalisation and ReLU, then
    three stages of three basic blocks (conv3x3-bn-relu-conv3x3-bn, plus the shortcut, then ReLU)
    of ``channels``, 2x and 4x filters; the first block of stages 2 and 3 halves the size (stride 2)
    and doubles the width, its shortcut a strided 1x1 convolution with batch normalisation (the
    paper's option B projection); then the global average pool and the dense layer.  19 weighted
    layers + the dense one = 20.  No convolution has a bias (batch normalisation follows each)."""
    tokens = [f"conv{channels}k3p1-bn-relu"]
    for stage in range(3):
        width = channels * 2 ** stage
        for block in range(3):
            if stage > 0 and block == 0:  # half the size, twice the width: the shortcut projects
                tokens.append(f"res(conv{width}k3s2p1-bn-relu-conv{width}k3p1-bn|conv{width}k1s2-bn)-relu")
            else:
                tokens.append(f"res(conv{width}k3p1-bn-relu-conv{width}k3p1-bn)-relu")
    return "-".join([*tokens, "gap-dense"])


def _resnet20(outputs: int, init: str, rng: Any, image_shape: tuple) -> Sequential:
    """ResNet-20 (:func:`resnet20_spec`) for any C x H x W input: 272,474 parameters on 3-channel
    images for 10 classes (272,186 on one channel), BatchNorm's scale and shift included, running
    statistics not: the paper's 0.27M, whose option A shortcuts (zero-padded identities) have none,
    269,722, plus the two projections' 2,752."""
    return parse_spec(resnet20_spec(), image_shape, outputs, init, rng)


MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2))  # (pointwise width, depthwise stride)


def mobilenet_spec(channels: int = 32, blocks: tuple = MOBILENET_BLOCKS) -> str:
    """A small depthwise-separable network in the manner of MobileNet (Howard et al. 2017): a 3x3
    convolution of ``channels`` filters with batch normalisation and ReLU, then blocks of a
    depthwise 3x3 convolution (one filter per channel: groups = channels) + bn + ReLU and a
    pointwise 1x1 convolution to the block's width + bn + ReLU (``blocks``: (width, stride) each,
    the stride the depthwise convolution's), the global average pool and the dense layer."""
    tokens, width = [f"conv{channels}k3p1-bn-relu"], channels
    for pointwise, stride in blocks:
        tokens.append(f"conv{width}k3{f's{stride}' if stride > 1 else ''}p1dw-bn-relu-conv{pointwise}k1-bn-relu")
        width = pointwise
    return "-".join([*tokens, "gap-dense"])


def _mobilenet(outputs: int, init: str, rng: Any, image_shape: tuple) -> Sequential:
    """The depthwise-separable network of :func:`mobilenet_spec` for any C x H x W input: 67,914
    parameters on 3-channel images for 10 classes (67,338 on one channel)."""
    return parse_spec(mobilenet_spec(), image_shape, outputs, init, rng)
