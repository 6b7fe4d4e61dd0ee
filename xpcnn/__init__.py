"""xpcnn: a convolutional neural network from scratch on the Python array API."""

from xpcnn.backends import Backend, BackendError, resolve, to_numpy, from_numpy, transfer, available
from xpcnn.nn import Conv2D, Dense, Sigmoid, Tanh, ReLU, Flatten, MaxPool2D, AvgPool2D
from xpcnn.nn import Sequential, StateDictError
from xpcnn.nn import BatchNorm1D, BatchNorm2D, Dropout
from xpcnn.nn import MSELoss, BCELoss, SoftmaxCrossEntropyLoss
from xpcnn.optim import SGD, Adam, AdamW
from xpcnn.tools.gradcheck import check_gradients, assert_gradients_ok
from xpcnn import data, training
from xpcnn.nn import presets as networks
from xpcnn.tools import parity

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendError", "resolve", "to_numpy", "from_numpy", "transfer", "available",
    "Conv2D", "Dense", "Sigmoid", "Tanh", "ReLU", "Flatten", "MaxPool2D", "AvgPool2D",
    "Dropout", "BatchNorm1D", "BatchNorm2D",
    "Sequential", "StateDictError", "MSELoss", "BCELoss", "SoftmaxCrossEntropyLoss", "SGD", "Adam", "AdamW",
    "check_gradients", "assert_gradients_ok", "data", "networks", "parity", "training",
]
