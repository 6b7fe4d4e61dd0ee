"""--distributed: data-parallel training over MPI ranks (xpcnn.distributed).

pytest itself never runs under mpiexec (one failing rank would hang the others): each test starts
``mpiexec -n N python ...`` as a subprocess in its own session, with hydra's MPIEXEC_TIMEOUT and a
hard timeout that kills mpiexec (whose proxy then kills the ranks) as backstops.

Without mpi4py or mpiexec these tests skip, unless XPCNN_REQUIRE_MPI=1 (CI sets it), which turns
that into a failure.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from xpcnn import data
from xpcnn.cli import train_main
from xpcnn.training import run as run_module
from xpcnn.training.executors import SplitStep
from xpcnn.training.snapshot import read as read_checkpoint

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")
DRIVER = os.path.join(ROOT, "tests", "distributed", "distributed_driver.py")


def _env(tag=None, blas_threads=1):
    env = dict(os.environ, MPIEXEC_TIMEOUT="60", OPENBLAS_NUM_THREADS=str(blas_threads),
               OMP_NUM_THREADS=str(blas_threads), PYTHONPATH=ROOT)
    if tag:
        env["XPCNN_TEST_TAG"] = tag  # marks this job's processes, to find a rank by its pid
    return env


def launch(mpiexec, ranks, args, script=SCRIPT, tag=None, mpmd=None, blas_threads=1):
    """Start ``mpiexec -n ranks python script args...`` (or an MPMD line from ``mpmd``, a list of
    (ranks, args) pairs) in its own session, BLAS allowed ``blas_threads`` threads."""
    if mpmd is None:
        mpmd = [(ranks, args)]
    command = [mpiexec]
    for index, (count, extra) in enumerate(mpmd):
        command += ([":"] if index else []) + ["-n", str(count), sys.executable, script, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tag, blas_threads), start_new_session=True)


def finish(process, timeout=60):
    """(exit status, stdout, stderr); kills the whole job and fails if it outlives ``timeout``."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"mpiexec did not end within {timeout}s\n{out}\n{err}")
    return process.returncode, out, err


def run(mpiexec, ranks, args, **kwargs):
    return finish(launch(mpiexec, ranks, args, **kwargs))


def rank_pid(tag, rank, timeout=20):
    """The pid of rank ``rank`` of the job marked ``tag`` (read from /proc)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
            except OSError:
                continue
            if env.get(b"XPCNN_TEST_TAG") == tag.encode() and env.get(b"PMI_RANK") == str(rank).encode():
                return int(entry)
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} of job {tag} not found")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """360 training / 40 validation images, and a test split of 1,200 (three evaluation batches of
    500: the ranks share them unevenly)."""
    dataset = data.load_embedded()
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, x_train=dataset.train.images[:400], y_train=dataset.train.labels[:400],
             x_test=dataset.train.images[400:1600], y_test=dataset.train.labels[400:1600])
    return str(path)


COMMON = ["--epochs", "2", "--batch-size", "32", "--dtype", "float64", "--quiet"]


def flags(small, out, *extra):
    return ["--data", small, "--eval-data", small, *COMMON, "--out", str(out), *extra]


def dflags(small, out, *extra):
    return ["--distributed", *flags(small, out, *extra)]


def arrays(folder):
    with np.load(os.path.join(folder, "checkpoint.npz")) as archive:
        return {k: archive[k] for k in archive.files if k != "meta"}


def metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as handle:
        return json.load(handle)


def assert_same_run(a, b):
    """Bitwise: every parameter and optimizer slot, every step loss, every epoch's validation
    metrics, and the final (sharded) test evaluation."""
    left, right = arrays(a), arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)
    ma, mb = metrics(a), metrics(b)
    assert ma["step_losses"] == mb["step_losses"]
    assert [(h["loss"], h["val_loss"], h["val_accuracy"]) for h in ma["history"]] == \
           [(h["loss"], h["val_loss"], h["val_accuracy"]) for h in mb["history"]]
    assert ma["final"] == mb["final"]


def shares_run(args, shares):
    """A single-process run with every batch cut into ``shares`` shares (``SplitStep(shares)``, the
    cut of ``shares`` MPI ranks), through the command line's own assembly."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "choose_executor", lambda options, backend, compare=False: SplitStep(shares))
        return train_main(args)


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory):
    """Single-process runs: plain (whole batches), 2 shares, 3 shares."""
    folder = tmp_path_factory.mktemp("reference")
    assert train_main(flags(small, folder / "plain", "--chunk", "32")) == 0
    for shares in (2, 3):
        assert shares_run(flags(small, folder / f"threads{shares}"), shares) == 0
    return folder


