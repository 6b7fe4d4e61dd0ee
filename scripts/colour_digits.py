"""Write a colour image dataset built offline: MNIST digits on 32x32 colour canvases.

Each digit of the embedded training set (4,500 train + 500 validation images, shipped with xpcnn) is
centred on a 32x32 canvas, its strokes painted in one random colour and the background in another
(drawn on the host from ``--seed``), and stored channels-last in a Keras-style .npz
(``x_train`` (N, 32, 32, 3) uint8, ``y_train``).  With ``--test-from DIR`` (an IDX folder such as
``../shared/data/mnist``) the real MNIST test images get the same treatment as ``x_test``/``y_test``:
evaluation only, never training.  The result has the shape of CIFAR-10 (3x32x32, 10 classes) with
content anyone can rebuild without a network: what the resnet20 and mobilenet presets are measured
on in the README::

    python scripts/colour_digits.py runs/colour_digits.npz --test-from ../shared/data/mnist
    python scripts/train.py --data runs/colour_digits.npz --preset resnet20 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn import data  # noqa: E402
from xpcnn.io.files import atomic_write, check_writable_file  # noqa: E402

SIZE = 32


def colourise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 digits -> (N, 32, 32, 3) uint8: each image's ink in one random colour over a
    background of another (the two at least 96 apart in some channel, so the digit stays visible)."""
    n, h, w = images.shape
    top, left = (SIZE - h) // 2, (SIZE - w) // 2
    canvas = np.zeros((n, SIZE, SIZE), np.float64)
    canvas[:, top:top + h, left:left + w] = images / 255.0
    ink = rng.integers(0, 256, (n, 3))
    paper = rng.integers(0, 256, (n, 3))
    close = np.abs(ink - paper).max(axis=1) < 96
    paper[close] = 255 - ink[close]
    mixed = paper[:, None, None, :] + canvas[..., None] * (ink - paper)[:, None, None, :]
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the .npz to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the colours (default 0)")
    parser.add_argument("--test-from", metavar="DIR", help="an IDX folder whose test split becomes x_test/y_test")
    args = parser.parse_args(argv)
    problem = check_writable_file(args.out)
    if problem:
        parser.error(f"out: {problem}")
    rng = np.random.default_rng(args.seed)
    embedded = data.load_embedded()
    images = np.concatenate([embedded.train.images, embedded.validation.images])[:, 0]
    labels = np.concatenate([embedded.train.labels, embedded.validation.labels])
    arrays = {"x_train": colourise(images, rng), "y_train": labels.astype(np.uint8)}
    if args.test_from:
        try:
            test = data.load(args.test_from).test
        except data.DataError as exc:
            parser.error(f"--test-from: {exc}")
        if test is None:
            parser.error(f"--test-from: {args.test_from} has no test split")
        arrays["x_test"] = colourise(test.images[:, 0], rng)
        arrays["y_test"] = test.labels.astype(np.uint8)
    with atomic_write(args.out) as handle:
        np.savez_compressed(handle, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{name} {value.shape}" for name, value in arrays.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
