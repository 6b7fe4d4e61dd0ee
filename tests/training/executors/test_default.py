"""xpcnn.training.executors.default: one default executor for the command line and the library --
every usable core on a CPU through a split fixed by the batch, whole batches on a GPU, compiled on
JAX -- and flags that cannot apply refused, never dropped."""

import numpy as np
import pytest

from xpcnn import data
from xpcnn.backends import resolve
from xpcnn.cli import train_main as main
from xpcnn.training import PRESETS, Trainer
from xpcnn.training.executors import (
    DEFAULT_CHUNK,
    MIN_SHARES,
    SplitStep,
    WholeBatchStep,
    default_executor,
    has_compiled_executor,
    usable_cores,
)


def test_a_cpu_backend_splits_by_the_batch_over_every_usable_core(cpu_backend):
    executor = default_executor(cpu_backend, None)
    if has_compiled_executor(cpu_backend) and cpu_backend.adapter.compiles_by_default:
        pytest.skip("compiled by default: test_jax_compiles_and_refuses_threads")
    assert isinstance(executor, SplitStep)
    assert (executor.threads, executor.chunk, executor.min_shares) == (usable_cores(), DEFAULT_CHUNK, MIN_SHARES)
    assert executor.shares(128) == [(0, 64), (64, 128)]  # pieces of 64 ...
    assert executor.shares(64) == [(0, 32), (32, 64)]  # ... and at least two, whatever the machine
    assert executor.shares(200) == [(0, 50), (50, 100), (100, 150), (150, 200)]
    assert executor.shares(1) == [(0, 1)]
    capped = default_executor(cpu_backend, None, threads=1, chunk=8)
    assert (capped.threads, capped.chunk) == (1, 8)
    assert capped.shares(20) == [(0, 6), (6, 13), (13, 20)]  # ceil(20 / 8) = 3 pieces, whatever the threads


def test_usable_cores_is_this_process_affinity():
    import os

    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1


@pytest.mark.parametrize("kwargs,message", [({"threads": 0}, "threads must be an integer >= 1 or None, got 0"),
                                            ({"chunk": True}, "chunk must be an integer >= 1 or None, got True")])
def test_bad_counts_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        default_executor(resolve("numpy"), None, **kwargs)


def test_jax_compiles_and_refuses_threads():
    jax = pytest.importorskip("jax") and resolve("jax")
    assert type(default_executor(jax, None)).__name__ == "JaxJitStep"
    with pytest.raises(ValueError, match="runs each step compiled, on whole batches: threads and chunk cannot apply"):
        default_executor(jax, None, threads=2)
    assert isinstance(default_executor(jax, None, threads=2, compile=False), SplitStep)


def test_the_trainer_and_the_command_line_pick_the_same_executor(cpu_backend):
    with Trainer(PRESETS["default"], cpu_backend) as trainer:
        assert trainer.executor.describe() == default_executor(cpu_backend, trainer.model).describe()
        assert type(trainer.executor) is type(default_executor(cpu_backend, trainer.model))
    if isinstance(default_executor(cpu_backend, None), SplitStep):
        with Trainer(PRESETS["default"], cpu_backend, threads=1, chunk=5) as trainer:
            assert trainer.executor.describe() == "pieces of at most 5 images, 1 thread"
    else:  # compiled: a flag that cannot apply is refused
        with pytest.raises(ValueError, match="threads and chunk cannot apply"):
            Trainer(PRESETS["default"], cpu_backend, threads=1, chunk=5)
    with pytest.raises(ValueError, match="threads and chunk choose the default executor"):
        Trainer(PRESETS["default"], cpu_backend, executor=WholeBatchStep(), threads=2)


def test_jax_with_threads_is_refused_on_the_command_line(capsys, tmp_path):
    pytest.importorskip("jax")
    with pytest.raises(SystemExit) as exit_:
        main(["--backend", "jax", "--threads", "2", "--out", str(tmp_path), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "jax runs each step compiled on whole batches by default: add --no-compile" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_the_default_command_header_names_the_split(capsys, tmp_path):
    dataset = data.load_embedded()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=dataset.train.images[:200], y_train=dataset.train.labels[:200],
             x_test=dataset.validation.images[:50], y_test=dataset.validation.labels[:50])
    assert main(["--data", str(path), "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (f"pieces of at most {DEFAULT_CHUNK} images (at least {MIN_SHARES}), {usable_cores()} thread"
            in capsys.readouterr().out)
