"""Extensions: everything the training loop does besides looping.

The loop (:meth:`Trainer.fit <xpcnn.training.Trainer.fit>`) calls each extension at these points;
an extension overrides the ones it needs (the model is Chainer's ``chainer.training.Extension``,
with events instead of triggers)::

    on_fit_start(trainer)            before the first step of a fit (also a resumed one)
    on_epoch_start(trainer)          before each epoch's first step (a resumed epoch too)
    on_step_start(trainer)           before each step (trainer.state counts the steps done before it)
    on_losses(trainer, values)       each time the loop reads step losses back from the device
                                     (host floats, in step order; not yet in trainer.state)
    on_epoch_end(trainer, record)    after each epoch; ``record`` is the epoch's entry in
                                     trainer.state.history, already counted in trainer.state.epoch
    on_interrupt(trainer)            a stop was requested (a signal): the loop raises Interrupted next
    on_fit_end(trainer)              after the last epoch, when training ended normally
    close()                          always, last (also after an exception)

Extensions run in order of ``priority`` (higher first), as in Chainer: ``WRITER`` extensions add
to what others read (the evaluator adds the validation metrics to the epoch's record; the divergence
check stops bad losses before anyone sees them), ``EDITOR`` ones change the run (the learning-rate
schedules of :mod:`~xpcnn.training.schedules`, early stop), ``READER`` ones report (progress bar,
printed lines, log files, checkpoints, plots).  Extensions that print or write files do so only on the main process
(``trainer.is_main``; data-parallel runs have one per rank).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from xpcnn.backends import to_numpy
from xpcnn.io.files import atomic_write, write_json

if TYPE_CHECKING:
    from xpcnn.data import Split
    from xpcnn.training.trainer import Trainer

PRIORITY_WRITER, PRIORITY_EDITOR, PRIORITY_READER = 300, 200, 100


class Diverged(RuntimeError):
    """The loss became NaN or infinite; names the epoch and step (both from 1)."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"training diverged: loss became {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


def _make_folder_of(path: str, trainer: Trainer) -> None:
    """Extensions that write files create the folder they write into (on the main process)."""
    if trainer.is_main:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


class Extension:
    """Does nothing at every event; subclasses override what they need."""

    priority = PRIORITY_READER

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_start(self, trainer: Trainer) -> None: ...
    def on_losses(self, trainer: Trainer, values: list[float]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def close(self) -> None: ...


# -- part of every run (the Trainer adds these from its Config, and the schedule it names:
# xpcnn.training.schedules) -------------------------------------------------------------------------

class DivergenceCheck(Extension):
    """Raises :class:`Diverged` at the first non-finite step loss (before it is recorded)."""

    priority = PRIORITY_WRITER + 50

    def on_losses(self, trainer: Trainer, values: list[float]) -> None:
        first = trainer.state.step_in_epoch - len(values)  # the values' first step, from 0
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise Diverged(trainer.state.epoch + 1, first + offset + 1, value)


class Evaluator(Extension):
    """Adds ``val_loss`` and ``val_accuracy`` on ``split`` to each epoch's record."""

    priority = PRIORITY_WRITER

    def __init__(self, split: Split | None, prefix: str = "val") -> None:
        self.split, self.prefix = split, prefix

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.split is not None and len(self.split):
            record[f"{self.prefix}_loss"], record[f"{self.prefix}_accuracy"] = trainer.evaluate(self.split)


# -- optional: the command line adds these, and so may any library user -----------------------------

class EarlyStopping(Extension):
    """Ends training after the epoch where ``monitor`` (a record key, e.g. ``val_loss``) has not
    improved by more than ``min_delta`` for ``patience`` epochs.  ``mode`` "min" or "max"."""

    priority = PRIORITY_EDITOR

    def __init__(self, monitor: str = "val_loss", patience: int = 3, mode: str = "min", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 1, got {patience!r}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, float(min_delta)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        # Decided from the history alone, so a resumed run decides exactly as an uninterrupted one.
        values = [entry.get(self.monitor) for entry in trainer.state.history]
        if any(v is None for v in values):
            raise ValueError(f"EarlyStopping: the epoch record has no {self.monitor!r} "
                             f"(keys: {', '.join(record)}); give the fit a validation split")
        sign = 1.0 if self.mode == "min" else -1.0
        best_epoch, best = 0, sign * values[0]
        for epoch, value in enumerate(values[1:], start=1):
            if sign * value < best - self.min_delta:
                best_epoch, best = epoch, sign * value
        if len(values) - 1 - best_epoch >= self.patience:
            trainer.stop_training = True
            trainer.notes.append(f"early stop after epoch {len(values)}: {self.monitor} last improved "
                                 f"at epoch {best_epoch + 1}")


class ProgressBar(Extension):
    """A tqdm bar per epoch on stderr, only on a terminal (elsewhere the printed epoch lines are
    the log); shows the running mean loss of the epoch."""

    bar: Any  # the epoch's tqdm bar, or None

    def __init__(self, stream: TextIO | None = None, force: bool = False) -> None:
        self.stream, self.force, self.bar = stream or sys.stderr, force, None

    def _enabled(self, trainer: Trainer) -> bool:
        return trainer.is_main and (self.force or self.stream.isatty())

    def on_epoch_start(self, trainer: Trainer) -> None:
        if not self._enabled(trainer):
            return
        from tqdm import tqdm

        self.close()
        steps = trainer.steps_per_epoch
        self.bar = tqdm(total=steps, initial=trainer.state.step_in_epoch, file=self.stream, leave=False,
                        desc=f"epoch {trainer.state.epoch + 1}/{trainer.config.epochs}", unit="step",
                        dynamic_ncols=True)

    def on_losses(self, trainer: Trainer, values: list[float]) -> None:
        if self.bar is not None:
            losses = trainer.epoch_losses() + list(values)
            self.bar.set_postfix_str(f"loss {np.mean(losses):.4f}", refresh=False)
            self.bar.update(len(values))

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_epoch(record: dict, epochs: int) -> str:
    """``epoch   3/12  loss 0.2317  val loss 0.1127  val acc 97.40%      7289 img/s    0.6s``."""
    val = (f"  val loss {record['val_loss']:.4f}  val acc {100 * record['val_accuracy']:5.2f}%"
           if record.get("val_accuracy") is not None else "")
    return (f"epoch {record['epoch']:3d}/{epochs}  loss {record['loss']:.4f}{val}  "
            f"{record['images_per_s']:8.0f} img/s  {record['seconds']:5.1f}s")


class PrintReport(Extension):
    """One line per epoch on ``stream`` (stdout): loss, validation metrics, speed, time."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.is_main:
            print(format_epoch(record, trainer.config.epochs), file=self.stream or sys.stdout, flush=True)
        for note in trainer.notes:
            if trainer.is_main:
                print(note, file=self.stream or sys.stdout, flush=True)
        trainer.notes.clear()


class LogReport(Extension):
    """The history as JSON lines (one epoch record a line) at ``path``, rewritten atomically after
    every epoch from ``trainer.state.history`` (so a resumed run's log is whole); with ``csv_path``
    also as CSV (a header of the records' keys, then one row per epoch; empty cells for null) for
    spreadsheets and pandas."""

    def __init__(self, path: str | os.PathLike, csv_path: str | os.PathLike | None = None) -> None:
        self.path = os.fspath(path)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)

    def on_fit_start(self, trainer: Trainer) -> None:
        _make_folder_of(self.path, trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.is_main:
            with atomic_write(self.path, "w") as handle:
                for entry in trainer.state.history:
                    handle.write(json.dumps(entry) + "\n")
            if self.csv_path is not None:
                columns = list(dict.fromkeys(key for entry in trainer.state.history for key in entry))
                with atomic_write(self.csv_path, "w") as handle:
                    writer = csv.DictWriter(handle, columns, lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(trainer.state.history)


class Checkpointer(Extension):
    """Saves a resumable checkpoint to ``path`` after every epoch and when a stop is requested."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        _make_folder_of(self.path, trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._save(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        if trainer.is_main:  # one writer; the others wait until the file is complete
            trainer.save(self.path)
        trainer.executor.barrier()


class FinalEvaluation(Extension):
    """After training: loss, accuracy and confusion matrix on ``split`` (the test set, or the
    validation split when there is none), into ``trainer.results['final']``; printed when
    ``verbose``."""

    priority = PRIORITY_WRITER

    def __init__(self, split: Split | None, label: str, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.split, self.label, self.verbose, self.stream = split, label, verbose, stream

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.split is None or not len(self.split):
            return
        evaluation = trainer.test(self.split)
        trainer.results["final"] = {"split": self.label, **evaluation.as_dict()}
        if self.verbose and trainer.is_main:
            out = self.stream or sys.stdout
            print(f"final {self.label} accuracy {100 * evaluation.accuracy:.2f}% (loss {evaluation.loss:.4f}, "
                  f"{len(self.split)} images)", file=out)
            print(evaluation.format_confusion(), file=out, flush=True)


class MetricsWriter(Extension):
    """``metrics.json`` after training: configuration, backend, data, time, history, step losses and
    the final evaluation (when a :class:`FinalEvaluation` ran)."""

    def __init__(self, path: str | os.PathLike, source: str = "") -> None:
        self.path, self.source = os.fspath(path), source

    def on_fit_start(self, trainer: Trainer) -> None:
        _make_folder_of(self.path, trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.is_main:
            write_json(self.path, trainer.metrics(self.source))


class PlotReport(Extension):
    """``curves.png``, ``filters.png`` and ``feature_maps.png`` in ``folder`` after training
    (matplotlib, the 'plot' extra); ``image`` (C, H, W) is the one whose feature maps are drawn.
    The last two need a first layer with 4-D weights (a convolution)."""

    def __init__(self, folder: str | os.PathLike, image: np.ndarray, source: str = "", verbose: bool = False) -> None:
        self.folder, self.image, self.source, self.verbose = os.fspath(folder), image, source, verbose

    def on_fit_start(self, trainer: Trainer) -> None:
        _make_folder_of(os.path.join(self.folder, "curves.png"), trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        from xpcnn.tools.plots import plot_run

        first = trainer.model.layers[0]
        weight = first.params.get("weight")
        convolves = weight is not None and len(weight.shape) == 4
        filters = to_numpy(weight) if convolves else None
        maps = to_numpy(first(trainer.to_batch(self.image[None])))[0] if convolves else None
        for path in plot_run(trainer.metrics(self.source), self.folder, filters, self.image, maps):
            if self.verbose:
                print(f"wrote {path}")


class Lambda(Extension):
    """An extension from plain functions: ``Lambda(on_epoch_end=lambda trainer, record: ...)``."""

    def __init__(self, priority: int = PRIORITY_READER, **hooks: Callable[..., object]) -> None:
        unknown = set(hooks) - {"on_fit_start", "on_epoch_start", "on_step_start", "on_losses", "on_epoch_end",
                                "on_interrupt", "on_fit_end", "close"}
        if unknown:
            raise TypeError(f"Lambda: unknown event(s) {', '.join(sorted(unknown))}")
        self.priority = priority
        for name, function in hooks.items():
            setattr(self, name, function)


def standard_extensions(out: str | os.PathLike | None = None, test: Split | None = None, test_label: str = "test",
                        source: str = "", verbose: bool = True, progress: bool = True,
                        plot_image: np.ndarray | None = None) -> list[Extension]:
    """What ``train.py`` adds to every run: a progress bar, a line per epoch, and with ``out`` a
    checkpoint, a JSON-lines log and ``metrics.json`` in that folder; the final evaluation on ``test``;
    plots when ``plot_image`` is given.  Library users get the command line's behaviour with
    ``Trainer(config, backend, extensions=standard_extensions(...))``."""
    extensions: list[Extension] = []
    if progress:
        extensions.append(ProgressBar())
    if verbose:
        extensions.append(PrintReport())
    if test is not None:
        extensions.append(FinalEvaluation(test, test_label, verbose=verbose))
    if out is not None:
        extensions += [Checkpointer(os.path.join(out, "checkpoint.npz")),
                       LogReport(os.path.join(out, "log.jsonl"), os.path.join(out, "log.csv")),
                       MetricsWriter(os.path.join(out, "metrics.json"), source)]
        if plot_image is not None:
            extensions.append(PlotReport(out, plot_image, source, verbose=verbose))
    return extensions
