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


def _sgd_step(backend, **options):
    """One SGD(lr=0.5, **options) step of a Dense layer on an MSE batch: (before, gradients, after)."""
    model = Sequential(Dense(3, 2, rng=1)).to(backend, dtype="float64")
    before = model.state_dict()
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((4, 3)), "float64")
    y = backend.asarray(rng.standard_normal((4, 2)), "float64")
    loss = MSELoss()
    loss(model(x), y)
    model.backward(loss.backward())
    grads = {k: to_numpy(v) for k, v in model.grads.items()}
    SGD(lr=0.5, **options).step(model)
    return before, grads, model.state_dict()


def test_sgd_is_the_articles_rule(backend):
    before, grads, after = _sgd_step(backend)
    for name in before:
        np.testing.assert_allclose(after[name], before[name] - 0.5 * grads[name], rtol=1e-15)


def test_parameters_are_replaced_not_mutated():
    model = Sequential(Dense(3, 2, rng=1))
    weight = model.layers[0].params["weight"]
    snapshot = weight.copy()
    _one_step(model, SGD(lr=0.1), model.backend)
    np.testing.assert_array_equal(weight, snapshot)
    assert model.layers[0].params["weight"] is not weight


def _follow_torch(model, optimizer, reference, w, b, steps: int, halve_lr_at: int | None = None):
    """Run ``optimizer`` on the Dense ``model`` and ``reference`` (a torch.optim optimizer of its
    copies ``w``, ``b``) on the same batches (the learning rate halved at ``halve_lr_at``) and
    check that the parameters agree to 1e-12."""
    import torch

    for step in range(steps):
        if step == halve_lr_at:
            optimizer.lr /= 2
            for group in reference.param_groups:
                group["lr"] /= 2
        _one_step(model, optimizer, model.backend, rng_seed=step)
        rng = np.random.default_rng(step)
        x = torch.tensor(rng.standard_normal((4, 3)))
        y = torch.tensor(rng.standard_normal((4, 2)))
        reference.zero_grad()
        (0.5 * ((x @ w + b - y) ** 2).sum() / 4).backward()
        reference.step()
    np.testing.assert_allclose(model.layers[0].params["weight"], w.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(model.layers[0].params["bias"], b.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("make", [lambda: (SGD(lr=0.1, momentum=0.9), "sgd"), lambda: (Adam(lr=0.01), "adam")],
                         ids=["momentum", "adam"])
def test_optimizers_match_torch(make):
    torch = pytest.importorskip("torch")
    optimizer, kind = make()
    model = Sequential(Dense(3, 2, rng=1))
    w = torch.tensor(model.layers[0].params["weight"], requires_grad=True)
    b = torch.tensor(model.layers[0].params["bias"], requires_grad=True)
    reference = (torch.optim.SGD([w, b], lr=0.1, momentum=0.9) if kind == "sgd" else torch.optim.Adam([w, b], lr=0.01))
    _follow_torch(model, optimizer, reference, w, b, steps=5)


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


# -- weight decay -----------------------------------------------------------------------------
def _torch_twin(model, torch):
    w = torch.tensor(model.layers[0].params["weight"], requires_grad=True)
    b = torch.tensor(model.layers[0].params["bias"], requires_grad=True)
    return w, b


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam", "adamw", "adamw-default"])
def test_weight_decay_matches_torch(kind):
    """L2 weight decay (SGD, momentum, Adam) and decoupled AdamW against torch.optim over six
    steps with a learning-rate change half way (AdamW's 1 - lr wd follows it): float64 to 1e-12."""
    torch = pytest.importorskip("torch")
    from xpcnn.optim import AdamW

    model = Sequential(Dense(3, 2, rng=1))
    w, b = _torch_twin(model, torch)
    if kind in ("sgd", "momentum"):
        momentum = 0.9 if kind == "momentum" else 0.0
        optimizer = SGD(lr=0.1, momentum=momentum, weight_decay=0.05)
        reference = torch.optim.SGD([w, b], lr=0.1, momentum=momentum, weight_decay=0.05)
    elif kind == "adam":
        optimizer = Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
        reference = torch.optim.Adam([w, b], lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
    elif kind == "adamw":
        optimizer = AdamW(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3)
        reference = torch.optim.AdamW([w, b], lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3)
    else:
        optimizer, reference = AdamW(lr=0.01), torch.optim.AdamW([w, b], lr=0.01)
        assert optimizer.weight_decay == reference.defaults["weight_decay"] == 0.01
    _follow_torch(model, optimizer, reference, w, b, steps=6, halve_lr_at=3)


def test_weight_decay_on_every_backend(backend):
    """One SGD step with weight decay: new = old - lr (grad + wd old), on every backend."""
    before, grads, after = _sgd_step(backend, weight_decay=0.1)
    for name, value in after.items():
        np.testing.assert_allclose(value, before[name] - 0.5 * (grads[name] + 0.1 * before[name]), rtol=1e-14)


def test_decay_filter_exempts_parameters():
    """``decay_filter`` keeps weight decay off the parameters it rejects (here: biases): their
    update is the one without weight decay, the others' the one with it."""
    from xpcnn.optim import AdamW

    rng = np.random.default_rng(3)
    param, grad = rng.standard_normal(5), rng.standard_normal(5)
    for make in (lambda **k: SGD(lr=0.1, momentum=0.9, **k), lambda **k: Adam(lr=0.01, **k),
                 lambda **k: AdamW(lr=0.01, **k)):
        plain, decayed = make(weight_decay=0.0), make(weight_decay=0.5)
        filtered = make(weight_decay=0.5, decay_filter=lambda name: not name.endswith("bias"))
        for optimizer in (plain, decayed, filtered):
            optimizer.steps = 1
        for name, like in (("3.bias", plain), ("3.weight", decayed)):
            got, _ = filtered.update_named(name, param, grad, {}, filtered.scalars())
            want, _ = like.update_named(name, param, grad, {}, like.scalars())
            np.testing.assert_array_equal(got, want, err_msg=name)
        assert not np.array_equal(decayed.update(param, grad, {}, decayed.scalars())[0],
                                  plain.update(param, grad, {}, plain.scalars())[0])


@pytest.mark.parametrize("wd", [-0.1, float("inf"), "0.1", True])
def test_bad_weight_decay(wd):
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        SGD(lr=0.1, weight_decay=wd)


# -- Nesterov momentum ------------------------------------------------------------------------
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_nesterov_matches_torch(weight_decay):
    """SGD(nesterov=True) against torch.optim.SGD(nesterov=True) over six steps in float64, with a
    learning-rate change half way and with and without L2 weight decay."""
    torch = pytest.importorskip("torch")
    model = Sequential(Dense(3, 2, rng=1))
    w, b = _torch_twin(model, torch)
    optimizer = SGD(lr=0.1, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    reference = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    _follow_torch(model, optimizer, reference, w, b, steps=6, halve_lr_at=3)


def test_nesterov_on_every_backend(backend):
    """Two steps of v = m v + g, new = old - lr (g + m v) on every backend, against the rule on the host."""
    model = Sequential(Dense(3, 2, rng=1)).to(backend, dtype="float64")
    optimizer = SGD(lr=0.5, momentum=0.8, nesterov=True)
    params = {name: to_numpy(value).copy() for name, value in model.named_parameters()}
    velocity = {name: np.zeros_like(value) for name, value in params.items()}
    for step in range(2):
        rng = np.random.default_rng(step)
        x = backend.asarray(rng.standard_normal((4, 3)), "float64")
        y = backend.asarray(rng.standard_normal((4, 2)), "float64")
        loss = MSELoss()
        loss(model(x), y)
        model.backward(loss.backward())
        grads = {name: to_numpy(value) for name, value in model.named_gradients()}
        optimizer.step(model)
        for name in params:
            velocity[name] = 0.8 * velocity[name] + grads[name]
            params[name] = params[name] - 0.5 * (grads[name] + 0.8 * velocity[name])
            np.testing.assert_allclose(model.state_dict()[name], params[name], rtol=1e-14, atol=1e-15)
    assert set(optimizer.state_dict()) == {"steps", "0.weight/velocity", "0.bias/velocity"}


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(momentum=0.0, nesterov=True), ValueError, "SGD: nesterov needs a momentum > 0"),
    (dict(momentum=0.9, nesterov=1), TypeError, "SGD: nesterov must be True or False, got 1"),
])
def test_bad_nesterov(kwargs, error, message):
    with pytest.raises(error, match=message):
        SGD(lr=0.1, **kwargs)
