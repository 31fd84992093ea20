"""Models in and out of mpinet.

* ``load_torchvision_weights`` (mpinet.interop.torchvision): torchvision-named safetensors weights
  into a zoo model.
* ``export_onnx`` / ``import_onnx`` (mpinet.interop.onnx_export / onnx_import): any model made of
  supported ops to an ONNX file (opset 17, dynamic batch) and back into a trainable mpinet module.
* ``import_caffe`` (mpinet.interop.caffe): a Caffe ``.prototxt`` + ``.caffemodel`` pair, read with
  Caffe's own protobuf schema and without Caffe installed.

ONNX and Caffe need the ``interop`` extra (``pip install -e ".[interop]"``: onnx, protobuf); they
load lazily, so ``import mpinet.interop`` works without them.
"""
from __future__ import annotations

from .torchvision import LoadResult, load_torchvision_weights


def export_onnx(model, path, input_shape=None, **kwargs):
    """See mpinet.interop.onnx_export.export_onnx."""
    from .onnx_export import export_onnx as _export

    return _export(model, path, input_shape, **kwargs)


def import_onnx(path):
    """See mpinet.interop.onnx_import.import_onnx."""
    from .onnx_import import import_onnx as _import

    return _import(path)


def import_caffe(prototxt, caffemodel=None, **kwargs):
    """See mpinet.interop.caffe.import_caffe."""
    from .caffe import import_caffe as _import

    return _import(prototxt, caffemodel, **kwargs)


__all__ = ["load_torchvision_weights", "LoadResult", "export_onnx", "import_onnx", "import_caffe"]
