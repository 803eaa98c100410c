"""Command line of model_tools.

    python -m model_tools build-default [--out PATH] [--if-missing]
    python -m model_tools trace [--checkpoint PATH] [--out PATH] [--script] [--optimize] [--if-missing]
    python -m model_tools export-onnx [--checkpoint PATH] [--out PATH] [--if-missing]

`trace` and `export-onnx` verify the export against the eager model, print the largest
absolute difference of any probability, and exit 1 (removing the file) above the tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.config import Settings


def default_export_path(checkpoint: str, suffix: str) -> str:
    """models/efficientnet_lite0.pth -> models/efficientnet_lite0.ts.pt (or .onnx)."""
    return str(Path(checkpoint).with_suffix(suffix))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_tools")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-default",
                                help="write EfficientNet-Lite0 with its ImageNet weights as a trusted checkpoint")
    # The default model always goes to the default path, whatever MODEL_PATH says.
    build.add_argument("--out", default=Settings().model_path)
    build.add_argument("--if-missing", action="store_true", help="do nothing when the file exists")
    trace = commands.add_parser("trace", help="export TorchScript (uint8 NHWC in, probabilities out) and verify it")
    onnx = commands.add_parser("export-onnx", help="export ONNX (uint8 NHWC in, probabilities out) and verify it")
    for command in (trace, onnx):
        command.add_argument("--checkpoint", default=Settings().model_path,
                             help="any model file the service loads (default: %(default)s)")
        command.add_argument("--format", default="auto", help="checkpoint format, as MODEL_FORMAT")
        command.add_argument("--arch", default="", help="architecture of a bare state_dict, as MODEL_ARCH")
        command.add_argument("--trusted", action="store_true", help="allow unpickling, as MODEL_TRUSTED=1")
        command.add_argument("--out", help="output file (default: beside the checkpoint, .ts.pt or .onnx)")
        command.add_argument("--tolerance", type=float,
                             help="largest accepted probability difference (default: model_tools.export.TOLERANCE)")
        command.add_argument("--if-missing", action="store_true", help="do nothing when the output exists")
    trace.add_argument("--script", action="store_true", help="torch.jit.script instead of torch.jit.trace")
    trace.add_argument("--optimize", action="store_true",
                       help="freeze: weights become constants, conv+batchnorm fold (verified the same way)")
    args = parser.parse_args(argv)

    if args.command == "build-default":
        out = Path(args.out)
    else:
        out = Path(args.out or default_export_path(args.checkpoint, ".ts.pt" if args.command == "trace" else ".onnx"))
    if args.if_missing and out.is_file():
        return 0  # before importing torch (1.5-3 s), which `make run`, `make test` and `make cpp` ask this every time
    from model_tools.checkpoints import ModelLoadError
    from model_tools.export import ExportMismatch

    try:
        return build_default(out) if args.command == "build-default" else export_and_verify(args, out)
    except (ModelLoadError, ExportMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_default(out: Path) -> int:
    from model_tools.checkpoints import build_default_checkpoint, load_model

    path = build_default_checkpoint(out)
    card = load_model(path).card  # read it back: a file that does not load is not built
    print(f"wrote {path}: {card.name}, {len(card.class_names)} classes, {card.preprocessing}")
    return 0


def export_and_verify(args: argparse.Namespace, out: Path) -> int:
    from model_tools.checkpoints import load_model
    from model_tools.export import (
        TOLERANCE,
        ExportMismatch,
        export_onnx,
        export_torchscript,
        load_torchscript,
        onnx_predictor,
        serving_module,
        torch_predictor,
        verify,
    )

    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    loaded = load_model(args.checkpoint, args.format, args.arch, args.trusted)
    if args.command == "trace":
        method = "script" if args.script else "trace"
        export_torchscript(loaded, out, method=method, optimize=args.optimize)
        candidate = torch_predictor(load_torchscript(out)[0])
        what = f"TorchScript ({method}{', frozen' if args.optimize else ''})"
    else:
        export_onnx(loaded, out)
        candidate = onnx_predictor(out)
        what = "ONNX"
    try:
        difference = verify(torch_predictor(serving_module(loaded)), candidate,
                            loaded.card.preprocessing.input_size, tolerance=tolerance)
    except ExportMismatch:
        out.unlink(missing_ok=True)
        raise
    print(f"wrote {out}: {what} of {loaded.card.name}; max abs difference from the eager model "
          f"{difference:.3g} over batch sizes 1 and 8 (tolerance {tolerance:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
