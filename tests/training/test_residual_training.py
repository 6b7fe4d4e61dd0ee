"""Residual networks through every step executor: the join's gradient added up over shares
(``--threads 2``, SplitStep) is the whole-batch step's up to rounding; jax.jit's compiled step is the
eager one to 1e-12 in float64; 2 MPI ranks are bitwise ``--threads 2``; a checkpointed and resumed
run (BatchNorm's running statistics and Dropout's noise inside the blocks) ends bitwise where an
uninterrupted one does."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import interrupt_and_resume

from xpcnn import data, resolve
from xpcnn.cli import train_main
from xpcnn.training import PRESETS, SplitStep, Trainer, WholeBatchStep

# No BatchNorm (shares cannot split it); a Dropout inside the first block (its noise sliced per share)
SPEC = ("conv4k3s2-relu-res(conv4k3p1-relu-dropout0.25-conv4k3p1)-relu-res(conv8k3s2p1-relu-conv8k3p1|conv8k1s2)"
        "-gap-dense")
# With BatchNorm inside a block and in the projection: buffers through the compiled step and checkpoints
SPEC_BN = ("conv4k3s2-bn-relu-res(conv4k3p1-bn-relu-dropout0.25-conv4k3p1-bn)-relu-res(conv8k3s2p1|conv8k1s2-bn)"
           "-gap-dense")
TRAIN = data.load_embedded().train.take(130)  # batches of 50: two full ones and one of 30


def config(spec: str, **changes: object) -> object:
    return dataclasses.replace(PRESETS["default"], **{"model": spec, "dtype": "float64", "epochs": 2,
                                                      "batch_size": 50, "lr": 0.05, **changes})


def train(cfg: object, backend: object, executor: object = None) -> Trainer:
    with Trainer(cfg, backend, executor=executor) as trainer:
        trainer.fit(TRAIN)
    return trainer


def assert_same_run(a: Trainer, b: Trainer, rtol: float) -> None:
    left, right = a.model.state_dict(), b.model.state_dict()
    assert left.keys() == right.keys() and any(".body." in name for name in left)
    for name, value in left.items():
        np.testing.assert_allclose(value, right[name], rtol=rtol, atol=rtol * 1e-3, err_msg=name)
    np.testing.assert_allclose(a.state.step_losses, b.state.step_losses, rtol=rtol)


def test_threads_equal_the_whole_batch_step():
    numpy = resolve("numpy")
    plain = train(config(SPEC), numpy, WholeBatchStep())
    split = train(config(SPEC), numpy, SplitStep(2))
    assert_same_run(split, plain, rtol=1e-11)
    again = train(config(SPEC), numpy, SplitStep(2))
    for name, value in split.model.state_dict().items():  # and the same bits every run
        np.testing.assert_array_equal(again.model.state_dict()[name], value, err_msg=name)


def test_threads_synchronise_batch_norm_inside_a_block():
    """BatchNorm inside a block, its statistics exchanged between the shares: the whole-batch run."""
    spec = "conv4k3s2-relu-res(conv4k3p1-bn-relu)-gap-dense"
    plain = train(config(spec), resolve("numpy"), WholeBatchStep())
    split = train(config(spec), resolve("numpy"), SplitStep(2))
    assert_same_run(split, plain, rtol=1e-10)


def test_jit_equals_eager():
    """One block with BatchNorm in both paths and a Dropout in the body (buffers and noise are the
    compiled step's inputs), one epoch of two equal batches (eager JAX's first calls cost seconds)."""
    pytest.importorskip("jax")
    from xpcnn.training.executors import JaxJitStep

    jax = resolve("jax", "cpu")
    cfg = config("conv4k3s2-bn-relu-res(conv4k3p1-bn-relu-dropout0.25-conv4k3p1-bn|conv4k1-bn)-gap-dense",
                 optimizer="adam", lr=0.01, epochs=1)
    with Trainer(cfg, jax, executor=JaxJitStep()) as compiled:
        compiled.fit(TRAIN.take(100))
    with Trainer(cfg, jax, executor=WholeBatchStep()) as eager:
        eager.fit(TRAIN.take(100))
    assert_same_run(compiled, eager, rtol=1e-12)
    assert any(".shortcut.1.running_var" in name for name in compiled.model.state_dict())
    assert all(not layer.grads for layer in compiled.model.layers)  # no tracer left behind


def test_a_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(tmp_path):
    numpy = resolve("numpy")
    cfg = config(SPEC_BN, optimizer="momentum")
    whole = train(cfg, numpy, WholeBatchStep())
    _, resumed = interrupt_and_resume(cfg, numpy, WholeBatchStep, TRAIN, tmp_path / "mid.npz", 1, 2)
    for name, value in whole.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value, err_msg=name)
    assert resumed.state.step_losses == whole.state.step_losses


# -- MPI: how tests/distributed/test_distributed.py runs jobs, each a subprocess with timeouts ---------------

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_two_ranks_bitwise_equal_threads_2(mpi, tmp_path):
    dataset = data.load_embedded()
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=dataset.train.images[:200], y_train=dataset.train.labels[:200],
             x_test=dataset.train.images[200:300], y_test=dataset.train.labels[200:300])
    common = ["--data", str(path), "--model", SPEC, "--epochs", "1", "--batch-size", "32", "--dtype", "float64",
              "--quiet"]
    # pieces of 16 images cut every batch here (32, and the last one of 20) as two ranks do
    assert train_main([*common, "--chunk", "16", "--out", str(tmp_path / "threads")]) == 0
    env = dict(os.environ, MPIEXEC_TIMEOUT="60", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    process = subprocess.Popen([mpi, "-n", "2", sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                                "--distributed", *common, "--out", str(tmp_path / "ranks")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"mpiexec did not end within 90s\n{out}\n{err}")
    assert process.returncode == 0, out + err

    def arrays(folder: str) -> dict:
        with np.load(os.path.join(folder, "checkpoint.npz")) as archive:
            return {k: archive[k] for k in archive.files if k != "meta"}

    threads, ranks = arrays(str(tmp_path / "threads")), arrays(str(tmp_path / "ranks"))
    assert threads.keys() == ranks.keys() and "param/2.body.0.weight" in threads
    for key, value in threads.items():
        np.testing.assert_array_equal(ranks[key], value, err_msg=key)


@pytest.mark.parametrize("preset", ["resnet20", "mobilenet"])
def test_the_presets_train_and_checkpoint(preset, tmp_path):
    """A step of each preset's recipe (on 16 digits: the networks take any C x H x W) and its
    training checkpoint, read back and checked field by field (xpcnn.training.snapshot)."""
    from xpcnn.training import Checkpointer, snapshot

    cfg = dataclasses.replace(PRESETS[preset], image_shape=(1, 28, 28), epochs=1, batch_size=8, dtype="float64")
    with Trainer(cfg, resolve("numpy"), extensions=[Checkpointer(tmp_path / "run.npz")]) as trainer:
        trainer.fit(TRAIN.take(16))
    assert trainer.state.global_step == 2 and np.isfinite(trainer.state.step_losses).all()
    saved = snapshot.read(tmp_path / "run.npz")
    assert saved.architecture == json.loads(json.dumps(trainer.model.config()))
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(saved.model_state[name], value, err_msg=name)
