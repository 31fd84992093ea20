"""Trained models as files and as inputs: the model file (``model_file``), the architecture
registry (``registry``) and the readers of prediction inputs (``inputs``).

    model.save("m.mpinet"); model = mpinet.load_model("m.mpinet")

Importing this package initialises neither MPI nor a GPU; the model file's module (NumPy,
safetensors, the data package) loads on first use, so the zoo can import the registry cheaply.
"""
from .registry import register_model

_MODEL_FILE = ("save", "load_model", "ModelFileError", "FORMAT_VERSION")


def __getattr__(name):
    if name in _MODEL_FILE:
        from . import model_file

        return getattr(model_file, name)
    raise AttributeError(f"module 'mpinet.io' has no attribute {name!r}")


__all__ = ["FORMAT_VERSION", "ModelFileError", "load_model", "register_model", "save"]
