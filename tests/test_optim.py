import numpy as np
import pytest

from xpcnn import SGD, Adam, Dense, MSELoss, Sequential, to_numpy


def _one_step(model, optimizer, backend, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    x = backend.asarray(rng.standard_normal((4, 3)), "float64")
    y = backend.asarray(rng.standard_normal((4, 2)), "float64")
    loss = MSELoss()
    loss(model(x), y)
    model.backward(loss.backward())
    optimizer.step(model)


def test_sgd_is_the_articles_rule(backend):
    model = Sequential(Dense(3, 2, rng=1)).to(backend, dtype="float64")
    before = model.state_dict()
    loss_grads = {}
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((4, 3)), "float64")
    y = backend.asarray(rng.standard_normal((4, 2)), "float64")
    loss = MSELoss()
    loss(model(x), y)
    model.backward(loss.backward())
    loss_grads = {k: to_numpy(v) for k, v in model.grads.items()}
    SGD(lr=0.5).step(model)
    after = model.state_dict()
    for name in before:
        np.testing.assert_allclose(after[name], before[name] - 0.5 * loss_grads[name], rtol=1e-15)


def test_parameters_are_replaced_not_mutated():
    model = Sequential(Dense(3, 2, rng=1))
    weight = model.layers[0].params["weight"]
    snapshot = weight.copy()
    _one_step(model, SGD(lr=0.1), model.backend)
    np.testing.assert_array_equal(weight, snapshot)
    assert model.layers[0].params["weight"] is not weight


@pytest.mark.parametrize("make", [lambda: (SGD(lr=0.1, momentum=0.9), "sgd"), lambda: (Adam(lr=0.01), "adam")],
                         ids=["momentum", "adam"])
def test_optimizers_match_torch(make):
    torch = pytest.importorskip("torch")
    optimizer, kind = make()
    model = Sequential(Dense(3, 2, rng=1))
    w = torch.tensor(model.layers[0].params["weight"], requires_grad=True)
    b = torch.tensor(model.layers[0].params["bias"], requires_grad=True)
    reference = (torch.optim.SGD([w, b], lr=0.1, momentum=0.9) if kind == "sgd" else torch.optim.Adam([w, b], lr=0.01))
    for step in range(5):
        _one_step(model, optimizer, model.backend, rng_seed=step)
        rng = np.random.default_rng(step)
        x = torch.tensor(rng.standard_normal((4, 3)))
        y = torch.tensor(rng.standard_normal((4, 2)))
        reference.zero_grad()
        (0.5 * ((x @ w + b - y) ** 2).sum() / 4).backward()
        reference.step()
    np.testing.assert_allclose(model.layers[0].params["weight"], w.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(model.layers[0].params["bias"], b.detach().numpy(), rtol=1e-12)


def test_optimizer_state_round_trip(backend):
    model = Sequential(Dense(3, 2, rng=1)).to(backend, dtype="float64")
    optimizer = Adam(lr=0.01)
    for step in range(3):
        _one_step(model, optimizer, backend, step)
    saved = optimizer.state_dict()
    assert saved["steps"] == 3 and set(saved) == {"steps", "0.weight/m", "0.weight/v", "0.bias/m", "0.bias/v"}
    restored = Adam(lr=0.01)
    restored.load_state_dict(saved, model)
    twin = Sequential(Dense(3, 2, rng=1)).to(backend, dtype="float64")
    twin.load_state_dict(model.state_dict())
    _one_step(model, optimizer, backend, 7)
    _one_step(twin, restored, backend, 7)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, twin.state_dict()[name])


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), "0.1"])
def test_bad_learning_rate(lr):
    with pytest.raises(ValueError, match="learning rate must be a positive number"):
        SGD(lr=lr)


def test_optimizers_step_a_single_layer(backend):
    layer = Dense(3, 2, rng=1).to(backend, dtype="float64")
    before = {k: to_numpy(v).copy() for k, v in layer.params.items()}
    _one_step(layer, SGD(lr=0.5), backend)
    for name, value in layer.params.items():
        np.testing.assert_allclose(to_numpy(value), before[name] - 0.5 * to_numpy(layer.grads[name]), rtol=1e-15)
