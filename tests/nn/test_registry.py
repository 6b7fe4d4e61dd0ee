"""Adding a layer: the worked example of docs/architecture.md.

A layer is one class (forward, backward, its config, the shapes of its parameters) and one
:func:`~xpcnn.nn.base.register` line, which makes it known by name (JSON records, checkpoints) and
adds its spec token (the parser and ``--help``).  Here a learnable gain per channel, ``Scale``, then
works from Python, from a spec token, from a JSON record and through a model file -- with no other
file changed.  The registry's own errors follow."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from xpcnn.backends import namespace
from xpcnn.nn import Conv2D, Dense, Flatten, ReLU, Sequential
from xpcnn.nn.base import LAYERS, TOKENS, Layer, Token, UnknownLayerError, build_layer, register, state_shapes
from xpcnn.nn.init import ones
from xpcnn.nn.spec import SpecContext, SpecError, architecture_network, parse_spec, spec_help
from xpcnn.nn.validate import integer
from xpcnn.tools.gradcheck import assert_gradients_ok


class Scale(Layer):
    """y = gamma * x, one learnable gain per channel (axis 1), starting at 1.
    Backward, with G = dE/dY: dE/dgamma = sum of G x over every axis but 1; dE/dX = gamma G."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = integer(channels, "channels", "Scale", 1)
        self.params["weight"] = ones(self.channels)

    def config(self) -> dict:
        return {"channels": self.channels}

    @classmethod
    def state_shapes(cls, arguments: dict) -> dict[str, tuple[int, ...]]:
        return {"weight": (integer(arguments["channels"], "channels", cls.__name__, 1),)}

    def infer_shape(self, shape: tuple) -> tuple:
        if not shape or shape[0] != self.channels:
            raise ValueError(f"Scale: expected {self.channels} channels, got shape (N, {', '.join(map(str, shape))})")
        return tuple(shape)

    def _gain(self, xp: Any, ndim: int) -> Any:
        return xp.reshape(self.params["weight"], (1, self.channels) + (1,) * (ndim - 2))

    def forward(self, x: Any) -> Any:
        xp = namespace(x, self.params["weight"], where="Scale.forward")
        self.save_for_backward(x)
        return x * self._gain(xp, x.ndim)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        (x,) = self.saved_for_backward()
        xp = namespace(grad_out, x, where="Scale.backward")
        self.grads["weight"] = xp.sum(grad_out * x, axis=(0, *range(2, x.ndim)))
        return grad_out * self._gain(xp, x.ndim) if input_grad else None


def _scale_token(match: re.Match, spec: SpecContext) -> Scale:
    return Scale(spec.shape[0])


@pytest.fixture(autouse=True)
def scale_is_registered():
    """The one registration line (a layer module ends with it), undone after each test so that the
    rest of the suite sees the package's layers only."""
    layers, tokens = dict(LAYERS), list(TOKENS)
    register(Scale, tokens=[Token("scale", "scale", "Scale: a learnable gain per channel", _scale_token)])
    yield
    LAYERS.clear()
    LAYERS.update(layers)
    TOKENS[:] = tokens


def _network() -> Sequential:
    return Sequential(Conv2D(1, 2, 3, rng=1), Scale(2), ReLU(), Flatten(), Dense(2 * 4 * 4, 3, rng=2))


def test_from_python_the_gradients_are_right(backend, rng):
    model = _network()
    model.layers[1].params["weight"] = rng.uniform(0.5, 2.0, 2)
    results = assert_gradients_ok(model.to(backend, dtype="float64"),
                                  backend.asarray(rng.standard_normal((3, 1, 6, 6)), "float64"))
    assert {r.name for r in results} == {"input", "0.weight", "0.bias", "1.weight", "4.weight", "4.bias"}


