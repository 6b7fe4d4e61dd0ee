"""What an evaluation reports: loss, accuracy, predictions and the confusion matrix.

The K x K confusion matrix is kept only up to :data:`MAX_CONFUSION_CLASSES` classes (K = 1,000 is
8 MB of int64; K = 100,000 would be 75 GiB): beyond, it is left out of the evaluation and
``metrics.json`` and a notice says so; it is printed up to :data:`PRINTED_CONFUSION_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CONFUSION_CLASSES = 1000
PRINTED_CONFUSION_CLASSES = 30


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray | None:
    """``matrix[t, p]``: how many examples of class t were predicted as p; None when ``classes``
    is over :data:`MAX_CONFUSION_CLASSES`."""
    if classes > MAX_CONFUSION_CLASSES:
        return None
    flat = truth.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def format_confusion(matrix: np.ndarray | None, classes: int | None = None) -> str:
    """The matrix as a table; a one-line notice instead when it was not kept (``classes``: its K) or
    is too wide to read."""
    if matrix is None:
        return (f"confusion matrix: left out for {classes} classes (it is kept for at most "
                f"{MAX_CONFUSION_CLASSES})")
    classes = matrix.shape[0]
    if classes > PRINTED_CONFUSION_CLASSES:
        return f"confusion matrix: {classes} x {classes}, in metrics.json (too wide to print)"
    lines = ["confusion matrix (rows: true, columns: predicted)",
             "      " + "".join(f"{c:>6d}" for c in range(classes))]
    lines += [f"{r:>6d}" + "".join(f"{v:>6d}" for v in matrix[r]) for r in range(classes)]
    return "\n".join(lines)


@dataclass
class Evaluation:
    """The result of :meth:`Trainer.test <xpcnn.training.Trainer.test>` on one split; ``confusion``
    is None for more than :data:`MAX_CONFUSION_CLASSES` classes (``classes`` says how many)."""

    loss: float
    accuracy: float
    predicted: np.ndarray  # host class indices (0/1 for the binary task)
    truth: np.ndarray
    confusion: np.ndarray | None
    classes: int | None = None

    def as_dict(self) -> dict:
        """JSON-ready (without the per-image predictions)."""
        return {"accuracy": self.accuracy, "loss": self.loss, "images": int(len(self.truth)),
                "confusion_matrix": None if self.confusion is None else self.confusion.tolist()}

    def format_confusion(self) -> str:
        return format_confusion(self.confusion, self.classes)
