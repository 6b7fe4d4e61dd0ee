"""What happens to images between the reader and the network: per-channel statistics and the
normalisation they feed, and the augmentation (random shifts) drawn on the host from the seed, so
every backend, and a resumed run, sees the same images."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xpcnn.backends import Backend, from_numpy
from xpcnn.data.dataset import DataError, Split

# -- normalisation ------------------------------------------------------------------------------


def channel_stats(split: Split | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean[C], std[C]) of a Split's (or an (N, C, H, W) array's) images, float64, on
    the scale the network sees (uint8 / 255; float32 as given): the numbers for
    ``to_batch(..., normalize=(mean, std))``.  uint8 statistics are exact (integer sums, correctly
    rounded); float ones are summed in float64 in a fixed order.  The population std (ddof 0); a
    constant channel reports std 1.0, so normalising only centres it."""
    images = split.images if isinstance(split, Split) else np.asarray(split)
    if images.ndim != 4:
        raise DataError(f"channel_stats expects images (N, C, H, W), got shape {images.shape}")
    n, channels = images.shape[:2]
    count = n * images.shape[2] * images.shape[3]
    if count == 0:
        raise DataError("channel_stats: no images to compute channel statistics from")
    step = max(1, (1 << 22) // max(1, images[0].size))  # about 4M pixels at a time
    if images.dtype == np.uint8:
        s1, s2 = [0] * channels, [0] * channels
        for start in range(0, n, step):
            chunk = images[start:start + step].astype(np.uint64)
            s1 = [a + int(b) for a, b in zip(s1, chunk.sum(axis=(0, 2, 3)))]
            s2 = [a + int(b) for a, b in zip(s2, (chunk * chunk).sum(axis=(0, 2, 3)))]
        mean = np.array([a / (count * 255) for a in s1])
        variance = [(count * b - a * a) / (count * count) for a, b in zip(s1, s2)]  # exact integers, then one rounding
        std = np.array([math.sqrt(v) / 255 for v in variance])
    elif images.dtype.kind == "f":
        total = np.zeros(channels)
        for start in range(0, n, step):
            total += images[start:start + step].sum(axis=(0, 2, 3), dtype=np.float64)
        mean = total / count
        squares = np.zeros(channels)
        for start in range(0, n, step):
            centred = images[start:start + step].astype(np.float64) - mean[None, :, None, None]
            squares += (centred * centred).sum(axis=(0, 2, 3))
        std = np.sqrt(squares / count)
    else:
        raise DataError(f"channel_stats expects uint8 or float images, got {images.dtype}")
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float64), std.astype(np.float64)


def stored_normalization(stats: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) per channel from a run's record of them (``{"mean": [...], "std": [...]}``, as
    checkpoints keep them), or None when the run does not normalise."""
    return None if stats is None else (np.asarray(stats["mean"]), np.asarray(stats["std"]))


def check_normalize(normalize: Any, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) as float64 arrays of ``channels`` finite numbers, std > 0; else a one-line DataError."""
    try:
        mean, std = normalize
        mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"normalize must be (mean, std), one number per channel each ({exc})") from None
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DataError(f"normalize: {mean.size} means and {std.size} stds for {channels}-channel images")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise DataError(f"normalize: means must be finite and stds finite and > 0, got {mean.tolist()}, {std.tolist()}")
    return mean, std


_NORMALIZE_CACHE: dict = {}


def device_normalize(normalize: Any, channels: int, backend: Backend, dtype: str) -> tuple:
    """(mean, std) shaped (1, C, 1, 1) in ``dtype`` on ``backend``: checked by :func:`check_normalize`,
    cast on the host, transferred once per (backend, dtype, numbers)."""
    mean, std = check_normalize(normalize, channels)
    key: tuple | None = (backend, dtype, mean.tobytes(), std.tobytes())
    try:
        cached = _NORMALIZE_CACHE.get(key)
    except TypeError:  # a backend whose device cannot be hashed: no cache
        key, cached = None, None
    if cached is None:
        cached = tuple(from_numpy(a.reshape(1, channels, 1, 1), backend, dtype) for a in (mean, std))
        if key is not None:
            if len(_NORMALIZE_CACHE) >= 32:
                _NORMALIZE_CACHE.clear()
            _NORMALIZE_CACHE[key] = cached
    return cached


# -- augmentation ---------------------------------------------------------------------------------

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
