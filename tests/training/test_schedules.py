"""Learning-rate schedules (xpcnn.training.schedules): each rate against its formula and against
torch's own scheduler, in a Trainer step by step, resumed bitwise mid-epoch, and the Config fields
that choose them (old records without them still load)."""

import dataclasses
import math

import numpy as np
import pytest
from checkpoint_edits import write
from helpers import stop_at

from xpcnn import data, resolve
from xpcnn.io import checkpoint
from xpcnn.training import (
    Checkpointer,
    Clock,
    Config,
    ConfigError,
    CosineAnnealing,
    ExponentialDecay,
    Interrupted,
    Lambda,
    ReduceOnPlateau,
    ResumeMismatch,
    StepDecay,
    Trainer,
    resume_config,
    schedule_from_config,
)
from xpcnn.training.extensions import PRIORITY_READER
from xpcnn.training.run import RunOptions, UsageError, header, prepare_run, start_trainer
from xpcnn.training.schedules import describe_schedule

NEW_FIELDS = ("schedule", "warmup", "step_size", "patience", "lr_min", "nesterov")


@pytest.fixture(scope="module")
def small():
    dataset = data.load_embedded()
    return dataset.train.take(150), dataset.validation.take(60)


def rates(schedule, epochs, steps_per_epoch, val_losses=()):
    """The rate of every step of a run, epoch by epoch (the losses known at each epoch's start)."""
    return [[schedule(Clock(epoch, step, steps_per_epoch, epochs, tuple(val_losses[:epoch])))
             for step in range(steps_per_epoch)] for epoch in range(epochs)]


# -- each rate against its formula --------------------------------------------------------------------

def test_exp_is_lr_times_decay_to_the_epoch_the_same_for_every_step():
    assert rates(ExponentialDecay(0.1, 0.5), 3, 2) == [[0.1, 0.1], [0.05, 0.05], [0.025, 0.025]]


def test_warmup_rises_linearly_per_step_then_the_schedule_starts_from_its_beginning():
    warm = rates(ExponentialDecay(0.1, 0.5, warmup=2), 4, 3)
    assert warm[:2] == [[0.1 * (g / 6) for g in (1, 2, 3)], [0.1 * (g / 6) for g in (4, 5, 6)]]
    assert warm[1][-1] == 0.1  # the last warm-up step reaches lr
    assert warm[2:] == [[0.1] * 3, [0.05] * 3]  # exp's epoch 0 and 1, after the warm-up
    assert rates(StepDecay(0.1, 0.1, 1, warmup=1), 2, 2) == [[0.05, 0.1], [0.1, 0.1]]


def test_step_multiplies_by_gamma_every_step_size_epochs():
    got = [epoch[0] for epoch in rates(StepDecay(0.2, 0.5, step_size=2), 7, 1)]
    assert got == [0.2 * 0.5 ** (e // 2) for e in range(7)] == [0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.025]


def test_cosine_is_per_step_from_lr_down_towards_lr_min_over_the_epochs_after_warmup():
    lr, lr_min, steps = 0.1, 0.01, 4
    got = rates(CosineAnnealing(lr, lr_min, warmup=1), 4, steps)
    assert got[0] == [lr * (g / 4) for g in (1, 2, 3, 4)]
    after = [rate for epoch in got[1:] for rate in epoch]  # T = 3 epochs x 4 steps
    assert after == [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / 12)) / 2 for t in range(12)]
    assert after[0] == lr and lr_min < after[-1] < lr_min + 0.02 * (lr - lr_min)  # the endpoints
    assert after[6] == pytest.approx((lr + lr_min) / 2)  # halfway
    assert CosineAnnealing(lr, lr_min).rate(Clock(3, 0, 4, 3)) == pytest.approx(lr_min)  # t = T: lr_min


