"""Dropout and BatchNorm in the Trainer's executors: eager, in shares (SplitStep), jax.jit and the
CUDA-graph bookkeeping -- deterministic, the same on every CPU backend, and resumed bitwise (in the
middle of an epoch, and through a real checkpoint)."""

import copy
import dataclasses

import numpy as np
import pytest
from helpers import interrupt_and_resume, xp_assert_close

from xpcnn import data, resolve
from xpcnn.nn import (
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Sequential,
    SoftmaxCrossEntropyLoss,
)
from xpcnn.optim import SGD
from xpcnn.training import PRESETS, Lambda, SplitStep, Trainer, WholeBatchStep

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
    """A run with ``executor``, by default the eager whole-batch step (the reference the others equal)."""
    with Trainer(_config(**changes), backend, model=model or _network(), executor=executor or WholeBatchStep()) \
            as trainer:
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

    with Trainer(_config(epochs=3), cpu_backend, model=_network(), sync_every=1, executor=WholeBatchStep()) as first:
        with pytest.raises(Exception, match="interrupted at epoch 2, step 2"):
            first.fit(TRAIN, extensions=[Lambda(on_losses=stop)])
    with Trainer(_config(epochs=3), cpu_backend, model=_network(), executor=WholeBatchStep()) as resumed:
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
    whole-batch step (to rounding); with BatchNorm too, its statistics synchronised over the shares."""
    def dropout_net():
        rng = np.random.default_rng(2)
        return Sequential(Conv2D(1, 3, 5, rng=rng), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.4),
                          Dense(3 * 12 * 12, 10, rng=rng))

    whole = _train(cpu_backend, model=dropout_net())
    split = _train(cpu_backend, SplitStep(threads=2, chunk=15), model=dropout_net())
    _assert_same(split, whole, rtol=1e-10)
    _assert_same(_train(cpu_backend, SplitStep(threads=2, chunk=15)), _train(cpu_backend), rtol=1e-10)


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
    from xpcnn.training.executors import JaxJitStep

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
    from graph_stand_in import EagerGraphStandIn  # tests/training/executors/

    from xpcnn.training.executors import TorchGraphStep

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
    from xpcnn.training.executors import JaxJitStep

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