BN_MODEL = "conv4k3-bn-relu-maxpool2-conv6k3-bn-relu-flatten-dense16-bn-relu-dense"


def test_batch_norm_is_synchronised_over_ranks(mpi, small, tmp_path):
    """BatchNorm's statistics exchanged between the ranks: 2 ranks give bitwise the 2-share run
    (whose statistics are the whole batch's) and the whole-batch run up to rounding, running
    statistics included."""
    extra = ["--model", BN_MODEL, "--epochs", "1"]
    assert shares_run(flags(small, tmp_path / "shares", *extra), 2) == 0
    assert train_main(flags(small, tmp_path / "plain", *extra, "--chunk", "32")) == 0
    code, out, err = run(mpi, 2, dflags(small, tmp_path / "d", *extra))
    assert code == 0, out + err
    assert_same_run(tmp_path / "d", tmp_path / "shares")
    plain = arrays(tmp_path / "plain")
    assert any("running_var" in key for key in plain)
    for key, value in arrays(tmp_path / "d").items():
        np.testing.assert_allclose(value, plain[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("ranks", [2, 3])
def test_n_ranks_bitwise_equal_threads_n_and_close_to_plain(mpi, small, reference, tmp_path, ranks):
    code, out, err = run(mpi, ranks, dflags(small, tmp_path / "d"))
    assert code == 0, out + err
    assert out.count("epoch   1/2") == 1 and out.count("final test") == 1  # rank 0 alone prints
    assert f"data-parallel over {ranks} MPI ranks" in out
    assert_same_run(tmp_path / "d", reference / f"threads{ranks}")
    plain = arrays(reference / "plain")
    for key, value in arrays(tmp_path / "d").items():
        np.testing.assert_allclose(value, plain[key], rtol=1e-12, atol=1e-15, err_msg=key)
    np.testing.assert_allclose(metrics(tmp_path / "d")["step_losses"], metrics(reference / "plain")["step_losses"],
                               rtol=1e-12)
    # The test split is 3 batches of 500, 400: sharded unevenly, yet the single process's metrics.
    assert metrics(tmp_path / "d")["final"]["accuracy"] == metrics(reference / f"threads{ranks}")["final"]["accuracy"]


def test_allreduce_reduction_is_the_plain_run_up_to_rounding(mpi, small, reference, tmp_path):
    code, out, err = run(mpi, 2, dflags(small, tmp_path / "a", "--reduction", "allreduce"))
    assert code == 0, out + err
    assert "data-parallel over 2 MPI ranks, Allreduce" in out
    plain = arrays(reference / "plain")
    for key, value in arrays(tmp_path / "a").items():
        np.testing.assert_allclose(value, plain[key], rtol=1e-12, atol=1e-15, err_msg=key)


def test_resume_with_any_rank_count_without_a_shared_filesystem(mpi, small, reference, tmp_path):
    first = tmp_path / "first"
    code, out, err = run(mpi, 2, dflags(small, first, "--epochs", "1"))
    assert code == 0, out + err
    # Same rank count: bitwise the uninterrupted 2-rank (= --threads 2) run.
    shutil.copytree(first, tmp_path / "same")
    checkpoint = str(tmp_path / "same" / "checkpoint.npz")
    code, out, err = run(mpi, 2, dflags(small, tmp_path / "same", "--resume", checkpoint))
    assert code == 0, out + err
    assert "resuming at epoch 2" in out
    assert_same_run(tmp_path / "same", reference / "threads2")
    # One rank, and three ranks of which only rank 0 sees the checkpoint (a relative path from its
    # working folder; ranks 1 and 2 run elsewhere): the same run up to float rounding.
    (tmp_path / "elsewhere").mkdir()
    for ranks in (1, 3):
        folder = tmp_path / f"to{ranks}"
        shutil.copytree(first, folder)
        args = [sys.executable, SCRIPT, *dflags(small, folder, "--resume", "checkpoint.npz")]
        command = [mpi, "-n", "1", "-wdir", str(folder), *args]
        if ranks == 3:
            command += [":", "-n", "2", "-wdir", str(tmp_path / "elsewhere"), *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                   start_new_session=True)
        code, out, err = finish(process)
        assert code == 0, out + err
        assert metrics(folder)["history"][-1]["epoch"] == 2
        expected = arrays(reference / "threads2")
        for key, value in arrays(folder).items():
            np.testing.assert_allclose(value, expected[key], rtol=1e-10, atol=1e-13, err_msg=f"{ranks} ranks {key}")
    assert not os.listdir(tmp_path / "elsewhere")


@pytest.mark.parametrize("target,signum", [("mpiexec", signal.SIGTERM), ("rank 1", signal.SIGTERM),
                                           ("mpiexec", signal.SIGINT)])
def test_a_signal_stops_every_rank_at_one_step_with_a_resumable_checkpoint(mpi, small, tmp_path, target, signum):
    tag = uuid.uuid4().hex
    out_dir = tmp_path / "run"
    args = ["--distributed", "--data", small, "--epochs", "40", "--batch-size", "20", "--dtype", "float64",
            "--quiet", "--out", str(out_dir)]
    process = launch(mpi, 2, args, tag=tag)
    line = process.stdout.readline()
    while not line.startswith("epoch   2/40"):
        assert line, process.stderr.read()
        line = process.stdout.readline()
    os.kill(process.pid if target == "mpiexec" else rank_pid(tag, 1), signum)
    code, out, err = finish(process, timeout=30)
    assert code == 128 + signum, out + err
    assert err.count(f"{signum.name}: interrupted at epoch") == 1 and "Traceback" not in err, err
    saved = read_checkpoint(str(out_dir / "checkpoint.npz"))
    assert saved.epoch >= 2
    code, out, err = run(mpi, 2, ["--resume", str(out_dir / "checkpoint.npz"), *args[:3], "--epochs",
                                  str(saved.epoch + 1), "--quiet", "--out", str(out_dir)])
    assert code == 0, out + err
    assert metrics(out_dir)["history"][-1]["epoch"] == saved.epoch + 1


def test_killed_rank_ends_the_job_and_the_checkpoint_stays_intact(mpi, small, tmp_path):
    tag = uuid.uuid4().hex
    args = ["--distributed", "--data", small, "--epochs", "40", "--batch-size", "20", "--quiet", "--out", str(tmp_path)]
    process = launch(mpi, 2, args, tag=tag)
    line = process.stdout.readline()
    while not line.startswith("epoch   2/40"):
        assert line, process.stderr.read()
        line = process.stdout.readline()
    os.kill(rank_pid(tag, 1), signal.SIGKILL)
    killed = time.time()
    code, out, err = finish(process, timeout=30)
    assert code != 0 and time.time() - killed < 10, (code, err)
    assert read_checkpoint(str(tmp_path / "checkpoint.npz")).epoch >= 1  # whole, its digest checked


def test_rank_that_raises_aborts_the_whole_job(mpi, small):
    started = time.time()
    code, out, err = run(mpi, 2, ["raise", small], script=DRIVER)
    assert code == 1 and time.time() - started < 30, (code, out, err)
    assert "RuntimeError: rank 1 failed on purpose after epoch 1" in err


@pytest.mark.parametrize("kwargs,message", [
    (dict(reduction="sum"), "reduction must be one of gather, allreduce, nccl, got 'sum'"),
    (dict(chunk=0), "chunk must be an integer >= 1, got 0"),
    (dict(shared_memory="yes"), "shared_memory is True, False or None, and only for the 'gather' reduction (got 'yes'"),
    (dict(reduction="allreduce", shared_memory=True), "only for the 'gather' reduction (got True with 'allreduce')")])
def test_data_parallel_step_names_a_bad_argument_before_touching_mpi(kwargs, message):
    from xpcnn.distributed import DataParallelStep

    with pytest.raises(ValueError, match=re.escape(message)):
        DataParallelStep(**kwargs)


@pytest.mark.parametrize("ranks", [2, 3])
def test_shared_memory_and_allgather_meet_in_the_same_sum_bit_for_bit(mpi, small, tmp_path, ranks):
    """Ranks on one machine meet in a shared-memory window (the default there); across machines
    they Allgather.  Both add the same rows in the same order."""
    saved = {}
    for mode in ("shared", "allgather"):
        code, out, err = run(mpi, ranks, [mode, small, str(tmp_path / f"{mode}.npz")], script=DRIVER)
        assert code == 0, out + err
        assert ("shared memory" in out) == (mode == "shared"), out
        saved[mode] = np.load(tmp_path / f"{mode}.npz")
    assert sorted(saved["shared"].files) == sorted(saved["allgather"].files)
    for name in saved["shared"].files:
        np.testing.assert_array_equal(saved["shared"][name], saved["allgather"][name], err_msg=name)


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_rank_runs_blas_on_one_thread_even_alone(mpi, small, ranks):
    """One core per rank (launch one per core): a lone rank too, so that one rank is the measure of
    what each of many does (bench.py's scaling efficiency)."""
    code, out, err = run(mpi, ranks, ["blas", small], script=DRIVER, blas_threads=2)
    assert code == 0, out + err
    for rank in range(ranks):
        assert f"rank {rank}: BLAS threads [2] outside a step, [1] inside" in out, out


def test_an_empty_batch_is_refused_in_one_line_on_every_rank(mpi, small):
    """Not a sum of nothing (zero gradients, an optimizer step all the same), nor an IndexError
    in the exchange."""
    code, out, err = run(mpi, 2, ["empty", small], script=DRIVER)
    assert code == 0, out + err
    for rank in range(2):
        assert (f"rank {rank}: DataParallelStep.to_device: a training step needs at least one image, got an empty "
                "batch (images of shape (0, 1, 28, 28))") in out, out


def test_ranks_that_disagree_are_named_and_exit_2(mpi, small, tmp_path):
    code, out, err = run(mpi, 2, ["params", small], script=DRIVER)
    assert code == 2, out + err
    assert "rank 1 has different parameters or training state than rank 0" in out
    base = ["--data", small, "--epochs", "1", "--quiet", "--out", str(tmp_path)]
    code, out, err = run(mpi, 0, [], mpmd=[(2, [*base, "--distributed"]), (1, [*base, "--distributed", "--seed", "1"])])
    assert code == 2, out + err
    assert err.strip() == ("train.py: error: the ranks disagree: rank 2 has different configuration than rank 0; "
                           "rank 2 has different parameters or training state than rank 0 (launch every rank with "
                           "the same flags, data and xpcnn version)"), err


def test_usage_errors_are_one_line_from_rank_0(mpi, small, tmp_path):
    for extra, message in ((["--threads", "2"], "--threads with --distributed: ranks take the cores"),
                           (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
                           (["--reduction", "nccl"], "reduction 'nccl' needs cupy or torch:cuda ranks"),
                           # rank 0 alone checks --out: the others must not wait for it in a collective
                           (["--out", str(tmp_path / "file")],
                            f"rank 0: --out: '{tmp_path / 'file'}' is not a folder")):
        (tmp_path / "file").write_text("")
        code, out, err = run(mpi, 2, ["--distributed", "--data", small, "--out", str(tmp_path), *extra])
        assert code == 2, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0], err


def test_divergence_stops_every_rank_at_the_same_step(mpi, small, tmp_path):
    code, out, err = run(mpi, 2, ["--distributed", "--data", small, "--epochs", "2", "--lr", "1e30",
                                  "--optimizer", "sgd",
                                  "--quiet", "--out", str(tmp_path)])
    assert code == 3, out + err
    assert err.count("training diverged: loss became") == 1, err


NO_MPI4PY = """
import sys
sys.modules["mpi4py"] = None  # as if it were not installed
sys.path.insert(0, {root!r})
import xpcnn, xpcnn.training
from xpcnn.cli import train_main
from xpcnn.training import run as run_module
from xpcnn.training.executors import SplitStep
assert train_main(["--data", {data!r}, "--epochs", "1", "--quiet", "--out", {out!r}]) == 0
print("trained without mpi4py", flush=True)
raise SystemExit(train_main(["--distributed", "--data", {data!r}, "--out", {out!r}]))
"""


def test_xpcnn_trains_without_mpi4py_and_distributed_names_the_extra(small, tmp_path):
    child = subprocess.run([sys.executable, "-c", NO_MPI4PY.format(root=ROOT, data=small, out=str(tmp_path))],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 2, child.stdout + child.stderr
    assert "trained without mpi4py" in child.stdout
    assert child.stderr.count("\n") == 1 and "pip install 'xpcnn[mpi]'" in child.stderr, child.stderr


@pytest.mark.gpu
def test_nccl_reduction_equals_host_gather_on_gpus(mpi, small, tmp_path):
    """Two ranks on cuda:<local rank> (or sharing one GPU): NCCL's device sum in rank order is the
    host path's, bitwise.  Written without a GPU to run it on (docs/distributed.md)."""
    pytest.importorskip("cupy")
    base = ["--distributed", "--device", "cuda", "--data", small, "--eval-data", small, *COMMON]
    code, out, err = run(mpi, 2, [*base, "--out", str(tmp_path / "host")])
    assert code == 0, out + err
    code, out, err = run(mpi, 2, [*base, "--reduction", "nccl", "--out", str(tmp_path / "nccl")])
    assert code == 0, out + err
    assert_same_run(tmp_path / "nccl", tmp_path / "host")


def test_bench_rank_rows_time_the_ranks_and_compare_them(mpi, monkeypatch):
    import benchmark_ranks

    record = benchmark_ranks.run_ranks(2, "article", 200, 3, "float32", 2, None)  # a real 2-rank job
    assert record["ranks"] == 2 and record["epoch_s"] > 0 and record["comm_us_per_step"] > 0
    assert record["comm_bytes_per_step"] == 2 * 4 * (record["parameters"] + 1)  # float32, every rank's vector
    # one rank and PyTorch were timed round-robin with the ranks, in the same job
    assert len(record["times"]) == len(record["one_rank_times"]) == len(record["torch_times"]) == 2
    assert len(record["uncoupled_times"]) == 2  # and every rank trained its share on its own, at once
    assert record["one_rank_s"] > 0 and record["torch_cpu_s"] > 0 and record["uncoupled_s"] > 0
    fake = dict(record, epoch_s=0.25, one_rank_s=0.4, one_rank_times=[0.4], torch_cpu_s=0.3, images=4500,
                comm_us_per_step=50.0, steps_per_epoch=36, uncoupled_s=0.2)
    launched = []
    monkeypatch.setattr(benchmark_ranks, "run_ranks", lambda n, *args: launched.append(n) or dict(fake, ranks=n))
    result = {"workload": "bench", "batch": 128, "filters": 8, "dtype": "float32", "repeats": 1,
              "rows": [{"spec": "torch-native:cpu", "epoch_s": 0.6}]}  # the in-job PyTorch time counts, not this
    rows = benchmark_ranks.add_rank_rows(result, [2], 64)
    assert launched == [2] and [row["ranks"] for row in rows] == [1, 2]
    assert rows[0]["epoch_s"] == 0.4 and rows[0]["speed_vs_pytorch"] == pytest.approx(0.75)
    assert rows[1]["speed_vs_pytorch"] == pytest.approx(1.2) and rows[1]["speedup_vs_one_rank"] == pytest.approx(1.6)
    assert rows[1]["scaling_efficiency"] == pytest.approx(0.8) and rows[1]["images_per_s"] == pytest.approx(18000)
    lines = benchmark_ranks.format_rank_rows(result)
    assert "1.60x one rank (scaling efficiency 80%), gradient exchange 50 us" in lines[0]
    assert "of the epoch; one rank 0.4000 s, PyTorch CPU 0.3000 s)" in lines[0]
    assert rows[1]["uncoupled_speedup_vs_one_rank"] == pytest.approx(2.0) and rows[0]["uncoupled_s"] is None
    assert "uncoupled (each rank its share alone, no exchange) 0.2000 s, 2.00x one rank: coupling keeps 80%" in lines[1]
    assert "timed round-robin inside each mpiexec" in lines[2]


def test_dropout_runs_data_parallel_bitwise_like_threads_and_chunked_batch_norm_is_refused(mpi, small, tmp_path):
    """Each rank takes its share of the step's host-drawn dropout noise: 2 ranks are bitwise the
    2-share run.  BatchNorm with --chunk (pieces inside a rank's share, not synchronised over the
    ranks): a one-line exit 2."""
    model = ["--model", "conv4k5-relu-maxpool2-flatten-dense16-relu-dropout0.3-dense", "--epochs", "1"]
    assert shares_run(flags(small, tmp_path / "threads", *model), 2) == 0
    code, out, err = run(mpi, 2, dflags(small, tmp_path / "d", *model))
    assert code == 0, out + err
    assert_same_run(tmp_path / "d", tmp_path / "threads")
    code, out, err = run(mpi, 2, dflags(small, tmp_path / "bn", "--model", "conv4k5-bn-relu-flatten-dense",
                                        "--chunk", "8"))
    assert code == 2 and "DataParallelStep: layer 1 (BatchNorm2D) computes statistics over the whole batch" in err
    assert "Traceback" not in err
