"""The model zoo (installed as ``mpinet.models``): build any model by name.

    from mpinet.models import build_model, available_models
    model = build_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    print(model.summary(model.input_shape))

Every model records the input it expects, without the batch, as ``model.input_shape``. The
torchvision families (alexnet, vgg, squeezenet, resnet) use torchvision's parameter names, so a
torchvision state dict (converted to NumPy arrays) loads with ``model.load_state_dict`` unchanged;
see models/README.md.
"""
from __future__ import annotations

import inspect

from mpinet import nn
from mpinet.nn import registry

from .alexnet import alexnet
from .char_lstm import char_lstm
from .char_transformer import char_transformer
from .lenet import lenet5, small_cnn
from .mlp import linear_regression, mlp
from .resnet import resnet18, resnet34, resnet50
from .squeezenet import squeezenet1_0, squeezenet1_1
from .unet import unet
from .vgg import vgg11, vgg11_bn, vgg16, vgg16_bn

# name -> build function. Image models take (num_classes, in_channels, input_size, ...);
# the vector models are adapted by _vector_model_args below.
_IMAGE_MODELS = {
    "lenet5": lenet5,
    "small-cnn": small_cnn,
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg11_bn": vgg11_bn,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "unet": unet,
}
_VECTOR_MODELS = {"linear-regression": linear_regression, "mlp": mlp}
# Sequence models take token ids; num_classes is their vocabulary size.
_SEQUENCE_MODELS = {"char-lstm": char_lstm, "char-transformer": char_transformer}
_BUILDERS = {**_VECTOR_MODELS, **_IMAGE_MODELS, **_SEQUENCE_MODELS}


def available_models() -> list[str]:
    """Names ``build_model`` accepts, in a stable order."""
    return list(_BUILDERS)


def build_model(name: str, num_classes: int | None = None, in_channels: int | None = None,
                input_size: int | None = None, **opts) -> nn.Module:
    """Build the model ``name``; options left as None take that model's default.

    Image models: ``num_classes``, ``in_channels``, ``input_size`` (square side) plus their own
    options (e.g. ``stem="cifar"`` for resnets, ``base_width``/``depth`` for unet, ``dropout``).
    "mlp" and "linear-regression" flatten their input: give ``in_features=F`` for vectors, or
    ``in_channels`` and ``input_size`` for images (then ``input_shape`` is (C, H, W));
    for "linear-regression" ``num_classes`` is the number of outputs (``out_features``).
    Raises ValueError for an unknown name or option.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(_BUILDERS)}")
    if name in _VECTOR_MODELS:
        kwargs = _vector_model_args(name, num_classes, in_channels, input_size, opts)
    elif name in _SEQUENCE_MODELS:  # char-lstm, char-transformer: num_classes = vocabulary size
        kwargs = dict(opts)
        if num_classes is not None:
            kwargs.setdefault("vocab_size", num_classes)
    else:
        kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels),
                                    ("input_size", input_size)) if v is not None}
        kwargs.update(opts)
    builder = _BUILDERS[name]
    accepted = list(inspect.signature(builder).parameters)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; it accepts: "
                         f"{', '.join(accepted)}")
    model = builder(**kwargs)
    # How to rebuild it, for the model file (mpinet.training.model_file): this very call.
    options = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels),
                                 ("input_size", input_size)) if v is not None}
    registry.record(model, "zoo", name, {**options, **opts})
    return model


def _vector_model_args(name: str, num_classes, in_channels, input_size, opts: dict) -> dict:
    """Map the image-style arguments onto in_features/input_shape for mlp/linear-regression."""
    kwargs = dict(opts)
    if "in_features" not in kwargs:
        if input_size is not None:
            channels = 1 if in_channels is None else in_channels
            kwargs["in_features"] = channels * input_size * input_size
            kwargs.setdefault("input_shape", (channels, input_size, input_size))
        elif in_channels is not None:
            kwargs["in_features"] = in_channels
        else:
            raise ValueError(f"model {name!r} needs its input width: pass in_features=F, or "
                             f"in_channels and input_size for images")
    if num_classes is not None:
        kwargs["out_features" if name == "linear-regression" else "num_classes"] = num_classes
    return kwargs


__all__ = ["available_models", "build_model", "char_lstm", "char_transformer",
           "linear_regression", "mlp", "lenet5", "small_cnn", "alexnet", "vgg11", "vgg11_bn",
           "vgg16", "vgg16_bn", "squeezenet1_0", "squeezenet1_1", "resnet18", "resnet34",
           "resnet50", "unet"]
