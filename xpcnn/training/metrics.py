"""What an evaluation reports: loss, accuracy, predictions and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``matrix[t, p]``: how many examples of class t were predicted as p."""
    flat = truth.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def format_confusion(matrix: np.ndarray) -> str:
    classes = matrix.shape[0]
    lines = ["confusion matrix (rows: true, columns: predicted)",
             "      " + "".join(f"{c:>6d}" for c in range(classes))]
    lines += [f"{r:>6d}" + "".join(f"{v:>6d}" for v in matrix[r]) for r in range(classes)]
    return "\n".join(lines)


@dataclass
class Evaluation:
    """The result of :meth:`Trainer.test <xpcnn.training.Trainer.test>` on one split."""

    loss: float
    accuracy: float
    predicted: np.ndarray  # host class indices (0/1 for the binary task)
    truth: np.ndarray
    confusion: np.ndarray

    def as_dict(self) -> dict:
        """JSON-ready (without the per-image predictions)."""
        return {"accuracy": self.accuracy, "loss": self.loss, "images": int(len(self.truth)),
                "confusion_matrix": self.confusion.tolist()}

    def format_confusion(self) -> str:
        return format_confusion(self.confusion)
