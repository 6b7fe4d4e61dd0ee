"""A run's model, loss and optimizer, built from its :class:`~xpcnn.training.Config`."""

from __future__ import annotations

from xpcnn.nn.losses import LOSSES, BCELoss, MSELoss, SoftmaxCrossEntropyLoss
from xpcnn.nn.presets import preset_network
from xpcnn.nn.sequential import Sequential
from xpcnn.optim import SGD, Adam, AdamW, Optimizer
from xpcnn.training.config import Config


def build_model(config: Config) -> Sequential:
    """The run's network (the ``model`` spec, else the preset's) for the config's images and task,
    initialised on the host from ``config.seed``."""
    return preset_network(config.preset, config.outputs, config.init, config.seed, config.image_shape, config.model)


def build_loss(config: Config) -> MSELoss | BCELoss | SoftmaxCrossEntropyLoss:
    return LOSSES[config.loss]()


def build_optimizer(config: Config) -> Optimizer:
    """sgd, momentum (Nesterov's with ``nesterov``), adam (weight decay as L2) or adamw (decoupled),
    with the config's weight decay on every parameter."""
    decay = config.weight_decay
    if config.optimizer == "adam":
        return Adam(config.lr, weight_decay=decay)
    if config.optimizer == "adamw":
        return AdamW(config.lr, weight_decay=decay)
    return SGD(config.lr, momentum=config.momentum if config.optimizer == "momentum" else 0.0, weight_decay=decay,
               nesterov=config.nesterov)  # (Config allows nesterov with optimizer momentum only)
