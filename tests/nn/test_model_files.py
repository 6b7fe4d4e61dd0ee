"""Model files (Sequential.save / Sequential.load) are untrusted input: each layer's parameter shapes
are worked out from its record and checked against the file before the layer is built, and any
problem is a CheckpointError naming the file and the layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from checkpoint_edits import MISSING, Pieces, make, meta_edit, param_edit, training_runs, with_nan

from xpcnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """'done': a finished 2-epoch run; 'mid': one interrupted at epoch 2, step 2 (global step 6)."""
    return training_runs(tmp_path_factory.mktemp("checkpoints"))


def small_model():
    return Sequential(Conv2D(1, 2, 3, rng=0), ReLU(), MaxPool2D(2), Flatten(), Dense(2 * 3 * 3, 4, rng=1))


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.npz"
    small_model().save(path)
    return Pieces(path, *checkpoint.load(path))


def test_a_model_file_round_trips(model_file):
    model = Sequential.load(model_file.path)
    assert model.config() == small_model().config() and model.dtype == "float64"
    for name, value in small_model().state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


def test_a_training_checkpoint_loads_as_a_model(runs):
    model = Sequential.load(runs["done"].path)
    for name, value in runs["done"].model_state.items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


@pytest.mark.parametrize("edit,problem", [
    (meta_edit("architecture", MISSING), "architecture must be a non-empty list"),
    (meta_edit("architecture", []), "architecture must be a non-empty list"),
    (meta_edit("architecture", {"type": "Dense"}), "architecture must be a non-empty list"),
    (meta_edit("architecture", "Conv2D"), "architecture must be a non-empty list"),
    (meta_edit("architecture.1", "ReLU"), "architecture[1] must be a layer record"),
    (meta_edit("architecture.1.type", "Softmax"), "architecture[1] has unknown layer type 'Softmax'"),
    (meta_edit("architecture.1.type", ["ReLU"]), "architecture[1] has unknown layer type"),
    (meta_edit("architecture.1.type", MISSING), "architecture[1] has unknown layer type"),
    (meta_edit("architecture.1.negative_slope", 0.1), "architecture[1] (ReLU) does not build"),
    (meta_edit("architecture.2.kernel_size", "2"), "architecture[2] (MaxPool2D) does not build"),
    (meta_edit("architecture.2.kernel_size", [2, 2, 2]), "architecture[2] (MaxPool2D) does not build"),
    (meta_edit("architecture.2.kernel_size", MISSING), "architecture[2] (MaxPool2D) does not build"),
    (meta_edit("architecture.0.kernel_size", 0), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.in_channels", "1"), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.in_channels", True), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.stride", 0), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.out_channels", MISSING), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.4.init", "bogus"), "architecture[4] (Dense) does not build"),
    (meta_edit("architecture.4.in_features", 10 ** 12), "architecture[4] (Dense) needs parameter 4.weight"),
    (meta_edit("architecture.4.out_features", 10 ** 12), "architecture[4] (Dense) needs parameter 4.weight"),
    (meta_edit("architecture.0.out_channels", 10 ** 9), "architecture[0] (Conv2D) needs parameter 0.weight"),
    (meta_edit("architecture.0.kernel_size", [10 ** 6, 10 ** 6]), "architecture[0] (Conv2D) needs parameter 0.weight"),
    (meta_edit("architecture.4.bias", False), "parameters do not fit"),  # the file has 4.bias
    (meta_edit("architecture.0.bias", True), None),  # it has one already: no change
    (meta_edit("architecture.5", {"type": "Dense", "in_features": 4, "out_features": 2}),
     "architecture[5] (Dense) needs parameter 5.weight"),
    (meta_edit("dtype", "float16"), "dtype must be float32 or float64"),
    (meta_edit("dtype", None), "dtype must be float32 or float64"),
    (meta_edit("dtype", MISSING), "dtype must be float32 or float64"),
    (meta_edit("dtype", "float32"), "parameters do not fit"),  # the arrays are float64
    (param_edit("4.weight", lambda a: a[:5]), "needs parameter 4.weight of shape (18, 4)"),
    (param_edit("9.weight", np.zeros(3)), "parameters do not fit"),
    (param_edit("4.bias", MISSING), "needs parameter 4.bias"),
    (param_edit("0.weight", with_nan), "param/0.weight contains NaN"),
    (meta_edit("format", "xpcnn-model-9"), "unknown checkpoint format"),
])
def test_a_bad_model_file_is_refused_naming_the_file_and_the_layer(model_file, tmp_path, monkeypatch, edit, problem):
    from xpcnn.nn import init

    make_weight = init.make_weight

    def small_weights_only(rng, shape, *args):
        assert math.prod(shape) < 10 ** 6, f"a layer of {shape} was built before its size was checked"
        return make_weight(rng, shape, *args)

    monkeypatch.setattr(init, "make_weight", small_weights_only)
    path = make(model_file, edit, tmp_path / "edited.npz")
    if problem is None:
        Sequential.load(path)
        return
    with pytest.raises(CheckpointError) as info:
        Sequential.load(path)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value), str(info.value)
