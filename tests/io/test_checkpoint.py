"""xpcnn.io.checkpoint: the container of a checkpoint is checked before its fields are -- a digest
over the meta record and every array, a meta record that is one JSON object, arrays of real numbers
and no pickles; anything else is a CheckpointError naming the file."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from checkpoint_edits import npy_bytes, raw_npz, training_runs, write

from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import CheckpointError, short_repr
from xpcnn.training import snapshot


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """'done': a finished 2-epoch run; 'mid': one interrupted at epoch 2, step 2 (global step 6)."""
    return training_runs(tmp_path_factory.mktemp("checkpoints"))


def test_short_repr_shows_a_read_value_as_the_file_holds_it():
    assert short_repr("abc") == "'abc'" and short_repr(None) == "null" and short_repr([1, True]) == "[1, true]"
    assert short_repr({1, 2}) == "{1, 2}"  # not JSON: as Python writes it
    long = short_repr(list(range(100)))
    assert len(long) == 60 and long.endswith("...")


# -- the digest -------------------------------------------------------------------------------------


def test_an_edit_without_a_new_digest_is_refused(runs, tmp_path):
    params, optim, meta = runs["done"].copy()
    meta["config"]["lr"] = 0.5  # a valid value: only the digest tells
    with pytest.raises(CheckpointError, match="digest does not match"):
        snapshot.read(write(tmp_path / "a.npz", params, optim, meta, sign=False))
    params, optim, meta = runs["done"].copy()
    params["0.weight"].flat[0] += 1e-12
    with pytest.raises(CheckpointError, match="digest does not match"):
        snapshot.read(write(tmp_path / "b.npz", params, optim, meta, sign=False))
    params, optim, meta = runs["done"].copy()
    optim["4.bias/velocity"].flat[0] *= -1
    with pytest.raises(CheckpointError, match="digest does not match"):
        checkpoint.load(write(tmp_path / "c.npz", params, optim, meta, sign=False))


def test_every_byte_of_the_meta_record_is_covered_by_the_digest(runs, tmp_path):
    """Change characters of the meta JSON (where the result still parses) and keep the old
    digest: never accepted (the first few as files, the rest as checkpoint.load decides)."""
    params, optim, meta = runs["mid"].copy()
    text = json.dumps(meta)
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"optim/{k}": v for k, v in optim.items() if k != "steps"})
    rng = np.random.default_rng(7)
    positions = [text.index(checkpoint.FORMAT) + len(checkpoint.FORMAT) - 1]  # -2 -> -1: the legacy format
    positions += list(rng.choice(len(text), size=400, replace=False))
    tried = 0
    for position in positions:
        for replacement in "0179ae\"":
            edited = text[:position] + replacement + text[position + 1:]
            try:
                parsed = json.loads(edited)
            except ValueError:
                continue
            if parsed == meta:
                continue
            tried += 1
            if tried <= 10:
                path = tmp_path / "m.npz"
                with open(path, "wb") as handle:
                    np.savez(handle, **arrays, meta=np.array(edited))
                with pytest.raises(CheckpointError):
                    checkpoint.load(path)
            elif parsed.get("format") == checkpoint.FORMAT:
                assert parsed.get("digest") != checkpoint.digest(parsed, arrays), edited
            else:
                assert "digest" in parsed or parsed.get("format") not in checkpoint.LEGACY_FORMATS, edited
    assert tried > 200


def test_a_round_1_file_with_a_digest_is_refused(runs, tmp_path):
    """Relabelling an edited file as the legacy format (no digest) does not skip the check."""
    params, optim, meta = runs["done"].copy()
    meta["format"] = "xpcnn-checkpoint-1"
    meta["config"]["lr"] = 0.5
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(write(tmp_path / "a.npz", params, optim, meta, sign=False))


# -- the container ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,meta,problem", [
    ("not JSON", np.array("{epoch: 1"), "meta record is not valid JSON"),
    ("a JSON list", np.array("[1, 2]"), "meta record must be a JSON object"),
    ("a JSON string", np.array('"meta"'), "meta record must be a JSON object"),
    ("nested too deep", np.array("[" * 100_000 + "]" * 100_000), "meta record is not valid JSON"),
    ("huge integer", np.array('{"epoch": ' + "9" * 5000 + "}"), "meta record is not valid JSON"),
    ("numbers", np.arange(3.0), "meta record must be one JSON string"),
    ("bytes", np.array(b'{"format": "xpcnn-checkpoint-2"}'), "meta record must be one JSON string"),
    ("strings", np.array(['{"a": 1}', '{"b": 2}']), "meta record must be one JSON string"),
    (None, None, "no meta record"),
])
def test_a_broken_meta_record_is_refused(tmp_path, name, meta, problem):
    arrays = {"param/0.weight": np.zeros(3)}
    if meta is not None:
        arrays["meta"] = meta
    path = raw_npz(tmp_path / "m.npz", **arrays)
    with pytest.raises(CheckpointError, match=problem) as info:
        snapshot.read(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unexpected_and_pickled_arrays_are_refused(runs, tmp_path):
    params, optim, meta = runs["done"].copy()
    path = write(tmp_path / "x.npz", params, optim, meta, extra={"extra/x": np.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected array 'extra/x'"):
        snapshot.read(path)
    path = raw_npz(tmp_path / "p.npz", meta=np.array(json.dumps(meta)),
                   **{"param/0.weight": np.array([{}], dtype=object)})
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        snapshot.read(path)


def test_a_zip_member_that_is_not_an_array_is_refused(runs, tmp_path):
    """np.load hands back the raw bytes of a member that is not a .npy file."""
    source = io.BytesIO()
    np.savez(source, **{"param/0.weight": np.zeros(3)})
    for member, payload in [("meta", json.dumps(runs["done"].meta).encode()), ("param/0.bias", b"0123")]:
        path = tmp_path / "z.npz"
        with zipfile.ZipFile(path, "w") as archive:
            weight = zipfile.ZipFile(io.BytesIO(source.getvalue())).read("param/0.weight.npy")
            archive.writestr("param/0.weight.npy", weight)
            archive.writestr(member, payload)
            if member != "meta":
                archive.writestr("meta.npy", npy_bytes(np.array(json.dumps(runs["done"].meta))))
        with pytest.raises(CheckpointError, match=f"{member}.* not an array"):
            snapshot.read(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"not a zip at all", npy_bytes(np.arange(3.0)),
                                     b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."])
def test_files_that_are_not_checkpoints_are_refused(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        snapshot.read(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_folder_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        snapshot.read(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        snapshot.read(tmp_path / "none.npz")
