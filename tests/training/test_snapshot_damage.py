"""Damaged training checkpoints (truncated, bytes flipped) and any JSON value in any field: refused
as such, with a CheckpointError naming the file, or read whole -- never another exception."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from checkpoint_edits import MISSING, make, meta_edit, training_runs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpcnn import resolve
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.training import Config, Trainer, snapshot


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """'done': a finished 2-epoch run; 'mid': one interrupted at epoch 2, step 2 (global step 6)."""
    return training_runs(tmp_path_factory.mktemp("checkpoints"))


def same_snapshot(a: snapshot.Snapshot, b: snapshot.Snapshot) -> bool:
    arrays = lambda s: {**{f"p{k}": v for k, v in s.model_state.items()},  # noqa: E731
                        **{f"o{k}": v for k, v in s.optimizer_state.items() if k != "steps"}}
    x, y = arrays(a), arrays(b)
    if x.keys() != y.keys() or any(x[k].dtype != y[k].dtype or not np.array_equal(x[k], y[k]) for k in x):
        return False
    plain = lambda s: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)  # noqa: E731
                       if f.name not in ("model_state", "optimizer_state")}
    return plain(a) == plain(b) and a.optimizer_state["steps"] == b.optimizer_state["steps"]


def read_damaged(path, original: snapshot.Snapshot) -> str:
    """'refused' or 'same'; anything else fails the test."""
    try:
        saved = snapshot.read(path)
    except CheckpointError as exc:
        assert str(exc).startswith(f"{path}: ")
        return "refused"
    assert same_snapshot(saved, original), "a damaged file was read as other content"
    return "same"


@pytest.mark.parametrize("base", ["done", "mid"])
def test_a_truncated_file_is_refused(runs, base, tmp_path):
    content = runs[base].path.read_bytes()
    original = snapshot.read(runs[base].path)
    path = tmp_path / "cut.npz"
    lengths = sorted({len(content) * i // 37 for i in range(37)} | set(range(100)) | {len(content) - 1})
    for length in lengths:
        path.write_bytes(content[:length])
        assert read_damaged(path, original) == "refused", length


@pytest.mark.parametrize("base", ["done", "mid"])
def test_a_flipped_byte_is_refused_or_harmless(runs, base, tmp_path):
    content = bytearray(runs[base].path.read_bytes())
    original = snapshot.read(runs[base].path)
    rng = np.random.default_rng(13)
    path = tmp_path / "flip.npz"
    outcomes = []
    positions = list(rng.choice(len(content), size=40, replace=False))
    positions += list(rng.choice(200, size=5, replace=False)) + list(len(content) - 1 - rng.choice(300, size=5))
    for position in positions:
        damaged = bytearray(content)
        damaged[position] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(damaged))
        outcomes.append(read_damaged(path, original))
    assert outcomes.count("refused") >= len(positions) // 2, outcomes


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)


FIELDS = ["config", "dtype", "backend", "architecture", "epoch", "step_in_epoch", "global_step", "rng_state",
          "epoch_rng_state", "history", "step_losses", "train_size", "optimizer_steps", "format",
          "config.lr", "config.epochs", "config.batch_size", "config.preset", "config.seed", "config.train_count",
          "rng_state.state", "rng_state.state.inc", "rng_state.has_uint32", "epoch_rng_state.state.state",
          "history.0", "history.0.loss", "history.0.epoch", "history.0.seconds", "step_losses.0",
          "architecture.0", "architecture.0.kernel_size", "architecture.4.in_features"]


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(["done", "mid"]), where=st.sampled_from(FIELDS), value=JSON | st.just(MISSING))
def test_any_value_in_any_field_is_refused_or_read_whole(runs, tmp_path, base, where, value):
    path = make(runs[base], meta_edit(where, value), tmp_path / "fuzz.npz")
    try:
        saved = snapshot.read(path)
    except CheckpointError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    # accepted: then it is a run a trainer can take up
    assert isinstance(saved.config, Config)
    with Trainer(saved.config, resolve("numpy")) as trainer:
        trainer.resume(path)
