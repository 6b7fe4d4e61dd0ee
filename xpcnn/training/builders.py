"""A run's model, loss and optimizer, built from its :class:`~xpcnn.training.Config`."""

from __future__ import annotations

from ..losses import LOSSES
from ..model import Sequential
from ..networks import preset_network
from ..optim import SGD, Adam
from .config import Config


def build_model(config: Config) -> Sequential:
    """The run's network (the ``model`` spec, else the preset's) for the config's images and task,
    initialised on the host from ``config.seed``."""
    return preset_network(config.preset, config.outputs, config.init, config.seed, config.image_shape, config.model)


def build_loss(config: Config):
    return LOSSES[config.loss]()


def build_optimizer(config: Config):
    if config.optimizer == "adam":
        return Adam(config.lr)
    return SGD(config.lr, momentum=config.momentum if config.optimizer == "momentum" else 0.0)