def test_plateau_cuts_after_more_than_patience_epochs_without_improvement():
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.49996, 0.6, 0.6, 0.4]
    # 0.49996 is not below 0.5 * (1 - 1e-4) = 0.49995: not an improvement (torch's relative threshold)
    got = [epoch[0] for epoch in rates(ReduceOnPlateau(0.1, 0.5, patience=2), 11, 1, losses)]
    # epochs 1-2 improve; 3, 4, 5 do not (3 > 2: cut after epoch 5); 6 improves; 7, 8, 9 do not (cut)
    assert got == [0.1] * 5 + [0.05] * 4 + [0.025] * 2
    zero = [epoch[0] for epoch in rates(ReduceOnPlateau(0.1, 0.5, patience=0, lr_min=0.03), 5, 1, [1, 2, 3, 4])]
    assert zero == [0.1, 0.1, 0.05, 0.03, 0.03]  # patience 0: every epoch that does not improve; floor lr_min


def test_plateau_counts_only_the_epochs_after_warmup():
    got = [epoch[0] for epoch in rates(ReduceOnPlateau(0.1, 0.5, patience=0, warmup=1), 4, 1, [1.0, 2.0, 3.0])]
    assert got == [0.1, 0.1, 0.1, 0.05]  # epoch 1's loss (warm-up) is not the baseline; epoch 2's is


def test_every_rate_matches_torchs_scheduler():
    torch = pytest.importorskip("torch")
    from torch.optim import lr_scheduler

    def torch_rates(make, epochs, steps, per_step, losses=None):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler, out = make(optimizer), []
        for epoch in range(epochs):
            for _ in range(steps):
                out.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                if per_step:
                    scheduler.step()
            if losses is not None:
                scheduler.step(losses[epoch])
            elif not per_step:
                scheduler.step()
        return out

    def ours(schedule, epochs, steps, losses=()):
        return [rate for epoch in rates(schedule, epochs, steps, losses) for rate in epoch]

    assert ours(ExponentialDecay(0.1, 0.7), 5, 2) == pytest.approx(
        torch_rates(lambda o: lr_scheduler.ExponentialLR(o, 0.7), 5, 2, False), rel=1e-12)
    assert ours(StepDecay(0.1, 0.3, 2), 7, 2) == pytest.approx(
        torch_rates(lambda o: lr_scheduler.StepLR(o, 2, 0.3), 7, 2, False), rel=1e-12)
    assert ours(CosineAnnealing(0.1, 0.002, warmup=2), 6, 3) == pytest.approx(torch_rates(
        lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 1 / 6, 1.0, 5),
                                                lr_scheduler.CosineAnnealingLR(o, 12, 0.002)], [6]),
        6, 3, True), rel=1e-9)
    losses = [1.0, 0.8, 0.85, 0.8, 0.79995, 0.7, 0.75, 0.71, 0.72, 0.73, 0.74, 0.75]
    assert ours(ReduceOnPlateau(0.1, 0.5, 1, lr_min=0.02), 12, 1, losses) == pytest.approx(torch_rates(
        lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1, min_lr=0.02), 12, 1, False, losses),
        rel=1e-12)


# -- in the Trainer ----------------------------------------------------------------------------------

def recorded_rates():
    """An extension that records the learning rate of every step (it runs after the schedule)."""
    seen = []
    return seen, Lambda(PRIORITY_READER, on_step_start=lambda trainer: seen.append(trainer.optimizer.lr))


@pytest.mark.parametrize("changes", [{"schedule": "exp", "lr_decay": 0.5, "warmup": 1},
                                     {"schedule": "step", "lr_decay": 0.5, "step_size": 1},
                                     {"schedule": "cosine", "lr_min": 0.001, "warmup": 1}])
def test_the_trainer_steps_at_the_configs_rate(small, changes):
    train, _ = small
    config = Config(epochs=3, batch_size=50, lr=0.1, **changes)  # 3 steps an epoch
    seen, recorder = recorded_rates()
    with Trainer(config, resolve("numpy"), extensions=[recorder]) as trainer:
        trainer.fit(train)
    assert seen == [rate for epoch in rates(schedule_from_config(config), 3, 3) for rate in epoch]


def test_plateau_needs_a_validation_split(small):
    train, validation = small
    with Trainer(Config(epochs=1, batch_size=50, schedule="plateau"), resolve("numpy")) as trainer:
        with pytest.raises(ValueError, match="plateau schedule .* give the fit a validation split"):
            trainer.fit(train)
        assert trainer.state.global_step == 0
        trainer.fit(train, validation)


