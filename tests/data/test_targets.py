"""The task's targets: the article's binary task and K-class labels."""

import os

import numpy as np
import pytest

from xpcnn import data
from xpcnn.data import DataError


def test_article_task_counts_from_real_training_labels(mnist_dir):
    labels = data.read_idx(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"), 1)
    assert labels.shape == (60000,)
    first = labels[:200]
    counts = dict(zip(*np.unique(first, return_counts=True)))
    assert {int(k): int(v) for k, v in counts.items()} == {1: 26, 9: 23, 0: 21, 3: 21, 4: 21, 7: 21, 2: 20, 6: 19,
                                                            8: 15, 5: 13}
    targets = data.task_targets(first, "binary")
    assert targets.shape == (200, 1)
    assert int((targets == 0).sum()) == 109 and int((targets == 1).sum()) == 91


def test_task_targets():
    labels = np.array([0, 4, 5, 9], np.uint8)
    np.testing.assert_array_equal(data.task_targets(labels, "binary")[:, 0], [0, 0, 1, 1])
    assert data.task_targets(labels, "multiclass").dtype == np.int64
    with pytest.raises(DataError, match="unknown task 'regression'"):
        data.task_targets(labels, "regression")
    with pytest.raises(DataError, match="labels must lie in 0-9"):
        data.task_targets(np.array([3, 11]), "multiclass")


def test_task_targets_for_k_classes():
    labels = np.array([0, 36, 5])
    assert data.task_targets(labels, "multiclass", classes=37).tolist() == [0, 36, 5]
    with pytest.raises(DataError, match="labels must lie in 0-2 for task 'multiclass', found 0-36"):
        data.task_targets(labels, "multiclass", classes=3)
    with pytest.raises(DataError,
                       match="task 'binary' \\(the article's digit > 4\\) needs 10 classes, the data has 37"):
        data.task_targets(labels, "binary", classes=37)


def test_the_task_rule_from_outputs_to_classes_probabilities_and_names(backend):
    """The one place that knows what each task's network outputs mean."""
    from xpcnn.backends import to_numpy
    from xpcnn.data.targets import class_names, class_probabilities, predicted_classes, target_classes, task_outputs

    xp = backend.xp
    one = backend.asarray(np.array([[0.2], [0.7], [0.5]]), "float64")  # sigmoid outputs O
    np.testing.assert_array_equal(to_numpy(predicted_classes(xp, one, "binary")), [False, True, False])
    np.testing.assert_allclose(to_numpy(class_probabilities(xp, one, "binary")), [[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    logits = backend.asarray(np.array([[1.0, 3.0, 2.0], [1000.0, 0.0, 0.0]]), "float64")  # no overflow at 1000
    np.testing.assert_array_equal(to_numpy(predicted_classes(xp, logits, "multiclass")), [1, 0])
    p = to_numpy(class_probabilities(xp, logits, "multiclass"))
    np.testing.assert_allclose(p[0], np.exp([1.0, 3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum())
    np.testing.assert_allclose(p[1], [1.0, 0.0, 0.0])
    assert task_outputs("binary", 10) == 1 and task_outputs("multiclass", 7) == 7
    np.testing.assert_array_equal(target_classes(np.array([[0.0], [1.0]]), "binary"), [0, 1])
    assert class_names("binary", 10) == ["digit <= 4", "digit > 4"]
    assert class_names("multiclass", 3) == ["0", "1", "2"]
    assert class_names("multiclass", 2, ["cat", "dog"]) == ["cat", "dog"]
