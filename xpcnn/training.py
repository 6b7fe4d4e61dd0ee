"""Training: presets, the training loop, evaluation, checkpoints and resuming.

The loop never reads a value back from the device inside a step: each step's
loss stays a 0-d device array, and the losses of the last ``sync_every`` steps are
read together (for the progress bar, the divergence check and the history).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import checkpoint as ckpt
from .backend import Backend, to_numpy
from .data import Split, batch_indices, targets_to_batch, task_targets, to_batch
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from .losses import LOSSES
from .model import Sequential
from .optim import SGD, Adam
from .parallel import SplitStep, single_threaded_blas


IMAGE_SHAPE = (1, 28, 28)


@dataclass
class Config:
    """Everything that defines a run (and is stored in its checkpoints)."""

    preset: str = "default"
    task: str = "multiclass"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "momentum"  # sgd | momentum | adam
    momentum: float = 0.9
    loss: str = "softmax_ce"
    init: str = "he"
    seed: int = 0
    dtype: str = "float32"
    train_count: int | None = None  # use only the first N training images (the article: 200)
    shift: int = 2  # augmentation: random translation of each training image by up to this many pixels
    lr_decay: float = 0.8  # the learning rate of epoch e (from 0) is lr * lr_decay ** e


PRESETS = {
    # conv 5x5 x16, ReLU, 2x2 max-pool, dense 2304 -> 10, softmax cross-entropy, SGD + momentum
    "default": Config(),
    # The article's network exactly: first 200 images, digit > 4, three 5x5 filters, sigmoid,
    # dense 1728 -> 1, sigmoid, 1/2 squared error, plain gradient descent, U[0, 1) initialisation.
    "article": Config(preset="article", task="binary", epochs=20, batch_size=200, lr=0.1, optimizer="sgd",
                      momentum=0.0, loss="mse", init="uniform", train_count=200, shift=0, lr_decay=1.0),
}


def build_model(config: Config) -> Sequential:
    """The preset's architecture, initialised on the host from ``config.seed``."""
    rng = np.random.default_rng(config.seed)
    if config.preset == "article":
        body, width, dense_init = [Conv2D(1, 3, 5, bias=False, init=config.init, rng=rng), Sigmoid(), Flatten()], 3 * 24 * 24, config.init
    elif config.preset == "default":
        body = [Conv2D(1, 16, 5, init=config.init, rng=rng), ReLU(), MaxPool2D(2), Flatten()]
        width, dense_init = 16 * 12 * 12, "glorot" if config.init == "he" else config.init
    else:
        raise ValueError(f"unknown preset {config.preset!r}; choose one of {', '.join(PRESETS)}")
    if config.task == "binary":  # one sigmoid output: O = sigma(W^T.A + b)
        model = Sequential(*body, Dense(width, 1, init=dense_init, rng=rng), Sigmoid())
    else:  # ten logits for softmax cross-entropy
        model = Sequential(*body, Dense(width, 10, init=dense_init, rng=rng))
    model.infer_shape(IMAGE_SHAPE)  # checks the geometry now, not at the first batch
    return model


