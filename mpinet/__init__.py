"""mpinet: data-parallel deep learning on NumPy (CPU) or CuPy (GPU) with MPI and NCCL."""
import os as _os

__version__ = "0.1.0"

# The model zoo lives in the repository's top-level models/ and installs as `mpinet.models`
# (see pyproject.toml). Run from a source checkout without installing, make the same name work
# by letting this package's path include the checkout root.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "models", "__init__.py")):
    __path__.append(_checkout)


# Variable's operators are attached by mpinet.ops (autograd never imports ops): import it
# with the package, so `import mpinet.autograd` alone gives Variables their operators. It loads
# no CUDA and no MPI.
from . import ops as _ops  # noqa: E402,F401


def __getattr__(name):
    # Lazy: `import mpinet` stays light (no MPI initialisation, no cupy) until these are used.
    if name == "Model":
        from .training import Model

        return Model
    if name == "load_model":  # the model file
        from .training.model_file import load_model

        return load_model
    if name == "register_model":  # classes a model file can rebuild
        from .nn.registry import register_model

        return register_model
    if name in ("callbacks", "nn", "ops", "optim", "data", "comm", "parallel", "autograd", "amp",
                "training", "checkpoint", "random"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mpinet' has no attribute {name!r}")
