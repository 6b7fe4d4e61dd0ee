"""Residual blocks (xpcnn/nn/residual.py): Y = body(X) + shortcut(X) with a hand-written backward,
checked by finite differences on every backend and against torch.autograd; one layer to everything
that runs a model (names, flags, buffers, noise, moves); its records, model files and JSON
architectures (untrusted: nesting limited, shapes checked before anything is built); the spec
``res(...)`` and its errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from checkpoint_edits import Pieces, make, meta_edit, put

from xpcnn.backends import to_numpy
from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.nn import (
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    ReLU,
    Residual,
    Sequential,
    SpecError,
    architecture_network,
    parse_spec,
)
from xpcnn.nn.residual import MAX_DEPTH, nesting_depth
from xpcnn.tools.gradcheck import assert_gradients_ok
from xpcnn.training.executors.base import refuse_batch_statistics
from xpcnn.training.noise import draw_noise, step_seed
from xpcnn.training.trainer import last_batch_problem


def identity_block(seed: int = 0, channels: int = 2) -> Residual:
    rng = np.random.default_rng(seed)
    return Residual([Conv2D(channels, channels, 3, padding=1, bias=False, rng=rng), BatchNorm2D(channels), ReLU(),
                     Conv2D(channels, channels, 3, padding=1, rng=rng)])


def projection_block(seed: int = 0) -> Residual:
    rng = np.random.default_rng(seed)
    return Residual(Sequential(Conv2D(2, 3, 3, stride=2, padding=1, rng=rng), ReLU(),
                               Conv2D(3, 3, 3, padding=1, bias=False, rng=rng), BatchNorm2D(3)),
                    [Conv2D(2, 3, 1, stride=2, bias=False, rng=rng), BatchNorm2D(3)])


def small_net(seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(Conv2D(1, 2, 3, padding=1, rng=rng), ReLU(), identity_block(seed + 1), ReLU(),
                      projection_block(seed + 2), Flatten(), Dense(3 * 3 * 3, 4, rng=rng))


# -- the math --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [identity_block, projection_block], ids=["identity", "projection"])
def test_gradients_by_finite_differences(backend, make):
    """dE/dX = body.backward(G) + shortcut.backward(G) (or + G), and every inner parameter's
    gradient, against central differences in float64 (BatchNorm in training mode inside)."""
    x = backend.asarray(np.random.default_rng(5).normal(size=(3, 2, 5, 5)), "float64")
    results = assert_gradients_ok(make().to(backend, dtype="float64"), x, max_elements=12)
    names = {result.name for result in results}
    assert "input" in names and "body.0.weight" in names
    assert make is identity_block or "shortcut.1.weight" in names


def test_nested_blocks_gradients(cpu_backend):
    inner = identity_block(3)
    block = Residual([inner, ReLU(), Conv2D(2, 2, 1, rng=4)], [Conv2D(2, 2, 1, bias=False, rng=5)])
    x = cpu_backend.asarray(np.random.default_rng(6).normal(size=(2, 2, 4, 4)), "float64")
    results = assert_gradients_ok(block, x, max_elements=12)
    assert {"body.0.body.0.weight", "body.0.body.3.bias", "shortcut.0.weight"} <= {r.name for r in results}


class TorchResidual:
    """The same block in torch.nn, from the same weights: body(x) + shortcut(x)."""

    def __init__(self, torch: object, block: Residual) -> None:
        self.torch = torch
        self.body = self._path(block.body)
        self.shortcut = None if block.shortcut is None else self._path(block.shortcut)

    def _path(self, path: Sequential) -> object:
        torch, modules = self.torch, []
        for layer in path.layers:
            if isinstance(layer, Conv2D):
                module = torch.nn.Conv2d(layer.in_channels, layer.out_channels, (layer.kh, layer.kw),
                                         stride=layer.stride, padding=layer.padding, bias=layer.bias,
                                         dtype=torch.float64)
                module.weight.data = torch.tensor(to_numpy(layer.params["weight"]))
                if layer.bias:
                    module.bias.data = torch.tensor(to_numpy(layer.params["bias"]))
            elif isinstance(layer, BatchNorm2D):
                module = torch.nn.BatchNorm2d(layer.size, eps=layer.eps, momentum=layer.momentum,
                                              dtype=torch.float64)
                module.weight.data = torch.tensor(to_numpy(layer.params["weight"]))
                module.bias.data = torch.tensor(to_numpy(layer.params["bias"]))
            else:
                module = torch.nn.ReLU()
            modules.append(module)
        return torch.nn.Sequential(*modules)

    def __call__(self, x: object) -> object:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def grads(self) -> dict:
        found = {}
        for part, path in (("body", self.body), ("shortcut", self.shortcut)):
            for index, module in enumerate(path or []):
                for name, value in module.named_parameters():
                    found[f"{part}.{index}.{name}"] = value.grad.numpy()
        return found


@pytest.mark.parametrize("make", [identity_block, projection_block], ids=["identity", "projection"])
def test_matches_torch(make):
    """Output, input gradient, every parameter's gradient and the running statistics after one
    training forward, against torch.autograd on a torch.nn module built from the same weights."""
    torch = pytest.importorskip("torch")
    block = make(7)
    reference = TorchResidual(torch, block)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 2, 6, 6))
    tx = torch.tensor(x, requires_grad=True)
    tout = reference(tx)
    grad_out = rng.normal(size=tuple(tout.shape))
    tout.backward(torch.tensor(grad_out))
    out = block(x)
    grad_in = block.backward(grad_out)
    np.testing.assert_allclose(to_numpy(out), tout.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(to_numpy(grad_in), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    expected, got = reference.grads(), {k: to_numpy(v) for k, v in block.grads.items()}
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-12, err_msg=name)
    for qualified, value in block.buffers.items():
        part, index, name = qualified.split(".")
        module = (reference.body if part == "body" else reference.shortcut)[int(index)]
        np.testing.assert_allclose(to_numpy(value), getattr(module, name).numpy(), rtol=1e-12, err_msg=qualified)


def test_input_grad_false_skips_the_input_gradient_only():
    block = projection_block(2).to("numpy", dtype="float64")
    x = np.random.default_rng(3).normal(size=(2, 2, 4, 4))
    block(x)
    full = block.backward(np.ones((2, 3, 2, 2)))
    expected = dict(block.grads)
    block(x)
    assert block.backward(np.ones((2, 3, 2, 2)), input_grad=False) is None and full.shape == x.shape
    for name, value in block.grads.items():
        np.testing.assert_array_equal(value, expected[name])


# -- one layer to everything that runs a model -----------------------------------------------------

def test_names_setters_and_assignment():
    model = small_net()
    names = [name for name, _ in model.named_parameters()]
    assert "2.body.0.weight" in names and "4.shortcut.0.weight" in names and "4.body.3.bias" in names
    buffers = dict(model.named_buffers())
    assert {"2.body.1.running_mean", "4.shortcut.1.running_var", "4.body.3.running_mean"} <= buffers.keys()
    model.set_parameter("4.shortcut.0.weight", np.zeros((3, 2, 1, 1)))
    assert not model.layers[4].shortcut.layers[0].params["weight"].any()
    model.set_buffer("2.body.1.running_mean", np.full(2, 3.0))
    assert model.layers[2].body.layers[1].buffers["running_mean"].tolist() == [3.0, 3.0]
    with pytest.raises(KeyError, match="no 'side' path"):
        model.set_parameter("2.side.0.weight", np.zeros(1))
    # the executors assign a layer's gradients as a whole (SplitStep, DataParallelStep, compiled)
    block = model.layers[4]
    block.grads = {"body.0.weight": np.ones((3, 2, 3, 3)), "shortcut.0.weight": np.ones((3, 2, 1, 1))}
    assert set(block.grads) == {"body.0.weight", "shortcut.0.weight"}
    block.grads = {}
    assert block.grads == {} and block.shortcut.layers[0].grads == {}


def test_state_dict_and_model_file_round_trip(tmp_path):
    model = small_net(3)
    model(np.random.default_rng(0).normal(size=(4, 1, 6, 6)))  # running statistics move off their start
    path = tmp_path / "model.npz"
    model.save(path)
    again = Sequential.load(path)
    assert again.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value)
    x = np.random.default_rng(1).normal(size=(2, 1, 6, 6))
    with model.inference(), again.inference():
        np.testing.assert_array_equal(again(x), model(x))


def test_training_flag_reaches_every_inner_layer():
    model = Sequential(Conv2D(1, 2, 3, padding=1, rng=0), Residual([identity_block(1), Dropout(0.5)]))
    inner = [model.layers[1].body.layers[0].body.layers[1], model.layers[1].body.layers[1]]
    with model.inference():
        assert all(not layer.training for layer in inner)
        x = np.random.default_rng(2).normal(size=(2, 1, 4, 4))
        first = model(x)  # BatchNorm on its running statistics, dropout off: no noise needed
        np.testing.assert_array_equal(model(x), first)
    assert all(layer.training for layer in inner)


def test_batch_statistics_are_reported_and_refused():
    model = small_net()
    assert model.layers[2].BATCH_STATISTICS == (0, 2, 3)
    with pytest.raises(ValueError, match=r"SplitStep: layer 2 \(Residual\) computes statistics over the whole"):
        refuse_batch_statistics(model, "SplitStep", "--threads/--chunk")
    plain = Sequential(Flatten(), Residual([Dense(4, 4, rng=0), ReLU()]))
    refuse_batch_statistics(plain, "SplitStep", "--threads/--chunk")  # nothing inside needs the batch
    assert plain.layers[1].BATCH_STATISTICS == ()
    feature = Sequential(Flatten(), Residual([Dense(4, 4, bias=False, rng=0), BatchNorm1D(4)]))
    assert last_batch_problem(feature, 11, 5).startswith("layer 1 (Residual) normalises each feature over the batch")


def test_noise_reaches_the_dropouts_inside():
    """A block's noise is one row per example with its Dropouts' noise side by side (body first);
    forward hands each its columns: the same masks as the Dropouts would draw alone."""
    rng = np.random.default_rng(0)
    block = Residual([Dropout(0.5), Conv2D(2, 2, 3, padding=1, rng=rng), Dropout(0.25)],
                     [Conv2D(2, 2, 1, rng=rng), Dropout(0.5)])
    model = Sequential(Conv2D(1, 2, 3, padding=1, rng=rng), block, Flatten(), Dropout(0.5))
    shapes = model.noise_shapes(3, (1, 4, 4))
    assert shapes == {"1.noise": (3, 3 * 2 * 4 * 4), "3.noise": (3, 32)}
    noise = draw_noise(shapes, step_seed(0, 0, 0))
    x = np.random.default_rng(1).normal(size=(3, 1, 4, 4))
    model.set_noise(noise)
    out = model(x)
    # the same forward by hand
    h = model.layers[0](x)
    columns = np.split(noise["1.noise"], 3, axis=1)
    masks = [(c.reshape(3, 2, 4, 4) >= p) / (1 - p) for c, p in zip(columns, (0.5, 0.25, 0.5))]
    conv, around = block.body.layers[1], block.shortcut.layers[0]
    with model.inference():
        y = conv(h * masks[0]) * masks[1] + around(h) * masks[2]
    expected = y.reshape(3, -1) * (noise["3.noise"] >= 0.5) / 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    model.backward(np.ones((3, 32)))
    with pytest.raises(RuntimeError, match=r"Dropout\(p=0.5\) \(layer 1 body.0\): a training forward needs"):
        model(x)
    block.set_noise(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"Residual \(layer 1\): noise of shape \(3, 5\)"):
        block(h)


def test_infer_shape_errors_name_both_paths():
    block = Residual([Conv2D(2, 4, 3, padding=1, rng=0)])
    with pytest.raises(ValueError, match=r"Residual: the body gives shape \(N, 4, 5, 5\) and the identity shortcut "
                                         r"\(N, 2, 5, 5\); they must agree"):
        block.infer_shape((2, 5, 5))
    with pytest.raises(ValueError, match=r"^layer 1 \(Residual body: layer 0 \(Conv2D: expected input of shape"):
        Sequential(ReLU(), block).infer_shape((3, 5, 5))
    with pytest.raises(TypeError, match="body must be a Sequential or a non-empty list"):
        Residual([])
    with pytest.raises(TypeError, match=r"body\[1\] must be a layer or a layer record"):
        Residual([ReLU(), "relu"])


# -- records, JSON, untrusted files ----------------------------------------------------------------

def nested(depth: int) -> dict:
    record: dict = {"type": "ReLU"}
    for _ in range(depth):
        record = {"type": "Residual", "body": [record], "shortcut": None}
    return record


def test_records_round_trip_through_json():
    model = small_net(5)
    records = json.loads(json.dumps(model.config()))
    assert records[4] == {"type": "Residual", "body": records[4]["body"], "shortcut": records[4]["shortcut"]}
    assert records[2]["shortcut"] is None and records[4]["shortcut"][0]["type"] == "Conv2D"
    again = Sequential.from_config(records)
    assert again.config() == model.config()
    built = architecture_network(json.dumps(records), (1, 6, 6), 4, seed=3)
    assert built.config() == model.config()
    assert [name for name, _ in built.named_parameters()] == [name for name, _ in model.named_parameters()]
    # a JSON architecture is initialised from its seed: inner layers too, one generator in order
    twice = architecture_network(json.dumps(records), (1, 6, 6), 4, seed=3)
    for (name, a), (_, b) in zip(built.named_parameters(), twice.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_nesting_is_limited_without_recursion():
    assert nesting_depth([nested(MAX_DEPTH)]) == MAX_DEPTH
    Sequential.from_config([nested(MAX_DEPTH)])
    with pytest.raises(ValueError, match=f"^Residual: blocks nest more than {MAX_DEPTH} deep$"):
        Sequential.from_config([nested(MAX_DEPTH + 1)])
    deep = nested(100_000)  # a hostile file: refused by counting, no RecursionError
    assert nesting_depth([deep]) == MAX_DEPTH + 1
    with pytest.raises(ValueError, match="nest more than"):
        Residual.state_shapes({"body": [deep], "shortcut": None})
    with pytest.raises(SpecError, match=r"^layer 0 \(Residual\): Residual: blocks nest more than 8 deep$"):
        architecture_network([nested(MAX_DEPTH + 1)], (1, 4, 4), 1)
    text = '[{"type": "Residual", "body": ' * 100_000 + "]" * 100_000
    with pytest.raises(SpecError, match="JSON nested 200000 levels deep, more than 32"):  # (counted, not parsed)
        architecture_network(text, (1, 4, 4), 1)
    with pytest.raises(SpecError, match=r"layer 0 \(Residual\): Residual body\[0\]: unknown layer type 'Relu'"):
        architecture_network([{"type": "Residual", "body": [{"type": "Relu"}], "shortcut": None}], (1, 4, 4), 1)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.npz"
    small_net(6).save(path)
    return Pieces(path, *checkpoint.load(path))


@pytest.mark.parametrize("where,value,problem", [
    ("architecture.4.body", [], "architecture[4] (Residual) does not build (Residual: body must be a non-empty"),
    ("architecture.4.body", "conv", "architecture[4] (Residual) does not build"),
    ("architecture.4.body.1", "ReLU", "architecture[4] (Residual) does not build (Residual: body[1] must be a"),
    ("architecture.4.shortcut", [], "does not build (Residual: shortcut must be a non-empty list"),
    ("architecture.4.body.0.type", "Conv3D", "does not build (Residual body[0]: unknown layer type 'Conv3D'"),
    ("architecture.4.body.0.out_channels", 10 ** 9, "needs parameter 4.body.0.weight of shape (1000000000, 2, 3, 3)"),
    ("architecture.2.body.0.in_channels", 10 ** 9, "needs parameter 2.body.0.weight of shape (2, 1000000000, 3, 3)"),
    ("architecture.4.shortcut", None, "parameters do not fit the architecture (state dict does not fit the model: "
                                      "unexpected: 4.shortcut.0.weight"),
    ("architecture.2.body", [nested(MAX_DEPTH)], "does not build (Residual: blocks nest more than 8 deep)"),
    ("architecture.2.extra", 1, "architecture[2] (Residual) does not build"),
])
def test_a_bad_model_file_is_refused_before_anything_is_built(model_file, tmp_path, monkeypatch, where, value,
                                                              problem):
    from xpcnn.nn import init

    make_weight = init.make_weight

    def small_weights_only(rng: object, shape: tuple, *args: object) -> object:
        assert math.prod(shape) < 10 ** 6, f"a layer of {shape} was built before its size was checked"
        return make_weight(rng, shape, *args)

    monkeypatch.setattr(init, "make_weight", small_weights_only)
    path = make(model_file, meta_edit(where, value), tmp_path / "edited.npz")
    with pytest.raises(CheckpointError) as info:
        Sequential.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message


def test_put_reaches_nested_records():  # (the edits above rely on it)
    record = {"a": [{"b": 1}]}
    put(record, "a.0.b", 2)
    assert record == {"a": [{"b": 2}]}


# -- the spec ---------------------------------------------------------------------------------------

SPEC = ("conv4k3p1-bn-relu-res(conv4k3p1-bn-relu-conv4k3p1-bn)-relu"
        "-res(conv8k3s2p1-bn-relu-conv8k3p1-bn|conv8k1s2-bn)-relu-flatten-dense")


def test_spec_builds_blocks_with_inferred_sizes_and_cancelled_biases():
    model = parse_spec(SPEC, (3, 8, 8), 10)
    assert [layer.name for layer in model.layers] == ["Conv2D", "BatchNorm2D", "ReLU", "Residual", "ReLU", "Residual",
                                                       "ReLU", "Flatten", "Dense"]
    first, second = model.layers[3], model.layers[5]
    assert first.shortcut is None and [layer.name for layer in first.body.layers] == [
        "Conv2D", "BatchNorm2D", "ReLU", "Conv2D", "BatchNorm2D"]
    assert [layer.name for layer in second.shortcut.layers] == ["Conv2D", "BatchNorm2D"]
    convs = [first.body.layers[0], second.body.layers[0], second.shortcut.layers[0]]
    assert [(c.in_channels, c.out_channels, c.bias) for c in convs] == [(4, 4, False), (4, 8, False), (4, 8, False)]
    assert model.infer_shape((3, 8, 8)) == (10,)
    assert parse_spec("res(conv3k3p1-relu)-flatten-dense", (3, 4, 4), 2).layers[0].body.layers[0].bias
    # the same text, the same bits
    again = parse_spec(SPEC.upper(), (3, 8, 8), 10)
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("spec,message", [
    ("conv4k3-res(conv4k3p1-relu", "token 2 'res(conv4k3p1-relu': unbalanced parentheses"),
    ("conv4k3-relu)-flatten-dense", "token 2 'relu)': unbalanced parentheses"),
    ("conv4k3-res()-flatten-dense", "token 2 'res()': the body is empty"),
    ("conv4k3-res(|conv4k1)-flatten-dense", "token 2 'res(|conv4k1)': the body is empty"),
    ("conv4k3-res(relu|)-flatten-dense", "token 2 'res(relu|)': the shortcut is empty"),
    ("conv4k3-res(relu|relu|relu)-flatten-dense", "a block has one body and at most one shortcut"),
    ("conv4k3-res(conv4k3p1-bnx)-flatten-dense", "token 2 'res(conv4k3p1-bnx)': body token 2 'bnx': not a layer token"),
    ("conv4k3-res(relu|conv4k3x)-flatten-dense", "shortcut token 1 'conv4k3x': not a layer token"),
    ("conv4k3-res(conv8k3s2p1)-flatten-dense",
     "token 2 'res(conv8k3s2p1)': the body gives shape (N, 8, 3, 3), the input (the identity shortcut) is "
     "(N, 4, 6, 6); use the projection form res(<body>|conv8k1s2-bn)"),
    ("conv4k3-res(conv8k3s2p1|conv8k1)-flatten-dense",
     "token 2 'res(conv8k3s2p1|conv8k1)': the body gives shape (N, 8, 3, 3) and the shortcut (N, 8, 6, 6); they must"),
    ("conv4k3-res(dense)-flatten-dense", "body token 1 'dense': a dense layer needs a flat input"),
    ("flatten-res(dense)-dense", "body token 1 'dense': give the width (dense<N>)"),
    ("res(" * (MAX_DEPTH + 1) + "relu" + ")" * (MAX_DEPTH + 1) + "-flatten-dense",
     f"residual blocks nest {MAX_DEPTH + 1} deep here, more than {MAX_DEPTH}"),
])
def test_spec_errors_are_one_line_naming_the_token(spec, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec, (1, 8, 8), 10)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_spec_nesting_up_to_the_limit():
    spec = "res(" * MAX_DEPTH + "conv1k3p1" + ")" * MAX_DEPTH + "-flatten-dense"
    model = parse_spec(spec, (1, 4, 4), 3)
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "0" + ".body.0" * MAX_DEPTH + ".weight"
    assert Sequential.from_config(json.loads(json.dumps(model.config()))).config() == model.config()


def test_help_shows_the_syntax_and_an_example():
    from xpcnn.nn import SPEC_HELP

    assert "res(<body>[|<shortcut>])" in SPEC_HELP
    lines = [line.strip() for line in SPEC_HELP.splitlines()]
    example = next(line for line in lines if line.startswith("conv16k3p1-bn-relu-res("))
    assert parse_spec(example, (3, 8, 8), 10).infer_shape((3, 8, 8)) == (10,)


def test_a_spec_network_runs_on_every_backend(backend):
    """The spec's network moved to each backend gives the NumPy float64 outputs and gradients (float32 too,
    but on JAX, whose eager first calls of each shape and dtype cost seconds)."""
    reference = parse_spec(SPEC, (3, 4, 4), 10)
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    expected = reference(x)
    reference.backward(np.ones_like(expected), input_grad=False)
    for dtype, rtol in (("float64", 1e-9), ("float32", 1e-3))[:1 if backend.label.startswith("jax") else 2]:
        model = parse_spec(SPEC, (3, 4, 4), 10).to(backend, dtype=dtype)
        assert model.backend.label == backend.label and model.dtype == dtype
        assert all(value.dtype == backend.dtype(dtype) for _, value in model.named_buffers())
        out = model(backend.asarray(x, dtype))
        model.backward(backend.xp.ones_like(out), input_grad=False)
        np.testing.assert_allclose(to_numpy(out), expected, rtol=rtol, atol=rtol)
        got = dict(model.named_gradients())
        for name, value in reference.named_gradients():
            np.testing.assert_allclose(to_numpy(got[name]), value, rtol=rtol, atol=rtol, err_msg=name)
