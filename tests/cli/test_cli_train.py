"""scripts/train.py: usage errors (exit 2), a real run, parity, interruption and resume."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from xpcnn import data
from xpcnn.cli import train_main as main

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "scripts", "train.py")


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A 400 + 100 image mnist.npz made from the embedded digits."""
    dataset = data.load_embedded()
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, x_train=dataset.train.images[:400], y_train=dataset.train.labels[:400],
             x_test=dataset.validation.images[:100], y_test=dataset.validation.labels[:100])
    return str(path)


def usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert err.startswith("usage: train.py") and last.startswith("train.py: error: ") and "Traceback" not in err, err
    return last


@pytest.mark.parametrize("argv,message", [
    (["--backend", "mxnet"], "argument --backend: invalid choice: 'mxnet'"),
    (["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
    (["--optimizer", "adam", "--momentum", "0.5"],
     "--momentum is for --optimizer momentum; this run's optimizer is adam"),
    (["--preset", "article", "--momentum", "0.5"],
     "--momentum is for --optimizer momentum; this run's optimizer is sgd"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--lr-decay", "1.5"], "--lr-decay must be in (0, 1], got 1.5"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "cuda", "--threads", "2"], "--threads splits each batch over CPU cores; drop it for a GPU"),
    (["--backend", "cupy", "--threads", "2"], "--threads splits each batch over CPU cores; drop it for a GPU"),
    (["--compare", "numpy,array_api_strict", "--threads", "2"], "--compare runs each backend on whole batches"),
    (["--compare", "numpy,array_api_strict", "--chunk", "8"], "drop --threads/--chunk"),
    (["--chunk", "0"], "--chunk must be >= 1, got 0"),
    (["--compile", "--threads", "2"], "--compile runs whole batches through the compiled step; drop --threads/--chunk"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--data", "/nonexistent/mnist"], "--data: /nonexistent/mnist: no such file or folder"),
    (["--compare", "numpy"], "--compare needs at least two backends"),
    (["--compare", "numpy,mxnet"], "--compare: unknown backend 'mxnet'"),
    (["--resume", "/nonexistent/checkpoint.npz"], "--resume: /nonexistent/checkpoint.npz: no such checkpoint"),
    (["--model", "conv4k3-dense"], "--model: token 2 'dense': a dense layer needs a flat input"),
    (["--model", "flatten-dense5"], "--model: the network ends in shape (5,); the task needs 10 output(s)"),
    (["--model", "/nonexistent/model.json"], "--model: /nonexistent/model.json: cannot read"),
    (["--weight-decay", "-1"], "--weight-decay must be in [0, 1), got -1.0"),
])
def test_usage_errors_exit_2(capsys, tmp_path, argv, message):
    assert message in usage_error(capsys, *argv, "--out", str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "--out: cannot create" in usage_error(capsys, "--out", str(blocker / "sub"))
    assert "is not a folder" in usage_error(capsys, "--out", str(blocker))


def one_line_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
    return err


@pytest.mark.parametrize("argv,message", [
    (["--backend", "numpy", "--device", "cuda"], "numpy runs on the cpu only"),
    (["--backend", "array_api_strict", "--device", "device7"], "array_api_strict has no device 'device7'"),
    (["--compare", "numpy,array_api_strict:device7"], "--compare array_api_strict:device7: array_api_strict has no"),
])
def test_unusable_backend_or_device_is_one_line(capsys, tmp_path, argv, message):
    assert message in one_line_error(capsys, *argv, "--out", str(tmp_path))


def test_gpu_without_gpu_is_one_line(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = one_line_error(capsys, "--backend", "torch", "--device", "cuda", "--out", str(tmp_path))
    assert "--device cuda needs a CUDA GPU" in line
    line = one_line_error(capsys, "--device", "cuda", "--out", str(tmp_path))  # picks cupy
    assert "cupy" in line and ("xpcnn[cuda12]" in line or "no CUDA GPU" in line)


def test_corrupt_data_file_exit_2(capsys, tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip")
    assert "not an .npz archive (a .npz is a zip file" in usage_error(capsys, "--data", str(bad), "--out",
                                                                      str(tmp_path / "o"))


def test_full_run_writes_metrics_checkpoint_and_plots(capsys, tmp_path, tiny_npz):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    code = main(["--data", tiny_npz, "--eval-data", tiny_npz, "--epochs", "2", "--out", str(out), "--plot", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "epoch   1/2  loss" in text and "img/s" in text and "final test" in text and "confusion matrix" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and 0 <= metrics["final"]["accuracy"] <= 1
    assert np.array(metrics["final"]["confusion_matrix"]).sum() == 100
    for name in ["checkpoint.npz", "curves.png", "filters.png", "feature_maps.png"]:
        assert (out / name).stat().st_size > 0
    assert not [f for f in os.listdir(out) if ".tmp-" in f]


def test_compare_writes_parity_json(capsys, tmp_path, tiny_npz):
    out = tmp_path / "p"
    code = main(["--compare", "numpy,array_api_strict:device1", "--data", tiny_npz, "--dtype", "float64",
                 "--out", str(out), "--quiet"])
    assert code == 0
    assert "parity PASS (float64" in capsys.readouterr().out
    report = json.loads((out / "parity.json").read_text())
    assert report["result"] == "PASS" and report["dtype"] == "float64"


def test_compare_fail_exits_1(capsys, tmp_path, tiny_npz):
    pytest.importorskip("torch")
    code = main(["--compare", "numpy,torch", "--data", tiny_npz, "--dtype", "float32", "--rtol", "0", "--atol", "0",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 1 and "parity FAIL" in capsys.readouterr().out


def test_compare_defaults_to_one_epoch_in_float64(capsys, tmp_path, tiny_npz):
    """float32 runs of the default network part chaotically (docs/parity.md): compare in float64."""
    code = main(["--compare", "numpy,array_api_strict:device1", "--data", tiny_npz, "--out", str(tmp_path), "--quiet"])
    assert code == 0 and "float64, 1 epoch(s)" in capsys.readouterr().out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["dtype"] == "float64" and report["rtol"] == 1e-8


@pytest.mark.parametrize("flags,shown", [(["--threads", "2"], "pieces of at most 64 images (at least 2), 2 threads"),
                                         (["--chunk", "7"], "pieces of at most 7 images"),
                                         (["--threads", "2", "--chunk", "5"], "pieces of at most 5 images")])
def test_threads_and_chunks_train_the_same_run(capsys, tmp_path, tiny_npz, flags, shown):
    runs = {}
    for name, extra in (("whole", []), ("split", flags)):
        out = tmp_path / name
        assert main(["--data", tiny_npz, "--epochs", "1", "--dtype", "float64", *extra,
                     "--out", str(out), "--quiet"]) == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    assert shown in capsys.readouterr().out
    assert runs["split"]["history"][0]["loss"] == pytest.approx(runs["whole"]["history"][0]["loss"], rel=1e-10)


def test_divergence_exit_3_keeps_last_checkpoint(capsys, tmp_path, tiny_npz):
    out = tmp_path / "d"
    assert main(["--data", tiny_npz, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    with np.errstate(all="ignore"):
        code = main(["--data", tiny_npz, "--epochs", "2", "--lr", "1e30", "--optimizer", "sgd", "--out",
                     str(tmp_path / "diverging"), "--quiet"])
    assert code == 3
    assert "training diverged: loss became" in capsys.readouterr().err
    assert not (tmp_path / "diverging" / "checkpoint.npz").exists()  # no good epoch: nothing to keep
    # another run never replaces a run's checkpoint
    line = usage_error(capsys, "--data", tiny_npz, "--lr", "1e30", "--out", str(out))
    assert "holds another run's checkpoint" in line
    assert (out / "checkpoint.npz").read_bytes() == before


def _run_script(args, **kwargs):
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_resume_is_bitwise(tmp_path, tiny_npz, signum):
    common = ["--data", tiny_npz, "--batch-size", "20", "--epochs", "6", "--quiet"]
    straight = _run_script([*common, "--out", str(tmp_path / "a")])
    assert straight.wait(timeout=120) == 0, straight.stderr.read()

    victim = _run_script([*common, "--out", str(tmp_path / "b")])
    line = victim.stdout.readline()
    while not line.startswith("epoch   2/6"):
        assert line, victim.stderr.read()
        line = victim.stdout.readline()
    victim.send_signal(signum)
    assert victim.wait(timeout=60) == 128 + signum
    err = victim.stderr.read()
    assert "saved" in err and "--resume" in err and "Traceback" not in err
    resumed = _run_script(["--resume", str(tmp_path / "b" / "checkpoint.npz"), *common, "--out", str(tmp_path / "b")])
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    a = np.load(tmp_path / "a" / "checkpoint.npz")
    b = np.load(tmp_path / "b" / "checkpoint.npz")
    for key in a.files:
        if key.startswith(("param/", "optim/")):
            np.testing.assert_array_equal(a[key], b[key])
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics_a["step_losses"] == metrics_b["step_losses"]
    assert [h["loss"] for h in metrics_a["history"]] == [h["loss"] for h in metrics_b["history"]]
    assert metrics_a["final"] == metrics_b["final"]


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from xpcnn.io.files import atomic_write
with atomic_write({path!r}) as handle:
    handle.write(b"new" * 1000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
    handle.write(b"never")
"""


def test_kill_during_write_leaves_previous_file(tmp_path):
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"previous contents")
    child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, path=str(target))],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait(timeout=30)
    assert target.read_bytes() == b"previous contents"


def test_resume_refuses_changed_hyperparameters(capsys, tmp_path, tiny_npz):
    out = tmp_path / "r"
    assert main(["--data", tiny_npz, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    line = usage_error(capsys, "--resume", str(out / "checkpoint.npz"), "--lr", "0.5", "--out", str(out))
    assert "only --epochs may change, not --lr (0.05 in the checkpoint)" in line
    assert main(["--resume", str(out / "checkpoint.npz"), "--data", tiny_npz, "--epochs", "2", "--lr", "0.05",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["epoch"] == 2


def test_compile_without_a_compiler_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, "--compile", "--out", str(tmp_path))
    assert "--compile: numpy:cpu has no compiled executor here" in line


def test_compare_with_compile_passes(capsys, tmp_path, tiny_npz):
    """--compare numpy,jax --compile: JAX compiled (jax.jit), NumPy eager, parity in float64."""
    pytest.importorskip("jax")
    code = main(["--compare", "numpy,jax", "--compile", "--data", tiny_npz, "--out", str(tmp_path), "--quiet"])
    assert code == 0 and "parity PASS (float64" in capsys.readouterr().out


def test_jax_compiles_by_default_and_no_compile_runs_eagerly(capsys, tmp_path, tiny_npz):
    pytest.importorskip("jax")
    for flags, shown in (([], True), (["--no-compile"], False)):
        assert main(["--backend", "jax", "--data", tiny_npz, "--epochs", "1", "--batch-size", "100", *flags,
                     "--out", str(tmp_path / str(shown)), "--quiet"]) == 0
        assert ("steps compiled by jax.jit" in capsys.readouterr().out) is shown


def test_console_command_dispatches_train(capsys, tmp_path, tiny_npz):
    from xpcnn.cli import main as console

    assert console(["train", "--data", tiny_npz, "--epochs", "1", "--out", str(tmp_path), "--quiet"]) == 0
    assert "xpcnn: preset default" in capsys.readouterr().out
    assert console(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err
    assert console(["--help"]) == 0 and "xpcnn train --help" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        console(["train", "--epochs", "0", "--out", str(tmp_path)])
    assert info.value.code == 2 and "usage: xpcnn train" in capsys.readouterr().err


def test_eval_data_takes_the_training_classes_and_a_resume_keeps_them(capsys, tmp_path, tiny_npz):
    dataset = data.load_embedded()
    labels = dataset.validation.labels[:100].copy()
    labels[7] = 11
    wide = tmp_path / "wide.npz"
    np.savez(wide, x_train=dataset.train.images[:50], y_train=dataset.train.labels[:50],
             x_test=dataset.validation.images[:100], y_test=labels)
    # test labels beyond the training's 10 classes: said before training, not in a traceback after it
    last = usage_error(capsys, "--data", tiny_npz, "--eval-data", str(wide), "--epochs", "1",
                       "--out", str(tmp_path / "a"))
    assert last.startswith("train.py: error: --eval-data: ") and "label 11 at index 7 is outside 0-9" in last
    out = tmp_path / "b"  # a run of 12 classes resumes without --classes again (only --epochs may change)
    assert main(["--data", tiny_npz, "--classes", "12", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["--data", tiny_npz, "--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["classes"] == 12


def test_batch_norm_1d_with_a_last_batch_of_one_image_is_a_usage_error(capsys, tmp_path, tiny_npz):
    """360 training images in batches of 359 leave one image for the last step, where BatchNorm1D
    has no batch statistics: refused before the first step, not after an epoch."""
    last = usage_error(capsys, "--data", tiny_npz, "--model", "flatten-dense8-bn-relu-dense", "--batch-size", "359",
                       "--out", str(tmp_path), "--quiet")
    assert last == ("train.py: error: --batch-size: layer 2 (BatchNorm1D) normalises each feature over the batch, and "
                    "the last batch of every epoch would hold 1 image (360 training images in batches of 359): choose "
                    "a batch size that leaves at least 2")
    assert not os.listdir(tmp_path)
    last = usage_error(capsys, "--compare", "numpy,array_api_strict", "--data", tiny_npz, "--model",
                       "flatten-dense8-bn-relu-dense", "--batch-size", "359", "--out", str(tmp_path), "--quiet")
    assert last.startswith("train.py: error: --batch-size: layer 2 (BatchNorm1D) normalises each feature")


def test_compare_passes_with_dropout_and_batch_norm(capsys, tmp_path, tiny_npz):
    """Parity for the new layers: host-drawn dropout masks and batch statistics agree across backends
    (float64), Adam included; the running statistics are compared like parameters."""
    code = main(["--compare", "numpy,array_api_strict:device2", "--data", tiny_npz, "--optimizer", "adam",
                 "--lr", "0.003", "--model", "conv4k5-bn-relu-maxpool2-flatten-dense16-relu-dropout0.3-dense",
                 "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "parity PASS (float64" in out and "1.running_mean" in out


def test_a_colour_npz_trains_with_a_model_spec(capsys, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 160)
    images = rng.integers(0, 150, (160, 13, 15, 3)).astype(np.uint8)  # channels last, as Keras stores colour
    images[np.arange(160), :, :, labels % 3] += 100
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=images[:120], y_train=labels[:120], x_test=images[120:], y_test=labels[120:])
    assert main(["--data", str(path), "--eval-data", str(path), "--model", "conv6k3p1-relu-maxpool2-flatten-dense",
                 "--epochs", "2", "--batch-size", "20", "--shift", "1", "--normalize", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "final test" in out and "(120 training" not in out
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["config"]["image_shape"] == [3, 13, 15] and metrics["config"]["classes"] == 4
    assert np.array(metrics["final"]["confusion_matrix"]).shape == (4, 4)



def test_compare_fits_the_config_to_the_data(capsys, tmp_path):
    """--compare on colour data of another size: the run takes the data's shape and classes."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x_train=rng.integers(0, 255, (60, 9, 11, 3)).astype(np.uint8),
             y_train=rng.integers(0, 3, 60))
    assert main(["--compare", "numpy,array_api_strict", "--data", str(tmp_path / "rgb.npz"), "--model",
                 "conv4k3-relu-flatten-dense", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "parity PASS" in capsys.readouterr().out
    line = usage_error(capsys, "--compare", "numpy,array_api_strict", "--data", str(tmp_path / "rgb.npz"),
                       "--out", str(tmp_path / "o"))
    assert "--preset default: preset 'default' is MNIST's network (1x28x28 images); these images are 3x9x11" in line


# -- learning-rate schedules and Nesterov momentum ---------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--warmup", "1.5"], "argument --warmup: invalid int value: '1.5'"),
    (["--schedule", "step", "--step-size", "0"], "--step-size must be >= 1, got 0"),
    (["--schedule", "plateau", "--patience", "-1"], "--patience must be >= 0, got -1"),
    (["--schedule", "cosine", "--lr-min", "-1"], "--lr-min must be a non-negative number, got -1.0"),
    (["--schedule", "cosine", "--lr-min", "0.5"], "--lr-min must be below lr (0.05), got 0.5"),
    (["--step-size", "3"], "--step-size is for --schedule step; this run's schedule is exp"),
    (["--schedule", "cosine", "--patience", "1"],
     "--patience is for --schedule plateau; this run's schedule is cosine"),
    (["--lr-min", "0.001"], "--lr-min is for --schedule cosine or plateau; this run's schedule is exp"),
    (["--schedule", "cosine", "--lr-decay", "0.5"],
     "--lr-decay is for --schedule exp, step or plateau; this run's schedule is cosine"),
    (["--schedule", "plateau", "--compare", "numpy,array_api_strict"],
     "--schedule plateau follows the validation loss, which --compare does not compute"),
    (["--optimizer", "adam", "--nesterov"], "--nesterov is for optimizer momentum; this run's optimizer is adam"),
    (["--preset", "article", "--nesterov"], "--nesterov is for optimizer momentum; this run's optimizer is sgd"),
    (["--momentum", "0", "--nesterov"], "--nesterov needs momentum > 0, got 0"),
])
def test_schedule_and_nesterov_usage_errors_exit_2(capsys, tmp_path, argv, message):
    assert message in usage_error(capsys, *argv, "--out", str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_plateau_without_validation_images_is_a_usage_error(capsys, tmp_path):
    dataset = data.load_embedded()
    path = tmp_path / "nine.npz"  # 9 training images: none held out for validation (10% of them is 0)
    np.savez(path, x_train=dataset.train.images[:9], y_train=dataset.train.labels[:9])
    line = usage_error(capsys, "--data", str(path), "--schedule", "plateau", "--out", str(tmp_path / "o"))
    assert line.endswith(f"--schedule plateau follows the validation loss, and {path} has no validation images")


def test_a_scheduled_run_resumes_bitwise_and_keeps_its_schedule(capsys, tmp_path, tiny_npz):
    common = ["--data", tiny_npz, "--batch-size", "50", "--schedule", "step", "--step-size", "1", "--lr-decay", "0.5",
              "--warmup", "1", "--quiet"]
    assert main([*common, "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    assert "batch 50, momentum lr 0.05 (x0.5 every 1 epoch, warmup 1), no augmentation" in capsys.readouterr().out
    assert main([*common, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    checkpoint = str(tmp_path / "b" / "checkpoint.npz")
    assert "--schedule (step in the checkpoint)" in usage_error(
        capsys, "--resume", checkpoint, "--schedule", "cosine", "--out", str(tmp_path / "b"))
    assert main(["--resume", checkpoint, "--data", tiny_npz, "--epochs", "3", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "(x0.5 every 1 epoch, warmup 1), no augmentation" in first
    assert first.endswith("; resuming at epoch 3, step 0")
    a, b = np.load(tmp_path / "a" / "checkpoint.npz"), np.load(tmp_path / "b" / "checkpoint.npz")
    for key in a.files:
        if key.startswith(("param/", "optim/")):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics_a["step_losses"] == metrics_b["step_losses"]
    assert metrics_b["config"]["schedule"] == "step" and metrics_b["config"]["warmup"] == 1


def test_nesterov_from_the_cli_trains_as_a_hand_built_trainer(capsys, tmp_path, tiny_npz):
    import dataclasses

    from xpcnn import resolve
    from xpcnn.training import PRESETS, Trainer

    assert main(["--data", tiny_npz, "--nesterov", "--momentum", "0.8", "--schedule", "cosine", "--epochs", "1",
                 "--batch-size", "40", "--shift", "2", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert "batch 40, nesterov momentum lr 0.05 (cosine), shifts of up to 2 pixels" in capsys.readouterr().out
    loaded = data.load(tiny_npz)
    config = dataclasses.replace(PRESETS["default"], nesterov=True, momentum=0.8, schedule="cosine", epochs=1,
                                 batch_size=40)
    with Trainer(config, resolve("numpy")) as trainer:
        assert trainer.optimizer.nesterov
        trainer.fit(loaded.train, loaded.validation)
        trainer.save(tmp_path / "lib.npz")
    cli, lib = np.load(tmp_path / "cli" / "checkpoint.npz"), np.load(tmp_path / "lib.npz")
    assert sorted(cli.files) == sorted(lib.files)
    for key in cli.files:
        if key != "meta":
            np.testing.assert_array_equal(cli[key], lib[key], err_msg=key)
    with Trainer(dataclasses.replace(config, nesterov=False), resolve("numpy")) as plain:
        plain.fit(loaded.train, loaded.validation)
    assert any(not np.array_equal(value, lib[f"param/{name}"])  # (Nesterov's momentum is another step)
               for name, value in plain.model.state_dict().items())
