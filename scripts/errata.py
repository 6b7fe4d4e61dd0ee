#!/usr/bin/env python
"""Measure, with central finite differences in float64, how far the three departures of the
source article's published code from its own math move the filter gradient dE/df.

The departures are re-implemented here from their description (see docs/errata.md), on the
article's network (conv 1->3 5x5, sigmoid, dense 1728->1, sigmoid, E = 1/2 (y - O)^2 averaged
over the batch), with small random weights so that nothing saturates:

  batch-mean   the error dE/dZ1 is averaged over the batch *before* it is correlated with each
               image: dE/df ~ sum_n X_n * mean_m(G_m) instead of sum_n X_n * G_n / N
  resize       dE/dA is laid out (1728, N) - one column per image, as in W^T.A - and
               np.resize'd to (N, 3, 24, 24), which reorders values across images and filters
  normalised   the forward pass divides Z2 by its batch maximum before the sigmoid, but the
               backward pass does not differentiate that step

For each variant it prints the relative error ||g - g_fd|| / ||g_fd|| of dE/df against finite
differences; xpcnn's own Conv2D.backward is the first row.

    python scripts/errata.py [--batch 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn import data  # noqa: E402
from xpcnn.nn.losses import MSELoss  # noqa: E402
from xpcnn.nn.presets import article_network  # noqa: E402
from xpcnn.nn.sequential import Sequential  # noqa: E402


def network(seed: int) -> Sequential:
    return article_network(outputs=1, init="glorot", rng=seed)


def loss_of(model, x, y, normalise: bool = False) -> float:
    z2 = model.layers[3](model.layers[2](model.layers[1](model.layers[0](x))))
    if normalise:
        z2 = z2 / np.max(np.abs(z2))
    return float(MSELoss()(model.layers[4](z2), y))


def finite_difference_filter_grad(model, x, y, normalise: bool, eps: float = 1e-6) -> np.ndarray:
    weight = model.layers[0].params["weight"]
    grad = np.zeros_like(weight)
    for index in np.ndindex(weight.shape):
        original = weight[index]
        weight[index] = original + eps
        plus = loss_of(model, x, y, normalise)
        weight[index] = original - eps
        minus = loss_of(model, x, y, normalise)
        weight[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def correlate_filters(x: np.ndarray, grad_z1: np.ndarray) -> np.ndarray:
    """dE/df[c, i, j] = sum_n sum_{r,s} X[n, r+i, s+j] G[n, c, r, s] (what Conv2D.backward computes)."""
    out = np.zeros((grad_z1.shape[1], 1, 5, 5))
    for i in range(5):
        for j in range(5):
            window = x[:, 0, i:i + 24, j:j + 24]  # (N, 24, 24)
            out[:, 0, i, j] = np.tensordot(grad_z1, window, axes=([0, 2, 3], [0, 1, 2]))
    return out


def variants(model, x, y) -> dict[str, np.ndarray]:
    conv, sig1, flat, dense, sig2 = model.layers
    loss = MSELoss()
    loss(model(x), y)
    model.backward(loss.backward())  # xpcnn's own path, for row 1
    ours = model.layers[0].grads["weight"].copy()

    a = sig1(conv(x))  # again, layer by layer, to take dE/dZ1 apart by hand
    z2 = dense(flat(a))
    loss(sig2(z2), y)
    grad_z2 = sig2.backward(loss.backward())
    grad_a_flat = dense.backward(grad_z2)  # (N, 1728)
    grad_z1 = grad_a_flat.reshape(a.shape) * a * (1 - a)  # (N, 3, 24, 24)
    n = x.shape[0]

    batch_mean = correlate_filters(x, np.broadcast_to(grad_z1.mean(axis=0, keepdims=True), grad_z1.shape))
    resized = np.resize(grad_a_flat.T, (n, 3, 24, 24)) * a * (1 - a)
    return {"xpcnn Conv2D.backward": ours, "batch-mean": batch_mean,
            "resize": correlate_filters(x, resized)}


def normalised_variant(model, x, y) -> np.ndarray:
    """Forward with Z2 / max|Z2|, backward as if the division were not there."""
    conv, sig1, flat, dense, sig2 = model.layers
    loss = MSELoss()
    a = sig1(conv(x))
    z2 = dense(flat(a))
    loss(sig2(z2 / np.max(np.abs(z2))), y)
    grad_a = dense.backward(sig2.backward(loss.backward()))  # as if O = sigma(Z2)
    return correlate_filters(x, grad_a.reshape(a.shape) * a * (1 - a))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="finite-difference check of the article code's filter gradient")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train = data.load_embedded().train.take(args.batch)
    x = train.images.astype(np.float64) / 255.0
    y = data.task_targets(train.labels, "binary")
    model = network(args.seed)
    reference = finite_difference_filter_grad(model, x, y, normalise=False)
    rows = [(name, grad, reference) for name, grad in variants(model, x, y).items()]
    rows.append(("normalised (no derivative)", normalised_variant(model, x, y),
                 finite_difference_filter_grad(model, x, y, normalise=True)))
    print(f"dE/df of the article's network, batch {args.batch}, float64, central differences eps=1e-6")
    print(f"  {'filter gradient':<30} {'rel. error vs finite differences':>34}")
    for name, grad, fd in rows:
        error = np.linalg.norm(grad - fd) / np.linalg.norm(fd)
        print(f"  {name:<30} {error:34.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
