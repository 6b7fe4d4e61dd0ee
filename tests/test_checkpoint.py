"""Checkpoints are untrusted input (xpcnn/checkpoint.py, xpcnn/training/snapshot.py, Sequential.load).

Hand-edited files carry a correct digest, so that the field checks -- not only the digest -- are
what refuses them; every refusal is a CheckpointError naming the file and the field, leaves a
trainer as it was, and makes the CLI exit 2 with one line.  Damaged files (truncated, bytes
flipped) are refused as such, never with another exception."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xpcnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, data, resolve

from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.cli import train_main
from xpcnn.training import Checkpointer, Config, Interrupted, Lambda, Trainer, snapshot

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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """'done': a finished 2-epoch run; 'mid': one interrupted at epoch 2, step 2 (global step 6)."""
    folder = tmp_path_factory.mktemp("checkpoints")
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
CASES = [
    # the run's configuration
    ("done", meta_edit("config.lr", "0.05"), "config.lr"),
    ("done", meta_edit("config.lr", -1), "config.lr"),
    ("done", meta_edit("config.lr", float("nan")), "config.lr"),
    ("done", meta_edit("config.lr", 10 ** 400), "config.lr"),
    ("done", meta_edit("config.momentum", 10 ** 400), "config.momentum"),
    ("done", meta_edit("config.epochs", True), "config.epochs"),
    ("done", meta_edit("config.epochs", 2.0), "config.epochs"),
    ("done", meta_edit("config.epochs", "2"), "config.epochs"),
    ("done", meta_edit("config.batch_size", None), "config.batch_size"),
    ("done", meta_edit("config.batch_size", [50]), "config.batch_size"),
    ("done", meta_edit("config.seed", -1), "config.seed"),
    ("done", meta_edit("config.seed", 2 ** 64), "config.seed"),
    ("done", meta_edit("config.seed", MISSING), "config.seed"),
    ("done", meta_edit("config.colour", "red"), "config.colour"),
    ("done", meta_edit("config.preset", "huge"), "config.preset"),
    ("done", meta_edit("config.optimizer", "rmsprop"), "config.optimizer"),
    ("done", meta_edit("config.loss", "hinge"), "config.loss"),
    ("done", meta_edit("config.init", "zeros"), "config.init"),
    ("done", meta_edit("config.dtype", "float16"), "config.dtype"),
    ("done", meta_edit("config.task", ["multiclass"]), "config.task"),
    ("done", meta_edit("config.shift", 17), "config.shift"),
    ("done", meta_edit("config.lr_decay", 0), "config.lr_decay"),
    ("done", meta_edit("config.train_count", 0), "config.train_count"),
    ("done", meta_edit("config", [1, 2]), "config"),
    ("done", meta_edit("config", None), "config"),
    ("done", meta_edit("config", MISSING), "config"),
    # dtype, backend, architecture
    ("done", meta_edit("dtype", "float32"), "dtype"),
    ("done", meta_edit("dtype", "float16"), "dtype"),
    ("done", meta_edit("dtype", ["float64"]), "dtype"),
    ("done", meta_edit("dtype", MISSING), "dtype"),
    ("done", meta_edit("backend", 3), "backend"),
    ("done", meta_edit("backend", MISSING), "backend"),
    ("done", meta_edit("architecture.1.type", "Tanh"), "architecture"),
    ("done", meta_edit("architecture.4.out_features", 11), "architecture"),
    ("done", meta_edit("architecture.4.in_features", 10 ** 12), "architecture"),
    ("done", meta_edit("architecture.0.kernel_size", [5, 5, 5]), "architecture"),
    ("done", meta_edit("architecture.0", "Conv2D"), "architecture"),
    ("done", meta_edit("architecture", {"0": "Conv2D"}), "architecture"),
    ("done", meta_edit("architecture", []), "architecture"),
    ("done", meta_edit("architecture", MISSING), "architecture"),
    # where the run stands
    ("done", meta_edit("epoch", -1), "epoch"),
    ("done", meta_edit("epoch", 3), "epoch"),
    ("done", meta_edit("epoch", "2"), "epoch"),
    ("done", meta_edit("epoch", True), "epoch"),
    ("done", meta_edit("epoch", 2.0), "epoch"),
    ("done", meta_edit("epoch", None), "epoch"),
    ("done", meta_edit("epoch", 10 ** 30), "epoch"),
    ("done", meta_edit("epoch", MISSING), "epoch"),
    ("done", meta_edit("epoch", 1), "global_step"),
    ("done", meta_edit("step_in_epoch", 1), "step_in_epoch"),
    ("mid", meta_edit("step_in_epoch", -1), "step_in_epoch"),
    ("mid", meta_edit("step_in_epoch", "2"), "step_in_epoch"),
    ("mid", meta_edit("step_in_epoch", 2.5), "step_in_epoch"),
    ("mid", steps_and_losses(4, 8), "step_in_epoch"),  # an epoch has 4 steps: 0..3
    ("mid", meta_edit("global_step", 7), "global_step"),
    ("mid", meta_edit("global_step", 1), "global_step"),
    ("mid", meta_edit("global_step", 10 ** 30), "global_step"),
    ("mid", meta_edit("global_step", False), "global_step"),
    ("mid", meta_edit("train_size", 0), "train_size"),
    ("mid", meta_edit("train_size", "200"), "train_size"),
    ("mid", meta_edit("train_size", 100), "step_in_epoch"),  # 2 steps an epoch: there is no step 2
    ("mid", meta_edit("train_size", 150), "global_step"),  # 3 steps an epoch: step 6 is not epoch 1, step 2
    ("mid", meta_edit("train_size", 10 ** 6), "global_step"),
    ("mid", meta_edit("config.train_count", 100), "train_size"),  # it trained on 200
    ("done", meta_edit("optimizer_steps", 7), "optimizer_steps"),
    ("done", meta_edit("optimizer_steps", -1), "optimizer_steps"),
    ("done", meta_edit("optimizer_steps", "8"), "optimizer_steps"),
    ("done", meta_edit("optimizer_steps", 8.0), "optimizer_steps"),
    ("done", meta_edit("optimizer_steps", True), "optimizer_steps"),
    # random generator states
    ("done", meta_edit("rng_state", dict(PCG, bit_generator="MT19937")), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, state={"state": 5, "inc": 6})), "rng_state"),  # even inc
    ("done", meta_edit("rng_state", dict(PCG, state={"state": 2 ** 128, "inc": 7})), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, state={"state": -5, "inc": 7})), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, state={"state": 5.0, "inc": 7})), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, state={"state": 5, "inc": True})), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, state={"state": 5, "inc": 7, "key": 1})), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, state=[5, 7])), "rng_state"),
    ("done", meta_edit("rng_state", {k: v for k, v in PCG.items() if k != "uinteger"}), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, extra=1)), "rng_state"),
    ("done", meta_edit("rng_state", dict(PCG, has_uint32=2)), "rng_state.has_uint32"),
    ("done", meta_edit("rng_state", dict(PCG, uinteger=-1)), "rng_state.uinteger"),
    ("done", meta_edit("rng_state", dict(PCG, uinteger=2 ** 32)), "rng_state.uinteger"),
    ("done", meta_edit("rng_state", [1, 2, 3]), "rng_state"),
    ("done", meta_edit("rng_state", None), "rng_state"),
    ("done", meta_edit("rng_state", MISSING), "rng_state"),
    ("mid", meta_edit("epoch_rng_state", None), "epoch_rng_state"),
    ("mid", meta_edit("epoch_rng_state", "PCG64"), "epoch_rng_state"),
    ("mid", meta_edit("epoch_rng_state", dict(PCG, bit_generator="MT19937")), "epoch_rng_state"),
    ("mid", meta_edit("epoch_rng_state", MISSING), "epoch_rng_state"),
    # history and losses
    ("done", meta_edit("history.0.val_accuracy", 1.5), "history[0].val_accuracy"),
    ("done", meta_edit("history.0.val_accuracy", float("nan")), "history[0].val_accuracy"),
    ("done", meta_edit("history.0.val_loss", "low"), "history[0].val_loss"),
    ("done", meta_edit("history.0.loss", None), "history[0].loss"),
    ("done", meta_edit("history.0.loss", MISSING), "history[0]"),
    ("done", meta_edit("history.0.seconds", -1), "history[0].seconds"),
    ("done", meta_edit("history.0.seconds", float("inf")), "history[0].seconds"),
    ("done", meta_edit("history.0.seconds", 10 ** 400), "history[0].seconds"),
    ("done", meta_edit("history.0.images_per_s", 10 ** 400), "history[0].images_per_s"),
    ("done", meta_edit("history.0.images_per_s", -5), "history[0].images_per_s"),
    ("done", meta_edit("history.0.note", [1, 2]), "history[0].note"),
    ("done", meta_edit("history.1.epoch", 1), "history[1].epoch"),
    ("done", meta_edit("history.0.epoch", 1.0), "history[0].epoch"),
    ("done", meta_edit("history.0.epoch", True), "history[0].epoch"),
    ("done", meta_edit("history.0", [1, 2]), "history[0]"),
    ("done", meta_edit("history.1", MISSING), "history"),
    ("done", meta_edit("history", {"0": {}}), "history"),
    ("done", meta_edit("history", MISSING), "history"),
    ("done", meta_edit("step_losses.3", float("nan")), "step_losses[3]"),
    ("done", meta_edit("step_losses.3", float("inf")), "step_losses[3]"),
    ("done", meta_edit("step_losses.3", "2.3"), "step_losses[3]"),
    ("done", meta_edit("step_losses.3", None), "step_losses[3]"),
    ("done", meta_edit("step_losses.3", 10 ** 400), "step_losses[3]"),
    ("done", meta_edit("step_losses.3", MISSING), "step_losses"),
    ("done", meta_edit("step_losses", "2.3"), "step_losses"),
    ("done", meta_edit("step_losses", MISSING), "step_losses"),
    # parameters
    ("done", param_edit("0.weight", lambda a: a[:8]), "parameters"),
    ("done", param_edit("0.weight", lambda a: a.reshape(16, 25)), "parameters"),
    ("done", param_edit("4.bias", MISSING), "parameters"),
    ("done", param_edit("9.weight", np.zeros(3)), "parameters"),
    ("done", param_edit("0.weight", lambda a: a.astype(np.int64)), "param/0.weight"),
    ("done", param_edit("0.weight", lambda a: a.astype(np.complex128)), "param/0.weight"),
    ("done", param_edit("0.weight", lambda a: a.astype(np.float32)), "parameters"),
    ("done", param_edit("0.weight", with_nan), "param/0.weight"),
    ("done", param_edit("0.weight", lambda a: np.full_like(a, np.inf)), "param/0.weight"),
    # optimizer state
    ("done", optim_edit("0.weight/m", lambda a: np.zeros((16, 1, 5, 5))), "optimizer state"),
    ("done", optim_edit("0.weight/velocity", lambda a: a[:8]), "optimizer state"),
    ("done", optim_edit("0.weight/velocity", lambda a: a.astype(np.float32)), "optimizer state"),
    ("done", optim_edit("0.weight/velocity", lambda a: a.astype(np.int64)), "optim/0.weight/velocity"),
    ("done", optim_edit("0.weight/velocity", with_nan), "optim/0.weight/velocity"),
    ("done", optim_edit("9.weight/velocity", np.zeros(3)), "optimizer state"),
    ("done", optim_edit("0.weight/velocity/x", np.zeros((16, 1, 5, 5))), "optimizer state"),
    ("done", optim_edit("0.weight", np.zeros((16, 1, 5, 5))), "optimizer state"),
    ("done", optim_edit("4.bias/velocity", MISSING), "optimizer state"),  # a lost velocity resumes differently
    # the container
    ("done", meta_edit("format", "xpcnn-checkpoint-3"), "format"),
    ("done", meta_edit("format", None), "format"),
    ("done", meta_edit("format", MISSING), "format"),
]


def case_id(case):
    base, edit, field = case
    return f"{base}-{edit.__name__}" if edit.__name__ != "edit" else f"{base}-{field}-{CASES.index(case)}"


def make(pieces: Pieces, edit, path):
    params, optim, meta = pieces.copy()
    edit(params, optim, meta)
    return write(path, params, optim, meta)


def trainer_state(trainer):
    return (trainer.model.state_dict(), trainer.optimizer.state_dict(), copy.deepcopy(trainer.state),
            copy.deepcopy(trainer.rng.bit_generator.state), trainer.config)


def assert_same(before, after):
    for a, b in zip(before[:2], after[:2]):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert before[2:] == after[2:]


@pytest.fixture(scope="module")
def resumed(runs):
    """A trainer that resumed the interrupted run: the state a refused file must leave alone."""
    trainer = Trainer(CONFIG, resolve("numpy"))
    trainer.resume(runs["mid"].path)
    assert trainer.state.global_step == 6
    yield trainer
    trainer.close()


def test_class_names_as_long_as_a_file_name_are_read_back(runs, tmp_path):
    """An image folder's class is a folder name (up to 255 characters): its checkpoint reads back."""
    for length, readable in ((data.MAX_CLASS_NAME, True), (data.MAX_CLASS_NAME + 1, False)):
        names = ["x" * length] + [f"class {k}" for k in range(9)]
        path = make(runs["done"], lambda params, optim, meta: meta.update(class_names=names), tmp_path / f"{length}.npz")
        if readable:
            assert snapshot.read(path).class_names == names
        else:
            with pytest.raises(CheckpointError, match="class_names"):
                snapshot.read(path)


