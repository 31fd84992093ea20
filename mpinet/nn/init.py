"""Parameter initialisation, drawn on the host from one seeded generator (mpinet.random's).

Drawing with NumPy (then moving to the device) makes a model's initial weights identical on CPU
and GPU and on every rank for the same seed; data parallelism still broadcasts rank 0's weights.
Defaults follow PyTorch's (Kaiming-uniform with a=sqrt(5) for weights, uniform(+-1/sqrt(fan_in))
for biases), so our models train like the reference implementations.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd import Parameter
from ..random import init_generator as generator
from ..random import manual_seed  # noqa: F401 - the public name since the first release


def _fans(shape: tuple) -> tuple[int, int]:
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive  # fan_in, fan_out


def _param(array: np.ndarray, dtype=np.float32) -> Parameter:
    return Parameter(backend.to_device(array.astype(dtype, copy=False)))


def uniform(shape: tuple, bound: float, dtype=np.float32) -> Parameter:
    # Drawn in float32: VGG's 100M-weight Linear layers would otherwise allocate float64 twice.
    u = generator().random(shape, dtype=np.float32)
    u *= np.float32(2 * bound)
    u -= np.float32(bound)
    return _param(u, dtype)


def kaiming_uniform(shape: tuple, a: float = math.sqrt(5), dtype=np.float32) -> Parameter:
    """PyTorch's default for Linear/Conv weights: U(+-gain*sqrt(3/fan_in))."""
    fan_in, _ = _fans(shape)
    gain = math.sqrt(2.0 / (1 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in), dtype)


def kaiming_normal(shape: tuple, mode: str = "fan_out", dtype=np.float32) -> Parameter:
    """He initialisation for ReLU nets (torchvision ResNet uses fan_out)."""
    fan_in, fan_out = _fans(shape)
    std = math.sqrt(2.0 / (fan_in if mode == "fan_in" else fan_out))
    return _param(generator().standard_normal(shape, dtype=np.float32) * np.float32(std), dtype)


def bias_for(weight_shape: tuple, size: int, dtype=np.float32) -> Parameter:
    fan_in, _ = _fans(weight_shape)
    return uniform((size,), 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0, dtype)


def constant(shape: tuple, value: float, dtype=np.float32) -> Parameter:
    return _param(np.full(shape, value), dtype)
