"""The one place that decides NumPy (CPU) or CuPy (GPU).

Every other module gets its array module from here: ``xp_of(array)`` for code that works on
arrays it was handed, ``current().xp`` for code that creates arrays. No module in mpinet imports
cupy at module level, so ``import mpinet`` works on a machine without CUDA. A few import it
inside the functions that need it, each for a reason: this module (``_cupy``: the array module
of the GPU backend), ``kernels._compile.cp`` (every kernel launch, including kernels.cudnn and
optim.kernels), ``random`` (moving the dropout generator's state to the device),
``training.cuda_graph`` (graph capture), ``comm.nccl`` (NCCL and its device buffers),
``comm.hierarchical`` and ``data.loader`` (cupyx's pinned host memory), and ``testing`` (the GPU
test helpers).

Device choice:
  * ``MPINET_DEVICE=cpu|gpu|auto`` (default auto) picks the backend.
  * auto means GPU only when a CUDA device node exists *and* cupy imports; on a machine with no
    ``/dev/nvidiactl`` cupy is never imported at all.
  * Under MPI the GPU is chosen by node-local rank (``select_device(local_rank)``), so
    ``mpirun -n 8`` on an 8-GPU node puts one rank on each GPU without CUDA_VISIBLE_DEVICES games.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np

_DEVICE_ENV = "MPINET_DEVICE"


@dataclass(frozen=True)
class Backend:
    """Which array library runs the math, and on which GPU (None on CPU)."""

    name: str  # "cpu" or "gpu"
    xp: ModuleType  # numpy or cupy
    device_id: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def __repr__(self) -> str:
        return "Backend(cpu)" if not self.is_gpu else f"Backend(gpu:{self.device_id})"


CPU = Backend("cpu", np, None)
_current: Backend = CPU


def current() -> Backend:
    """The backend new arrays are created on (CPU until ``select_device`` picks a GPU)."""
    return _current


def _cupy() -> ModuleType:
    import cupy

    return cupy


def gpu_available() -> bool:
    """True if a CUDA GPU can be used. Never imports cupy when no NVIDIA device node exists."""
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
        return False
    try:
        return _cupy().cuda.runtime.getDeviceCount() > 0
    except Exception:  # cupy missing, driver missing, no visible device
        return False


def gpu_count() -> int:
    """How many CUDA GPUs this process can see (0 without any); imports cupy only where an
    NVIDIA device node exists."""
    if not gpu_available():
        return 0
    return int(_cupy().cuda.runtime.getDeviceCount())


def gpu_identity(local_rank: int) -> str | None:
    """The PCI bus id of the GPU ``select_device(local_rank)`` would pick (None without a GPU):
    two ranks with the same id would share one GPU, which NCCL refuses. Ids, not counts, so a
    launcher that shows each rank only its own GPU (CUDA_VISIBLE_DEVICES per rank) is fine."""
    n = gpu_count()
    if n == 0:
        return None
    return str(_cupy().cuda.Device(local_rank % n).pci_bus_id)


def select_device(local_rank: int = 0, device: str | None = None) -> Backend:
    """Choose CPU or GPU for this process and make it current.

    ``device`` is "cpu", "gpu" or "auto" (default: $MPINET_DEVICE, else auto). On GPU the card is
    ``local_rank % visible GPUs``: one rank per GPU on each node.
    """
    global _current
    device = (device or os.environ.get(_DEVICE_ENV, "auto")).lower()
    if device not in ("cpu", "gpu", "auto"):
        raise ValueError(f"device must be 'cpu', 'gpu' or 'auto', got {device!r} "
                         f"(from argument or ${_DEVICE_ENV})")
    if device == "cpu" or (device == "auto" and not gpu_available()):
        _current = CPU
        return _current
    if not gpu_available():
        raise RuntimeError("device='gpu' was requested but no CUDA GPU is usable here; "
                           "install the GPU extra (pip install 'mpinet[gpu]') or use device='cpu'")
    cp = _cupy()
    n = cp.cuda.runtime.getDeviceCount()
    device_id = local_rank % n
    cp.cuda.Device(device_id).use()
    _current = Backend("gpu", cp, device_id)
    return _current


def use_cpu() -> Backend:
    """Make the CPU (NumPy) backend current; used by tests and CPU-only tools."""
    return select_device(device="cpu")


def is_gpu_array(a) -> bool:
    """True for a cupy.ndarray, checked without importing cupy."""
    return type(a).__module__.startswith("cupy")


def xp_of(*arrays) -> ModuleType:
    """The array module (numpy or cupy) that owns these arrays; numpy if none is a GPU array."""
    for a in arrays:
        if is_gpu_array(a):
            return sys.modules["cupy"]
    return np


def to_numpy(a) -> np.ndarray:
    """A host NumPy copy (or view) of any array; a CPU-GPU sync point for GPU arrays."""
    if is_gpu_array(a):
        return a.get()
    return np.asarray(a)


def to_device(a, backend: Backend | None = None, dtype=None):
    """Move an array (NumPy, CuPy or anything array-like) onto the backend (default: current)."""
    backend = backend or _current
    if backend.is_gpu:
        return backend.xp.asarray(a, dtype=dtype)
    return np.asarray(to_numpy(a), dtype=dtype)


def is_capturing() -> bool:
    """True while the current CUDA stream is capturing a CUDA graph (never on CPU)."""
    return _current.is_gpu and _current.xp.cuda.get_current_stream().is_capturing()


def synchronize() -> None:
    """Wait for queued GPU work (no-op on CPU). Use only for timing and host reads."""
    if _current.is_gpu:
        _current.xp.cuda.get_current_stream().synchronize()


def bfloat16():
    """The bfloat16 dtype (``ml_dtypes.bfloat16``, which CuPy also accepts)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)
