"""Training checkpoints are untrusted input (xpcnn/training/snapshot.py): hand-edited files carry a
correct digest, so that the field checks -- not only the digest -- are what refuses them; every
refusal is a CheckpointError naming the file and the field, leaves a trainer as it was, and makes the
CLI exit 2 with one line.  Files of the first format (no digest) are checked all the same."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from checkpoint_edits import (
    CONFIG,
    MISSING,
    PCG,
    Pieces,
    make,
    meta_edit,
    optim_edit,
    param_edit,
    steps_and_losses,
    training_runs,
    with_nan,
    write,
)

from xpcnn import data, resolve
from xpcnn.cli import train_main
from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.training import Trainer, snapshot


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """'done': a finished 2-epoch run; 'mid': one interrupted at epoch 2, step 2 (global step 6)."""
    return training_runs(tmp_path_factory.mktemp("checkpoints"))


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
        path = make(runs["done"], lambda params, optim, meta, names=names: meta.update(class_names=names),
                    tmp_path / f"{length}.npz")
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
    """(Bitwise continuation: tests/training/test_trainer.py.)"""
    saved = snapshot.read(runs["mid"].path)
    assert (saved.epoch, saved.step_in_epoch, saved.global_step, saved.train_size) == (1, 2, 6, 200)
    with Trainer.from_checkpoint(runs["mid"].path, resolve("numpy")) as trainer:
        assert trainer.config == CONFIG and trainer.optimizer.steps == 6
        for name, value in runs["mid"].model_state.items():
            np.testing.assert_array_equal(trainer.model.state_dict()[name], value)
        trainer.fit(data.load_embedded().train.take(200))
        assert trainer.state.global_step == 8 and len(trainer.state.history) == 2


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
