"""Any network round-trips through a checkpoint: one built in Python (``Trainer(config, backend,
model)``) resumes, predicts and evaluates like a preset's, stored as its layer records; and a
checkpoint whose digest is valid but whose configuration does not build a network is refused with a
CheckpointError naming the field (the CLI: exit 2, one line), never a traceback."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from checkpoint_edits import Pieces, make, meta_edit

from xpcnn import data, resolve
from xpcnn.cli import main
from xpcnn.inference import Predictor
from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.nn import Sequential
from xpcnn.nn.activations import GELU
from xpcnn.nn.batchnorm import BatchNorm2D
from xpcnn.nn.conv import Conv2D
from xpcnn.nn.dense import Dense, Flatten
from xpcnn.nn.pooling import AvgPool2D
from xpcnn.training import PRESETS, Trainer, snapshot

CONFIG = dataclasses.replace(PRESETS["default"], epochs=2, batch_size=50, shift=0)


def python_model() -> Sequential:
    """A network no preset or spec describes, made from layer objects."""
    return Sequential(Conv2D(1, 4, 3, stride=2, bias=False, rng=1), BatchNorm2D(4), GELU(),
                      AvgPool2D(2, ceil_mode=True), Flatten(), Dense(4 * 7 * 7, 10, rng=2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, checkpoint after epoch 1 of 2, the finished run's parameters, its history)."""
    folder = tmp_path_factory.mktemp("any")
    train = data.load_embedded().train.take(100)
    with Trainer(CONFIG, resolve("numpy"), python_model()) as whole:
        whole.fit(train)
        final = whole.model.state_dict()
    with Trainer(dataclasses.replace(CONFIG, epochs=1), resolve("numpy"), python_model()) as half:
        half.fit(train)
        half.save(folder / "half.npz")
        half.save(folder / "done1.npz")
    return folder, folder / "half.npz", final, whole.state.history


def test_the_checkpoint_stores_the_network_as_layer_records(trained):
    _, path, _, _ = trained
    saved = snapshot.read(path)
    assert saved.architecture == json.loads(json.dumps(python_model().config()))
    assert json.loads(saved.config.model) == saved.architecture  # the config rebuilds this network
    assert [layer.name for layer in saved.network().layers] == [layer.name for layer in python_model().layers]


def test_a_python_model_resumes_bitwise(trained):
    _, path, final, history = trained
    with Trainer.from_checkpoint(path, resolve("numpy"), epochs=2) as resumed:
        resumed.fit(data.load_embedded().train.take(100))
        for name, value in resumed.model.state_dict().items():
            np.testing.assert_array_equal(value, final[name], err_msg=name)
    # and a Trainer given the same Python network resumes it too (the user's own config)
    with Trainer(CONFIG, resolve("numpy"), python_model()) as again:
        again.resume(path)
        assert again.state.epoch == 1


def test_a_python_model_predicts_like_the_trainer(trained):
    _, path, _, _ = trained
    images = data.load_embedded().train.images[200:230]
    predictor = Predictor(path, resolve("numpy"))
    with Trainer.from_checkpoint(path, resolve("numpy")) as trainer:
        expected = trainer.predict(images)
    np.testing.assert_array_equal(predictor.probabilities(images).argmax(axis=1), expected)


def test_predict_and_resume_from_the_command_line_on_the_remembered_data(trained, tmp_path, capsys):
    _, path, _, _ = trained
    images = tmp_path / "few.npy"
    np.save(images, data.load_embedded().train.images[:3])
    assert main(["predict", str(path), str(images)]) == 0
    assert capsys.readouterr().out.count("(class ") == 3
    digits = data.load_embedded().train
    source = tmp_path / "mine.npz"
    np.savez(source, x_train=digits.images[:110, 0], y_train=digits.labels[:110])
    run = tmp_path / "run"
    run.mkdir()
    with Trainer(dataclasses.replace(CONFIG, epochs=1), resolve("numpy"), python_model()) as trainer:
        trainer.data_source = str(source)  # what xpcnn train records
        trainer.fit(data.load(str(source)).train)
        trainer.save(run / "checkpoint.npz")
    # no --data, no --out: the run's own data, written back into the run's own folder
    assert main(["train", "--resume", str(run / "checkpoint.npz"), "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"({source})" in out and f"writing to {run}" in out
    assert snapshot.read(run / "checkpoint.npz").epoch == 2


def test_a_wrong_data_for_a_resume_is_named(trained, capsys):
    _, path, _, _ = trained
    with pytest.raises(SystemExit) as stop:
        main(["train", "--resume", str(path), "--data", "cifar10-missing-folder", "--quiet"])
    assert stop.value.code == 2


@pytest.fixture(scope="module")
def pieces(trained):
    _, path, _, _ = trained
    return Pieces(path, *checkpoint.load(path))


BAD_CONFIGS = [
    (meta_edit("config.model", "conv8k3-relu-notalayer-dense"), "config.model"),
    (meta_edit("config.model", "conv8k99-flatten-dense"), "config.model"),  # kernel larger than the image
    (meta_edit("config.model", "[" * 5000 + "]" * 5000), "config.model"),  # nested JSON
    (meta_edit("config.model", '[{"type": "Dense", "in_features": 784, "out_features": 10}]'), "config.model"),
    (meta_edit("config.model", None), "architecture"),  # the preset's network is not the stored one
    (meta_edit("config.image_shape", [3, 4, 4]), "config.model"),  # the network does not fit those images
    (meta_edit("config.classes", 7), "config.model"),
    (meta_edit("architecture.0.out_channels", 5), "architecture"),
]


@pytest.mark.parametrize("edit, field", BAD_CONFIGS, ids=lambda value: getattr(value, "__name__", value))
def test_a_config_that_builds_no_network_is_a_checkpoint_error_naming_the_field(pieces, tmp_path, capsys, edit,
                                                                                field):
    path = make(pieces, edit, tmp_path / "edited.npz")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'edited.npz'}: {field}\b"):
        snapshot.read(path)
    for argv in (["predict", str(path), "x.npy"], ["train", "--resume", str(path), "--quiet"],
                 ["evaluate", str(path), "--data", "embedded"], ["summary", str(path)]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2, argv
        err = capsys.readouterr().err
        assert f"{field}" in err and "Traceback" not in err, argv


def test_a_preset_that_does_not_fit_the_image_shape_is_named(tmp_path):
    config = dataclasses.replace(CONFIG, epochs=1)
    with Trainer(config, resolve("numpy")) as trainer:
        trainer.fit(data.load_embedded().train.take(50))
        trainer.save(tmp_path / "preset.npz")
    pieces = Pieces(tmp_path / "preset.npz", *checkpoint.load(tmp_path / "preset.npz"))
    path = make(pieces, meta_edit("config.image_shape", [1, 3, 3]), tmp_path / "small.npz")
    with pytest.raises(CheckpointError, match="config.preset does not build a network"):
        snapshot.read(path)
