"""Evaluating a trained network on labelled data: ``xpcnn evaluate CKPT --data X``, as a library
function::

    from xpcnn import resolve
    from xpcnn.tools.evaluate import evaluate

    report = evaluate("runs/latest/checkpoint.npz", "my_test.npz", resolve("numpy"))
    report.accuracy, report.loss, report.precision, report.recall, report.confusion

The checkpoint is read and checked whole (:mod:`xpcnn.training.snapshot`), its network (a preset's,
a spec's or one built in Python) runs in inference mode on any backend with the run's preprocessing
(pixels scaled to [0, 1], its normalisation), and the loss is the run's own (softmax cross-entropy,
BCE or MSE).  Which images: the data's test split when it has one, else all its labelled images
(training and validation); ``split`` chooses.  For class k, precision = TP_k / (TP_k + FP_k) (the
images predicted as k that are k) and recall = TP_k / (TP_k + FN_k) (the images of class k found);
None where the denominator is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from xpcnn import data as datasets
from xpcnn.backends import Backend
from xpcnn.data.targets import class_names as task_class_names
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.training.metrics import PRINTED_CONFUSION_CLASSES
from xpcnn.training.trainer import Trainer

SPLITS = ("auto", "test", "validation", "train", "all")


@dataclass
class Report:
    """An evaluation: loss and accuracy over ``images``, per class precision and recall, the
    confusion matrix (``confusion[t, p]``: images of class t predicted as p; None for more classes
    than :data:`~xpcnn.training.metrics.MAX_CONFUSION_CLASSES`) and the class names."""

    checkpoint: str
    data: str
    split: str
    images: int
    loss: float
    accuracy: float
    class_names: list[str]
    precision: list[float | None]
    recall: list[float | None]
    confusion: np.ndarray | None
    support: list[int]  # images of each class

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "data": self.data, "split": self.split, "images": self.images,
                "loss": self.loss, "accuracy": self.accuracy, "class_names": self.class_names,
                "precision": self.precision, "recall": self.recall, "support": self.support,
                "confusion_matrix": None if self.confusion is None else self.confusion.tolist()}

    def __str__(self) -> str:
        width = max(6, *(len(name) + 1 for name in self.class_names))
        lines = [f"{self.checkpoint} on {self.data} ({self.split}, {self.images} images): accuracy "
                 f"{self.accuracy:.4f}, loss {self.loss:.4f}", "",
                 "class".ljust(width) + "precision    recall   images"]
        for k, name in enumerate(self.class_names):
            lines.append(name.ljust(width) + f"{_ratio(self.precision[k]):>9}  {_ratio(self.recall[k]):>8}  "
                         f"{self.support[k]:>7}")
        if self.confusion is None or len(self.class_names) > PRINTED_CONFUSION_CLASSES:
            return "\n".join([*lines, "", f"confusion matrix: {len(self.class_names)} classes, too many to print"
                               + (" (in --json)" if self.confusion is not None else "")])
        lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                  " " * width + "".join(name.rjust(width) for name in self.class_names)]
        lines += [name.ljust(width) + "".join(f"{int(v):>{width}d}" for v in row)
                  for name, row in zip(self.class_names, self.confusion)]
        return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def precision_recall(truth: np.ndarray, predicted: np.ndarray,
                     classes: int) -> tuple[list[float | None], list[float | None]]:
    """Per class TP / (TP + FP) and TP / (TP + FN) of class indices ``predicted`` against ``truth``
    (None for 0 / 0)."""
    hits = np.bincount(truth[truth == predicted], minlength=classes).astype(np.float64)
    predicted, actual = np.bincount(predicted, minlength=classes), np.bincount(truth, minlength=classes)
    precision = [float(h / p) if p else None for h, p in zip(hits, predicted)]
    recall = [float(h / a) if a else None for h, a in zip(hits, actual)]
    return precision, recall


def choose_split(dataset: datasets.Dataset, split: str) -> tuple[str, datasets.Split]:
    """(its name, the split) of ``dataset`` that ``split`` asks for (module docstring); raises DataError."""
    if split not in SPLITS:
        raise datasets.DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "auto":
        split = "test" if dataset.test is not None and len(dataset.test) else "all"
    if split == "all":
        parts = [s for s in (dataset.train, dataset.validation) if s is not None and len(s)]
        if not parts:
            raise datasets.DataError(f"{dataset.source} has no training or validation images")
        return "all", datasets.Split(np.concatenate([s.images for s in parts]),
                                     np.concatenate([s.labels for s in parts]))
    chosen = getattr(dataset, split)
    if chosen is None or not len(chosen):
        raise datasets.DataError(f"{dataset.source} has no {split} split")
    return split, chosen


def evaluate(checkpoint: str | os.PathLike, data: str, backend: Backend, split: str = "auto",
             layout: str = "auto") -> Report:
    """Evaluate the checkpoint's network on ``data`` (any ``--data`` spec) on ``backend``.  Raises
    CheckpointError for the checkpoint, DataError for the data (one line each)."""
    with Trainer.from_checkpoint(checkpoint, backend) as trainer:
        config = trainer.config
        dataset = datasets.load(data, layout=layout, classes=config.classes)
        if dataset.image_shape != config.image_shape:
            raise datasets.DataError(f"{data}: images are {datasets.shape_text(dataset.image_shape)}, the network "
                                     f"was trained on {datasets.shape_text(config.image_shape)}")
        if dataset.classes != config.classes:
            raise datasets.DataError(f"{data}: {dataset.classes} classes, the network was trained on "
                                     f"{config.classes}")
        name, chosen = choose_split(dataset, split)
        result = trainer.test(chosen)
        names = task_class_names(config.task, config.classes, trainer.class_names or
                                 (list(dataset.class_names) if dataset.class_names else None))
    classes = len(names)
    truth, predicted = result.truth.astype(np.int64), result.predicted.astype(np.int64)
    precision, recall = precision_recall(truth, predicted, classes)
    support = [int(n) for n in np.bincount(truth, minlength=classes)]
    return Report(str(checkpoint), str(data), name, len(chosen), float(result.loss), float(result.accuracy), names,
                  precision, recall, result.confusion, support)


__all__ = ["SPLITS", "CheckpointError", "Report", "choose_split", "evaluate", "precision_recall"]