def fit_straight_and_resumed(config, train, validation, path, epoch, step):
    """(straight, resumed, their rates): ``config`` trained at once, and interrupted after ``step``
    steps of epoch ``epoch`` (a checkpoint), then resumed in a new Trainer."""
    straight_rates, resumed_rates = recorded_rates(), recorded_rates()
    with Trainer(config, resolve("numpy"), extensions=[straight_rates[1]]) as straight:
        straight.fit(train, validation)
    with Trainer(config, resolve("numpy"), sync_every=1,
                 extensions=[resumed_rates[1], stop_at(epoch, step), Checkpointer(path)]) as first:
        with pytest.raises(Interrupted, match=f"interrupted at epoch {epoch}, step {step}"):
            first.fit(train, validation)
    with Trainer(config, resolve("numpy"), extensions=[resumed_rates[1]]) as resumed:
        resumed.resume(path)
        resumed.fit(train, validation)
    return straight, resumed, straight_rates[0], resumed_rates[0]


@pytest.mark.parametrize("changes", [
    {"schedule": "exp", "warmup": 1, "lr_decay": 0.5},
    {"schedule": "step", "warmup": 1, "step_size": 2, "lr_decay": 0.1},
    {"schedule": "cosine", "warmup": 1, "lr_min": 1e-4},
    # a rate this small barely moves the validation loss (by less than 0.01%): every epoch after the
    # first is a plateau, so patience 0 cuts the rate after epochs 2 and 3, and the resumed run must too
    {"schedule": "plateau", "lr": 1e-7, "patience": 0, "lr_decay": 0.5},
])
def test_resume_mid_epoch_continues_every_schedule_bitwise(small, tmp_path, changes):
    train, validation = small
    config = Config(epochs=4, batch_size=50, dtype="float64", **changes)
    straight, resumed, straight_rates, resumed_rates = fit_straight_and_resumed(
        config, train, validation, tmp_path / "c.npz", epoch=3, step=2)
    assert resumed_rates == straight_rates and len(set(straight_rates)) >= 3  # the rate moved
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)
    assert resumed.state.step_losses == straight.state.step_losses
    assert [h["val_loss"] for h in resumed.state.history] == [h["val_loss"] for h in straight.state.history]
    if changes["schedule"] == "plateau":
        assert straight_rates[::3] == [1e-7, 1e-7, 5e-8, 2.5e-8]


# -- the Config fields -------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    ({"schedule": "linear"}, "schedule must be one of exp, step, cosine, plateau, got 'linear'"),
    ({"warmup": -1}, "warmup must be >= 0, got -1"),
    ({"warmup": 1.5}, "warmup must be an integer, got 1.5"),
    ({"step_size": 0}, "step_size must be >= 1, got 0"),
    ({"patience": -1}, "patience must be >= 0, got -1"),
    ({"lr_min": -0.1}, "lr_min must be a non-negative number, got -0.1"),
    ({"lr_min": 0.05}, "lr_min must be below lr (0.05), got 0.05"),
    ({"nesterov": "yes"}, "nesterov must be true or false, got 'yes'"),
    ({"nesterov": True, "optimizer": "adam"}, "nesterov is for optimizer momentum; this run's optimizer is adam"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov needs momentum > 0, got 0"),
])
def test_config_checks_each_new_field_in_one_line(changes, message):
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    assert str(info.value) == message


def test_records_without_the_new_fields_load_with_the_old_behaviour():
    record = Config(epochs=3).__dict__.copy()
    for name in NEW_FIELDS:
        del record[name]
    old = Config.from_dict(record)
    assert old == Config(epochs=3) and old.schedule == "exp" and not old.nesterov and old.warmup == 0
    with pytest.raises(ConfigError, match="colour is not a configuration field"):
        Config.from_dict({**record, "colour": "red"})
    with pytest.raises(ConfigError, match="epochs is missing"):
        Config.from_dict({k: v for k, v in record.items() if k != "epochs"})


def test_schedules_survive_the_resume_policy():
    saved = Config(schedule="cosine", warmup=2, lr_min=0.001, epochs=4)
    assert resume_config(saved, epochs=8, schedule="cosine", warmup=2) == dataclasses.replace(saved, epochs=8)
    with pytest.raises(ResumeMismatch, match=r"schedule \('cosine' in the checkpoint, 'step' asked for\)"):
        resume_config(saved, schedule="step")
    with pytest.raises(ResumeMismatch, match="warmup"):
        resume_config(saved, warmup=0)


