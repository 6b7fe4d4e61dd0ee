"""xpcnn.nn.dropout: inverted dropout -- finite-difference gradients on every backend, the
train/inference switch, host-drawn noise handed over by the model (the same masks on every backend)."""

import copy

import numpy as np
import pytest
from helpers import normal_array, xp_assert_close

from xpcnn.backends import to_numpy
from xpcnn.nn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential
from xpcnn.tools.gradcheck import assert_gradients_ok
from xpcnn.training.noise import draw_noise, step_seed


class FixedNoiseDropout(Dropout):
    """Dropout that gets the same noise before every forward (the gradient checker runs many)."""

    def __init__(self, p, noise):
        super().__init__(p)
        self.fixed = noise

    def forward(self, x):
        self.set_noise(self.fixed)
        return super().forward(x)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.75])
def test_dropout_gradients(backend, rng, p):
    noise = backend.asarray(rng.random((3, 2, 4, 3)), "float64")
    assert_gradients_ok(FixedNoiseDropout(p, noise), normal_array(backend, rng, (3, 2, 4, 3)))


def test_dropout_is_inverted_and_the_identity_in_inference(backend, rng, dtype):
    layer = Dropout(0.4)
    model = Sequential(layer)
    host, noise = rng.standard_normal((5, 3, 4)), rng.random((5, 3, 4)).astype(dtype)
    x = backend.asarray(host, dtype)
    model.set_noise({"0.noise": backend.asarray(noise)})
    out = model(x)
    mask = (noise >= np.asarray(0.4, dtype)).astype(dtype)
    want = host.astype(dtype) * mask / np.asarray(1 - 0.4, dtype)
    like = dict(xp=backend.xp, device=backend.device, dtype=dtype)
    xp_assert_close(out, want, **like, rtol=0 if dtype == "float64" else 1e-6)
    grad = rng.standard_normal((5, 3, 4))
    xp_assert_close(model.backward(backend.asarray(grad, dtype)), grad.astype(dtype) * mask / (1 - 0.4), **like)
    assert 0.4 < 1 - mask.mean() < 0.8  # about p dropped
    with model.inference():  # no noise needed, nothing changed
        assert model(x) is x
    with pytest.raises(RuntimeError, match=r"Dropout\(p=0.4\) \(layer 0\): a training forward needs this step's "
                                           r"noise"):
        model(x)  # the noise served one forward
    assert Dropout(0.0)(x) is x  # p = 0: nothing to draw


def test_dropout_rejects_bad_noise_and_p(rng):
    layer = Dropout(0.5)
    layer.set_noise(rng.random((2, 3)))
    with pytest.raises(ValueError, match=r"noise of shape \(2, 3\) for an input of shape \(2, 4\)"):
        layer(rng.standard_normal((2, 4)))
    layer.set_noise(rng.random((2, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="noise dtype float32 does not match the input's float64"):
        layer(rng.standard_normal((2, 4)))
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"p .* must be in \[0, 1\)"):
            Dropout(p)
    with pytest.raises(TypeError, match="p must be a finite number"):
        Dropout("0.5")


def test_noise_shapes_and_names():
    model = Sequential(Conv2D(1, 4, 3), Dropout(0.2), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.0), Dense(144, 8),
                       Dropout(0.5), Dense(8, 3))
    assert model.noise_shapes(7, (1, 14, 14)) == {"1.noise": (7, 4, 12, 12), "7.noise": (7, 8)}
    assert Sequential(Dense(3, 2)).noise_shapes(4, (3,)) == {}
    with pytest.raises(ValueError, match=r"set_noise: '6.noise' names no layer that takes noise \(those that do: "
                                         r"1.noise, 5.noise, 7.noise\)"):
        model.set_noise({"6.noise": np.zeros((7, 8))})
    with pytest.raises(ValueError, match="names no layer"):
        model.set_noise({"x.noise": np.zeros((7, 8))})


def test_dropout_masks_are_the_same_on_every_backend(backend, dtype):
    """The same seed gives the same mask, bit for bit, on every backend and device (host draws,
    a host cast to the dtype, the comparison noise >= p in that dtype)."""
    model = Sequential(Flatten(), Dropout(0.3), Dense(48, 2, rng=0))
    shapes = model.noise_shapes(16, (3, 4, 4))
    outputs = {}
    for where in ("numpy", backend):
        moved = copy.deepcopy(model).to(where, dtype=dtype)
        target = moved.backend
        moved.set_noise({k: target.asarray(v) for k, v in draw_noise(shapes, step_seed(11, 0, 3), dtype).items()})
        moved.layers[0](target.asarray(np.ones((16, 3, 4, 4)), dtype))
        outputs[str(where)] = to_numpy(moved.layers[1](target.asarray(np.ones((16, 48)), dtype)))
    reference, got = outputs["numpy"], outputs[str(backend)]
    assert got.dtype == np.dtype(dtype)
    assert reference.tobytes() == got.tobytes()
    assert 0.15 < np.mean(reference == 0) < 0.45