def assert_cli_refuses(path, tmp_path, capsys, field=""):
    with pytest.raises(SystemExit) as info:
        train_main(["--resume", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"train.py: error: --resume: {path}: "), err
    assert field in errors[0] and "Traceback" not in err, err


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_a_hand_edited_field_is_refused_naming_the_file_and_the_field(runs, resumed, case, tmp_path, capsys):
    base, edit, field = case
    path = make(runs[base], edit, tmp_path / "edited.npz")
    with pytest.raises(CheckpointError) as info:
        snapshot.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and field in message, message
    assert "\n" not in message

    before = trainer_state(resumed)
    with pytest.raises(CheckpointError):
        resumed.resume(path)
    assert_same(before, trainer_state(resumed))
    with pytest.raises(CheckpointError):
        Trainer.from_checkpoint(path, resolve("numpy"))
    assert_cli_refuses(path, tmp_path, capsys, field)


def test_an_unedited_rewrite_reads_back_the_same(runs, tmp_path):
    """The hand writer above makes what checkpoint.save makes: the edits test the field checks."""
    for name, pieces in runs.items():
        path = write(tmp_path / f"{name}.npz", *pieces.copy())
        again = checkpoint.load(path)
        assert again[2] == pieces.meta and again[1].keys() == pieces.optimizer_state.keys()
        snapshot.read(path)


def test_a_good_checkpoint_resumes_where_it_stopped(runs):
    """(Bitwise continuation: tests/test_training.py.)"""
    saved = snapshot.read(runs["mid"].path)
    assert (saved.epoch, saved.step_in_epoch, saved.global_step, saved.train_size) == (1, 2, 6, 200)
    with Trainer.from_checkpoint(runs["mid"].path, resolve("numpy")) as trainer:
        assert trainer.config == CONFIG and trainer.optimizer.steps == 6
        for name, value in runs["mid"].model_state.items():
            np.testing.assert_array_equal(trainer.model.state_dict()[name], value)
        trainer.fit(data.load_embedded().train.take(200))
        assert trainer.state.global_step == 8 and len(trainer.state.history) == 2


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


# -- the legacy format ----------------------------------------------------------------------------

def legacy(pieces: Pieces, edit=None):
    params, optim, meta = pieces.copy()
    meta["format"] = "xpcnn-checkpoint-1"
    for key in ("digest", "train_size"):  # round 1 wrote neither
        meta.pop(key)
    if edit:
        edit(params, optim, meta)
    return params, optim, meta


@pytest.mark.parametrize("base", ["done", "mid"])
def test_a_valid_round_1_checkpoint_still_loads(runs, base, tmp_path):
    path = write(tmp_path / "legacy.npz", *legacy(runs[base]), sign=False)
    saved = snapshot.read(path)
    assert saved.train_size is None and saved.global_step == runs[base].meta["global_step"]
    with Trainer.from_checkpoint(path, resolve("numpy")) as trainer:
        assert trainer.state.step_in_epoch == runs[base].meta["step_in_epoch"]


@pytest.mark.parametrize("base,edit,field", [
    ("done", meta_edit("epoch", 5), "epoch"),
    ("done", meta_edit("history.0.val_accuracy", 2), "history[0].val_accuracy"),
    ("done", meta_edit("rng_state", dict(PCG, bit_generator="MT19937")), "rng_state"),
    ("done", param_edit("0.weight", with_nan), "param/0.weight"),
    ("mid", steps_and_losses(7, 7), "global_step"),  # 7 steps into epoch 2 leave none for epoch 1
    ("mid", steps_and_losses(2, 3), "step_in_epoch"),  # epoch 1 had 1 step, so epoch 2 has no step 2
    ("done", steps_and_losses(0, 9), "global_step"),  # 2 epochs of equal steps cannot make 9
    ("done", meta_edit("config.train_count", 100), "global_step"),  # 2 steps an epoch at most
    ("mid", meta_edit("optimizer_steps", MISSING), "optimizer_steps"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_a_round_1_checkpoints_fields_are_checked_all_the_same(runs, base, edit, field, tmp_path):
    path = write(tmp_path / "legacy.npz", *legacy(runs[base], edit), sign=False)
    with pytest.raises(CheckpointError) as info:
        snapshot.read(path)
    assert str(info.value).startswith(f"{path}: ") and field in str(info.value), str(info.value)


# -- the container ---------------------------------------------------------------------------------

def raw_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


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
    path = raw_npz(tmp_path / "p.npz", meta=np.array(json.dumps(meta)), **{"param/0.weight": np.array([{}], dtype=object)})
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        snapshot.read(path)


def test_a_zip_member_that_is_not_an_array_is_refused(runs, tmp_path):
    """np.load hands back the raw bytes of a member that is not a .npy file."""
    source = io.BytesIO()
    np.savez(source, **{"param/0.weight": np.zeros(3)})
    for member, payload in [("meta", json.dumps(runs["done"].meta).encode()), ("param/0.bias", b"0123")]:
        path = tmp_path / "z.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("param/0.weight.npy", zipfile.ZipFile(io.BytesIO(source.getvalue())).read("param/0.weight.npy"))
            archive.writestr(member, payload)
            if member != "meta":
                archive.writestr("meta.npy", _npy(np.array(json.dumps(runs["done"].meta))))
        with pytest.raises(CheckpointError, match=f"{member}.* not an array"):
            snapshot.read(path)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"not a zip at all", _npy(np.arange(3.0)),
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


# -- damaged files -----------------------------------------------------------------------------------

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


# -- model files (Sequential.save / Sequential.load) -----------------------------------------------

def small_model():
    return Sequential(Conv2D(1, 2, 3, rng=0), ReLU(), MaxPool2D(2), Flatten(), Dense(2 * 3 * 3, 4, rng=1))


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.npz"
    small_model().save(path)
    return Pieces(path, *checkpoint.load(path))


def test_a_model_file_round_trips(model_file):
    model = Sequential.load(model_file.path)
    assert model.config() == small_model().config() and model.dtype == "float64"
    for name, value in small_model().state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


def test_a_training_checkpoint_loads_as_a_model(runs):
    model = Sequential.load(runs["done"].path)
    for name, value in runs["done"].model_state.items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


@pytest.mark.parametrize("edit,problem", [
    (meta_edit("architecture", MISSING), "architecture must be a non-empty list"),
    (meta_edit("architecture", []), "architecture must be a non-empty list"),
    (meta_edit("architecture", {"type": "Dense"}), "architecture must be a non-empty list"),
    (meta_edit("architecture", "Conv2D"), "architecture must be a non-empty list"),
    (meta_edit("architecture.1", "ReLU"), "architecture[1] must be a layer record"),
    (meta_edit("architecture.1.type", "Softmax"), "architecture[1] has unknown layer type 'Softmax'"),
    (meta_edit("architecture.1.type", ["ReLU"]), "architecture[1] has unknown layer type"),
    (meta_edit("architecture.1.type", MISSING), "architecture[1] has unknown layer type"),
    (meta_edit("architecture.1.negative_slope", 0.1), "architecture[1] (ReLU) does not build"),
    (meta_edit("architecture.2.kernel_size", "2"), "architecture[2] (MaxPool2D) does not build"),
    (meta_edit("architecture.2.kernel_size", [2, 2, 2]), "architecture[2] (MaxPool2D) does not build"),
    (meta_edit("architecture.2.kernel_size", MISSING), "architecture[2] (MaxPool2D) does not build"),
    (meta_edit("architecture.0.kernel_size", 0), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.in_channels", "1"), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.in_channels", True), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.stride", 0), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.0.out_channels", MISSING), "architecture[0] (Conv2D) does not build"),
    (meta_edit("architecture.4.init", "bogus"), "architecture[4] (Dense) does not build"),
    (meta_edit("architecture.4.in_features", 10 ** 12), "architecture[4] (Dense) needs parameter 4.weight"),
    (meta_edit("architecture.4.out_features", 10 ** 12), "architecture[4] (Dense) needs parameter 4.weight"),
    (meta_edit("architecture.0.out_channels", 10 ** 9), "architecture[0] (Conv2D) needs parameter 0.weight"),
    (meta_edit("architecture.0.kernel_size", [10 ** 6, 10 ** 6]), "architecture[0] (Conv2D) needs parameter 0.weight"),
    (meta_edit("architecture.4.bias", False), "parameters do not fit"),  # the file has 4.bias
    (meta_edit("architecture.0.bias", True), None),  # it has one already: no change
    (meta_edit("architecture.5", {"type": "Dense", "in_features": 4, "out_features": 2}),
     "architecture[5] (Dense) needs parameter 5.weight"),
    (meta_edit("dtype", "float16"), "dtype must be float32 or float64"),
    (meta_edit("dtype", None), "dtype must be float32 or float64"),
    (meta_edit("dtype", MISSING), "dtype must be float32 or float64"),
    (meta_edit("dtype", "float32"), "parameters do not fit"),  # the arrays are float64
    (param_edit("4.weight", lambda a: a[:5]), "needs parameter 4.weight of shape (18, 4)"),
    (param_edit("9.weight", np.zeros(3)), "parameters do not fit"),
    (param_edit("4.bias", MISSING), "needs parameter 4.bias"),
    (param_edit("0.weight", with_nan), "param/0.weight contains NaN"),
    (meta_edit("format", "xpcnn-model-9"), "unknown checkpoint format"),
])
def test_a_bad_model_file_is_refused_naming_the_file_and_the_layer(model_file, tmp_path, monkeypatch, edit, problem):
    from xpcnn.nn import init

    make_weight = init.make_weight

    def small_weights_only(rng, shape, *args):
        assert math.prod(shape) < 10 ** 6, f"a layer of {shape} was built before its size was checked"
        return make_weight(rng, shape, *args)

    monkeypatch.setattr(init, "make_weight", small_weights_only)
    path = make(model_file, edit, tmp_path / "edited.npz")
    if problem is None:
        Sequential.load(path)
        return
    with pytest.raises(CheckpointError) as info:
        Sequential.load(path)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value), str(info.value)
