"""A model's life on the command line: runs in folders of their own (runs/latest the newest), never
replacing another run's checkpoint; a resumed run writing back to its folder on the data it trained
on; fine-tuning (--init-from) with a new head; xpcnn summary, evaluate and export."""

from __future__ import annotations

import csv
import json
import os
import re
import sys

import numpy as np
import pytest

from xpcnn import data
from xpcnn.cli import main
from xpcnn.training import snapshot
from xpcnn.training.run import RunOptions, prepare_run


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """('ten.npz', 'three.npz'): 200 + 60 digits of all ten classes, and of classes 0-2 only."""
    folder = tmp_path_factory.mktemp("data")
    digits = data.load_embedded().train
    three = digits.labels < 3
    np.savez(folder / "ten.npz", x_train=digits.images[:200, 0], y_train=digits.labels[:200],
             x_test=digits.images[200:260, 0], y_test=digits.labels[200:260])
    np.savez(folder / "three.npz", x_train=digits.images[three][:150, 0], y_train=digits.labels[three][:150],
             x_test=digits.images[three][150:200, 0], y_test=digits.labels[three][150:200])
    return str(folder / "ten.npz"), str(folder / "three.npz")


def error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def runs(npz, tmp_path_factory):
    """Two default runs in a fresh working folder: runs/<date>-<time>-<preset> each."""
    cwd = tmp_path_factory.mktemp("work")
    before = os.getcwd()
    os.chdir(cwd)
    try:
        for _ in range(2):
            assert main(["train", "--data", npz[0], "--epochs", "1", "--batch-size", "50", "--quiet"]) == 0
    finally:
        os.chdir(before)
    return cwd


def test_each_run_gets_a_folder_and_latest_points_at_the_newest(runs):
    folders = sorted(name for name in os.listdir(runs / "runs") if name != "latest")
    assert len(folders) == 2 and all(re.fullmatch(r"\d{8}-\d{6}-default(-\d+)?", name) for name in folders)
    assert os.path.islink(runs / "runs" / "latest") and os.readlink(runs / "runs" / "latest") == folders[-1]
    for name in folders:
        assert (runs / "runs" / name / "checkpoint.npz").exists()


def test_the_log_is_also_a_csv(runs):
    folder = runs / "runs" / "latest"
    rows = list(csv.DictReader(open(folder / "log.csv")))
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    assert len(rows) == len(records) == 1
    assert float(rows[0]["loss"]) == pytest.approx(records[0]["loss"]) and rows[0]["epoch"] == "1"


def test_a_folder_with_another_runs_checkpoint_is_refused(runs, npz, capsys):
    latest = str(runs / "runs" / "latest")
    line = error_line(capsys, ["train", "--data", npz[0], "--epochs", "1", "--out", latest, "--quiet"])
    assert "holds another run's checkpoint.npz" in line and f"--resume {latest}/checkpoint.npz" in line


