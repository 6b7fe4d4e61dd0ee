"""xpcnn.training.executors' compiled steps (jax_jit.py, cuda_graph.py): the compiled step equals the
eager step (lr changes, momentum, Adam), resumes bitwise, reads nothing back from the device, and plugs
into the Trainer and the CLI."""

import dataclasses

import numpy as np
import pytest
from graph_stand_in import EagerGraphStandIn
from helpers import interrupt_and_resume, refuse_host_reads

from xpcnn import data, resolve
from xpcnn.backends import BackendError
from xpcnn.training import PRESETS, Trainer
from xpcnn.training.executors import JaxJitStep, TorchGraphStep, WholeBatchStep, compiled_executor

TRAIN = data.load_embedded().train.take(230)  # 50-image batches: four full ones and a partial one of 30


def config(optimizer, **changes):
    lr = 0.01 if optimizer == "adam" else 0.05
    return dataclasses.replace(PRESETS["default"], dtype="float64", epochs=3, batch_size=50, optimizer=optimizer,
                               lr=lr, lr_decay=0.5, **changes)


def train(cfg, backend, executor=None):
    """A run with ``executor``, by default the eager whole-batch step (what the compiled steps equal)."""
    with Trainer(cfg, backend, executor=executor or WholeBatchStep()) as trainer:
        trainer.fit(TRAIN)
    return trainer


def assert_same_run(compiled, eager, rtol):
    for name, value in eager.model.state_dict().items():
        np.testing.assert_allclose(compiled.model.state_dict()[name], value, rtol=rtol, atol=rtol * 1e-3, err_msg=name)
    for name, value in eager.optimizer.state_dict().items():
        np.testing.assert_allclose(compiled.optimizer.state_dict()[name], value, rtol=rtol, atol=rtol * 1e-3,
                                   err_msg=name)
    np.testing.assert_allclose(compiled.state.step_losses, eager.state.step_losses, rtol=rtol)


@pytest.fixture
def jax_backend():
    pytest.importorskip("jax")
    return resolve("jax", "cpu")


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_jit_step_equals_the_eager_step(jax_backend, optimizer):
    """Three epochs with the learning rate halved each epoch (a frozen lr would show at once),
    momentum's first step and Adam's bias corrections: float64 to 1e-12."""
    compiled = train(config(optimizer), jax_backend, JaxJitStep())
    eager = train(config(optimizer), jax_backend)
    assert_same_run(compiled, eager, rtol=1e-12)
    # traced once per (slot structure, batch shape): first step, full batches, the partial batch
    assert compiled.executor.traces == (2 if optimizer == "sgd" else 3)
    assert compiled.optimizer.steps == eager.optimizer.steps == 15
    assert all(not layer.grads for layer in compiled.model.layers)  # no tracer left behind


def test_jit_step_float32_stays_float32(jax_backend):
    """Adam's step count never enters the trace, so nothing promotes to float64."""
    trainer = train(dataclasses.replace(config("adam"), dtype="float32", epochs=1), jax_backend, JaxJitStep())
    assert {str(v.dtype) for v in trainer.model.params.values()} == {"float32"}
    assert {str(v.dtype) for slots in trainer.optimizer.state.values() for v in slots.values()} == {"float32"}


HOST_READS = ("__array__", "__bool__", "__float__", "__index__", "__int__", "item", "tolist", "__dlpack__")


