"""xpcnn: a convolutional neural network from scratch on the Python array API."""

from xpcnn import data, training
from xpcnn.backends import Backend, BackendError, available, from_numpy, resolve, to_numpy, transfer
from xpcnn.nn import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    BCELoss,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    MSELoss,
    ReLU,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropyLoss,
    StateDictError,
    Tanh,
)
from xpcnn.nn import presets as networks
from xpcnn.optim import SGD, Adam, AdamW
from xpcnn.tools import parity
from xpcnn.tools.gradcheck import assert_gradients_ok, check_gradients

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendError", "resolve", "to_numpy", "from_numpy", "transfer", "available",
    "Conv2D", "Dense", "Sigmoid", "Tanh", "ReLU", "Flatten", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
    "LeakyReLU", "GELU",
    "Dropout", "BatchNorm1D", "BatchNorm2D",
    "Sequential", "StateDictError", "MSELoss", "BCELoss", "SoftmaxCrossEntropyLoss", "SGD", "Adam", "AdamW",
    "check_gradients", "assert_gradients_ok", "data", "networks", "parity", "training",
]
