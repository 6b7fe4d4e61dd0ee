"""Checkpoint files: one ``.npz`` with parameters (``param/<name>``), optimizer state
(``optim/<name>/<slot>``) and a JSON ``meta`` record (architecture, dtype, epoch, step, RNG state,
history), written atomically.  Host NumPy only, so a checkpoint made on one backend loads on any other.

A checkpoint is untrusted input.  This module checks the container: a zip that NumPy reads without
pickles, a meta record that is a JSON object of a known format, arrays of real numbers, and a
sha256 ``digest`` over the meta record and every array, so that a file edited or damaged after it
was written is refused as such.  What the fields *mean* is checked by the code that uses them
(:mod:`xpcnn.training.snapshot`, :meth:`xpcnn.nn.sequential.Sequential.load`).  Every failure is a
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from xpcnn.io.files import atomic_write

FORMAT = "xpcnn-checkpoint-2"
LEGACY_FORMATS = ("xpcnn-checkpoint-1",)  # the first format: no digest; its fields are checked all the same


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def digest(meta: dict, arrays: dict) -> str:
    """sha256 over the meta record (canonical JSON, without its own digest) and every array's
    name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def short_repr(value: object) -> str:
    """A value read from a file, as a one-line message shows it: JSON as the file holds it (a string
    quoted as Python quotes it; a value JSON cannot write, as Python writes it), cut to 60 characters."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # not JSON: a value made in Python, not read
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def save(path: str | os.PathLike, model_state: dict, optimizer_state: dict, meta: dict) -> None:
    arrays = {f"param/{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer_state.items() if k != "steps"})
    meta = dict(meta, format=FORMAT, optimizer_steps=int(optimizer_state.get("steps", 0)))
    meta["digest"] = digest(meta, arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # NumPy stubs: a name could be allow_pickle


def load(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """``(model_state, optimizer_state, meta)`` of a checkpoint whose container is sound (module
    docstring); raises :class:`CheckpointError`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        # np.load hands back a member that is no .npy file as its raw bytes
        raw = next((k for k, v in arrays.items() if not isinstance(v, np.ndarray)), None)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except Exception as exc:  # BadZipFile, a bad CRC, a truncated member, a pickled object ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if raw is not None:
        raise CheckpointError(f"{path}: {raw} is not an array (a zip member that is no .npy file)")
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not an xpcnn checkpoint (no meta record)")
    raw = arrays.pop("meta")
    if raw.shape != () or raw.dtype.kind != "U":
        raise CheckpointError(f"{path}: meta record must be one JSON string, got a {raw.dtype} array of shape "
                              f"{raw.shape}")
    try:
        meta = json.loads(str(raw))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CheckpointError(f"{path}: meta record is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta record must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") == FORMAT:
        if meta.get("digest") != digest(meta, arrays):
            raise CheckpointError(f"{path}: digest does not match its contents: the file was changed or damaged "
                                  "after it was written")
    elif meta.get("format") not in LEGACY_FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {short_repr(meta.get('format'))}, expected {FORMAT}")
    elif "digest" in meta:  # a newer file relabelled to skip the digest
        raise CheckpointError(f"{path}: digest in a {meta['format']} checkpoint, a format that has none: the "
                              "file was changed after it was written")
    for name, array in arrays.items():
        if not (name.startswith("param/") or name.startswith("optim/")):
            raise CheckpointError(f"{path}: unexpected array {name!r}")
        if array.dtype.kind != "f":
            raise CheckpointError(f"{path}: {name} must hold floating-point numbers, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise CheckpointError(f"{path}: {name} contains NaN or infinity")
    model_state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    optimizer_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    steps = meta.get("optimizer_steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise CheckpointError(f"{path}: optimizer_steps must be an integer >= 0, got {steps!r}")
    optimizer_state["steps"] = steps
    return model_state, optimizer_state, meta
