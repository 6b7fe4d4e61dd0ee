"""The networks xpcnn trains, in one place: the presets of ``train.py``, the benchmark's
network and the errata's.  Each is a :class:`~xpcnn.model.Sequential` initialised on the host from
a NumPy generator (so every backend starts from the same bits).

``outputs`` is the width of the last layer: 1 gives the article's single sigmoid output
O = sigma(W^T.A + b) (binary task), 10 gives ten logits for softmax cross-entropy.
"""

from __future__ import annotations

import numpy as np

from .init import as_generator
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from .model import Sequential

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


PRESET_NETWORKS = {"default": default_network, "article": article_network}


def preset_network(preset: str, outputs: int, init: str, seed: int | np.random.Generator) -> Sequential:
    """The architecture of a named preset, checked against MNIST's image shape."""
    if preset not in PRESET_NETWORKS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NETWORKS)}")
    model = PRESET_NETWORKS[preset](outputs=outputs, init=init, rng=seed)
    model.infer_shape(IMAGE_SHAPE)  # checks the geometry now, not at the first batch
    return model
