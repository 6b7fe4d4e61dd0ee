"""The Trainer: a loop that only loops.

Each epoch it shuffles the training images with a host generator (``numpy.random.Generator(seed + 1)``,
so every backend sees the same batches), augments each batch from (seed, epoch, step), and hands the
batch to the step executor (:mod:`~xpcnn.training.executors`), which runs forward, backward and the
update and returns the loss on the device.  Every ``sync_every`` steps the loop reads the pending
losses in one transfer and passes them to the extensions (:mod:`~xpcnn.training.extensions`), which do
everything else: learning-rate schedule, divergence check, validation, progress, logs, checkpoints,
plots, early stop.  Nothing inside a step reads back from the device.

A run stopped by a signal (``trainer.stop_requested = True``, which :func:`stop_on_signals` sets)
ends after the current step with :class:`Interrupted`, once the extensions had their
``on_interrupt`` (the checkpointer saves then); :meth:`Trainer.resume` continues it bitwise where
it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np

from xpcnn.backends import Array, Backend, to_numpy
from xpcnn.data import Split, batch_indices, channel_stats, targets_to_batch, task_targets, to_batch
from xpcnn.data.targets import predicted_classes, target_classes
from xpcnn.data.transforms import shift_batch, stored_normalization
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.nn.base import Layer
from xpcnn.nn.sequential import Sequential
from xpcnn.training import snapshot
from xpcnn.training.builders import build_loss, build_model, build_optimizer
from xpcnn.training.config import Config, ResumeMismatch, resume_config
from xpcnn.training.executors import StepExecutor, default_executor
from xpcnn.training.extensions import DivergenceCheck, Evaluator, Extension
from xpcnn.training.metrics import Evaluation, confusion_matrix
from xpcnn.training.schedules import ReduceOnPlateau, schedule_from_config


class Interrupted(RuntimeError):
    """Training stopped on request (a signal) after a step; a checkpoint was saved if asked for."""


@dataclass
class TrainState:
    """Where a run stands; all of it goes into checkpoints."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    global_step: int = 0
    epoch_rng_state: dict | None = None  # shuffle generator at the start of the current epoch
    history: list = field(default_factory=list)  # one record (dict) per completed epoch
    step_losses: list = field(default_factory=list)  # every step's loss, read back from the device
    train_size: int | None = None  # training images per epoch (checked on resume)
    normalization: dict | None = None  # {"mean": [...], "std": [...]} per channel, from the training split


def last_batch_problem(model: Layer, images: int, batch_size: int) -> str | None:
    """Why ``model`` cannot train on ``images`` in batches of ``batch_size``, or None: a layer that
    normalises each feature over the batch alone (BatchNorm1D) needs two images in every batch, and
    the last batch of each epoch would hold one.  Said before the first step, not after an epoch."""
    if images % batch_size != 1:
        return None
    for index, layer in enumerate(getattr(model, "layers", ())):
        if layer.BATCH_STATISTICS == (0,):
            return (f"layer {index} ({layer.name}) normalises each feature over the batch, and the last batch of "
                    f"every epoch would hold 1 image ({images} training images in batches of {batch_size}): "
                    f"choose a batch size that leaves at least 2")
    return None


