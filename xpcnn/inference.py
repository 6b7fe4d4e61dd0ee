"""Applying a trained network: :class:`Predictor` loads a training checkpoint on any backend and
classifies images with the preprocessing the run was trained with (scaling of uint8 pixels to
[0, 1], the run's per-channel normalisation, no resizing), and :meth:`Predictor.classify` reads image files
(PNG/JPEG/BMP through Pillow) and array files (``.npy``, ``.npz``) and classifies them,
one problem per input and never a stop for the others.  ``xpcnn predict`` is the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpcnn.backends import Backend, to_numpy
from xpcnn.data import DataError
from xpcnn.data.inputs import read_images
from xpcnn.data.targets import class_names, class_probabilities
from xpcnn.data.transforms import stored_normalization
from xpcnn.training.builders import build_model
from xpcnn.training.snapshot import read as read_checkpoint


@dataclass
class Prediction:
    source: str  # the file, and the index within it for an array file ("digits.npy[3]")
    label: int | None = None
    name: str | None = None
    probability: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"input": self.source, "error": self.error}
        return {"input": self.source, "class": self.label, "name": self.name, "probability": self.probability}


class Predictor:
    """The network of a training checkpoint on ``backend``, ready to classify."""

    def __init__(self, checkpoint: str | os.PathLike, backend: Backend) -> None:
        saved = read_checkpoint(checkpoint)  # checked whole: a CheckpointError names the file and field
        self.config = config = saved.config
        model = build_model(config).to("numpy", dtype=config.dtype)
        model.load_state_dict(saved.model_state)
        self.model, self.backend = model.to(backend), backend
        self.normalize = stored_normalization(saved.normalization)
        self.names = class_names(config.task, config.classes, saved.class_names)

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, K) for host images (N, C, H, W) of the run's shape: softmax of the
        logits, or (1 - O, O) for the binary task's one sigmoid output."""
        from xpcnn.data import to_batch

        xp, out = self.backend.xp, []
        with self.model.inference():
            for start in range(0, len(images), batch_size):
                x = to_batch(images[start:start + batch_size], self.backend, self.config.dtype,
                             normalize=self.normalize)
                output = class_probabilities(xp, self.model(x), self.config.task)
                out.append(to_numpy(output).astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, len(self.names)))

    def predict(self, sources: list[str], images: np.ndarray) -> list[Prediction]:
        probabilities = self.probabilities(images)
        labels = probabilities.argmax(axis=1)
        return [Prediction(source, int(label), self.names[label], float(p[label]))
                for source, label, p in zip(sources, labels, probabilities)]

    def classify(self, paths: list[str], layout: str = "auto") -> list[Prediction]:
        """One :class:`Prediction` per image of each file, in order; a file that cannot be read or
        does not fit gets one Prediction with its error, and the others go on."""
        entries = [read_input(path, self.config.image_shape, layout) for path in paths]
        read = [index for index, (_, batch) in enumerate(entries) if isinstance(batch, np.ndarray)]
        answers = {}  # entry index -> its Predictions
        # One pass per pixel type: uint8 images are scaled by 1/255 on the way in, float ones are
        # taken as they are (as in training), so image files and float arrays never share a batch.
        for dtype in sorted({entries[index][1].dtype.str for index in read}):
            group = [index for index in read if entries[index][1].dtype.str == dtype]
            done = iter(self.predict([name for index in group for name in entries[index][0]],
                                     np.concatenate([entries[index][1] for index in group])))
            for index in group:
                answers[index] = [next(done) for _ in entries[index][0]]
        results: list[Prediction] = []
        for index, (_, batch) in enumerate(entries):
            results += answers[index] if index in answers else [batch]
        return results


def read_input(path: str, image_shape: tuple, layout: str = "auto") -> tuple[Any, Any]:
    """(names, images (n, C, H, W)) of one image or array file (:func:`xpcnn.data.inputs.read_images`),
    or (None, a Prediction with the error)."""
    try:
        return read_images(path, image_shape, layout)
    except DataError as exc:
        return None, Prediction(path, error=str(exc))


def format_prediction(prediction: Prediction) -> str:
    if prediction.error is not None:
        return f"{prediction.source}: error: {prediction.error.removeprefix(prediction.source + ': ')}"
    return f"{prediction.source}: {prediction.name} (class {prediction.label}, p={prediction.probability:.4f})"
