"""Learning-rate schedules: extensions that set ``optimizer.lr`` before every training step.

Each schedule is a pure function of where the run stands -- the epochs done, the steps done in the
current epoch, the steps an epoch has, the run's length in epochs and the validation loss of each
epoch done -- all of which a checkpoint holds, so a resumed run gets the rate of every step that an
uninterrupted one gets, bitwise.  The Trainer adds the one its :class:`~xpcnn.training.Config`
names (:func:`schedule_from_config`); a library user may hand any of them to a Trainer instead.

With ``warmup`` W epochs (``--warmup W``) of S steps each, step g (the run's step, from 0) first
warms up linearly, ``lr * (g + 1) / (W S)`` for g < W S (so the last warm-up step reaches ``lr``),
and the schedule proper then starts from its own beginning, its clock counting the epochs, steps
and validation losses after the warm-up (as ``torch.optim.lr_scheduler.SequentialLR`` runs a
``LinearLR`` and then the schedule).  With e the epochs done after the warm-up (from 0):

==========  =======================================================================  ===========
schedule    rate                                                                     changes
==========  =======================================================================  ===========
exp         ``lr * gamma ** e``                                                      per epoch
step        ``lr * gamma ** floor(e / step_size)``                                   per epoch
cosine      ``lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2``, t the step after     per step
            warm-up (from 0), T the steps of the epochs after warm-up
plateau     ``lr`` times gamma for each epoch that ended more than ``patience``      per epoch
            epochs without a better validation loss (torch's ReduceLROnPlateau)
==========  =======================================================================  ===========
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xpcnn.training.extensions import PRIORITY_EDITOR, Extension

if TYPE_CHECKING:
    from xpcnn.training.config import Config
    from xpcnn.training.trainer import Trainer


@dataclass(frozen=True)
class Clock:
    """Where a run stands, as a schedule sees it (every field is in a checkpoint)."""

    epoch: int  # epochs done
    step: int  # steps of the current epoch done: the next step is number ``step`` (from 0) of it
    steps_per_epoch: int
    epochs: int  # the run's length in epochs
    val_losses: tuple = ()  # the validation loss of each epoch done (None where there was none)

    @property
    def global_step(self) -> int:
        """The run's next step, from 0 (``TrainState.global_step``)."""
        return self.epoch * self.steps_per_epoch + self.step

    @classmethod
    def of(cls, trainer: Trainer) -> Clock:
        state = trainer.state
        return cls(state.epoch, state.step_in_epoch, trainer.steps_per_epoch, trainer.config.epochs,
                   tuple(entry.get("val_loss") for entry in state.history))

    def after(self, epochs: int) -> Clock:
        """This clock with its first ``epochs`` epochs (the warm-up) taken away."""
        return dataclasses.replace(self, epoch=self.epoch - epochs, epochs=self.epochs - epochs,
                                   val_losses=self.val_losses[epochs:])


class Schedule(Extension):
    """Sets ``trainer.optimizer.lr`` to ``self(Clock.of(trainer))`` at the start of every epoch and
    before every step.  Subclasses give :meth:`rate`, the rate after the warm-up; this class adds the
    linear warm-up of ``warmup`` epochs: ``lr * (g + 1) / (warmup * steps_per_epoch)`` at step g."""

    priority = PRIORITY_EDITOR

    def __init__(self, lr: float, warmup: int = 0) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"{type(self).__name__}: warmup must be an integer >= 0 (epochs), got {warmup!r}")
        self.lr, self.warmup = float(lr), warmup

    def __call__(self, clock: Clock) -> float:
        """The learning rate of the step ``clock`` points at."""
        warm_steps = self.warmup * clock.steps_per_epoch
        if clock.global_step < warm_steps:
            return self.lr * ((clock.global_step + 1) / warm_steps)  # (the last one: lr exactly)
        return self.rate(clock.after(self.warmup) if self.warmup else clock)

    def rate(self, clock: Clock) -> float:
        """The rate at ``clock``, counted from the end of the warm-up."""
        raise NotImplementedError

    def on_epoch_start(self, trainer: Trainer) -> None:
        trainer.optimizer.lr = self(Clock.of(trainer))

    def on_step_start(self, trainer: Trainer) -> None:
        trainer.optimizer.lr = self(Clock.of(trainer))


class ExponentialDecay(Schedule):
    """exp: the rate of epoch e (from 0) is ``lr * decay ** e``, the same for all its steps."""

    def __init__(self, lr: float, decay: float, warmup: int = 0) -> None:
        super().__init__(lr, warmup)
        self.decay = decay

    def rate(self, clock: Clock) -> float:
        return self.lr * self.decay ** clock.epoch


