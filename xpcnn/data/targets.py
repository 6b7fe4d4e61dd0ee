"""The task rule, in one place: what a network learns from a dataset's labels.

==============  =========================  ==================  ==============================
task            targets from labels        network outputs     predicted class
==============  =========================  ==================  ==============================
``binary``      1.0 where digit > 4,       1 (sigmoid O)       1 where O > 0.5
                else 0.0, shape (N, 1)
``multiclass``  the labels, int64 (N,)     K logits            argmax of the logits
==============  =========================  ==================  ==============================

``binary`` is the article's task (is the MNIST digit greater than 4?), so it needs the 10 digit
classes. Every other module asks this one (Config for the outputs and the loss, the Trainer for
targets and predictions, the Predictor for probabilities and names) instead of testing the task
name itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpcnn.data.dataset import DataError

TASKS = ("binary", "multiclass")
BINARY_CLASSES = 10  # the article's task splits the ten MNIST digits
BINARY_NAMES = ["digit <= 4", "digit > 4"]


def is_binary(task: str) -> bool:
    """Whether ``task`` is the article's one-sigmoid-output task."""
    return task == "binary"


def task_outputs(task: str, classes: int) -> int:
    """Width of the network's last layer: one sigmoid output (binary) or K logits."""
    return 1 if is_binary(task) else classes


def task_loss(task: str, loss: str) -> str:
    """The loss a task trains with: ten logits take softmax cross-entropy, one sigmoid output BCE
    (or the article's MSE, when asked for)."""
    if not is_binary(task):
        return "softmax_ce"
    return "bce" if loss == "softmax_ce" else loss


def task_targets(labels: np.ndarray, task: str, classes: int = 10) -> np.ndarray:
    """Host targets: ``binary`` -> float (N, 1) with 1 where digit > 4 (the article's task; only
    for K = 10 classes); ``multiclass`` -> int64 class labels (N,) in 0..classes-1."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must have shape (N,), got {labels.shape}")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if is_binary(task) and classes != BINARY_CLASSES:
        raise DataError(f"task 'binary' (the article's digit > 4) needs 10 classes, the data has {classes}: "
                        f"use task 'multiclass'")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels must lie in 0-{classes - 1} for task {task!r}, found "
                        f"{int(labels.min())}-{int(labels.max())}")
    if is_binary(task):
        return (labels > 4).astype(np.float64)[:, None]
    return labels.astype(np.int64)


def target_classes(targets: np.ndarray, task: str) -> np.ndarray:
    """The class index of each host target (0/1 for binary), to compare predictions with."""
    return targets[:, 0].astype(np.int64) if is_binary(task) else targets


def predicted_classes(xp: Any, output: Any, task: str) -> Any:
    """Device class predictions from a batch of network outputs: O > 0.5 or the argmax."""
    return output[:, 0] > 0.5 if is_binary(task) else xp.argmax(output, axis=1)


def class_probabilities(xp: Any, output: Any, task: str) -> Any:
    """Class probabilities (N, K) on the device: (1 - O, O) for one sigmoid output, else the softmax
    of the logits (shifted by their maximum: no overflow)."""
    if is_binary(task):
        p = output[:, 0:1]
        return xp.concat([1.0 - p, p], axis=1)
    exp = xp.exp(output - xp.max(output, axis=1, keepdims=True))
    return exp / xp.sum(exp, axis=1, keepdims=True)


def class_names(task: str, classes: int, names: list[str] | None = None) -> list[str]:
    """Printable class names: the two halves of the binary task, the data's names, or 0..K-1."""
    if is_binary(task):
        return list(BINARY_NAMES)
    return list(names) if names else [str(k) for k in range(classes)]