def _validates(extension: Extension) -> bool:
    """Whether ``extension`` adds a validation loss to each epoch's record (what plateau follows)."""
    return (isinstance(extension, Evaluator) and extension.prefix == "val" and extension.split is not None
            and len(extension.split) > 0)


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[dict]:
    """Within: SIGINT or SIGTERM asks ``trainer`` to stop after the current step (its
    checkpointer saves, then ``fit`` raises Interrupted); a second one ends the process at once.
    Yields ``{"signal": signum}`` once one came.  Only the main thread can take signals: elsewhere
    this does nothing."""
    caught: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        caught["signal"] = signum
        if hasattr(trainer.executor, "signal"):  # data-parallel: the ranks agree on which signal
            trainer.executor.signal = signum
        trainer.stop_requested = True
        signal.signal(signum, signal.SIG_DFL)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Trainer:
    """Trains ``model`` (default: the config's preset network) on one backend.

    ``executor`` runs each step (default: :func:`~xpcnn.training.executors.default_executor` with
    ``threads``/``chunk``, the executor of ``train.py``'s default command); ``extensions`` add to
    the ones every run has: the config's learning-rate schedule (``self.schedule``, from
    :mod:`~xpcnn.training.schedules`) and the divergence check.
    ``with Trainer(...) as trainer:`` closes the executor at the end (or call :meth:`close`)."""

    def __init__(self, config: Config, backend: Backend, model: Sequential | None = None, *,
                 executor: StepExecutor | None = None, extensions: Iterable[Extension] = (), sync_every: int = 20,
                 threads: int | None = None, chunk: int | None = None) -> None:
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"Trainer: sync_every must be an integer >= 1, got {sync_every!r}")
        self.config, self.backend, self.sync_every = config, backend, sync_every
        self.model = (model or build_model(config)).to(backend, dtype=config.dtype)
        self.loss_fn = build_loss(config)
        self.optimizer = build_optimizer(config)
        self.rng = np.random.default_rng(config.seed + 1)
        self.state = TrainState()
        self.stop_requested = False  # set from a signal handler: stop after this step
        self.stop_training = False  # set by an extension (early stop): stop after this epoch
        self.notes: list[str] = []  # messages from extensions for the printed log
        self.results: dict = {}  # what on_fit_end extensions computed (the final evaluation)
        self.class_names: list | None = None  # names of the classes, when the data has them (checkpoints keep them)
        self.data_source: str | None = None  # the --data trained on, when known (checkpoints keep it for --resume)
        self.steps_per_epoch = 0
        if executor is not None and (threads is not None or chunk is not None):
            raise ValueError("Trainer: threads and chunk choose the default executor; give them to the executor "
                             "instead (executor= was given)")
        self.executor = executor or default_executor(backend, self.model, threads, chunk)
        self.executor.bind(self.model, self.loss_fn, self.optimizer, backend, config.dtype)
        self.schedule = schedule_from_config(config)  # sets optimizer.lr before every step
        self.extensions = [self.schedule, DivergenceCheck(), *extensions]

    @property
    def is_main(self) -> bool:
        """False on every data-parallel rank but one: extensions print and write only where True."""
        return self.executor.is_main

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def normalize(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) per channel that every batch is normalised with, or None."""
        return stored_normalization(self.state.normalization)

    def to_batch(self, images: np.ndarray) -> Array:
        """Host images -> the device batch the model takes (scaled, normalised as in training)."""
        return to_batch(images, self.backend, self.config.dtype, normalize=self.normalize)

    # -- one step ---------------------------------------------------------------
    def step(self, images: np.ndarray, targets: np.ndarray) -> Array:
        """Forward, backward and update on one host batch; returns the loss as a device array.
        A model with Dropout gets the step's noise, drawn on the host from (seed, epoch, step)."""
        from xpcnn.training.noise import step_noise

        noise = step_noise(self.model, images, self.config.seed, self.state.epoch, self.state.step_in_epoch,
                           self.config.dtype)
        batch = (self.executor.to_device(images, targets, noise=noise) if noise
                 else self.executor.to_device(images, targets))
        return self.executor.step(batch)

    # -- the loop ---------------------------------------------------------------------
    def fit(self, train: Split, validation: Split | None = None, extensions: Iterable[Extension] = ()) -> list:
        """Train until ``config.epochs`` are done, continuing from ``self.state``; returns the
        history.  ``validation`` adds an :class:`Evaluator`; ``extensions`` join the trainer's for
        this fit.  Raises :class:`Diverged` or :class:`Interrupted`."""
        cfg = self.config
        if cfg.train_count is not None:
            train = train.take(cfg.train_count)
        if len(train) == 0:
            raise ValueError("Trainer.fit: no training images")
        problem = last_batch_problem(self.model, len(train), cfg.batch_size)
        if problem:
            raise ValueError(f"Trainer.fit: {problem}")
        if self.state.train_size is not None and self.state.train_size != len(train):
            raise CheckpointError(f"the checkpoint's run trained on {self.state.train_size} images per epoch; "
                                  f"this data has {len(train)}: resume on the same data")
        if tuple(train.images.shape[1:]) != tuple(cfg.image_shape):
            raise ValueError(f"Trainer.fit: the images are {tuple(train.images.shape[1:])}, the config's image_shape "
                             f"{tuple(cfg.image_shape)}")
        self.state.train_size = len(train)
        if cfg.normalize and self.state.normalization is None:  # once per run: resumes keep the numbers
            mean, std = channel_stats(train)
            self.state.normalization = {"mean": mean.tolist(), "std": std.tolist()}
        self.executor.normalize = self.normalize
        targets = task_targets(train.labels, cfg.task, cfg.classes)
        everything = self.extensions + ([Evaluator(validation)] if validation is not None else []) + list(extensions)
        everything.sort(key=lambda extension: -extension.priority)  # stable: equal priorities keep their order
        if any(isinstance(e, ReduceOnPlateau) for e in everything) and not any(map(_validates, everything)):
            raise ValueError("Trainer.fit: the plateau schedule reduces the learning rate on the validation loss; "
                             "give the fit a validation split: fit(train, validation)")
        self.stop_training, started = False, time.perf_counter()
        try:
            with self.executor.running():
                self._call(everything, "on_fit_start")
                while self.state.epoch < cfg.epochs and not self.stop_training:
                    self._epoch(train, targets, everything)
            self.results["train_seconds"] = time.perf_counter() - started
            self._call(everything, "on_fit_end")
        finally:
            for extension in everything:
                extension.close()
        return self.state.history

    def _epoch(self, train: Split, targets: np.ndarray, extensions: list[Extension]) -> None:
        cfg, state = self.config, self.state
        if state.step_in_epoch == 0:
            state.epoch_rng_state = dict(self.rng.bit_generator.state)
        else:  # resuming mid-epoch: replay the epoch's shuffle (a checkpoint taken mid-epoch holds it)
            assert state.epoch_rng_state is not None
            self.rng.bit_generator.state = state.epoch_rng_state
        batches = batch_indices(len(train), cfg.batch_size, self.rng)
        if state.step_in_epoch >= len(batches):
            raise CheckpointError(f"the checkpoint stands at step {state.step_in_epoch} of an epoch that has "
                                  f"{len(batches)} steps here: resume on the same data")
        self.steps_per_epoch = len(batches)
        self._call(extensions, "on_epoch_start")
        started, pending = time.perf_counter(), []
        images_before = sum(len(b) for b in batches[:state.step_in_epoch])
        for index in range(state.step_in_epoch, len(batches)):
            batch = batches[index]
            self._call(extensions, "on_step_start")  # (the schedule sets this step's learning rate)
            images = shift_batch(train.images[batch], cfg.shift, cfg.seed, state.epoch, index)
            pending.append(self.step(images, targets[batch]))
            state.step_in_epoch, state.global_step = index + 1, state.global_step + 1
            if len(pending) >= self.sync_every or index + 1 == len(batches) or self.stop_requested:
                self._sync(pending, extensions)
                pending = []
            if self.executor.should_stop(self.stop_requested):  # every process stops after the same step
                if pending:
                    self._sync(pending, extensions)
                self._call(extensions, "on_interrupt")
                raise Interrupted(f"interrupted at epoch {state.epoch + 1}, step {index + 1}")
        seconds = time.perf_counter() - started
        losses = self.epoch_losses()  # includes steps before a resume
        record = {"epoch": state.epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan,
                  "val_loss": None, "val_accuracy": None,
                  "images_per_s": (len(train) - images_before) / seconds if seconds else math.inf, "seconds": seconds}
        state.history.append(record)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        self._call(extensions, "on_epoch_end", record)

    def _sync(self, pending: list, extensions: list[Extension]) -> None:
        """Read the pending device losses in one transfer, show them to the extensions (the
        divergence check stops at the first non-finite one), then record them."""
        values = to_numpy(self.backend.xp.stack(pending)).astype(np.float64).tolist()
        self._call(extensions, "on_losses", values)
        self.state.step_losses += values

    def _call(self, extensions: list[Extension], event: str, *args) -> None:
        for extension in extensions:
            getattr(extension, event)(self, *args)

    def epoch_losses(self) -> list[float]:
        """The recorded step losses of the current epoch (those read back so far)."""
        start = self.state.global_step - self.state.step_in_epoch
        return self.state.step_losses[start:]

    # -- evaluation -----------------------------------------------------------------------
    def _classes(self, output: Array) -> np.ndarray:
        """Host class predictions from a batch of outputs (the task rule: argmax, or O > 0.5)."""
        return to_numpy(predicted_classes(self.backend.xp, output, self.config.task)).astype(np.int64)

    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Host predictions: class indices (multiclass) or 0/1 (binary)."""
        with self.model.inference():
            out = [self._classes(self.model(self.to_batch(images[start:start + batch_size])))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def evaluate(self, split: Split, batch_size: int = 500, predictions: bool = False) -> tuple:
        """(mean loss, accuracy) on a split; with ``predictions=True`` also the host predictions."""
        targets = task_targets(split.labels, self.config.task, self.config.classes)
        starts = range(0, len(split), batch_size)
        parts = []  # (loss x batch size, predictions) of each batch this process evaluates
        with self.model.inference():
            for start in (starts[index] for index in self.executor.evaluation_batches(len(starts))):
                output = self.model(self.to_batch(split.images[start:start + batch_size]))
                batch_targets = targets_to_batch(targets[start:start + batch_size], self.backend, self.config.dtype)
                parts.append((float(to_numpy(self.loss_fn(output, batch_targets))) * output.shape[0],
                              self._classes(output)))
        loss_sum, batches = 0.0, []
        for batch_loss, batch_predicted in self.executor.gather_evaluation(parts):  # every batch, in order
            loss_sum += batch_loss
            batches.append(batch_predicted)
        predicted = np.concatenate(batches)
        truth = target_classes(targets, self.config.task)
        result = (loss_sum / len(split), float(np.mean(predicted == truth)))
        return (*result, predicted) if predictions else result

    def test(self, split: Split) -> Evaluation:
        """Loss, accuracy, predictions and confusion matrix on ``split`` (the final evaluation)."""
        loss, accuracy, predicted = self.evaluate(split, predictions=True)
        targets = task_targets(split.labels, self.config.task, self.config.classes)
        truth = target_classes(targets, self.config.task)
        classes = self.config.outputs if self.config.outputs > 1 else 2
        return Evaluation(loss, accuracy, predicted, truth, confusion_matrix(truth, predicted, classes), classes)

    def metrics(self, source: str = "") -> dict:
        """The run's record for ``metrics.json``."""
        metrics = {"config": self.config.__dict__.copy(), "backend": self.backend.label, "data": source,
                   "train_seconds": self.results.get("train_seconds"), "history": self.state.history,
                   "step_losses": self.state.step_losses}
        if "final" in self.results:
            metrics["final"] = self.results["final"]
        return metrics

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """A resumable checkpoint (parameters, optimizer state, RNG state, history), written atomically."""
        from xpcnn.io import checkpoint

        checkpoint.save(path, self.model.state_dict(), self.optimizer.state_dict(), snapshot.meta_record(self))

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint made on any backend.  The checkpoint is checked whole first
        (:mod:`~xpcnn.training.snapshot`); its run must be this trainer's (the same configuration up
        to ``epochs``).  On any problem a CheckpointError is raised and nothing changes."""
        saved = snapshot.read(path)
        mine = json.loads(json.dumps(self.model.config()))
        if saved.architecture != mine:
            raise CheckpointError(f"{path}: architecture {snapshot.layer_names(saved.architecture)} does not match "
                                  f"this model {snapshot.layer_names(mine)}")
        try:  # (a network built in Python is stored as its layer records: snapshot.run_config)
            resume_config(saved.config, **snapshot.run_config(self.config, self.model).__dict__)
        except ResumeMismatch as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if saved.epoch > self.config.epochs:
            raise CheckpointError(f"{path}: the checkpoint has {saved.epoch} epochs done, more than this run's "
                                  f"{self.config.epochs}")
        try:
            self.model.load_state_dict(saved.model_state)
            self.optimizer.load_state_dict(saved.optimizer_state, self.model)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        self.rng.bit_generator.state = saved.rng_state
        self.class_names = saved.class_names
        self.data_source = saved.data_source
        self.state = TrainState(saved.epoch, saved.step_in_epoch, saved.global_step, saved.epoch_rng_state,
                                saved.history, saved.step_losses, saved.train_size, saved.normalization)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, backend: Backend, epochs: int | None = None,
                        **options: Any) -> Trainer:
        """A Trainer that continues the checkpoint's run (optionally for ``epochs`` in all): the resume
        policy is that only the number of epochs may change.  ``options`` go to the constructor."""
        config = resume_config(snapshot.read(path).config, epochs=epochs)
        trainer = cls(config, backend, **options)
        try:
            trainer.resume(path)
        except BaseException:
            trainer.close()
            raise
        return trainer


def config_from_checkpoint(path: str | os.PathLike) -> Config:
    """The configuration a checkpoint's run was made with (checked)."""
    return snapshot.read(path).config
