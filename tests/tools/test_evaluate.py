"""xpcnn.tools.evaluate: accuracy, loss, per-class precision and recall and the confusion matrix of a
checkpoint on labelled data, against a count made image by image from the Predictor's probabilities
(float64), on every backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xpcnn import data, resolve
from xpcnn.data import DataError
from xpcnn.inference import Predictor
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.tools.evaluate import evaluate, precision_recall
from xpcnn.training import PRESETS, Trainer


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(checkpoint of a short 3-class run with class names, a labelled .npz with a test split)."""
    folder = tmp_path_factory.mktemp("evaluate")
    digits = data.load_embedded().train
    keep = digits.labels < 3
    images, labels = digits.images[keep][:, 0], digits.labels[keep]
    path = folder / "three.npz"
    np.savez(path, x_train=images[:600], y_train=labels[:600], x_test=images[600:760], y_test=labels[600:760])
    dataset = data.load(str(path))
    config = dataclasses.replace(PRESETS["default"], epochs=1, batch_size=50, classes=3, normalize=True)
    with Trainer(config, resolve("numpy")) as trainer:
        trainer.class_names = ["zero", "one", "two"]
        trainer.fit(dataset.train)
        trainer.save(folder / "checkpoint.npz")
    return folder / "checkpoint.npz", path, dataset


def test_the_report_is_the_count_image_by_image(labelled, backend):
    checkpoint, path, dataset = labelled
    report = evaluate(checkpoint, str(path), backend)
    test = dataset.test
    probabilities = Predictor(checkpoint, resolve("numpy")).probabilities(test.images)
    predicted = probabilities.argmax(axis=1)
    assert report.split == "test" and report.images == len(test) == 160
    assert report.class_names == ["zero", "one", "two"]
    confusion = np.zeros((3, 3), np.int64)
    for truth, guess in zip(test.labels, predicted):
        confusion[truth, guess] += 1
    np.testing.assert_array_equal(report.confusion, confusion)
    assert report.accuracy == pytest.approx(np.mean(predicted == test.labels))
    loss = -np.mean(np.log(probabilities[np.arange(len(test)), test.labels]))
    assert report.loss == pytest.approx(loss, rel=1e-4)
    assert confusion[:, 0].sum() and confusion[:, 1].sum() and confusion[:, 2].sum()  # (trained: each predicted)
    for k in range(3):
        assert report.precision[k] == pytest.approx(confusion[k, k] / confusion[:, k].sum())
        assert report.recall[k] == pytest.approx(confusion[k, k] / confusion[k].sum())
    text = str(report)
    assert "confusion matrix" in text and "zero" in text and f"accuracy {report.accuracy:.4f}" in text
    assert report.as_dict()["confusion_matrix"] == confusion.tolist()
    assert report.support == [int((test.labels == k).sum()) for k in range(3)]


def test_splits(labelled):
    checkpoint, path, dataset = labelled
    assert evaluate(checkpoint, str(path), resolve("numpy"), split="all").images == 600
    assert evaluate(checkpoint, str(path), resolve("numpy"), split="validation").images == len(dataset.validation)


def test_a_class_never_predicted_has_no_precision():
    precision, recall = precision_recall(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 0, 0, 0]), 2)
    assert precision == [0.6, None] and recall == [1.0, 0.0]


def test_data_that_does_not_fit_is_named(labelled, tmp_path):
    checkpoint, _, _ = labelled
    with pytest.raises(DataError, match="3 classes|classes"):
        evaluate(checkpoint, "embedded", resolve("numpy"))
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x_train=np.zeros((4, 28, 28, 3), np.uint8), y_train=np.array([0, 1, 2, 0]))
    with pytest.raises(DataError, match="1x28x28"):
        evaluate(checkpoint, str(rgb), resolve("numpy"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        evaluate(tmp_path / "missing.npz", "embedded", resolve("numpy"))
