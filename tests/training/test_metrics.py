"""The confusion matrix, bounded for many classes."""

from __future__ import annotations

import json

import numpy as np

from xpcnn.training.metrics import MAX_CONFUSION_CLASSES, Evaluation, confusion_matrix, format_confusion


def test_confusion_matrix_counts_true_against_predicted():
    truth, predicted = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2])
    matrix = confusion_matrix(truth, predicted, 3)
    expected = np.zeros((3, 3), np.int64)
    for t, p in zip(truth, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(matrix, expected)
    assert "confusion matrix (rows: true, columns: predicted)" in format_confusion(matrix)


def test_many_classes_leave_the_matrix_out_with_a_notice():
    classes = MAX_CONFUSION_CLASSES + 1
    truth = np.array([0, classes - 1])
    assert confusion_matrix(truth, truth, classes) is None
    evaluation = Evaluation(0.5, 1.0, truth, truth, None, classes)
    assert json.loads(json.dumps(evaluation.as_dict()))["confusion_matrix"] is None
    assert evaluation.format_confusion() == (f"confusion matrix: left out for {classes} classes (it is kept for at "
                                             f"most {MAX_CONFUSION_CLASSES})")
    top = np.array([0, MAX_CONFUSION_CLASSES - 1])
    kept = confusion_matrix(top, top, MAX_CONFUSION_CLASSES)
    assert kept is not None and kept.shape == (MAX_CONFUSION_CLASSES,) * 2 and kept.sum() == 2


def test_wide_matrices_are_not_printed():
    matrix = np.eye(40, dtype=np.int64)
    assert format_confusion(matrix) == "confusion matrix: 40 x 40, in metrics.json (too wide to print)"
