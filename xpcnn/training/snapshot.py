"""A training run's checkpoint record: what :meth:`Trainer.save` writes beside the parameters and
optimizer state, and the check of every field when it is read back.

The file is untrusted input (it may have been edited, damaged or made by another program):
:func:`read` checks every field of the meta record -- types, ranges, known preset, layer and
optimizer names, the random generator's kind and state, the step within the epoch, the history's
shape -- and the arrays against the architecture, before the caller changes anything.  Every
failure is a :class:`~xpcnn.io.checkpoint.CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from xpcnn.backends import DTYPES
from xpcnn.data import MAX_CLASS_NAME, DataError, check_normalize
from xpcnn.io import checkpoint as ckpt
from xpcnn.io.checkpoint import short_repr
from xpcnn.nn.sequential import Sequential
from xpcnn.training.builders import build_model, build_optimizer
from xpcnn.training.config import Config, ConfigError

if TYPE_CHECKING:
    from xpcnn.training.trainer import Trainer

HISTORY_KEYS = ("epoch", "loss", "val_loss", "val_accuracy", "images_per_s", "seconds")


@dataclass
class Snapshot:
    """A checked checkpoint: the run's configuration and where it stood."""

    config: Config
    architecture: list
    model_state: dict
    optimizer_state: dict
    epoch: int
    step_in_epoch: int
    global_step: int
    rng_state: dict
    epoch_rng_state: dict | None
    history: list
    step_losses: list
    train_size: int | None
    normalization: dict | None = None
    class_names: list | None = None
    data_source: str | None = None  # the --data the run trained on (absent from older checkpoints)

    def network(self) -> Sequential:
        """The checkpoint's network with its parameters (host NumPy, the run's dtype): built from
        the stored layer records, which :func:`read` checked against the config and the arrays."""
        model = Sequential.from_config(self.architecture).to("numpy", dtype=self.config.dtype)
        model.load_state_dict(self.model_state)
        return model


MAX_DATA_SOURCE = 4096  # characters of a stored --data


def compact_architecture(model: Sequential) -> str:
    """A network's layer records as compact JSON: what ``Config.model`` takes (a JSON architecture)."""
    return json.dumps(model.config(), separators=(",", ":"))


_STORED: dict[str, Config] = {}  # run_config's answers (a preset network is built once per config and network)


def run_config(config: Config, model: Sequential) -> Config:
    """The Config a checkpoint stores for ``model`` trained under ``config``: ``config`` itself when
    ``model`` is the network it describes (a preset's, a ``model`` spec's), else ``config`` with
    ``model`` set to the network's layer records (a network built in Python), so that the checkpoint
    rebuilds this network wherever it is read: resume, predict, evaluate, export."""
    records = compact_architecture(model)
    key = repr(sorted(config.__dict__.items())) + records
    if key not in _STORED:
        try:
            same = json.loads(json.dumps(build_model(config).config())) == json.loads(records)
        except (TypeError, ValueError, KeyError, RecursionError):  # the config's own network does not build
            same = False
        _STORED.clear()  # one entry: a run saves under one config
        _STORED[key] = config if same else dataclasses.replace(config, model=records)
    return _STORED[key]


def meta_record(trainer: Trainer) -> dict:
    state = trainer.state
    return {
        "config": run_config(trainer.config, trainer.model).__dict__.copy(),
        "architecture": trainer.model.config(),
        "dtype": trainer.config.dtype,
        "backend": trainer.backend.label,
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "rng_state": trainer.rng.bit_generator.state,
        "epoch_rng_state": state.epoch_rng_state,
        "history": state.history,
        "step_losses": state.step_losses,
        "train_size": state.train_size,
        "normalization": state.normalization,
        "class_names": trainer.class_names,
        "data_source": trainer.data_source,
    }


