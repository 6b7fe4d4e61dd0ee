"""Layers, the models made of them, losses and initialisers.

One module per layer family; importing it registers the family (:func:`~xpcnn.nn.base.register`):
its layers by name (records, checkpoints) and its spec tokens, which ``--help`` lists in the order of
the imports below.  A new layer family is one new module and one import line here.
"""

# The families register their spec tokens in this order, the order of --help:
# isort: off
from xpcnn.nn.base import LAYERS, Layer, Token, UnknownLayerError, build_layer, register
from xpcnn.nn.conv import Conv2D
from xpcnn.nn.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from xpcnn.nn.activations import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
from xpcnn.nn.dense import Dense, Flatten
from xpcnn.nn.dropout import Dropout
from xpcnn.nn.batchnorm import BatchNorm1D, BatchNorm2D
from xpcnn.nn.residual import Residual
# isort: on
from xpcnn.nn.losses import LOSSES, BCELoss, MSELoss, SoftmaxCrossEntropyLoss
from xpcnn.nn.sequential import Sequential, StateDictError
from xpcnn.nn.spec import SPEC_HELP, SpecContext, SpecError, architecture_network, parse_spec

__all__ = [
    "LAYERS", "Layer", "Token", "UnknownLayerError", "build_layer", "register",
    "Conv2D", "AvgPool2D", "MaxPool2D", "GlobalAvgPool2D", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "GELU",
    "Dense", "Flatten", "Dropout",
    "BatchNorm1D", "BatchNorm2D", "Residual", "Sequential", "StateDictError",
    "LOSSES", "BCELoss", "MSELoss", "SoftmaxCrossEntropyLoss",
    "SPEC_HELP", "SpecContext", "SpecError", "architecture_network", "parse_spec",
]
