"""Layers that own parameters. Ops (mpinet.ops) do the math; layers never write gradients."""
from .conv import Conv2d, ConvTranspose2d
from .module import Module, Sequential
from .activation import GELU, LeakyReLU, LogSoftmax, PReLU, ReLU, Sigmoid, Softmax, Tanh
from .activation import (ACTIVATIONS, ELU, GELUTanh, Hardswish, Mish, ReLU6, SiLU, Softplus,
                         get_activation)
from .basic import Flatten, Identity
from .dropout import Dropout
from .linear import Linear
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm, LocalResponseNorm
from .attention import MultiheadAttention
from .embedding import Embedding
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell
from .pooling import AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d, Upsample

__all__ = ["Module", "Sequential"]
__all__ += ["Linear", "ReLU", "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
            "LogSoftmax", "Dropout", "BatchNorm1d", "BatchNorm2d", "LocalResponseNorm", "Flatten",
            "Identity"]
__all__ += ["ELU", "SiLU", "Softplus", "Hardswish", "ReLU6", "Mish", "GELUTanh", "ACTIVATIONS",
            "get_activation"]
__all__ += ["RNN", "LSTM", "GRU", "LSTMCell", "GRUCell", "Embedding", "LayerNorm",
            "MultiheadAttention"]
__all__ += ["Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
            "GlobalAvgPool2d", "Upsample"]
