"""xpcnn.nn.regularization: Dropout and BatchNorm1D/2D -- finite-difference gradients on every backend,
the train/inference switch, buffers in state dicts, host-drawn noise (the same masks on every
backend), and both layers in the Trainer's executors (eager, shares, jax.jit, the CUDA-graph
bookkeeping), resumed bitwise."""

import copy
import dataclasses

import numpy as np
import pytest

from helpers import interrupt_and_resume, xp_assert_close
from xpcnn import data, resolve
from xpcnn.backends import to_numpy
from xpcnn.tools.gradcheck import assert_gradients_ok
from xpcnn.nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from xpcnn.nn.losses import SoftmaxCrossEntropyLoss
from xpcnn.nn.sequential import Sequential, StateDictError
from xpcnn.optim import SGD, Adam
from xpcnn.nn.regularization import BatchNorm1D, BatchNorm2D, Dropout
from xpcnn.training import PRESETS, Lambda, SplitStep, Trainer, WholeBatchStep
from xpcnn.training.noise import draw_noise, step_noise, step_seed


def _x(backend, rng, shape, dtype="float64"):
    return backend.asarray(rng.standard_normal(shape), dtype)


def _randomise(layer, rng):
    """Gamma and beta away from 1 and 0, running statistics away from 0 and 1."""
    size = layer.size
    layer.params = {"weight": rng.uniform(0.5, 2.0, size), "bias": rng.standard_normal(size)}
    layer.buffers = {"running_mean": rng.standard_normal(size), "running_var": rng.uniform(0.5, 2.0, size)}
    return layer


class FixedNoiseDropout(Dropout):
    """Dropout that gets the same noise before every forward (the gradient checker runs many)."""

    def __init__(self, p, noise):
        super().__init__(p)
        self.fixed = noise

    def forward(self, x):
        self.set_noise(self.fixed)
        return super().forward(x)


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,shape", [
    (lambda: BatchNorm2D(3), (4, 3, 5, 2)), (lambda: BatchNorm2D(2, eps=1e-3, momentum=0.3), (2, 2, 3, 3)),
    (lambda: BatchNorm1D(5), (6, 5)), (lambda: BatchNorm1D(1), (3, 1))], ids=["2d", "2d-eps", "1d", "1d-one"])
def test_batchnorm_gradients(backend, rng, make, shape):
    layer = _randomise(make(), rng)
    results = assert_gradients_ok(layer, _x(backend, rng, shape))
    assert {r.name for r in results} == {"input", "weight", "bias"}


@pytest.mark.parametrize("p", [0.0, 0.3, 0.75])
def test_dropout_gradients(backend, rng, p):
    noise = backend.asarray(rng.random((3, 2, 4, 3)), "float64")
    assert_gradients_ok(FixedNoiseDropout(p, noise), _x(backend, rng, (3, 2, 4, 3)))


def test_network_with_batchnorm_gradients(backend, rng):
    """BatchNorm between a convolution and a dense layer: the whole stack's gradients."""
    model = Sequential(Conv2D(1, 3, 3, rng=1), _randomise(BatchNorm2D(3), rng), ReLU(), Flatten(),
                       Dense(3 * 4 * 4, 4, rng=2), _randomise(BatchNorm1D(4), rng))
    results = assert_gradients_ok(model, _x(backend, rng, (5, 1, 6, 6)))
    assert {r.name for r in results} == {"input", "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias",
                                         "5.weight", "5.bias"}


# -- forward: training and inference -----------------------------------------------------------------
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


def test_batchnorm_rejects_bad_input_and_arguments(rng):
    with pytest.raises(ValueError, match=r"BatchNorm2D: expected input of shape \(N, 3, H, W\), got shape \(2, 4, 2, 2\)"):
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


# -- noise ----------------------------------------------------------------------------------------------
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


def test_draw_noise_is_a_function_of_the_seed():
    shapes = {"7.noise": (3, 2), "1.noise": (3, 4, 2, 2)}
    a = draw_noise(shapes, step_seed(5, 1, 2))
    b = draw_noise(dict(reversed(list(shapes.items()))), step_seed(5, 1, 2))  # order does not matter
    assert list(a) == ["1.noise", "7.noise"]
    for name in shapes:
        assert a[name].dtype == np.float64 and a[name].shape == shapes[name]
        np.testing.assert_array_equal(a[name], b[name])
        assert 0 <= a[name].min() and a[name].max() < 1
    single = draw_noise(shapes, step_seed(5, 1, 2), "float32")
    np.testing.assert_array_equal(single["1.noise"], a["1.noise"].astype(np.float32))  # a host cast of the same draw
    for other in (step_seed(5, 1, 3), step_seed(5, 2, 2), step_seed(6, 1, 2)):
        assert not np.array_equal(draw_noise(shapes, other)["1.noise"], a["1.noise"])
    # apart from the augmentation's stream (numpy.random.default_rng([seed, epoch, step]))
    assert not np.array_equal(np.random.default_rng([5, 1, 2]).random((3, 4, 2, 2)), a["1.noise"])