class _Fields:
    """Field checks that raise CheckpointError('<path>: <field> ...')."""

    def __init__(self, path: str | os.PathLike, meta: dict) -> None:
        self.path, self.meta = path, meta

    def fail(self, field: str, problem: str) -> NoReturn:
        raise ckpt.CheckpointError(f"{self.path}: {field} {problem}")

    def get(self, field: str) -> Any:
        if field not in self.meta:
            self.fail(field, "is missing")
        return self.meta[field]

    def integer(self, field: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be an integer, got {short_repr(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            self.fail(field, f"must lie in [{minimum}, {maximum if maximum is not None else 'inf'}], got {value}")
        return value

    def number(self, field: str, value: object, finite: bool = True, minimum: float | None = None,
               maximum: float | None = None, optional: bool = False) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be a number, got {short_repr(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            self.fail(field, f"must be a number within the float range, got {short_repr(value)}")
        if finite and not math.isfinite(value):
            self.fail(field, f"must be finite, got {value}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.fail(field, f"must lie in [{minimum}, {maximum}], got {value}")
        return value

    def rng_state(self, field: str, value: object) -> dict:
        if not isinstance(value, dict) or value.get("bit_generator") != "PCG64":
            self.fail(field, f"must be the state of a PCG64 generator, got {short_repr(value)}")
        inner = value.get("state")
        if (not isinstance(inner, dict) or set(inner) != {"state", "inc"}
                or not all(isinstance(inner[k], int) and not isinstance(inner[k], bool) and 0 <= inner[k] < 2 ** 128
                           for k in inner) or inner["inc"] % 2 != 1):
            self.fail(field, "holds no valid PCG64 state (state and odd inc, integers below 2**128)")
        if set(value) != {"bit_generator", "state", "has_uint32", "uinteger"}:
            self.fail(field, f"has keys {sorted(value)}, expected bit_generator, state, has_uint32, uinteger")
        self.integer(f"{field}.has_uint32", value["has_uint32"], 0, 1)
        self.integer(f"{field}.uinteger", value["uinteger"], 0, 2 ** 32 - 1)
        try:
            np.random.default_rng().bit_generator.state = value
        except (TypeError, ValueError) as exc:
            self.fail(field, f"is refused by NumPy ({exc})")
        return value


def read(path: str | os.PathLike) -> Snapshot:
    """Read and check a training checkpoint (module docstring)."""
    model_state, optimizer_state, meta = ckpt.load(path)
    f = _Fields(path, meta)
    values = f.get("config")
    try:
        config = Config.from_dict(values)
    except ConfigError as exc:
        f.fail(f"config.{exc.field}" if exc.field != "config" else "config", exc.problem)
    except TypeError as exc:  # a config that is not a mapping of names
        f.fail("config", f"is malformed ({exc})")
    except OverflowError:  # Config's float(value) of an integer beyond any float
        field = next((k for k, v in values.items() if isinstance(v, int) and abs(v) > 2 ** 1023), None)
        f.fail(f"config.{field}" if field else "config", "must be a number within the float range, got "
               + (short_repr(values[field]) if field else "an integer beyond it"))
    dtype = f.get("dtype")
    if dtype not in DTYPES or dtype != config.dtype:
        f.fail("dtype", f"must be the config's dtype {config.dtype!r}, got {short_repr(dtype)}")
    if not isinstance(f.get("backend"), str):
        f.fail("backend", f"must be a backend label, got {short_repr(meta['backend'])}")
    architecture = f.get("architecture")
    # The config's network is rebuilt under the checks a user's --model or --preset goes through
    # (the digest tells accidents, not edits): a spec, records or preset that does not build or does
    # not fit the images is this field's fault, never a traceback.
    source = "config.model" if config.model is not None else "config.preset"
    try:
        expected = json.loads(json.dumps(build_model(config).config()))  # tuples -> lists, as stored
    except (TypeError, ValueError, KeyError, RecursionError, OverflowError, MemoryError) as exc:
        f.fail(source, f"does not build a network for {config.image_shape} images and {config.outputs} "
                       f"output(s) ({exc if isinstance(exc, ValueError) else type(exc).__name__})")
    if architecture != expected:
        what = "the config's model" if config.model is not None else f"preset {config.preset!r}'s network"
        f.fail("architecture", f"{layer_names(architecture)} is not {what} for task {config.task!r} "
                               f"({layer_names(expected)})")
    model = Sequential.from_config(architecture).to("numpy", dtype=dtype)
    try:
        model.load_state_dict(model_state)
    except ValueError as exc:
        f.fail("parameters", f"do not fit the architecture ({exc})")

    epoch = f.integer("epoch", f.get("epoch"), 0, config.epochs)
    step_in_epoch = f.integer("step_in_epoch", f.get("step_in_epoch"), 0)
    if epoch == config.epochs and step_in_epoch:
        f.fail("step_in_epoch", f"must be 0 once all {config.epochs} epochs are done, got {step_in_epoch}")
    global_step = f.integer("global_step", f.get("global_step"), step_in_epoch)
    # absent from round-1 checkpoints; null in one saved before the run's first fit
    train_size = f.get("train_size") if meta["format"] == ckpt.FORMAT else meta.get("train_size")
    if train_size is not None:
        f.integer("train_size", train_size, 1, config.train_count)
        per_epoch = -(-train_size // config.batch_size)
        if step_in_epoch >= per_epoch:
            f.fail("step_in_epoch", f"must be below the {per_epoch} steps of an epoch, got {step_in_epoch}")
        if global_step != epoch * per_epoch + step_in_epoch:
            f.fail("global_step", f"must be {epoch * per_epoch + step_in_epoch} ({epoch} epochs of {per_epoch} "
                                  f"steps + {step_in_epoch}), got {global_step}")
    elif epoch:  # the epoch's length is unknown, but every epoch has the same number of steps
        most = -(-config.train_count // config.batch_size) if config.train_count else None
        per_epoch, rest = divmod(global_step - step_in_epoch, epoch)
        if rest or per_epoch < 1 or (most is not None and per_epoch > most):
            f.fail("global_step", f"must be {step_in_epoch} + {epoch} epochs of equal steps"
                                  + (f" (at most {most} each)" if most is not None else "") + f", got {global_step}")
        if step_in_epoch >= per_epoch:
            f.fail("step_in_epoch", f"must be below the {per_epoch} steps of an epoch, got {step_in_epoch}")
    elif config.train_count and step_in_epoch >= -(-config.train_count // config.batch_size):
        f.fail("step_in_epoch", f"must be below the at most {-(-config.train_count // config.batch_size)} steps "
                                f"of an epoch, got {step_in_epoch}")
    if optimizer_state["steps"] != global_step:
        f.fail("optimizer_steps", f"must equal global_step {global_step}, got {optimizer_state['steps']}")
    rng_state = f.rng_state("rng_state", f.get("rng_state"))
    epoch_rng_state = f.get("epoch_rng_state")
    if epoch_rng_state is not None:
        f.rng_state("epoch_rng_state", epoch_rng_state)
    elif step_in_epoch:
        f.fail("epoch_rng_state", "is needed to resume in the middle of an epoch, got null")

    history = f.get("history")
    if not isinstance(history, list) or len(history) != epoch:
        f.fail("history", f"must list one record per completed epoch ({epoch}), got {short_repr(history)}")
    for index, entry in enumerate(history):
        where = f"history[{index}]"
        if not isinstance(entry, dict) or not set(HISTORY_KEYS) <= set(entry):
            f.fail(where, f"must be a record with keys {', '.join(HISTORY_KEYS)}, got {short_repr(entry)}")
        if entry["epoch"] != index + 1 or type(entry["epoch"]) is not int:
            f.fail(f"{where}.epoch", f"must be {index + 1}, got {short_repr(entry['epoch'])}")
        f.number(f"{where}.loss", entry["loss"], finite=False)
        f.number(f"{where}.val_loss", entry["val_loss"], finite=False, optional=True)
        f.number(f"{where}.val_accuracy", entry["val_accuracy"], minimum=0.0, maximum=1.0, optional=True)
        f.number(f"{where}.images_per_s", entry["images_per_s"], finite=False, minimum=0.0)
        f.number(f"{where}.seconds", entry["seconds"], minimum=0.0)
        for key, value in entry.items():
            if value is not None and not isinstance(value, (int, float, str)):
                f.fail(f"{where}.{key}", f"must be a number or a string, got {short_repr(value)}")
    step_losses = f.get("step_losses")
    if not isinstance(step_losses, list) or len(step_losses) != global_step:
        f.fail("step_losses", f"must list one loss per step ({global_step}), got "
                              f"{len(step_losses) if isinstance(step_losses, list) else short_repr(step_losses)}")
    for index, value in enumerate(step_losses):
        f.number(f"step_losses[{index}]", value)

    slots = build_optimizer(config).slots()
    params = dict(model.named_parameters())
    for key, value in optimizer_state.items():
        if key == "steps":
            continue
        name, _, slot = key.partition("/")
        if name not in params or slot not in slots:
            f.fail(f"optimizer state {key!r}", f"is not a slot of {config.optimizer} for this model's parameters "
                                               f"(slots: {', '.join(slots) or 'none'})")
        if value.shape != params[name].shape or value.dtype != params[name].dtype:
            f.fail(f"optimizer state {key!r}", f"has shape {value.shape} dtype {value.dtype}, expected "
                                               f"{params[name].shape} {params[name].dtype}")
    # every step updates every parameter's slots: after one, each has all of them (a lost one would
    # resume from zero, not where the run stopped); before the first, none has any
    expected = {f"{name}/{slot}" for name in params for slot in slots} if optimizer_state["steps"] else set()
    missing = sorted(expected - set(optimizer_state))
    if missing:
        f.fail(f"optimizer state {missing[0]!r}", f"is missing ({optimizer_state['steps']} steps of "
                                                  f"{config.optimizer} made it; {len(missing)} slot(s) missing)")
    normalization = meta.get("normalization")  # absent before any-dataset checkpoints: none
    if normalization is not None:
        if not isinstance(normalization, dict) or set(normalization) != {"mean", "std"}:
            f.fail("normalization", f"must be {{\"mean\": [...], \"std\": [...]}} or null, "
                                    f"got {short_repr(normalization)}")
        try:
            mean, std = check_normalize((normalization["mean"], normalization["std"]), config.image_shape[0])
        except (DataError, OverflowError) as exc:
            f.fail("normalization", str(exc).removeprefix("normalize: "))
        normalization = {"mean": mean.tolist(), "std": std.tolist()}
    elif config.normalize and global_step:
        f.fail("normalization", "is missing, but the run normalises its images (config.normalize)")
    class_names = meta.get("class_names")
    if class_names is not None and (not isinstance(class_names, list) or len(class_names) != config.classes
                                    or not all(isinstance(name, str) and len(name) <= MAX_CLASS_NAME
                                               for name in class_names)):
        f.fail("class_names", f"must be null or {config.classes} names (strings), got {short_repr(class_names)}")
    data_source = meta.get("data_source")  # absent before runs remembered their data: unknown
    if data_source is not None and (not isinstance(data_source, str) or not data_source
                                    or len(data_source) > MAX_DATA_SOURCE or "\0" in data_source):
        f.fail("data_source", f"must be null or the --data the run trained on (a string of at most "
                              f"{MAX_DATA_SOURCE} characters), got {short_repr(data_source)}")
    return Snapshot(config, architecture, model_state, optimizer_state, epoch, step_in_epoch, global_step,
                    rng_state, epoch_rng_state, history, step_losses, train_size, normalization, class_names,
                    data_source)


def layer_names(architecture: object) -> str:
    """'Conv2D-ReLU-MaxPool2D-Flatten-Dense (5 layers)' for an architecture record."""
    if not isinstance(architecture, list) or not all(isinstance(e, dict) for e in architecture):
        return short_repr(architecture)
    return "-".join(str(entry.get("type")) for entry in architecture) + f" ({len(architecture)} layers)"
