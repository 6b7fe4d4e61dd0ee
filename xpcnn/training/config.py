"""The configuration of a run: every value that defines it (and is stored in its checkpoints),
checked when it is made, the named presets, the task -> loss rule and the resume policy.

The task decides the loss: ``multiclass`` trains ten logits with softmax cross-entropy (no other
loss fits); ``binary`` trains one sigmoid output with binary cross-entropy, or with the article's
½ squared error when ``loss="mse"`` is asked for.  :class:`Config` applies that rule itself, so
``Config(task="binary")`` from Python trains exactly what ``train.py --task binary`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

from xpcnn.backends import DTYPES
from xpcnn.data.targets import BINARY_CLASSES, TASKS, is_binary, task_loss, task_outputs
from xpcnn.nn.init import INITIALISERS
from xpcnn.nn.losses import LOSSES

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("exp", "step", "cosine", "plateau")  # the learning-rate schedules (xpcnn.training.schedules)
PRESET_NAMES = ("default", "article", "lenet5", "vgg", "resnet20", "mobilenet")


class ConfigError(ValueError):
    """A configuration value out of its range; ``field`` names it, ``problem`` says what is wrong
    (the message is ``"<field> <problem>"``, e.g. ``"lr must be a positive number, got -1"``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


# -- the validators: every number and choice of a run (Config fields and the command line's other
# options) is checked by one of these, and a ConfigError names the value --------------------------

def check_integer(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` when it is an integer in [minimum, maximum] (no upper bound for None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be <= {maximum}, got {value}")
    return value


def check_number(name: str, value: object, interval: str) -> float:
    """``value`` as a float when it is a real number in ``interval``, written as in mathematics:
    ``"[0, 1)"``, ``"(0, 1]"``; ``"(0, inf)"`` (a positive number) and ``"[0, inf)"`` (a
    non-negative one) leave out infinity, and every interval leaves out NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {value!r}")
    number, (low, high) = float(value), (float(end) for end in interval[1:-1].split(","))
    above = number >= low if interval[0] == "[" else number > low
    below = number <= high if interval[-1] == "]" else number < high
    if not (above and below):
        wanted = {"(0, inf)": "a positive number", "[0, inf)": "a non-negative number"}.get(interval, f"in {interval}")
        raise ConfigError(name, f"must be {wanted}, got {number}")
    return number


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` when it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass
class Config:
    """Everything that defines a run.  Each field is checked on construction (a
    :class:`ConfigError` names the first bad one), and ``loss`` follows the task (module doc)."""

    preset: str = "default"
    task: str = "multiclass"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "momentum"  # sgd | momentum | adam
    momentum: float = 0.9
    loss: str = "softmax_ce"
    init: str = "he"
    seed: int = 0
    dtype: str = "float32"
    train_count: int | None = None  # use only the first N training images (the article: 200)
    shift: int = 2  # augmentation: random translation of each training image by up to this many pixels
    lr_decay: float = 0.8  # schedule exp: the learning rate of epoch e (from 0) is lr * lr_decay ** e
    model: str | None = None  # a network spec (xpcnn.nn.presets.SPEC_HELP); None: the preset's network
    image_shape: tuple = (1, 28, 28)  # (C, H, W) of the images: the data's
    classes: int = 10  # K, the number of classes: the data's
    normalize: bool = False  # scale each channel by the training split's mean and std
    weight_decay: float = 0.0  # L2 (sgd, momentum, adam) or decoupled (adamw)
    # The learning-rate schedule (xpcnn.training.schedules has each one's formula): exp, step, cosine
    # or plateau, after ``warmup`` epochs of linear warm-up; ``lr_decay`` is the factor of exp, step
    # (every ``step_size`` epochs) and plateau (after more than ``patience`` epochs without a better
    # validation loss); ``lr_min`` is where cosine ends and the floor of plateau.
    schedule: str = "exp"
    warmup: int = 0
    step_size: int = 5
    patience: int = 2
    lr_min: float = 0.0
    nesterov: bool = False  # Nesterov momentum (optimizer momentum only)

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESET_NAMES)
        check_choice("task", self.task, TASKS)
        check_integer("epochs", self.epochs, 1)
        check_integer("batch_size", self.batch_size, 1)
        self.lr = check_number("lr", self.lr, "(0, inf)")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        self.momentum = check_number("momentum", self.momentum, "[0, 1)")
        check_choice("loss", self.loss, tuple(LOSSES))
        check_choice("init", self.init, INITIALISERS)
        check_integer("seed", self.seed, 0, 2 ** 63 - 2)
        check_choice("dtype", self.dtype, DTYPES)
        if self.train_count is not None:
            check_integer("train_count", self.train_count, 1)
        check_integer("shift", self.shift, 0, 16)
        self.lr_decay = check_number("lr_decay", self.lr_decay, "(0, 1]")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError("model", f"must be a network spec (a string), got {self.model!r}")
        if (not isinstance(self.image_shape, (tuple, list)) or len(self.image_shape) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in self.image_shape)):
            raise ConfigError("image_shape",
                              f"must be (channels, height, width), each in 1..4096, got {self.image_shape!r}")
        self.image_shape = tuple(self.image_shape)
        check_integer("classes", self.classes, 2, 100_000)
        if is_binary(self.task) and self.classes != BINARY_CLASSES:
            raise ConfigError("task", f"binary (digit > 4, the article's task) needs the 10 MNIST classes, "
                                      f"the data has {self.classes}; use multiclass")
        if not isinstance(self.normalize, bool):
            raise ConfigError("normalize", f"must be true or false, got {self.normalize!r}")
        self.weight_decay = check_number("weight_decay", self.weight_decay, "[0, 1)")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_integer("warmup", self.warmup, 0, 100_000)
        check_integer("step_size", self.step_size, 1, 100_000)
        check_integer("patience", self.patience, 0, 100_000)
        self.lr_min = check_number("lr_min", self.lr_min, "[0, inf)")
        if self.lr_min >= self.lr:
            raise ConfigError("lr_min", f"must be below lr ({self.lr:g}), got {self.lr_min:g}")
        if not isinstance(self.nesterov, bool):
            raise ConfigError("nesterov", f"must be true or false, got {self.nesterov!r}")
        if self.nesterov and self.optimizer != "momentum":
            raise ConfigError("nesterov", f"is for optimizer momentum; this run's optimizer is {self.optimizer}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", "needs momentum > 0, got 0")
        self.loss = task_loss(self.task, self.loss)  # ten logits: softmax cross-entropy; one output: BCE or MSE

    @property
    def outputs(self) -> int:
        """Width of the network's last layer: one sigmoid output (binary) or K logits."""
        return task_outputs(self.task, self.classes)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """A Config from a stored dict (a checkpoint's record): unknown or missing keys and bad
        values raise :class:`ConfigError` naming the key."""
        if not isinstance(values, dict):
            raise ConfigError("config", f"must be a mapping, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(str(key), "is not a configuration field")
        defaults = {"model": None, "image_shape": (1, 28, 28), "classes": 10, "normalize": False, "weight_decay": 0.0,
                    "schedule": "exp", "warmup": 0, "step_size": 5, "patience": 2, "lr_min": 0.0, "nesterov": False}
        for name in names:  # older records lack the fields added since; they take the values of then
            if name not in values and name not in defaults:
                raise ConfigError(name, "is missing")
        return cls(**{**defaults, **values})


PRESETS = {
    # conv 5x5 x16, ReLU, 2x2 max-pool, dense 2304 -> 10, softmax cross-entropy, SGD + momentum
    "default": Config(),
    # The article's network exactly: first 200 images, digit > 4, three 5x5 filters, sigmoid,
    # dense 1728 -> 1, sigmoid, 1/2 squared error, plain gradient descent, U[0, 1) initialisation.
    "article": Config(preset="article", task="binary", epochs=20, batch_size=200, lr=0.1, optimizer="sgd",
                      momentum=0.0, loss="mse", init="uniform", train_count=200, shift=0, lr_decay=1.0),
    # LeNet-5 adapted (xpcnn.nn.presets): conv 6, conv 16, dense 120, 84, K; tuned on the embedded digits
    "lenet5": Config(preset="lenet5", epochs=40, batch_size=64, lr=0.05, lr_decay=0.92),
    # a small VGG for 3x32x32 (CIFAR-10-like): two conv blocks with batch norm, dense 128, dropout
    "vgg": Config(preset="vgg", image_shape=(3, 32, 32), epochs=20, batch_size=64, optimizer="adam", lr=1e-3,
                  lr_decay=0.9, normalize=True, weight_decay=5e-4),
    # He et al. 2016's CIFAR ResNet-20 (xpcnn.nn.presets): SGD + momentum 0.9 from lr 0.1, weight decay
    # 1e-4 and batches of 128 as the paper; a cosine schedule over 30 epochs for its 164; shifts of 4 pixels
    "resnet20": Config(preset="resnet20", image_shape=(3, 32, 32), epochs=30, batch_size=128, optimizer="momentum",
                       momentum=0.9, lr=0.1, weight_decay=1e-4, normalize=True, shift=4, schedule="cosine"),
    # a small depthwise-separable network (xpcnn.nn.presets): the same recipe, batches of 64, 20 epochs
    "mobilenet": Config(preset="mobilenet", image_shape=(3, 32, 32), epochs=20, batch_size=64, optimizer="momentum",
                        momentum=0.9, lr=0.05, weight_decay=5e-5, normalize=True, shift=4, schedule="cosine"),
}


# The recipe of a network given by ``--model`` without a ``--preset``: a preset's recipe was tuned
# for its own network and data, so a network of the user's own gets the standard one instead --
# Adam at 3e-3 with a cosine schedule to 0, and no augmentation (shifts are turned on with --shift).
MODEL_RECIPE = Config(epochs=12, batch_size=64, optimizer="adam", lr=3e-3, schedule="cosine", shift=0)

# The data each preset's recipe was tuned on (--data names): its augmentation (``shift``) follows the
# user to no other data -- elsewhere a run's default is no shift (shift 2 is a quarter of an 8x8 image).
PRESET_DATA = {"default": ("embedded", "download"), "article": ("embedded", "download"),
               "lenet5": ("embedded", "download"), "vgg": ("cifar10",), "resnet20": ("cifar10",),
               "mobilenet": ("cifar10",)}


def default_recipe(preset: str | None, model: object, data: str, shift_given: bool = False) -> tuple[Config, str]:
    """The Config a run starts from before its flags, and why, in words (the run's header says it):
    the named ``preset``'s recipe; for a ``model`` given without a preset, :data:`MODEL_RECIPE`; and
    the preset's augmentation only on the data it was tuned for (:data:`PRESET_DATA`), none elsewhere
    (``shift_given``: the run sets its own, and the words do not mention the preset's)."""
    if preset is None and model is not None:
        return MODEL_RECIPE, "the --model recipe (no --preset)"
    name = preset or "default"
    base = PRESETS[name]
    if base.shift and data not in PRESET_DATA.get(name, ()) and not shift_given:
        where = " or ".join(repr(d) for d in PRESET_DATA[name])
        return (dataclasses.replace(base, shift=0),
                f"preset {name} (its shifts of {base.shift} pixels are for --data {where}: none here; --shift N "
                f"adds them)")
    return base, f"preset {name}"


class ResumeMismatch(ValueError):
    """Resuming with settings that differ from the checkpoint's run (other than ``epochs``);
    ``changed`` maps each field to (checkpoint's value, value asked for)."""

    def __init__(self, changed: dict) -> None:
        self.changed = changed
        super().__init__("a resumed run continues the checkpoint's run; only epochs may change, not "
                         + ", ".join(f"{k} ({old!r} in the checkpoint, {new!r} asked for)"
                                     for k, (old, new) in changed.items()))


def resume_config(saved: Config, **overrides) -> Config:
    """The resume policy: the checkpoint's configuration, with ``epochs`` (only) changed.  Any
    other override that differs from the saved value raises :class:`ResumeMismatch`."""
    changed = {k: (getattr(saved, k), v) for k, v in overrides.items()
               if k != "epochs" and v is not None and getattr(saved, k) != v}
    if changed:
        raise ResumeMismatch(changed)
    epochs = overrides.get("epochs")
    return dataclasses.replace(saved, epochs=epochs) if epochs is not None else saved