def test_step_noise_draws_only_for_dropout():
    images = np.zeros((4, 1, 6, 6), np.uint8)  # (N, C, H, W), as the Trainer hands them over
    assert step_noise(Sequential(Conv2D(1, 2, 3), Flatten()), images, 0, 0, 0, "float32") is None
    assert step_noise(Sequential(Flatten(), Dropout(0.0)), images, 0, 0, 0, "float32") is None
    noise = step_noise(Sequential(Conv2D(1, 2, 3), Dropout(0.5)), images, 3, 1, 4, "float32")
    assert noise["1.noise"].shape == (4, 2, 4, 4) and noise["1.noise"].dtype == np.float32


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


# -- buffers: state dicts, rebuilding, optimizers -----------------------------------------------------
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


# -- in the training loop -----------------------------------------------------------------------------------
TRAIN = data.load_embedded().train.take(150)  # 40-image batches: three full ones and one of 30


def _network():
    rng = np.random.default_rng(7)
    # no bias before a BatchNorm: it would have no gradient (BatchNorm removes constants), and Adam
    # turns the rounding noise of a zero gradient into steps of size lr
    return Sequential(Conv2D(1, 4, 5, bias=False, rng=rng), BatchNorm2D(4), ReLU(), MaxPool2D(2), Flatten(),
                      Dropout(0.3), Dense(4 * 12 * 12, 16, bias=False, rng=rng), BatchNorm1D(16), ReLU(), Dropout(0.5),
                      Dense(16, 10, rng=rng))


def _config(**changes):
    changes = {"dtype": "float64", "epochs": 2, "batch_size": 40, "optimizer": "momentum", "lr": 0.05,
               "lr_decay": 0.5, **changes}
    return dataclasses.replace(PRESETS["default"], **changes)


def _train(backend, executor=None, model=None, **changes):
    with Trainer(_config(**changes), backend, model=model or _network(), executor=executor) as trainer:
        trainer.fit(TRAIN)
    return trainer


def _assert_same(a, b, rtol):
    state = a.model.state_dict()
    assert state.keys() == b.model.state_dict().keys()
    for name, value in b.model.state_dict().items():
        if rtol:
            np.testing.assert_allclose(state[name], value, rtol=rtol, atol=rtol * 1e-3, err_msg=name)
        else:
            np.testing.assert_array_equal(state[name], value, err_msg=name)
    np.testing.assert_allclose(a.state.step_losses, b.state.step_losses, rtol=rtol)


def test_training_with_dropout_and_batchnorm_is_deterministic(cpu_backend):
    """Two runs give the same bits; the noise follows the seed; the running statistics moved."""
    first, second = _train(cpu_backend), _train(cpu_backend)
    _assert_same(first, second, 0)
    assert np.all(np.isfinite(first.state.step_losses))
    assert not np.allclose(first.model.state_dict()["1.running_mean"], 0)
    other = _train(cpu_backend, seed=1)
    assert other.state.step_losses[0] != first.state.step_losses[0]


def test_training_matches_on_every_cpu_backend(cpu_backend):
    """The same run on any backend (noise drawn on the host) as on NumPy, to float64 rounding."""
    _assert_same(_train(cpu_backend), _train(resolve("numpy")), rtol=1e-9)


def test_resume_in_the_middle_of_an_epoch_is_bitwise(cpu_backend):
    """Stop after step 2 of epoch 2, carry the state into a fresh Trainer (what a checkpoint
    holds: parameters, buffers, optimizer state, shuffle generator, counters) and finish: the same
    bits as the straight run, masks included."""
    straight = _train(cpu_backend, epochs=3)

    def stop(trainer, values):
        if trainer.state.epoch == 1 and trainer.state.step_in_epoch == 2:
            trainer.stop_requested = True

    with Trainer(_config(epochs=3), cpu_backend, model=_network(), sync_every=1) as first:
        with pytest.raises(Exception, match="interrupted at epoch 2, step 2"):
            first.fit(TRAIN, extensions=[Lambda(on_losses=stop)])
    with Trainer(_config(epochs=3), cpu_backend, model=_network()) as resumed:
        resumed.model.load_state_dict(first.model.state_dict())
        resumed.optimizer.load_state_dict(first.optimizer.state_dict(), resumed.model)
        resumed.rng.bit_generator.state = first.rng.bit_generator.state
        resumed.state = copy.deepcopy(first.state)
        resumed.fit(TRAIN)
    _assert_same(resumed, straight, 0)