def test_a_checkpoint_written_before_the_schedules_resumes_bitwise_and_predicts(small, tmp_path):
    """A checkpoint whose config has none of the new keys (as every one written before them)."""
    from xpcnn.inference import Predictor

    train, validation = small
    config = Config(epochs=2, batch_size=50, dtype="float64")
    with Trainer(config, resolve("numpy")) as straight:
        straight.fit(train)
    with Trainer(config, resolve("numpy"), sync_every=1, extensions=[stop_at(2, 1), Checkpointer(tmp_path / "new.npz")]
                 ) as first, pytest.raises(Interrupted):
        first.fit(train)
    params, optim, meta = checkpoint.load(tmp_path / "new.npz")
    for name in NEW_FIELDS:
        del meta["config"][name]
    old = write(tmp_path / "old.npz", params, optim, meta)
    with Trainer.from_checkpoint(old, resolve("numpy")) as resumed:
        assert resumed.config == config
        resumed.fit(train)
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)
    probabilities = Predictor(old, resolve("numpy")).probabilities(validation.images[:5])
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(axis=1), 1)


def test_the_header_names_the_schedule_and_keeps_the_default_line():
    assert describe_schedule(Config()) == "x0.8 per epoch"  # the header today: "momentum lr 0.05 (x0.8 per epoch)"
    assert describe_schedule(Config(lr_decay=1.0)) == ""
    assert describe_schedule(Config(schedule="cosine", warmup=2)) == "cosine, warmup 2"
    assert describe_schedule(Config(schedule="cosine", lr_min=0.001)) == "cosine to 0.001"
    assert describe_schedule(Config(schedule="step", lr_decay=0.1, step_size=3)) == "x0.1 every 3 epochs"
    assert (describe_schedule(Config(schedule="plateau", lr_decay=0.5, warmup=1))
            == "x0.5 on plateau, patience 2, warmup 1")


def test_the_library_run_takes_the_schedule_settings(tmp_path):
    options = RunOptions(settings={"epochs": 1, "batch_size": 100, "lr": 0.1, "schedule": "cosine", "warmup": 2,
                                   "optimizer": "sgd"}, out=str(tmp_path), quiet=True)
    run = prepare_run(options)
    with start_trainer(run) as trainer:
        assert "sgd lr 0.1 (cosine, warmup 2)," in header(run, trainer)
        assert isinstance(trainer.schedule, CosineAnnealing) and trainer.schedule.warmup == 2
    default_run = prepare_run(RunOptions(settings={"epochs": 1}, out=str(tmp_path)))
    with start_trainer(default_run) as trainer:
        assert "momentum lr 0.05 (x0.8 per epoch)" in header(default_run, trainer)
    with pytest.raises(UsageError, match="--step-size is for --schedule step; this run's schedule is cosine"):
        prepare_run(RunOptions(settings={"schedule": "cosine", "step_size": 3}, out=str(tmp_path)))


def test_a_compiled_step_takes_each_steps_rate_without_tracing_again(small):
    """jax.jit gets the learning rate as a step input: a rate that changes every step (warm-up, then
    cosine) neither freezes nor retraces, and the run equals the eager one."""
    pytest.importorskip("jax")
    from xpcnn.training.executors import JaxJitStep

    train, _ = small
    config = Config(epochs=2, batch_size=50, dtype="float64", schedule="cosine", warmup=1, nesterov=True)
    backend = resolve("jax", "cpu")
    with Trainer(config, backend, executor=JaxJitStep()) as compiled:
        compiled.fit(train)
    with Trainer(config, resolve("numpy")) as eager:
        eager.fit(train)
    assert compiled.executor.traces == 2  # the first step (no velocity yet), then every other
    np.testing.assert_allclose(compiled.state.step_losses, eager.state.step_losses, rtol=1e-12)
    for name, value in eager.model.state_dict().items():
        np.testing.assert_allclose(compiled.model.state_dict()[name], value, rtol=1e-10, atol=1e-13, err_msg=name)
