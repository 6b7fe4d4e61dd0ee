import os

import numpy as np
import pytest

import xpcnn
from xpcnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, StateDictError, to_numpy


def small_model(seed=0):
    return Sequential(Conv2D(1, 2, 3, rng=seed), ReLU(), MaxPool2D(2), Flatten(), Dense(2 * 3 * 3, 4, rng=seed + 1))


def test_state_dict_names_and_host_arrays(backend):
    model = small_model().to(backend, dtype="float32")
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())


def test_every_backend_starts_from_identical_weights(backend):
    reference = small_model(seed=3).to("numpy", dtype="float32").state_dict()
    moved = small_model(seed=3).to(backend, dtype="float32").state_dict()
    for name in reference:
        np.testing.assert_array_equal(moved[name], reference[name])


def test_model_moves_between_backends(backend, rng):
    model = small_model()
    x = rng.random((2, 1, 8, 8))
    expected = to_numpy(model(x))
    model.to(backend, dtype="float64")
    np.testing.assert_allclose(to_numpy(model(backend.asarray(x, "float64"))), expected, rtol=1e-12)
    model.to("numpy")
    np.testing.assert_allclose(to_numpy(model(x)), expected, rtol=1e-12)


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    model = small_model()
    before = model.state_dict()
    bad = dict(before)
    bad.pop("0.bias")
    bad["9.weight"] = np.zeros(3)
    bad["4.weight"] = np.zeros((5, 4))
    bad["0.weight"] = before["0.weight"].astype(np.float32)
    with pytest.raises(StateDictError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    for part in ["missing: 0.bias", "unexpected: 9.weight", "4.weight: shape (5, 4) in the state, (18, 4) in the model",
                 "0.weight: dtype float32 in the state, float64 in the model"]:
        assert part in message
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_architecture_round_trip():
    model = small_model()
    rebuilt = Sequential.from_config(model.config())
    assert rebuilt.config() == model.config()
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).random((1, 1, 8, 8))
    np.testing.assert_array_equal(to_numpy(rebuilt(x)), to_numpy(model(x)))


def test_initialisers_are_seeded_and_distinct():
    a = Conv2D(1, 4, 3, init="uniform", rng=5).params["weight"]
    b = Conv2D(1, 4, 3, init="uniform", rng=5).params["weight"]
    np.testing.assert_array_equal(a, b)
    assert 0 <= a.min() and a.max() < 1
    he = Conv2D(8, 16, 3, init="he", rng=0).params["weight"]
    assert he.std() == pytest.approx(np.sqrt(2 / 72), rel=0.1)
    glorot = Dense(100, 50, init="glorot", rng=0).params["weight"]
    assert np.abs(glorot).max() <= np.sqrt(6 / 150)
    with pytest.raises(ValueError, match="unknown initialiser 'xavier'"):
        Dense(2, 2, init="xavier")


def test_transfer_between_backends_round_trips(backend, rng):
    host = rng.standard_normal((3, 4)).astype(np.float32)
    on_device = xpcnn.from_numpy(host, backend)
    np.testing.assert_array_equal(to_numpy(on_device), host)
    back = xpcnn.transfer(on_device, xpcnn.resolve("numpy"))
    np.testing.assert_array_equal(back, host)


def test_shape_inference_checks_geometry_at_build_time():
    model = small_model()
    assert model.infer_shape((1, 8, 8)) == (4,)
    with pytest.raises(ValueError, match=r"layer 4 \(Dense: expected input of shape \(N, 18\), got shape \(N, 8\)\)"):
        model.infer_shape((1, 6, 6))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D: kernel 3x3 is larger than the padded input 2x2\)"):
        model.infer_shape((1, 2, 2))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D: expected input of shape \(N, 1, H, W\), "
                                         r"got shape \(N, 3, 8, 8\)\)"):
        model.infer_shape((3, 8, 8))


def test_save_and_load_npz_on_any_backend(tmp_path, backend, rng):
    model = small_model().to("numpy", dtype="float32")
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = Sequential.load(path, backend.name, xpcnn.backends.device_name(backend.device))
    assert loaded.config() == model.config() and loaded.dtype == "float32"
    x = rng.random((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(to_numpy(loaded(backend.asarray(x))), to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    assert [f for f in os.listdir(tmp_path)] == ["model.npz"]


def test_backward_releases_what_forward_saved(backend, rng):
    """Each layer keeps its activations only from forward to backward: a second backward has
    nothing to go back through and says so, naming the layer."""
    model = small_model().to(backend, dtype="float32")
    x = backend.asarray(rng.random((2, 1, 8, 8)), "float32")
    grad = backend.asarray(np.ones((2, 4)), "float32")
    model(x)
    model.backward(grad)
    with pytest.raises(RuntimeError, match=r"Dense\.backward: no forward pass"):
        model.backward(grad)
    model(x)  # a new forward makes backward possible again
    assert model.backward(grad).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("first", ["conv", "relu", "flatten"])
def test_backward_without_input_grad_returns_none_for_any_first_layer(backend, rng, first):
    """Sequential.backward(g, input_grad=False) hands the flag to its first layer, whatever its type:
    None comes back, and the parameter gradients are those of a full backward."""
    rest = [Flatten(), Dense(2 * 4 * 4, 3, rng=2)]
    layers = {"conv": [Conv2D(1, 2, 3, padding=1, rng=1), MaxPool2D(2)],
              "relu": [ReLU(), Conv2D(1, 2, 3, padding=1, rng=1), MaxPool2D(2)],
              "flatten": [Flatten(), Dense(64, 32, rng=1), ReLU(), Dense(32, 2 * 4 * 4, rng=3)]}[first]
    model = Sequential(*layers, *rest[1:] if first == "flatten" else rest).to(backend, dtype="float64")
    x = backend.asarray(rng.standard_normal((2, 1, 8, 8)), "float64")
    grad = backend.asarray(np.ones((2, 3)), "float64")
    model(x)
    assert model.backward(grad).shape == (2, 1, 8, 8)
    full = {name: to_numpy(value) for name, value in model.named_gradients()}
    model(x)
    assert model.backward(grad, input_grad=False) is None
    assert list(full) == [name for name, _ in model.named_gradients()]
    for name, value in model.named_gradients():
        np.testing.assert_array_equal(to_numpy(value), full[name])


def test_inference_forward_keeps_nothing_and_restores_training(backend, rng):
    model = small_model().to(backend, dtype="float32")
    x = backend.asarray(rng.random((2, 1, 8, 8)), "float32")
    with model.inference():
        inferred = to_numpy(model(x))
    with pytest.raises(RuntimeError, match="inference"):
        model.backward(backend.asarray(np.ones((2, 4)), "float32"))
    np.testing.assert_array_equal(to_numpy(model(x)), inferred)  # same numbers either way
    model.backward(backend.asarray(np.ones((2, 4)), "float32"))  # training forward saved again
    with pytest.raises(KeyError), model.inference():
        raise KeyError("an error inside the block")
    assert all(layer.training for layer in model.layers)