def test_batch_norm_1d_and_a_last_batch_of_one_image_are_refused_before_the_first_step():
    config = _config(model="flatten-dense8-bn-relu-dense", batch_size=20, epochs=1)
    with Trainer(config, resolve("numpy")) as trainer:
        with pytest.raises(ValueError, match=r"Trainer.fit: layer 2 \(BatchNorm1D\) normalises each feature over the "
                                             r"batch, and the last batch of every epoch would hold 1 image \(41 "
                                             r"training images in batches of 20\)"):
            trainer.fit(TRAIN.take(41))
        assert trainer.state.global_step == 0
        trainer.fit(TRAIN.take(42))  # a last batch of two is enough
        assert trainer.state.global_step == 3


def test_split_step_slices_the_noise(cpu_backend):
    """Dropout under SplitStep: each share gets its rows of the batch's noise, so shares give the
    whole-batch step (to rounding); BatchNorm, whose statistics need the whole batch, is refused."""
    def dropout_net():
        rng = np.random.default_rng(2)
        return Sequential(Conv2D(1, 3, 5, rng=rng), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.4),
                          Dense(3 * 12 * 12, 10, rng=rng))

    whole = _train(cpu_backend, model=dropout_net())
    split = _train(cpu_backend, SplitStep(threads=2, chunk=15), model=dropout_net())
    _assert_same(split, whole, rtol=1e-10)
    with pytest.raises(ValueError, match=r"SplitStep: layer 1 \(BatchNorm2D\) computes statistics over the whole batch"):
        Trainer(_config(), cpu_backend, model=_network(), executor=SplitStep(threads=2))


def test_executor_batches_carry_noise_only_for_dropout(cpu_backend):
    executor = WholeBatchStep()
    executor.bind(_network(), SoftmaxCrossEntropyLoss(), SGD(0.1), cpu_backend, "float32")
    images, labels = TRAIN.images[:4], TRAIN.labels[:4].astype(np.int64)
    assert len(executor.to_device(images, labels)) == 2
    x, y, noise = executor.to_device(images, labels, noise={"5.noise": np.zeros((4, 576), np.float32)})
    xp_assert_close(noise["5.noise"], np.zeros((4, 576)), xp=cpu_backend.xp, device=cpu_backend.device,
                    dtype="float32")


@pytest.fixture
def jax_backend():
    pytest.importorskip("jax")
    return resolve("jax", "cpu")


def test_jit_step_with_dropout_and_batchnorm_equals_eager(jax_backend):
    """Noise and buffers in and out of the pure step: jax.jit gives the eager run (float64, 1e-12),
    running statistics included (Adam: slots and bias corrections); the trace keeps no tracer in the model."""
    from xpcnn.training.executors.compiled import JaxJitStep

    compiled = _train(jax_backend, JaxJitStep(), optimizer="adam", lr=0.01, epochs=1)
    eager = _train(jax_backend, optimizer="adam", lr=0.01, epochs=1)
    _assert_same(compiled, eager, rtol=1e-12)
    assert compiled.executor.traces == 3  # first step, full batches, the partial batch
    assert not any("Tracer" in type(v).__name__ for _, v in compiled.model.named_buffers())
    assert all(not layer.grads for layer in compiled.model.layers)


def test_graph_step_bookkeeping_with_dropout_and_batchnorm():
    """TorchGraphStep's static buffers carry the noise in and the running statistics out: with the
    eager stand-in for the CUDA graph, bit for bit the eager run."""
    pytest.importorskip("torch")
    from xpcnn.training.executors.compiled import EagerGraphStandIn, TorchGraphStep

    backend = resolve("torch", "cpu")
    graphed = _train(backend, TorchGraphStep(capture=EagerGraphStandIn()), epochs=3)
    eager = _train(backend, epochs=3)
    _assert_same(graphed, eager, 0)
    assert graphed.executor.replays > 0


SPEC = "conv4k5nb-bn-relu-maxpool2-flatten-dropout0.3-dense16-bn-relu-dropout0.5-dense"


def test_checkpoint_resume_with_a_spec_network(cpu_backend, tmp_path):
    """A --model spec with BatchNorm and Dropout through a real checkpoint (Checkpointer on an
    interrupt, Trainer.resume): bitwise the straight run, running statistics included."""
    _resume_spec_network(cpu_backend, tmp_path, lambda: None)


def test_checkpoint_resume_with_a_spec_network_under_jit(tmp_path):
    from xpcnn.training.executors.compiled import JaxJitStep

    pytest.importorskip("jax")
    _resume_spec_network(resolve("jax", "cpu"), tmp_path, JaxJitStep)


def _resume_spec_network(cpu_backend, tmp_path, make):
    cfg = _config(model=SPEC, epochs=2)
    with Trainer(cfg, cpu_backend, executor=make()) as straight:
        straight.fit(TRAIN)
    assert {"1.running_mean", "7.running_var"} <= set(straight.model.state_dict())

    first, resumed = interrupt_and_resume(cfg, cpu_backend, make, TRAIN, tmp_path / "c.npz", epoch=2, step=1)
    assert resumed.state.global_step > first.state.global_step  # (the statistics came back: compared below)
    _assert_same(resumed, straight, 0)


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
