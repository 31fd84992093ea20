"""Trained models as files and as inputs: the model file (``model_file``), the architecture
registry (``registry``) and the readers of prediction inputs (``inputs``).

    model.save("m.mpinet"); model = mpinet.load_model("m.mpinet")

Importing this package initialises neither MPI nor a GPU.
"""
from .model_file import FORMAT_VERSION, ModelFileError, load_model, save
from .registry import register_model

__all__ = ["save", "load_model", "register_model", "ModelFileError", "FORMAT_VERSION"]