def test_a_resume_writes_back_to_its_folder_on_its_data(runs, capsys, monkeypatch):
    monkeypatch.chdir(runs)
    target = os.path.realpath("runs/latest")
    others = sorted(os.listdir("runs"))
    assert main(["train", "--resume", "runs/latest/checkpoint.npz", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ten.npz" in out and "resuming at epoch 2" in out
    assert sorted(os.listdir("runs")) == others  # no new folder
    assert snapshot.read(os.path.join(target, "checkpoint.npz")).epoch == 2


def test_fine_tuning_replaces_the_head_for_new_classes(runs, npz, capsys, tmp_path):
    source = str(runs / "runs" / "latest" / "checkpoint.npz")
    saved = snapshot.read(source)
    assert main(["train", "--init-from", source, "--data", npz[1], "--epochs", "1", "--lr", "0.01", "--quiet",
                 "--out", str(tmp_path / "tuned")]) == 0
    out = capsys.readouterr().out
    assert "--init-from: new head Dense(2304 -> 3) for 3 classes; the checkpoint's had 10 output(s)" in out
    tuned = snapshot.read(tmp_path / "tuned" / "checkpoint.npz")
    assert tuned.config.classes == 3 and tuned.architecture[-1]["out_features"] == 3
    assert tuned.config.lr == 0.01 and tuned.epoch == 1
    # the body started from the checkpoint's weights: with the same classes, exactly them
    run = prepare_run(RunOptions(init_from=source, data=npz[0], out=str(tmp_path / "same"), quiet=True))
    for name, value in run.model.state_dict().items():
        np.testing.assert_array_equal(value, saved.network().state_dict()[name], err_msg=name)


@pytest.mark.parametrize("extra, message", [
    (["--resume", "X"], "--init-from starts a new run from a checkpoint's weights, --resume continues one"),
    (["--model", "conv4k3-flatten-dense"], "--init-from takes the checkpoint's network; drop --model"),
])
def test_fine_tuning_refuses_what_does_not_go_with_it(runs, capsys, extra, message, tmp_path):
    source = str(runs / "runs" / "latest" / "checkpoint.npz")
    argv = ["train", "--init-from", source, "--out", str(tmp_path), *[source if a == "X" else a for a in extra]]
    assert message in error_line(capsys, argv)


def test_fine_tuning_needs_the_same_image_shape(runs, capsys, tmp_path):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x_train=np.zeros((20, 3, 28, 28), np.uint8), y_train=np.arange(20) % 10)
    line = error_line(capsys, ["train", "--init-from", str(runs / "runs" / "latest" / "checkpoint.npz"),
                               "--data", str(rgb), "--out", str(tmp_path / "o")])
    assert "takes 1x28x28 images; this data has 3x28x28" in line


def test_summary_of_a_checkpoint_and_of_a_spec(runs, capsys):
    assert main(["summary", str(runs / "runs" / "latest" / "checkpoint.npz")]) == 0
    out = capsys.readouterr().out
    assert "4 Dense" in out and "23,466" in out and "image 1x28x28 -> 10 outputs" in out
    assert main(["summary", "--model", "conv8k3-relu-gap-dense", "--image-shape", "3,32,32", "--classes", "5",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_shape"] == [5] and summary["parameters"] == 8 * 27 + 8 + 8 * 5 + 5
    assert "kernel 9x9 is larger" in error_line(capsys, ["summary", "--model", "conv4k9-flatten-dense",
                                                         "--image-shape", "1,5,5"])
    assert "give a checkpoint" in error_line(capsys, ["summary"])


def test_evaluate_on_the_command_line(runs, npz, capsys):
    checkpoint = str(runs / "runs" / "latest" / "checkpoint.npz")
    assert main(["evaluate", checkpoint, "--data", npz[0], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 60 and report["split"] == "test" and np.sum(report["confusion_matrix"]) == 60
    assert main(["evaluate", checkpoint, "--data", npz[0]]) == 0
    assert "confusion matrix (rows: true class, columns: predicted)" in capsys.readouterr().out
    assert main(["evaluate", checkpoint, "--data", npz[1], "--json"]) == 0  # labels 0-2 of the ten classes
    assert json.loads(capsys.readouterr().out)["recall"][5] is None  # (no image of class 5)
    assert "--data: " in error_line(capsys, ["evaluate", checkpoint, "--data", npz[1] + ".missing"])


def test_export_on_the_command_line(runs, capsys, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    checkpoint = str(runs / "runs" / "latest" / "checkpoint.npz")
    assert main(["export", checkpoint, str(tmp_path / "model.onnx")]) == 0
    assert "ONNX opset 17" in capsys.readouterr().out and (tmp_path / "model.onnx").stat().st_size > 90_000
    monkeypatch.setitem(sys.modules, "onnx", None)  # the extra not installed: one line, exit 2
    assert main(["export", checkpoint, str(tmp_path / "again.onnx")]) == 2
    assert "pip install 'xpcnn[export]'" in capsys.readouterr().err


def test_the_command_list_names_the_new_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ("evaluate", "summary", "export"))