def test_from_a_spec_token():
    model = parse_spec("conv2k3-scale-relu-flatten-dense", (1, 6, 6), 3, seed=1)
    assert model.config() == _network().config()
    assert "  scale                        Scale: a learnable gain per channel\n" in spec_help()
    assert parse_spec("flatten-scale-dense", (2, 3, 3), 3).layers[1].channels == 18  # sized by shape inference
    with pytest.raises(SpecError, match="token 1 'scale2': not a layer token"):
        parse_spec("scale2-flatten-dense", (2, 3, 3), 3)


def test_from_a_json_record():
    text = json.dumps(_network().config())
    assert '{"type": "Scale", "channels": 2}' in text
    assert Sequential.from_config(json.loads(text)).config() == _network().config()
    rebuilt = architecture_network(text, (1, 6, 6), 3, seed=0)
    assert [layer.name for layer in rebuilt.layers] == ["Conv2D", "Scale", "ReLU", "Flatten", "Dense"]


def test_through_a_model_file(tmp_path):
    from xpcnn.io import checkpoint

    model = _network()
    model.layers[1].params["weight"] = np.array([0.5, 3.0])
    model.save(tmp_path / "m.npz")
    loaded = Sequential.load(tmp_path / "m.npz")
    assert loaded.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)
    state, optimizer_state, meta = checkpoint.load(tmp_path / "m.npz")
    meta["architecture"][1]["channels"] = 10 ** 12  # checked against the file before anything is built
    checkpoint.save(tmp_path / "m.npz", state, optimizer_state, meta)
    with pytest.raises(checkpoint.CheckpointError, match=r"architecture\[1\] \(Scale\) needs parameter 1.weight "
                                                         r"of shape \(1000000000000,\)"):
        Sequential.load(tmp_path / "m.npz")


# -- the registry ------------------------------------------------------------------------------------

def test_records_build_through_one_function():
    dense = build_layer({"type": "Dense", "in_features": 3, "out_features": 2}, init="he", rng=0)
    assert dense.init == "glorot"  # a network built with He's: the dense layer takes Glorot's
    assert build_layer({"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3]},
                       init="he").config()["kernel_size"] == (3, 3)
    assert build_layer({"type": "ReLU"}, init="he", rng=0).name == "ReLU"  # defaults it does not take: ignored
    with pytest.raises(UnknownLayerError, match=r"unknown layer type 'Conv3D'; choose one of AvgPool2D, "):
        build_layer({"type": "Conv3D"})
    with pytest.raises(UnknownLayerError, match="unknown layer type null"):
        build_layer({})
    with pytest.raises(TypeError):
        build_layer({"type": "ReLU", "negative_slope": 0.1})


def test_state_shapes_come_from_the_record_alone():
    assert state_shapes({"type": "Conv2D", "in_channels": 3, "out_channels": 8, "kernel_size": [5, 3]}) == \
        {"weight": (8, 3, 5, 3), "bias": (8,)}
    assert state_shapes({"type": "Dense", "in_features": 10 ** 12, "out_features": 2, "bias": False}) == \
        {"weight": (10 ** 12, 2)}
    assert state_shapes({"type": "BatchNorm1D", "features": 4})["running_var"] == (4,)
    assert state_shapes({"type": "MaxPool2D", "kernel_size": 2}) == {}
    with pytest.raises(ValueError, match="Conv2D: kernel_size must be >= 1"):
        state_shapes({"type": "Conv2D", "in_channels": 3, "out_channels": 8, "kernel_size": 0})


def test_capabilities_are_stated_not_guessed():
    from xpcnn.nn import BatchNorm1D, BatchNorm2D, Dropout

    assert [cls.BATCH_STATISTICS for cls in (BatchNorm2D, BatchNorm1D, Conv2D)] == [(0, 2, 3), (0,), ()]
    assert Dropout.TAKES_NOISE and not any(cls.TAKES_NOISE for cls in (Conv2D, BatchNorm2D, Scale))
    assert Scale(2).buffers == {} and BatchNorm2D(2).buffers.keys() == {"running_mean", "running_var"}
    assert Scale(2).noise_shape((2, 3, 3)) is None
