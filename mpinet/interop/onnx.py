"""ONNX from the command line (needs the ``interop`` extra):

    python -m mpinet.interop.onnx export resnet18 r18.onnx --num-classes 10 --input-size 32 \\
        [--in-channels 3] [--weights r18.safetensors] [--opt stem=cifar ...]
    python -m mpinet.interop.onnx inspect r18.onnx

``export`` builds the zoo model (with ``--weights`` from a safetensors file of its state dict,
e.g. one written by ``Model.save_weights``; random initial weights otherwise) and writes it as
ONNX (opset 17, dynamic batch). ``inspect`` imports a file into mpinet and prints its input
shape, parameter count and op counts. Any error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter

from .onnx_export import OnnxExportError, export_onnx
from .onnx_import import OnnxImportError, import_onnx


def _parse_opt(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--opt expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a bare word such as cifar stays a string
    return name, value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpinet.interop.onnx",
                                     description="ONNX export/import for mpinet models")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a zoo model as ONNX")
    exp.add_argument("model", help="zoo model name (see mpinet.models.available_models())")
    exp.add_argument("output", help="the .onnx file to write")
    exp.add_argument("--num-classes", type=int)
    exp.add_argument("--in-channels", type=int)
    exp.add_argument("--input-size", type=int)
    exp.add_argument("--weights", help="safetensors state dict to load before exporting")
    exp.add_argument("--opt", type=_parse_opt, action="append", default=[],
                     help="extra build option NAME=VALUE (e.g. stem=cifar); repeatable")
    ins = sub.add_parser("inspect", help="import an ONNX file and summarise it")
    ins.add_argument("file")
    return parser


def _export(args) -> str:
    from .. import checkpoint
    from ..models import build_model

    net = build_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                      input_size=args.input_size, **dict(args.opt))
    if args.weights:
        net.load_state_dict(checkpoint.load_weights(args.weights))
    proto = export_onnx(net, args.output)
    return (f"wrote {args.output}: {args.model}, {len(proto.graph.node)} nodes, "
            f"{net.num_parameters():,} parameters, input (batch, "
            f"{', '.join(map(str, net.input_shape))})")


def _inspect(args) -> str:
    module = import_onnx(args.file)
    ops = Counter(node.op_type for node in module.nodes)
    return (f"{args.file}: input (batch, {', '.join(map(str, module.input_shape or ()))}), "
            f"{module.num_parameters():,} parameters, ops: "
            + ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())))


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        print(_export(args) if args.command == "export" else _inspect(args))
    except (OnnxExportError, OnnxImportError, ValueError, KeyError, OSError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
