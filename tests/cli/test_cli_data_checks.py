"""scripts/train.py on data and networks it was not tuned for: the recipe said out loud, data
mistakes and hostile sizes refused in one line (exit 2, no traceback, nothing written)."""

import json
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

from xpcnn import data
from xpcnn.cli import train_main as main
from xpcnn.training.run import written_since


@pytest.fixture(scope="module")
def small8(tmp_path_factory):
    """A Keras-style npz of 8x8 digits (the embedded ones, every third pixel), uint8."""
    dataset = data.load_embedded()
    images = dataset.train.images[:300, 0, 2:26:3, 2:26:3]
    path = tmp_path_factory.mktemp("data") / "small8.npz"
    np.savez(path, x_train=images[:240], y_train=dataset.train.labels[:240], x_test=images[240:],
             y_test=dataset.train.labels[240:300])
    return str(path)


def usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train.py: error: ") and "Traceback" not in err, err
    return last[len("train.py: error: "):]


def _npz(tmp_path, name, **arrays) -> str:
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)


def test_a_model_without_a_preset_trains_with_its_own_recipe_and_says_so(capsys, tmp_path, small8):
    out = tmp_path / "r"
    assert main(["--data", small8, "--model", "conv4k3p1-relu-flatten-dense", "--epochs", "1", "--out", str(out),
                 "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("xpcnn: the --model recipe (no --preset), task multiclass")
    assert "1 epochs, batch 64, adam lr 0.003 (cosine), no augmentation" in lines[0]
    assert lines[1].startswith("network: image 1x8x8 -> 10 outputs; 2,610 parameters")  # 4*9+4 + 256*10+10
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["optimizer"], config["lr"], config["schedule"], config["shift"]) == ("adam", 0.003, "cosine", 0)


def test_a_presets_shifts_stay_with_its_own_data(capsys, tmp_path, small8):
    out = tmp_path / "l"
    assert main(["--data", small8, "--preset", "lenet5", "--model", "conv4k3p1-relu-flatten-dense", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("xpcnn: preset lenet5 (its shifts of 2 pixels are for --data 'embedded' or 'download': "
                            "none here; --shift N adds them)") and "no augmentation" in first
    assert json.loads((out / "metrics.json").read_text())["config"]["shift"] == 0
    assert main(["--data", small8, "--preset", "lenet5", "--model", "conv4k3p1-relu-flatten-dense", "--epochs", "1",
                 "--shift", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("xpcnn: preset lenet5, task") and "shifts of up to 1 pixels" in first


@pytest.mark.parametrize("model,message", [
    ("conv1000000000000k3-relu-flatten-dense", "--model: token 1 'conv1000000000000k3': a weight of shape "
                                               "(1,000,000,000,000, 1, 3, 3) would hold 9,000,000,000,000 values"),
    ("flatten-dense1000000000000-dense", "--model: token 2 'dense1000000000000': a weight of shape (64, "),
    ("conv1k1p30000-relu-flatten-dense", "--model: token 1 'conv1k1p30000': Conv2D: its output per image"),
    ("conv1k1p2000-relu-flatten-dense", "--batch-size: a batch of 64 needs about "),
])
def test_hostile_sizes_are_refused_before_allocation(capsys, tmp_path, small8, model, message):
    out = tmp_path / "h"
    assert usage_error(capsys, "--data", small8, "--model", model, "--out", str(out)).startswith(message)
    assert not out.exists() or not os.listdir(out)


def test_hostile_model_files_are_one_line(capsys, tmp_path, small8):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50000 + "]" * 50000)
    assert usage_error(capsys, "--data", small8, "--model", str(deep), "--out", str(tmp_path / "o")) == \
        f"--model: {deep}: JSON nested 50000 levels deep, more than 32"
    huge = tmp_path / "huge.json"
    huge.write_text('[{"type": "Flatten"}, {"type": "Dense", "out_features": 1' + "0" * 400 + "}]")
    assert "layer 1 (Dense): Dense: its weight of shape 64x~10^400" in usage_error(
        capsys, "--data", small8, "--model", str(huge), "--out", str(tmp_path / "o"))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert usage_error(capsys, "--data", small8, "--model", str(fifo), "--out", str(tmp_path / "o")) == \
        f"--model: {fifo}: not a regular file"
    keras = tmp_path / "k.json"
    keras.write_text('{"layers": [{"class_name": "Dense", "config": {"units": 10}}]}')
    assert "layer 0 is a Keras record" in usage_error(capsys, "--data", small8, "--model", str(keras))
    records = tmp_path / "m.json"
    records.write_text('{"layers": [{"type": "Conv2D", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"}, '
                       '{"type": "Flatten"}, {"type": "Dense", "out_features": 10}]}')
    assert main(["--data", small8, "--model", str(records), "--epochs", "1", "--out", str(tmp_path / "m"),
                 "--quiet"]) == 0


def test_data_mistakes_are_one_line_each(capsys, tmp_path, small8):
    arrays = dict(np.load(small8))
    floats = _npz(tmp_path, "f.npz", x_train=arrays["x_train"].astype(np.float32), y_train=arrays["y_train"])
    assert usage_error(capsys, "--data", floats, "--model", "flatten-dense") == (
        f"--data: {floats}: float pixels span 0-255, and float images are used as given (uint8 ones are scaled to "
        f"[0, 1]): divide them by 255, store them as uint8 0-255, or add --normalize")
    empty = _npz(tmp_path, "e.npz", x_train=arrays["x_train"][:0], y_train=arrays["y_train"][:0],
                 x_test=arrays["x_test"], y_test=arrays["y_test"])
    assert usage_error(capsys, "--data", empty, "--model", "flatten-dense") == f"--data: {empty} has no training images"
    one = _npz(tmp_path, "o.npz", x_train=arrays["x_train"], y_train=arrays["y_train"] * 0 + 3,
               x_test=arrays["x_test"], y_test=arrays["y_test"])
    assert usage_error(capsys, "--data", one, "--model", "flatten-dense") == \
        f"--data: {one}: every training label is 3, one class: a classifier needs at least 2"
    colour = _npz(tmp_path, "c.npz", x_train=np.repeat(arrays["x_train"][..., None], 3, -1), y_train=arrays["y_train"])
    assert usage_error(capsys, "--data", colour, "--layout", "nchw", "--model", "conv4k3-relu-maxpool2-flatten-dense") \
        == (f"--layout: {colour}: read as nchw, the images have 8 channels of 8x3 pixels; --layout nhwc reads them "
            f"as 3x8x8 (channels x height x width)")
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    assert usage_error(capsys, "--data", str(fifo)) == f"--data: {fifo}: not a regular file"
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x80\x04" + bytes(range(200)))
    assert "allow_pickle" not in usage_error(capsys, "--data", str(junk))


def test_one_based_labels_are_warned_about(capsys, tmp_path, small8):
    arrays = dict(np.load(small8))
    path = _npz(tmp_path, "b.npz", x_train=arrays["x_train"], y_train=arrays["y_train"] + 1)
    assert main(["--data", path, "--model", "flatten-dense", "--epochs", "1", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"warning: {path}: 1 of 11 classes have no training images (class 0): the labels look 1-based; xpcnn's run "
        f"0..K-1 (subtract 1)")


def test_many_classes_drop_the_confusion_matrix_and_still_write_metrics(capsys, tmp_path, small8):
    out = tmp_path / "k"
    assert main(["--data", small8, "--model", "flatten-dense", "--classes", "1500", "--epochs", "1", "--out", str(out),
                 "--quiet"]) == 0
    assert "confusion matrix: left out for 1500 classes" in capsys.readouterr().out
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["confusion_matrix"] is None and final["images"] > 0


def test_divergence_names_no_checkpoint_of_an_earlier_run(tmp_path):
    """(--out refuses a folder holding another run's checkpoint; a file that appears there anyway is
    not named as this run's last good one unless written since the run started or resumed from.)"""
    old = tmp_path / "checkpoint.npz"
    old.write_bytes(b"an earlier run's")
    os.utime(old, (1e9, 1e9))
    fresh = SimpleNamespace(options=SimpleNamespace(resume=None))
    assert not written_since(str(old), time.time(), fresh)
    assert written_since(str(old), 1e9 - 1, fresh)
    assert written_since(str(old), time.time(), SimpleNamespace(options=SimpleNamespace(resume=str(old))))
    assert not written_since(str(tmp_path / "none.npz"), 0.0, fresh)
