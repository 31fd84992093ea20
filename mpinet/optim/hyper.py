"""The step's changing hyper-parameters as the GPU update kernels read them (host arithmetic).

They reach the kernels through a small float64 device array, not as kernel arguments: a CUDA
graph of the training step (mpinet.training.cuda_graph) bakes kernel arguments in at capture,
while it reads the array at every replay. The optimizer writes the array
(``optim.kernels.write_hyper_``, one tiny launch) before each step; inside a capture it does not
(the graph runner writes it before replays).
"""
from __future__ import annotations

import math

HYPER_SIZE = 4  # float64 values in the device array


def sgd_hyper(lr):
    """SGD's device hyper-parameters for a step at learning rate ``lr``."""
    return (float(lr),)


def adam_hyper(lr, beta1, beta2, weight_decay, step):
    """Adam's device hyper-parameters for update number ``step`` (1-based): (decoupled decay
    factor 1 - lr * weight_decay, step size lr / (1 - beta1**step), sqrt(1 - beta2**step)).
    Combined in float64 on the host, as PyTorch does."""
    if step < 1:
        raise ValueError(f"adam_update_: step must be >= 1 (count including this update), "
                         f"got {step}")
    return (1.0 - lr * weight_decay, lr / (1.0 - beta1 ** step),
            math.sqrt(1.0 - beta2 ** step))
