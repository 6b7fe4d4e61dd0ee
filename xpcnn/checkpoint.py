"""Checkpoints: one ``.npz`` with parameters (``param/<name>``), optimizer state
(``optim/<name>/<slot>``) and a JSON ``meta`` record (architecture, dtype, epoch,
step, RNG state, history), written atomically.  Host NumPy only, so a checkpoint
made on one backend loads on any other."""

from __future__ import annotations

import json
import zipfile

import numpy as np

from .files import atomic_write

FORMAT = "xpcnn-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save(path, model_state: dict, optimizer_state: dict, meta: dict) -> None:
    arrays = {f"param/{k}": v for k, v in model_state.items()}
    arrays.update({f"optim/{k}": v for k, v in optimizer_state.items() if k != "steps"})
    meta = dict(meta, format=FORMAT, optimizer_steps=int(optimizer_state.get("steps", 0)))
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def load(path) -> tuple[dict, dict, dict]:
    """``(model_state, optimizer_state, meta)``; raises :class:`CheckpointError`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not an xpcnn checkpoint (no meta record)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}, expected {FORMAT}")
    model_state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    optimizer_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    optimizer_state["steps"] = meta.get("optimizer_steps", 0)
    return model_state, optimizer_state, meta
