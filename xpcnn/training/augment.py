"""Data augmentation on the host, drawn from the seed: the same images on every backend and
after a resume."""

from __future__ import annotations

import numpy as np


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image ((N, C, H, W), or (N, H, W)) by a random (dy, dx) in [-max_shift, max_shift],
    the same for all its channels, filling with 0.  One draw of 2N integers per batch, whatever C: a
    1-channel image moves exactly as before colour was supported.  The training loop seeds ``rng``
    from (seed, epoch, step), so a resumed run draws the same shifts."""
    *lead, h, w = images.shape
    n = lead[0]
    padded = np.zeros((*lead, h + 2 * max_shift, w + 2 * max_shift), dtype=images.dtype)
    padded[..., max_shift:max_shift + h, max_shift:max_shift + w] = images
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]  # (n, h)
    cols = dx[:, None] + np.arange(w)[None, :]  # (n, w)
    if images.ndim == 3:
        return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return padded[np.arange(n)[:, None, None, None], np.arange(lead[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def shift_batch(images: np.ndarray, max_shift: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """The augmentation of step ``step`` (from 0) of epoch ``epoch`` (from 0)."""
    if not max_shift:
        return images
    return random_shift(images, max_shift, np.random.default_rng([seed, epoch, step]))
