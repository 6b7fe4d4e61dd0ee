"""xpcnn.training.run: a whole run from Python without argparse, with the checks of ``xpcnn train``
(usage errors naming the option); compiled on JAX; data-parallel over MPI ranks."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xpcnn.training.run import RunOptions, Unavailable, UsageError, check_options, train

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


FEW = {"epochs": 1, "batch_size": 50, "dtype": "float64", "train_count": 300}  # a few hundred embedded digits


def options(out, **changes) -> RunOptions:
    return RunOptions(**{"out": str(out), "quiet": True, **changes, "settings": {**FEW, **changes.get("settings", {})}})


def saved(folder):
    with np.load(os.path.join(folder, "checkpoint.npz")) as archive:
        arrays = {key: archive[key] for key in archive.files if key != "meta"}
    with open(os.path.join(folder, "metrics.json")) as handle:
        return arrays, json.load(handle)


def assert_same_files(a, b):
    (arrays_a, metrics_a), (arrays_b, metrics_b) = saved(a), saved(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)
    assert metrics_a["step_losses"] == metrics_b["step_losses"] and metrics_a["final"] == metrics_b["final"]


def test_a_whole_run_from_python_without_argparse(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patched:  # argparse is the command line's alone
        patched.setattr(argparse, "ArgumentParser", None)
        outcome = train(options(tmp_path / "lib", settings={"lr": 0.1}))
    assert outcome.status == "done" and outcome.error is None
    assert 0 <= outcome.results["final"]["accuracy"] <= 1 and outcome.results["final"]["split"] == "validation"
    out = capsys.readouterr().out
    assert "300 training / 500 validation images (embedded)" in out and "epoch   1/1" in out
    arrays, metrics = saved(tmp_path / "lib")
    assert metrics["config"]["train_count"] == 300 and metrics["config"]["lr"] == 0.1 and "param/0.weight" in arrays
    assert metrics["final"] == outcome.results["final"] and len(metrics["step_losses"]) == 6


@pytest.mark.parametrize("changes,option,message", [
    (dict(settings={"lr": -1}), "--lr", "--lr must be a positive number, got -1.0"),
    (dict(threads=0), "--threads", "--threads must be >= 1, got 0"),
    (dict(rtol=-1.0), "--rtol", "--rtol must be a non-negative number, got -1.0"),
    (dict(settings={"optimizer": "adam", "momentum": 0.5}), "--momentum", "--momentum is for --optimizer momentum"),
    (dict(settings={"learning_rate": 0.1}), "settings", "'learning_rate' not configuration field(s)"),
    (dict(preset="resnet"), "--preset",
     "--preset must be one of default, article, lenet5, vgg, resnet20, mobilenet, got 'resnet'"),
    (dict(data="/nonexistent/mnist"), "--data", "--data: /nonexistent/mnist: no such file or folder"),
    (dict(settings={"model": "flatten-dense5"}), "--model", "the task needs 10 output(s)"),
    (dict(reduction="gather"), "--reduction", "--reduction goes with --distributed"),
])
def test_problems_before_training_raise_usage_errors_naming_the_option(tmp_path, changes, option, message):
    with pytest.raises(UsageError) as info:
        train(options(tmp_path / "out", **changes))
    assert info.value.option == option and message in str(info.value)
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_what_the_machine_lacks_is_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="numpy runs on the cpu only"):
        train(options(tmp_path, backend="numpy", device="cuda"))
    with pytest.raises(Unavailable, match="--compile: numpy:cpu has no compiled executor here") as info:
        train(options(tmp_path, compile=True))
    assert info.value.option == "--compile"


def test_a_compiled_run_on_jax_from_python_is_the_eager_run(tmp_path, capsys):
    pytest.importorskip("jax")
    assert train(options(tmp_path / "compiled", backend="jax")).status == "done"  # JAX compiles by default
    assert "steps compiled by jax.jit" in capsys.readouterr().out
    assert train(options(tmp_path / "eager", backend="jax", compile=False)).status == "done"
    assert "jax.jit" not in capsys.readouterr().out
    (compiled, compiled_metrics), (eager, eager_metrics) = saved(tmp_path / "compiled"), saved(tmp_path / "eager")
    for key, value in eager.items():
        np.testing.assert_allclose(compiled[key], value, rtol=1e-12, atol=1e-15, err_msg=key)
    np.testing.assert_allclose(compiled_metrics["step_losses"], eager_metrics["step_losses"], rtol=1e-12)


RANKS = """
import sys
from xpcnn.distributed import run_job
from xpcnn.training.run import RunOptions, UsageError, train

def main(job):
    common = dict(settings={settings!r}, quiet=True)
    try:
        train(RunOptions(**common, threads=2, out={out!r}), job=job)
    except UsageError as exc:  # every rank refuses alike
        print(f"rank {{job.rank}}: {{exc.option}}: {{exc}}", flush=True)
    return int(train(RunOptions(**common, out={out!r}), job=job).status != "done")

sys.exit(run_job(main))
"""


def test_data_parallel_training_from_python_is_the_threads_run(tmp_path, mpi):
    assert train(options(tmp_path / "threads", threads=2)).status == "done"
    script = tmp_path / "ranks.py"
    script.write_text(RANKS.format(settings=FEW, out=str(tmp_path / "ranks")))
    env = dict(os.environ, PYTHONPATH=ROOT, MPIEXEC_TIMEOUT="120", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    child = subprocess.run([mpi, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                           env=env, timeout=180)
    assert child.returncode == 0, child.stdout + child.stderr
    for rank in range(2):
        assert f"rank {rank}: --threads: --threads with --distributed: ranks take the cores" in child.stdout
    assert child.stdout.count("epoch   1/1") == 1 and "data-parallel over 2 MPI ranks" in child.stdout
    assert_same_files(tmp_path / "ranks", tmp_path / "threads")


def test_a_data_parallel_rank_checks_out_only_on_rank_0(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")

    class Rank:
        def __init__(self, rank):
            self.is_main = rank == 0

    with pytest.raises(UsageError, match="is not a folder"):
        check_options(RunOptions(out=str(blocker)), Rank(0))
    check_options(RunOptions(out=str(blocker)), Rank(1))