def build_optimizer(config: Config):
    if config.optimizer == "sgd":
        return SGD(config.lr)
    if config.optimizer == "momentum":
        return SGD(config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return Adam(config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd, momentum or adam")


class Diverged(RuntimeError):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"training diverged: loss became {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


class Interrupted(RuntimeError):
    pass


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    val_loss: float | None
    val_accuracy: float | None
    images_per_s: float
    seconds: float


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    global_step: int = 0
    epoch_rng_state: dict | None = None  # shuffle RNG at the start of the current epoch
    history: list = field(default_factory=list)
    step_losses: list = field(default_factory=list)


class Trainer:
    """Trains ``model`` on one backend.  Shuffling uses a host
    ``numpy.random.Generator(config.seed + 1)``, so every backend sees the same batches.
    ``threads`` > 1 and ``chunk`` cut each batch into shares (:mod:`xpcnn.parallel`): faster on
    a CPU, the same step up to float rounding."""

    def __init__(self, config: Config, backend: Backend, model: Sequential | None = None, sync_every: int = 20,
                 threads: int = 1, chunk: int | None = None):
        self.config, self.backend, self.sync_every = config, backend, sync_every
        self.model = (model or build_model(config)).to(backend, dtype=config.dtype)
        self.loss_fn = LOSSES[config.loss]()
        self.optimizer = build_optimizer(config)
        self.rng = np.random.default_rng(config.seed + 1)
        self.state = TrainState()
        self.stop_requested = False
        # threads > 1 or a chunk size: each batch is cut into shares (xpcnn.parallel); the same
        # step up to float rounding, not part of the run's Config (a resume may choose others).
        self.threads = threads
        self.split = SplitStep(self.model, self.loss_fn, threads, chunk) if threads != 1 or chunk else None

    # -- one step -------------------------------------------------------------
    def step(self, images: np.ndarray, targets: np.ndarray):
        """Forward, backward and update on one host batch; returns the loss as a device array."""
        x = to_batch(images, self.backend, self.config.dtype)
        y = targets_to_batch(targets, self.backend, self.config.dtype)
        if self.split:
            loss = self.split(x, y)
        else:
            loss = self.loss_fn(self.model(x), y)
            self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.optimizer.step(self.model)
        return loss

    # -- the loop ---------------------------------------------------------------
    def fit(self, train: Split, validation: Split | None = None, progress=None, on_epoch=None,
            checkpoint_path=None):
        """Train until ``config.epochs`` are done, continuing from ``self.state``.
        ``progress(epoch, step, steps, running_loss)`` is called at each sync;
        ``on_epoch(record)`` after each epoch.  Raises :class:`Diverged` or
        :class:`Interrupted` (after saving a checkpoint when a path is given)."""
        with single_threaded_blas(self.backend) if self.threads > 1 else contextlib.nullcontext():
            return self._fit(train, validation, progress, on_epoch, checkpoint_path)

    def _fit(self, train, validation, progress, on_epoch, checkpoint_path):
        cfg, state = self.config, self.state
        if cfg.train_count is not None:
            train = train.take(cfg.train_count)
        targets = task_targets(train.labels, cfg.task)
        while state.epoch < cfg.epochs:
            if state.step_in_epoch == 0:
                state.epoch_rng_state = self.rng.bit_generator.state
            else:  # resuming mid-epoch: replay the epoch's shuffle
                self.rng.bit_generator.state = state.epoch_rng_state
            batches = batch_indices(len(train), cfg.batch_size, self.rng)
            self.optimizer.lr = cfg.lr * cfg.lr_decay ** state.epoch  # a function of the epoch: resume-safe
            started, pending = time.perf_counter(), []
            epoch_start = state.global_step - state.step_in_epoch  # index of the epoch's first step loss
            images_done = sum(len(b) for b in batches[:state.step_in_epoch])
            for index in range(state.step_in_epoch, len(batches)):
                batch = batches[index]
                images = train.images[batch]
                if cfg.shift:
                    images = random_shift(images, cfg.shift, np.random.default_rng([cfg.seed, state.epoch, index]))
                pending.append(self.step(images, targets[batch]))
                state.step_in_epoch, state.global_step = index + 1, state.global_step + 1
                if len(pending) >= self.sync_every or index + 1 == len(batches) or self.stop_requested:
                    self._sync(pending, index + 1 - len(pending))
                    pending = []
                    if progress:
                        progress(state.epoch + 1, index + 1, len(batches), float(np.mean(state.step_losses[epoch_start:])))
                if self.stop_requested:
                    if checkpoint_path:
                        self.save(checkpoint_path)
                    raise Interrupted(f"interrupted at epoch {state.epoch + 1}, step {index + 1}")
            seconds = time.perf_counter() - started
            images_done = len(train) - images_done
            val_loss, val_acc = self.evaluate(validation) if validation is not None and len(validation) else (None, None)
            epoch_losses = state.step_losses[epoch_start:]  # includes steps before a resume
            record = EpochRecord(state.epoch + 1, float(np.mean(epoch_losses)) if epoch_losses else math.nan,
                                 val_loss, val_acc, images_done / seconds if seconds else math.inf, seconds)
            state.history.append(asdict(record))
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            if checkpoint_path:
                self.save(checkpoint_path)
            if on_epoch:
                on_epoch(record)
        return state.history

    def _sync(self, pending, first_step: int) -> None:
        """Read the pending device losses in one transfer; stop on the first non-finite one."""
        xp = self.backend.xp
        values = to_numpy(xp.stack(pending)).astype(np.float64).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise Diverged(self.state.epoch + 1, first_step + offset + 1, value)
        self.state.step_losses += values

    # -- evaluation -----------------------------------------------------------------
    def _classes(self, output) -> np.ndarray:
        """Host class predictions from a batch of outputs: argmax, or O > 0.5 for one sigmoid output."""
        if self.config.task == "binary":
            return to_numpy(output[:, 0] > 0.5).astype(np.int64)
        return to_numpy(self.backend.xp.argmax(output, axis=1)).astype(np.int64)

    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Host predictions: class indices (multiclass) or 0/1 (binary)."""
        with self.model.inference():
            out = [self._classes(self.model(to_batch(images[start:start + batch_size], self.backend, self.config.dtype)))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def evaluate(self, split: Split, batch_size: int = 500, predictions: bool = False):
        """(mean loss, accuracy) on a split; with ``predictions=True`` also the host predictions."""
        targets = task_targets(split.labels, self.config.task)
        loss_sum, predicted = 0.0, []
        with self.model.inference():
            for start in range(0, len(split), batch_size):
                output = self.model(to_batch(split.images[start:start + batch_size], self.backend, self.config.dtype))
                batch_targets = targets_to_batch(targets[start:start + batch_size], self.backend, self.config.dtype)
                loss_sum += float(to_numpy(self.loss_fn(output, batch_targets))) * output.shape[0]
                predicted.append(self._classes(output))
        predicted = np.concatenate(predicted)
        truth = targets[:, 0].astype(np.int64) if self.config.task == "binary" else targets
        result = (loss_sum / len(split), float(np.mean(predicted == truth)))
        return (*result, predicted) if predictions else result

    # -- checkpoints -------------------------------------------------------------------
    def save(self, path) -> None:
        meta = {
            "config": asdict(self.config),
            "architecture": self.model.config(),
            "dtype": self.config.dtype,
            "backend": self.backend.label,
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "global_step": self.state.global_step,
            "rng_state": self.rng.bit_generator.state,
            "epoch_rng_state": self.state.epoch_rng_state,
            "history": self.state.history,
            "step_losses": self.state.step_losses,
        }
        ckpt.save(path, self.model.state_dict(), self.optimizer.state_dict(), meta)

    def resume(self, path) -> None:
        """Continue from a checkpoint (made on any backend).  Architecture and dtype
        must match; everything is checked before anything changes."""
        model_state, optimizer_state, meta = ckpt.load(path)
        mine = json.loads(json.dumps(self.model.config()))  # tuples -> lists, as stored
        if meta["architecture"] != mine:
            raise ckpt.CheckpointError(f"{path}: architecture {_layers(meta['architecture'])} does not match this "
                                       f"model {_layers(mine)}")
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state, self.model)
        except ValueError as exc:
            raise ckpt.CheckpointError(f"{path}: {exc}") from None
        self.rng.bit_generator.state = meta["rng_state"]
        self.state = TrainState(meta["epoch"], meta["step_in_epoch"], meta["global_step"], meta["epoch_rng_state"],
                                meta["history"], meta["step_losses"])


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each uint8 image by a random (dy, dx) in [-max_shift, max_shift], filling with 0.
    The generator is seeded from (seed, epoch, step), so a resumed run draws the same shifts."""
    n, h, w = images.shape
    padded = np.zeros((n, h + 2 * max_shift, w + 2 * max_shift), dtype=images.dtype)
    padded[:, max_shift:max_shift + h, max_shift:max_shift + w] = images
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]  # (n, h)
    cols = dx[:, None] + np.arange(w)[None, :]  # (n, w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _layers(config: list[dict]) -> str:
    return "-".join(entry["type"] for entry in config) + f" ({sum(1 for _ in config)} layers)" if config else "[]"


def config_from_checkpoint(path) -> Config:
    _, _, meta = ckpt.load(path)
    return Config(**meta["config"])


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    flat = truth.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)
