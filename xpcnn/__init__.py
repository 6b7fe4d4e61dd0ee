"""xpcnn: a convolutional neural network from scratch on the Python array API."""

from .backend import Backend, BackendError, resolve, to_numpy, from_numpy, transfer, available
from .layers import Conv2D, Dense, Sigmoid, Tanh, ReLU, Flatten, MaxPool2D, AvgPool2D
from .model import Sequential, StateDictError
from .regularization import BatchNorm1D, BatchNorm2D, Dropout
from .losses import MSELoss, BCELoss, SoftmaxCrossEntropyLoss
from .optim import SGD, Adam, AdamW
from .gradcheck import check_gradients, assert_gradients_ok
from . import data, networks, parity, training  # noqa: E402  (xpcnn.data.load_embedded() etc.)

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendError", "resolve", "to_numpy", "from_numpy", "transfer", "available",
    "Conv2D", "Dense", "Sigmoid", "Tanh", "ReLU", "Flatten", "MaxPool2D", "AvgPool2D",
    "Dropout", "BatchNorm1D", "BatchNorm2D",
    "Sequential", "StateDictError", "MSELoss", "BCELoss", "SoftmaxCrossEntropyLoss", "SGD", "Adam", "AdamW",
    "check_gradients", "assert_gradients_ok", "data", "networks", "parity", "training",
]
