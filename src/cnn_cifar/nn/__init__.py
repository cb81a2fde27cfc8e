"""Hand-written layers with explicit forward and backward, PyTorch-style names and layouts."""
from . import amp, init, random, special
from .activation import GELU, ReLU, Sigmoid
from .amp import autocast
from .conv import Conv2d
from .dropout import Dropout, Dropout2d, dropout_rate, set_dropout
from .linear import Flatten, Linear, Mul
from .loss import SoftmaxCrossEntropy
from .module import Module, Parameter, Sequential, grad_enabled, no_grad
from .norm import BatchNorm1d, BatchNorm2d, BatchNormAddReLU2d, BatchNormReLU2d, convert_sync_batchnorm
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .residual import BasicBlock, PadShortcut, ResidualSum
from .squeeze_excitation import SqueezeExcitation

__all__ = [
    "AvgPool2d", "BasicBlock", "PadShortcut", "BatchNorm1d", "BatchNorm2d", "BatchNormAddReLU2d", "BatchNormReLU2d",
    "Conv2d", "Dropout", "Dropout2d", "GELU", "Flatten", "GlobalAvgPool2d", "Linear", "MaxPool2d", "Module", "Mul",
    "Parameter", "ReLU", "ResidualSum", "Sigmoid", "SqueezeExcitation", "Sequential", "SoftmaxCrossEntropy", "amp",
    "autocast", "convert_sync_batchnorm", "dropout_rate", "grad_enabled", "init", "no_grad", "random", "set_dropout",
    "special",
]
