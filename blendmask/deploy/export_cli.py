"""``blendmask export-onnx``: the command-line face of :func:`blendmask.deploy.export_onnx`."""
from __future__ import annotations

import argparse

from .onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx

__all__ = ["EXPORT_HELP", "add_export_arguments", "add_export_parser", "export_onnx_cli"]

EXPORT_HELP = "export the whole inference graph (detection, NMS, basis module, blender) to ONNX"


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export-onnx`` options to ``parser``."""
    parser.add_argument("--config", required=True, help="config preset name, e.g. lite_mobilenet_v2")
    parser.add_argument("--weights", default=None,
                        help="blendmask weights file; its model config must match (default: random weights)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, >= {MIN_OPSET} (default {DEFAULT_OPSET})")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set model.num_classes=4 model.fcos.inference_th=0.3")


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export-onnx`` on an ``argparse`` sub-parser collection; returns its parser."""
    parser = subparsers.add_parser("export-onnx", help=EXPORT_HELP, description=EXPORT_HELP)
    add_export_arguments(parser)
    parser.set_defaults(run=export_onnx_cli)
    return parser


def export_onnx_cli(args: argparse.Namespace) -> int:
    """Run the export described by parsed ``args``; returns the exit code."""
    from blendmask.cli import parse_overrides
    from blendmask.config import get_config

    cfg = get_config(args.config, parse_overrides(args.overrides))
    path = export_onnx(cfg, args.out, weights=args.weights, opset=args.opset)
    print(f"wrote {path}")
    return 0
