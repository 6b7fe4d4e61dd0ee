"""xpcnn.nn.batchnorm: BatchNorm1D/2D -- finite-difference gradients on every backend, the formula in
training and in inference, the running statistics as buffers (state dicts, model files, untouched by
optimizers), and a model file's sizes checked before anything is built."""

import numpy as np
import pytest
from helpers import normal_array, xp_assert_close

from xpcnn.backends import to_numpy
from xpcnn.nn import (
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    ReLU,
    Sequential,
    SoftmaxCrossEntropyLoss,
    StateDictError,
)
from xpcnn.optim import Adam
from xpcnn.tools.gradcheck import assert_gradients_ok
from xpcnn.training.noise import draw_noise, step_seed


def _randomise(layer, rng):
    """Gamma and beta away from 1 and 0, running statistics away from 0 and 1."""
    size = layer.size
    layer.params = {"weight": rng.uniform(0.5, 2.0, size), "bias": rng.standard_normal(size)}
    layer.buffers = {"running_mean": rng.standard_normal(size), "running_var": rng.uniform(0.5, 2.0, size)}
    return layer


@pytest.mark.parametrize("make,shape", [
    (lambda: BatchNorm2D(3), (4, 3, 5, 2)), (lambda: BatchNorm2D(2, eps=1e-3, momentum=0.3), (2, 2, 3, 3)),
    (lambda: BatchNorm1D(5), (6, 5)), (lambda: BatchNorm1D(1), (3, 1))], ids=["2d", "2d-eps", "1d", "1d-one"])
def test_batchnorm_gradients(backend, rng, make, shape):
    layer = _randomise(make(), rng)
    results = assert_gradients_ok(layer, normal_array(backend, rng, shape))
    assert {r.name for r in results} == {"input", "weight", "bias"}


def test_network_with_batchnorm_gradients(backend, rng):
    """BatchNorm between a convolution and a dense layer: the whole stack's gradients."""
    model = Sequential(Conv2D(1, 3, 3, rng=1), _randomise(BatchNorm2D(3), rng), ReLU(), Flatten(),
                       Dense(3 * 4 * 4, 4, rng=2), _randomise(BatchNorm1D(4), rng))
    results = assert_gradients_ok(model, normal_array(backend, rng, (5, 1, 6, 6)))
    assert {r.name for r in results} == {"input", "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias",
                                         "5.weight", "5.bias"}


def _batchnorm_reference(x, gamma, beta, eps, axes):
    shape = [1] * x.ndim
    shape[1] = -1
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    xhat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return gamma.reshape(shape) * xhat + beta.reshape(shape), mean, var


def test_batchnorm_training_and_inference(backend, rng, dtype):
    """Training: batch statistics, and the running ones move by momentum (unbiased variance);
    inference (Sequential.inference()): the running statistics, nothing saved, buffers unchanged."""
    layer = _randomise(BatchNorm2D(3, momentum=0.2), rng)
    gamma, beta = layer.params["weight"].copy(), layer.params["bias"].copy()
    old_mean, old_var = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    model = Sequential(layer).to(backend, dtype=dtype)
    host = rng.standard_normal((4, 3, 2, 5))
    x = backend.asarray(host, dtype)
    want, mean, var = _batchnorm_reference(host, gamma, beta, 1e-5, (0, 2, 3))
    like = dict(xp=backend.xp, device=backend.device, dtype=dtype)
    xp_assert_close(model(x), want, **like)
    xp_assert_close(layer.buffers["running_mean"], 0.8 * old_mean + 0.2 * mean, **like)
    xp_assert_close(layer.buffers["running_var"], 0.8 * old_var + 0.2 * var * 40 / 39, **like)
    running = {k: to_numpy(v) for k, v in layer.buffers.items()}
    with model.inference():
        out = model(x)
    shape = (1, 3, 1, 1)
    want = gamma.reshape(shape) * (host - running["running_mean"].reshape(shape)) / np.sqrt(
        running["running_var"].reshape(shape) + 1e-5) + beta.reshape(shape)
    xp_assert_close(out, want, **like)
    assert {k: to_numpy(v).tobytes() for k, v in layer.buffers.items()} == {k: v.tobytes() for k, v in running.items()}
    model.backward(out)  # the training forward's
    with model.inference():
        model(x)
    with pytest.raises(RuntimeError, match="BatchNorm2D.backward: no forward pass"):
        model.backward(out)  # an inference forward keeps nothing


def test_batchnorm_1d_matches_the_formula(backend, rng):
    layer = _randomise(BatchNorm1D(4, eps=1e-3), rng)
    gamma, beta = layer.params["weight"].copy(), layer.params["bias"].copy()
    layer.to(backend, dtype="float64")
    host = rng.standard_normal((6, 4))
    want, _, _ = _batchnorm_reference(host, gamma, beta, 1e-3, (0,))
    xp_assert_close(layer(backend.asarray(host, "float64")), want, xp=backend.xp, device=backend.device,
                    dtype="float64")