class StepDecay(Schedule):
    """step: the rate of epoch e (from 0) is ``lr * gamma ** floor(e / step_size)``: multiplied by
    gamma every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, lr: float, gamma: float, step_size: int, warmup: int = 0) -> None:
        super().__init__(lr, warmup)
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepDecay: step_size must be an integer >= 1 (epochs), got {step_size!r}")
        self.gamma, self.step_size = gamma, step_size

    def rate(self, clock: Clock) -> float:
        return self.lr * self.gamma ** (clock.epoch // self.step_size)


class CosineAnnealing(Schedule):
    """cosine, per step: ``lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2`` at step t (from 0) of
    the T steps of the run's epochs after warm-up: ``lr`` at the first, nearly ``lr_min`` at the
    last (``torch.optim.lr_scheduler.CosineAnnealingLR`` with T_max = T, stepped every step).  T
    follows the run's length: a run resumed with more epochs stretches the rest of its curve."""

    def __init__(self, lr: float, lr_min: float = 0.0, warmup: int = 0) -> None:
        super().__init__(lr, warmup)
        self.lr_min = float(lr_min)

    def rate(self, clock: Clock) -> float:
        total = max(clock.epochs * clock.steps_per_epoch, 1)
        t = min(clock.global_step, total)
        return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * t / total)) / 2


class ReduceOnPlateau(Schedule):
    """plateau: ``lr`` times ``gamma`` each time the validation loss has not improved for more than
    ``patience`` epochs, as ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min",
    factor=gamma, patience=patience, threshold=1e-4, threshold_mode="rel", cooldown=0,
    min_lr=lr_min, eps=1e-8)`` stepped after every epoch with its validation loss: a loss improves
    when it is below ``best * (1 - 1e-4)``; after a reduction the count of epochs without one starts
    again; the rate never goes below ``lr_min``, and a cut smaller than 1e-8 is skipped.  The rate
    of an epoch is replayed from the validation losses of the epochs before it (the history), so a
    resumed run reduces where an uninterrupted one does.  Needs a validation split."""

    THRESHOLD, EPS = 1e-4, 1e-8

    def __init__(self, lr: float, gamma: float, patience: int, lr_min: float = 0.0, warmup: int = 0) -> None:
        super().__init__(lr, warmup)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"ReduceOnPlateau: patience must be an integer >= 0 (epochs), got {patience!r}")
        self.gamma, self.patience, self.lr_min = gamma, patience, float(lr_min)

    def rate(self, clock: Clock) -> float:
        rate, best, bad = self.lr, math.inf, 0
        for epoch, loss in enumerate(clock.val_losses[:clock.epoch], start=1):
            if loss is None:
                raise ValueError(f"ReduceOnPlateau: epoch {epoch} has no validation loss; the plateau schedule "
                                 f"needs a validation split: fit(train, validation)")
            if loss < best * (1 - self.THRESHOLD):
                best, bad = loss, 0
            else:
                bad += 1
            if bad > self.patience:
                reduced = max(rate * self.gamma, self.lr_min)
                if rate - reduced > self.EPS:
                    rate = reduced
                bad = 0
        return rate


def schedule_from_config(config: Config) -> Schedule:
    """The schedule ``config`` names, with its fields (``lr_decay`` is the factor gamma)."""
    if config.schedule == "step":
        return StepDecay(config.lr, config.lr_decay, config.step_size, config.warmup)
    if config.schedule == "cosine":
        return CosineAnnealing(config.lr, config.lr_min, config.warmup)
    if config.schedule == "plateau":
        return ReduceOnPlateau(config.lr, config.lr_decay, config.patience, config.lr_min, config.warmup)
    return ExponentialDecay(config.lr, config.lr_decay, config.warmup)


def describe_schedule(config: Config) -> str:
    """The schedule in words for the run's header line ("" for exp without decay or warm-up):
    ``x0.8 per epoch``, ``x0.1 every 5 epochs``, ``cosine to 0.001``, ``x0.5 on plateau, patience 2``,
    each followed by ``, warmup N`` with a warm-up."""
    gamma = f"x{config.lr_decay:g}"
    parts = {"exp": [f"{gamma} per epoch"] if config.lr_decay != 1 else [],
             "step": [f"{gamma} every {config.step_size} epoch{'s' if config.step_size != 1 else ''}"],
             "cosine": ["cosine" + (f" to {config.lr_min:g}" if config.lr_min else "")],
             "plateau": [f"{gamma} on plateau, patience {config.patience}"
                         + (f", floor {config.lr_min:g}" if config.lr_min else "")]}[config.schedule]
    if config.warmup:
        parts.append(f"warmup {config.warmup}")
    return ", ".join(parts)
