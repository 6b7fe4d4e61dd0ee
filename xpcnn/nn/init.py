"""Weight initialisers.  They run on the host with ``numpy.random.Generator`` and
return float64 NumPy arrays; :meth:`xpcnn.nn.base.Layer.to` then moves them to a
backend.  That way every backend starts from bit-identical weights."""

from __future__ import annotations

import math

import numpy as np

from xpcnn.nn.validate import count_text, shape_values

INITIALISERS = ("uniform", "glorot", "he")


def make_weight(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int,
                scheme: str) -> np.ndarray:
    """A weight array of ``shape`` drawn by ``scheme``:

    * ``uniform`` - U[0, 1), as in the source article;
    * ``glorot``  - U[-a, a) with a = sqrt(6 / (fan_in + fan_out));
    * ``he``      - N(0, 2 / fan_in).

    Raises a ValueError before allocating when ``shape`` holds more values than
    :data:`~xpcnn.nn.validate.MAX_ARRAY_VALUES`.
    """
    shape_values(shape, "", f"a weight of shape {_shape_text(shape)}")
    if scheme == "uniform":
        return rng.random(shape)
    if scheme == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)
    if scheme == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    raise ValueError(f"unknown initialiser {scheme!r}; choose one of {', '.join(INITIALISERS)}")


def make_bias(rng: np.random.Generator, size: int, scheme: str) -> np.ndarray:
    """The article draws its bias from U[0, 1) too; the other schemes start at zero."""
    shape_values((size,), "", f"a bias of {_count(size)} values")
    if scheme == "uniform":
        return rng.random(size)
    return zeros(size)


def ones(size: int) -> np.ndarray:
    """A vector of ones (BatchNorm's gamma and running variance)."""
    shape_values((size,), "", f"a vector of {_count(size)} values")
    return np.ones(size)


def zeros(size: int) -> np.ndarray:
    """A vector of zeros (BatchNorm's beta and running mean)."""
    shape_values((size,), "", f"a vector of {_count(size)} values")
    return np.zeros(size)


def as_generator(seed_or_rng: int | np.random.Generator | None) -> np.random.Generator:
    """The generator itself, or a new one seeded with ``seed_or_rng``."""
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _count(size: int) -> str:
    return count_text(int(size))


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(count_text(int(d)) for d in shape) + ")"
