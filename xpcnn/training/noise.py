"""Dropout's noise, drawn on the host from the seed: the same masks on every backend and after a
resume, and nothing random inside a (compiled) step.

Each training step's noise comes from (seed, epoch, step) alone -- a ``numpy.random.SeedSequence``
of those three numbers on a stream of its own (``NOISE_STREAM``, apart from the augmentation's) --
so a run resumed at any step draws what the uninterrupted run drew.  The uniforms are float64 from
``numpy.random.default_rng`` cast on the host to the model's dtype: every backend gets the same
bits, and the layer's ``noise >= p`` the same mask.  Models without Dropout draw nothing.

Cost, measured on the shared 2-core VM (loaded): drawing and casting to float32 takes ~0.25 ms for a
dense layer's (64, 128) and ~4.4 ms (7 ns a value) for a (64, 16, 24, 24) feature map, per step;
then one host-to-device transfer per Dropout layer.  Dropout after the flattening (the usual place)
costs well under a millisecond a step; a model without Dropout pays nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from xpcnn.nn.base import Layer
    from xpcnn.nn.sequential import Sequential

NOISE_STREAM = 0x6E6F6973  # "nois": the spawn key that keeps dropout's stream apart from the augmentation's


def step_seed(seed: int, epoch: int, step: int) -> np.random.SeedSequence:
    """The seed sequence of the noise of step ``step`` (from 0) of epoch ``epoch`` (from 0)."""
    return np.random.SeedSequence([seed, epoch, step], spawn_key=(NOISE_STREAM,))


def _order(name: str) -> tuple[float, str]:
    index, _, rest = name.partition(".")
    return (int(index), rest) if index.isdigit() else (float("inf"), name)


def draw_noise(shapes: dict, seed_sequence: np.random.SeedSequence, dtype: str = "float64") -> dict:
    """``{name: U[0, 1) array of shape}`` (host NumPy, float64 draws cast to ``dtype``) from one
    ``numpy.random.default_rng(seed_sequence)``, drawn in layer order (whatever the dict's order)."""
    rng = np.random.default_rng(seed_sequence)
    return {name: rng.random(tuple(shapes[name])).astype(dtype, copy=False) for name in sorted(shapes, key=_order)}


def needs_noise(model: Layer) -> bool:
    return any(layer.TAKES_NOISE for layer in getattr(model, "layers", ()))


def step_noise(model: Sequential, images: np.ndarray, seed: int, epoch: int, step: int, dtype: str) -> dict | None:
    """The host noise of one training step on the host batch ``images`` (as the Trainer gets it,
    before ``to_device``), or None when the model needs none."""
    if not needs_noise(model):
        return None
    shapes = model.noise_shapes(len(images), tuple(images.shape[1:]))  # (to_batch keeps the shape: (N, C, H, W))
    return draw_noise(shapes, step_seed(seed, epoch, step), dtype) if shapes else None
