"""Batches: which images make up each batch of an epoch (shuffled by a host generator, so every
backend sees the same batches), and moving a host batch to the device."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpcnn.backends import Array, Backend, from_numpy
from xpcnn.data.dataset import DataError
from xpcnn.data.transforms import device_normalize


def to_batch(images: np.ndarray, backend: Backend, dtype: str, normalize: Any = None) -> Array:
    """Host images (N, C, H, W) -> ``dtype`` on ``backend``: uint8 scaled to [0, 1], float32 as
    given; then, with ``normalize=(mean[C], std[C])`` (see :func:`~xpcnn.data.transforms.channel_stats`),
    (x - mean) / std per channel.  Only the host batch crosses to the device; scaling and normalising
    happen there."""
    if images.dtype not in (np.uint8, np.float32):
        raise DataError(f"to_batch expects uint8 or float32 images, got {images.dtype}")
    if images.ndim != 4:
        raise DataError(f"to_batch expects images (N, C, H, W), got shape {images.shape}")
    batch = from_numpy(images, backend)
    if images.dtype == np.uint8:
        batch = backend.xp.astype(batch, backend.dtype(dtype)) / 255.0
    elif dtype != "float32":
        batch = backend.xp.astype(batch, backend.dtype(dtype))
    if normalize is not None:
        mean, std = device_normalize(normalize, images.shape[1], backend, dtype)
        batch = (batch - mean) / std
    return batch


def targets_to_batch(targets: np.ndarray, backend: Backend, dtype: str) -> Array:
    """Host targets -> device: float targets in ``dtype``, integer labels as int64."""
    return from_numpy(targets, backend, dtype if targets.dtype.kind == "f" else None)


def batch_indices(count: int, batch_size: int, rng: np.random.Generator | None,
                  drop_last: bool = False) -> list[np.ndarray]:
    """Index arrays of the batches of one epoch, shuffled by the host ``rng``
    (None: in order).  Every backend given the same rng state sees the same batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(count) if rng is not None else np.arange(count)
    stop = count - count % batch_size if drop_last else count
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]