def test_jit_steps_read_nothing_back_from_the_device(jax_backend, monkeypatch):
    """The JAX trace proves it: the compiled step's program has no callback to the host, and
    replaying it (with the Python around it) touches no way an array reaches the host.  (On a CPU,
    JAX's transfer guard has nothing to guard: the arrays are in host memory already.)"""
    import jax

    cfg = dataclasses.replace(config("momentum"), epochs=1)
    with Trainer(cfg, jax_backend, executor=JaxJitStep()) as trainer:
        executor = trainer.executor
        batches = [executor.to_device(TRAIN.images[i:i + 50], TRAIN.labels[i:i + 50].astype(np.int64))
                   for i in range(0, 150, 50)]
        executor.step(batches[0])  # the first step and the next are traced
        executor.step(batches[1])
        params, slots = executor._inputs()
        program = jax.make_jaxpr(executor.compiled)(params, slots, trainer.optimizer.scalars(), *batches[2])
        primitives = {str(eqn.primitive) for eqn in program.jaxpr.eqns}
        assert not {p for p in primitives if "callback" in p or "print" in p}, primitives
        array_type = type(batches[0][0])

        with monkeypatch.context() as patch:
            refuse_host_reads(patch, array_type, HOST_READS, "a compiled step")
            losses = [executor.step(batch) for batch in batches]
            with pytest.raises(AssertionError, match="device -> host read"):
                float(losses[0])  # the patch does catch a read
    assert all(np.isfinite(float(loss)) for loss in losses)


def test_jit_run_resumes_bitwise(jax_backend, tmp_path):
    cfg = config("momentum")
    straight = train(cfg, jax_backend, JaxJitStep())

    _, resumed = interrupt_and_resume(cfg, jax_backend, JaxJitStep, TRAIN, tmp_path / "c.npz", epoch=2, step=2)
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value, err_msg=name)
    assert resumed.state.step_losses == straight.state.step_losses


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_graph_step_bookkeeping_on_the_cpu(optimizer):
    """TorchGraphStep with an eager stand-in for the CUDA graph: warm-up steps, capture, replays on
    the static buffers, the partial batch run eagerly and adopted -- bit for bit the eager run."""
    pytest.importorskip("torch")
    backend = resolve("torch", "cpu")
    graphed = train(config(optimizer), backend, TorchGraphStep(capture=EagerGraphStandIn()))
    eager = train(config(optimizer), backend)
    assert_same_run(graphed, eager, rtol=0)
    # epoch 1: three eager steps (then capture), one replay, the partial batch eager; then 4 + 1 twice
    assert graphed.executor.replays == 9 and graphed.executor.eager_steps == 6
    static = graphed.executor.static["params"]
    assert all(value is static[name] for name, value in graphed.model.named_parameters())


def test_compiled_executor_names_what_it_cannot_compile():
    with pytest.raises(BackendError, match="numpy:cpu has no compiled executor"):
        compiled_executor(resolve("numpy"))
    with pytest.raises(BackendError, match="JaxJitStep compiles JAX steps"):
        Trainer(config("sgd"), resolve("numpy"), executor=JaxJitStep())


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_cuda_graph_step_equals_the_eager_step(torch_cuda, optimizer):
    graphed = train(config(optimizer), torch_cuda, TorchGraphStep())
    eager = train(config(optimizer), torch_cuda)
    assert_same_run(graphed, eager, rtol=1e-12)
    assert graphed.executor.replays == 9


@pytest.mark.gpu
def test_cuda_graph_replays_never_synchronise(torch_cuda):
    import torch

    with Trainer(config("momentum"), torch_cuda, executor=TorchGraphStep()) as trainer:
        batches = [trainer.executor.to_device(TRAIN.images[i:i + 50], TRAIN.labels[i:i + 50].astype(np.int64))
                   for i in range(0, 200, 50)]
        for batch in batches:  # warm-up and capture
            trainer.executor.step(batch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = [trainer.executor.step(batch) for batch in batches]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(np.isfinite(float(loss)) for loss in losses)


@pytest.mark.gpu
def test_jit_step_on_a_gpu():
    backend = pytest.importorskip("jax") and None
    try:
        backend = resolve("jax", "cuda")
    except BackendError as exc:
        pytest.skip(str(exc))
    assert_same_run(train(config("adam"), backend, JaxJitStep()), train(config("adam"), backend), rtol=1e-12)