def test_batchnorm_rejects_bad_input_and_arguments(rng):
    with pytest.raises(ValueError, match=r"BatchNorm2D: expected input of shape \(N, 3, H, W\), "
                                         r"got shape \(2, 4, 2, 2\)"):
        BatchNorm2D(3)(rng.standard_normal((2, 4, 2, 2)))
    with pytest.raises(ValueError, match=r"more than one value per feature"):
        BatchNorm1D(3)(rng.standard_normal((1, 3)))
    with pytest.raises(ValueError, match="eps must be > 0"):
        BatchNorm2D(3, eps=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        BatchNorm1D(3, momentum=1.5)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        BatchNorm2D(0)
    with pytest.raises(ValueError, match=r"layer 2 \(BatchNorm1D: expected input of shape \(N, 5\)"):
        Sequential(Flatten(), Dense(12, 4), BatchNorm1D(5)).infer_shape((3, 2, 2))


def _bn_model():
    rng = np.random.default_rng(4)
    return Sequential(Conv2D(1, 3, 3, rng=rng), _randomise(BatchNorm2D(3), rng), ReLU(), Flatten(), Dropout(0.25),
                      Dense(3 * 4 * 4, 4, rng=rng), _randomise(BatchNorm1D(4), rng))


def test_state_dict_holds_the_buffers(backend):
    model = _bn_model().to(backend, dtype="float64")
    state = model.state_dict()
    assert {"1.running_mean", "1.running_var", "6.running_mean", "6.running_var"} <= set(state)
    assert set(dict(model.named_buffers())) == {"1.running_mean", "1.running_var", "6.running_mean", "6.running_var"}
    assert not set(dict(model.named_buffers())) & set(model.params)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    twin = Sequential.from_config(model.config()).to(backend, dtype="float64")
    assert twin.config() == model.config()
    twin.load_state_dict(state)
    for name, value in twin.state_dict().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    xp_assert_close(twin.layers[1].buffers["running_var"], model.layers[1].buffers["running_var"])
    broken = {k: v for k, v in state.items() if k != "6.running_var"}
    broken["1.running_mean"] = np.zeros(4)
    with pytest.raises(StateDictError, match=r"missing: 6.running_var; 1.running_mean: shape \(4,\) in the state"):
        twin.load_state_dict(broken)


def test_save_and_load_keep_the_buffers(tmp_path):
    model = _bn_model()
    model.save(tmp_path / "m.npz")
    loaded = Sequential.load(tmp_path / "m.npz")
    assert loaded.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)


def test_optimizers_leave_buffers_to_the_forward(rng):
    """The optimizer updates gamma and beta; the running statistics change only in a forward."""
    model = _bn_model()
    images, labels = rng.standard_normal((6, 1, 6, 6)), rng.integers(0, 4, 6)
    loss = SoftmaxCrossEntropyLoss()
    model.set_noise(draw_noise(model.noise_shapes(6, (1, 6, 6)), step_seed(0, 0, 0)))
    loss(model(images), labels)
    after_forward = {k: v.copy() for k, v in model.named_buffers()}
    model.backward(loss.backward(), input_grad=False)
    assert set(model.grads) == set(model.params)
    Adam(0.1, weight_decay=0.5).step(model)
    for name, value in model.named_buffers():
        np.testing.assert_array_equal(value, after_forward[name], err_msg=name)


@pytest.mark.parametrize("index,field", [(1, "channels"), (6, "features")])
def test_load_checks_batchnorm_sizes_before_building(tmp_path, index, field):
    """An edited BatchNorm size in a model file is a CheckpointError naming the layer, found before
    the layer (and its 10**12-element arrays) is built."""
    from xpcnn.io import checkpoint

    path = tmp_path / "m.npz"
    _bn_model().save(path)
    state, optimizer_state, meta = checkpoint.load(path)
    meta["architecture"][index][field] = 10 ** 12
    checkpoint.save(path, state, optimizer_state, meta)
    with pytest.raises(checkpoint.CheckpointError, match=rf"architecture\[{index}\] \(BatchNorm.D\) needs parameter "
                                                         rf"{index}.weight of shape \(1000000000000,\)"):
        Sequential.load(path)
    del state[f"{index}.running_var"]
    meta["architecture"][index][field] = 3 if index == 1 else 4
    checkpoint.save(path, state, optimizer_state, meta)
    with pytest.raises(checkpoint.CheckpointError, match=rf"needs parameter {index}.running_var of shape"):
        Sequential.load(path)
