"""Checkpoint files to edit, for the tests of what reading one refuses (tests/io, tests/nn,
tests/training): two real training runs' checkpoints, a writer that signs what it is given, and
edits of single fields or arrays (``MISSING`` deletes)."""

from __future__ import annotations

import copy
import dataclasses
import io
import json

import numpy as np
import pytest

from xpcnn import data, resolve
from xpcnn.io import checkpoint
from xpcnn.training import Checkpointer, Config, Interrupted, Lambda, Trainer

CONFIG = Config(epochs=2, batch_size=50, dtype="float64")  # 200 images: 4 steps an epoch


class _Missing:
    def __repr__(self):
        return "MISSING"


MISSING = _Missing()  # put(): delete the key


@dataclasses.dataclass
class Pieces:
    path: object
    model_state: dict
    optimizer_state: dict
    meta: dict

    def copy(self):
        return copy.deepcopy((self.model_state, self.optimizer_state, self.meta))


def training_runs(folder) -> dict:
    """'done': a finished 2-epoch run; 'mid': one interrupted at epoch 2, step 2 (global step 6)."""
    train = data.load_embedded().train.take(200)
    with Trainer(CONFIG, resolve("numpy"), extensions=[Checkpointer(folder / "done.npz")]) as trainer:
        trainer.fit(train)

    def stop(trainer, values):
        if trainer.state.epoch == 1 and trainer.state.step_in_epoch >= 2:
            trainer.stop_requested = True

    with Trainer(CONFIG, resolve("numpy"), sync_every=1) as trainer:
        with pytest.raises(Interrupted, match="epoch 2, step 2"):
            trainer.fit(train, extensions=[Lambda(on_losses=stop), Checkpointer(folder / "mid.npz")])
    return {name: Pieces(folder / f"{name}.npz", *checkpoint.load(folder / f"{name}.npz")) for name in ("done", "mid")}


def write(path, model_state, optimizer_state, meta, sign=True, extra=None):
    """An npz as checkpoint.save writes it, but with meta (format, optimizer_steps included) as
    given, and a digest recomputed over it unless ``sign`` is False."""
    arrays = {f"param/{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer_state.items() if k != "steps"})
    arrays.update(extra or {})
    meta = dict(meta)
    if sign:
        meta["digest"] = checkpoint.digest(meta, arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def put(record, where: str, value):
    """Set (or with MISSING delete) ``record[a][b]...`` for where = 'a.b' (list indices as digits)."""
    *parents, last = where.split(".")
    for key in parents:
        record = record[int(key)] if isinstance(record, list) else record[key]
    last = int(last) if isinstance(record, list) else last
    if isinstance(record, list) and last == len(record):
        record.append(value)
    elif value is MISSING:
        del record[last]
    else:
        record[last] = value


def meta_edit(where, value):
    def edit(params, optim, meta):
        put(meta, where, value)
    edit.__name__ = f"{where}={value!r}"[:60]
    return edit


def steps_and_losses(step_in_epoch, global_step):
    """A mid-epoch record moved consistently apart from what is tested."""
    def edit(params, optim, meta):
        meta.update(step_in_epoch=step_in_epoch, global_step=global_step, optimizer_steps=global_step,
                    step_losses=(meta["step_losses"] * 3)[:global_step])
    return edit


def array_edit(group: str, name: str, value):
    """Edit (or with MISSING delete) array ``name`` of ``group`` ("param" or "optim")."""
    def edit(params, optim, meta):
        arrays = params if group == "param" else optim
        if value is MISSING:
            del arrays[name]
        else:
            arrays[name] = value(arrays.get(name)) if callable(value) else value
    edit.__name__ = f"{group}/{name}={getattr(value, '__name__', None) or type(value).__name__}"
    return edit


def param_edit(name, value):
    return array_edit("param", name, value)


def optim_edit(name, value):
    return array_edit("optim", name, value)


def with_nan(array):
    array = array.copy()
    array.flat[3] = np.nan
    return array


PCG = {"bit_generator": "PCG64", "state": {"state": 5, "inc": 7}, "has_uint32": 0, "uinteger": 0}

# (base run, edit, the field the message must name)


def make(pieces: Pieces, edit, path):
    params, optim, meta = pieces.copy()
    edit(params, optim, meta)
    return write(path, params, optim, meta)


def raw_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
