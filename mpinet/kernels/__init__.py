"""GPU kernels: the fast paths the ops take on CuPy arrays, one module per kernel family.

  * ``elementwise``: bias add, residual add (+ ReLU), float32 <-> bf16/fp16 casts;
  * ``activation``: ReLU, sigmoid, tanh, GELU;
  * ``dropout``: dropout masks drawn in-kernel from a device-side generator state;
  * ``pool``: max pooling forward and backward;
  * ``batch_norm``: batch-norm statistics, apply and backward (and the per-channel sum);
  * ``cudnn``: convolutions through cuDNN-frontend graphs;
  * ``recurrent``: the LSTM and GRU cell steps, forward and backward.
``_compile`` holds what they share: the dtype header (bfloat16 rounding written once), the
compile caches and the launch helpers. (The optimizers' update kernels live beside the
optimizers, in ``mpinet.optim.kernels``.)

Ground level: kernels know arrays, never Variables, layers or optimizers; they import only
``mpinet.backend``. Importing them loads no CUDA (cupy and cudnn are imported on the first
launch), so ops import them at module top and the package still imports without a GPU.
"""
from . import activation, batch_norm, cudnn, dropout, elementwise, pool, recurrent

__all__ = ["activation", "batch_norm", "cudnn", "dropout", "elementwise", "pool", "recurrent"]
