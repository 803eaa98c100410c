"""Command line of model_tools.

    python -m model_tools build-default [--out PATH] [--if-missing]
    python -m model_tools import SRC --out PATH [--name NAME] [--labels F] [--arch A] [--trusted] [preprocessing flags]
    python -m model_tools trace [--checkpoint PATH] [--out PATH] [--script] [--optimize] [--if-missing]
    python -m model_tools export-onnx [--checkpoint PATH] [--out PATH] [--if-missing]
    python -m model_tools quantize MODEL --calibration DIR --held-out DIR --out FILE [--method M] [--min-agreement X]
    python -m model_tools route NAME [VERSION=WEIGHT ...]
    python -m model_tools forget NAME[@VERSION] [--force]

`route` shares a model name's requests among its versions (REDIS_URL and KEY_PREFIX say where);
without weights it prints the name's versions and weights. `forget` removes a name (every version) or one
version from the registry, with its routes and its queue; refused while a version has live workers, unless
--force (their next heartbeat announces it again: stop them first).

`import` turns any model file the worker loads into one self-describing file that loads without
unpickling, checks it against the source and prints what it wrote. `trace` and `export-onnx`
verify the export against the eager model, print the largest absolute difference of any
probability, and exit 1 above the tolerance, leaving the output file as it was. `quantize`
writes an INT8 ONNX file and its agreement report with float32 on the held-out photos
(model_tools.quantize), and exits 1 below --min-agreement, leaving the output file as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import zipfile
from pathlib import Path

from model_files import CARD_FILE, TOLERANCE
from model_tools.quantize import DEFAULT_METHOD, METHODS
from serving.config import MODEL_TOOLS, ConfigError, Settings, channel_values, check_model_id_part, settings_help

# How this command spells each model option, for messages (the worker names environment variables instead).
FLAG_NAMES = {"arch": "--arch", "labels_path": "--labels", "input_size": "--input-size",
              "resize_size": "--resize-size", "mean": "--mean", "std": "--std", "trusted": "--trusted"}

# The other commands read no setting: their flags say everything.
SETTINGS_EPILOG = ("`route` and `forget` read these: where the registry is, and how recent a live worker's heartbeat "
                   "is.\n\n" + settings_help(MODEL_TOOLS))


def default_export_path(checkpoint: str, suffix: str) -> str:
    """models/efficientnet_lite0.pth -> models/efficientnet_lite0.ts.pt (or .onnx)."""
    return str(Path(checkpoint).with_suffix(suffix))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s: %(message)s")  # the card's assumptions are warnings
    parser = argparse.ArgumentParser(prog="python -m model_tools", epilog=SETTINGS_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-default",
                                help="write EfficientNet-Lite0 with its ImageNet weights as a trusted checkpoint")
    # The default model always goes to the default path, whatever MODEL_PATH says.
    build.add_argument("--out", default=Settings().model_path)
    build.add_argument("--if-missing", action="store_true", help="do nothing when the file exists")
    importer = commands.add_parser(
        "import", help="turn a model file the worker loads into a self-describing one that needs no unpickling")
    importer.add_argument("checkpoint", metavar="SRC", help="the model file: a torch.save file of any kind, "
                          "TorchScript, a torch.export program, or TorchServe's .mar (stock image_classifier handler)")
    importer.add_argument("--out", required=True, help="the file to write")
    importer.add_argument("--name", default="", help="the model's name in the written card, what a worker serves it "
                          "under without MODEL_NAME (default: the source's card's, else the source file's name)")
    trace = commands.add_parser("trace", help="export TorchScript (uint8 NHWC in, probabilities out) and verify it")
    onnx = commands.add_parser("export-onnx", help="export ONNX (uint8 NHWC in, probabilities out) and verify it")
    for command in (trace, onnx):
        command.add_argument("--checkpoint", default=Settings().model_path,
                             help="any model file the service loads (default: %(default)s)")
        command.add_argument("--out", help="output file (default: beside the checkpoint, .ts.pt or .onnx)")
        command.add_argument("--tolerance", type=float, default=TOLERANCE,
                             help="largest accepted probability difference (default: %(default)g)")
        command.add_argument("--if-missing", action="store_true",
                             help="do nothing when the output exists, is newer than the checkpoint and, for trace, "
                                  "was made with the same --script and --optimize")
    quantize = commands.add_parser("quantize", help="write an INT8 ONNX file (static quantization, QDQ, per channel) "
                                   "and its agreement with float32 on held-out photos")
    quantize.add_argument("checkpoint", metavar="MODEL", help="any model file the service loads, or float32 ONNX")
    quantize.add_argument("--calibration", required=True, help="folder of photos whose activations set the ranges")
    quantize.add_argument("--held-out", required=True,
                          help="folder of other photos, on which the agreement report is measured")
    quantize.add_argument("--out", required=True, help="the .onnx file to write")
    quantize.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                          help="how each activation's range is chosen (default: %(default)s)")
    quantize.add_argument("--min-agreement", type=float, default=Settings().precision_min_agreement,
                          help="least top-1 agreement with float32 where float32 leads by a margin, as "
                               "PRECISION_MIN_AGREEMENT (default: %(default)g)")
    for command in (importer, trace, onnx, quantize):
        _add_model_options(command)
    trace.add_argument("--script", action="store_true", help="torch.jit.script instead of torch.jit.trace")
    trace.add_argument("--optimize", action="store_true",
                       help="freeze: weights become constants, conv+batchnorm fold (verified the same way)")
    route = commands.add_parser("route", help="share a model name's requests among its versions, like v3=90 v4=10",
                                epilog=SETTINGS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    route.add_argument("name", help="the model name (GET /models lists them)")
    route.add_argument("weights", nargs="*", metavar="VERSION=WEIGHT",
                       help="whole numbers, shares of the traffic; none: print the current routing")
    forget = commands.add_parser("forget", help="remove a model name, or one version, from the registry",
                                 epilog=SETTINGS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    forget.add_argument("model", metavar="NAME[@VERSION]", help="a name (every version of it) or one name@version")
    forget.add_argument("--force", action="store_true", help="even while it has live workers (stop them first: "
                        "their next heartbeat announces it again); what its queue holds is dropped")
    args = parser.parse_args(argv)

    if args.command == "route":
        return set_route(args.name, args.weights)
    if args.command == "forget":
        return forget_models(args.model, args.force)
    if args.command in ("build-default", "import", "quantize"):
        out = Path(args.out)
    else:
        out = Path(args.out or default_export_path(args.checkpoint, ".ts.pt" if args.command == "trace" else ".onnx"))
    if getattr(args, "if_missing", False) and _up_to_date(args, out):
        return 0  # before importing torch (1.5-3 s), which `make run`, `make test` and `make cpp` ask this every time
    from model_files.card import ExportError, ModelLoadError  # engines.verify's ExportMismatch is an ExportError
    from model_files.precision import PrecisionRefused

    try:
        if args.command == "build-default":
            return build_default(out)
        if args.command == "import":
            from model_tools.importer import import_model
            print(import_model(Path(args.checkpoint), _model_options(args), out, _model_name(args.name)))
            return 0
        if args.command == "quantize":
            return quantize_and_report(args, out)
        return export_and_verify(args, out)
    except (ModelLoadError, ExportError, ConfigError, PrecisionRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def set_route(name: str, pairs: list[str]) -> int:
    """Write a name's weights (refused unless every version given traffic has a live worker) and print them."""
    from serving import fleet_scripts, protocol, routing
    from serving.redis_client import REDIS_ERRORS, connect

    try:
        settings = Settings.from_env()
        weights = dict(_version_weight(pair) for pair in pairs)
        client = connect(settings.redis_url, settings.redis_timeout, settings.redis_timeout)
        fleet = protocol.FleetKeys(settings.key_prefix)
        if weights:
            routing.write_weights(client, fleet, name, weights, settings.worker_timeout)
        ages = fleet_scripts.model_ages(client, fleet=fleet)
        current = routing.read_weights(client, fleet, name)
    except (ConfigError, routing.RoutingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except REDIS_ERRORS as exc:
        print(f"error: Redis at {settings.redis_url_redacted}: {exc}", file=sys.stderr)
        return 1
    versions = sorted({protocol.split_model_id(m)[1] for m in ages if protocol.split_model_id(m)[0] == name}
                      | set(current), key=routing.version_order)
    print(f"{name}: " + ("weights " + " ".join(f"{v}={w}" for v, w in current.items()) if current else
                         "no weights: its only live version, or the lowest"))
    for version in versions:
        age = ages.get(protocol.model_id(name, version))
        state = "live" if age is not None and age <= settings.worker_timeout else "no live worker"
        print(f"  {version}: weight {current.get(version, '-')}, {state}")
    return 0


def forget_models(target: str, force: bool) -> int:
    """Forget a name's versions (or the one named) and their queues; refused for versions with live workers
    unless `force`."""
    from serving import fleet_scripts, protocol
    from serving.redis_client import REDIS_ERRORS, connect

    try:
        settings = Settings.from_env()
        client = connect(settings.redis_url, settings.redis_timeout, settings.redis_timeout)
        fleet = protocol.FleetKeys(settings.key_prefix)
        ages = fleet_scripts.model_ages(client, fleet=fleet)
        name = target.partition("@")[0]
        chosen = sorted(m for m in ages if m == target or protocol.split_model_id(m)[0] == target)
        if not chosen:
            known = sorted(ages) or ["none"]
            print(f"error: the registry knows no {target} (known: {', '.join(known)})", file=sys.stderr)
            return 1
        idle = 0.0 if force else settings.worker_timeout
        refused = [m for m in chosen
                   if not fleet_scripts.forget_model(client, fleet=fleet, model_id=m, idle_seconds=idle,
                                                     keep_routed=False)]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except REDIS_ERRORS as exc:
        print(f"error: Redis at {settings.redis_url_redacted}: {exc}", file=sys.stderr)
        return 1
    for model in chosen:
        if model not in refused:
            print(f"forgot {model}: its registry entry, its weight in {name}'s route and its queue (what was still "
                  "queued there is dropped)")
    if refused:
        print(f"error: {', '.join(refused)} still has live workers (a heartbeat within WORKER_TIMEOUT="
              f"{settings.worker_timeout:g}s): stop them first, or forget with --force", file=sys.stderr)
        return 1
    return 0


def _model_name(name: str) -> str:
    """--name, checked by MODEL_NAME's rule (empty: not given)."""
    return check_model_id_part(name, "--name") if name else ""


def _version_weight(pair: str) -> tuple[str, int]:
    version, _, weight = pair.partition("=")
    if not version or not weight.isdigit():
        raise ConfigError(f"{pair!r}: expected VERSION=WEIGHT with a whole number, like v4=10")
    return version, int(weight)


def _up_to_date(args: argparse.Namespace, out: Path) -> bool:
    """Whether `out` is what this command would write now; answered without importing torch."""
    if not out.is_file():
        return False
    if args.command == "build-default":
        return not _pickled_by_an_earlier_version(out)
    if Path(args.checkpoint).stat().st_mtime > out.stat().st_mtime:
        return False  # the model changed since
    return args.command != "trace" or _torchscript_export_options(out) == _export_options(args)


def _export_options(args: argparse.Namespace) -> dict:
    """How `trace` exports, as the card records it (model_files.export.export_torchscript)."""
    return {"method": "script" if args.script else "trace", "frozen": args.optimize}


def _torchscript_export_options(path: Path) -> dict | None:
    try:
        with zipfile.ZipFile(path) as archive:
            card = next(name for name in archive.namelist() if name.endswith(f"/extra/{CARD_FILE}"))
            return json.loads(archive.read(card)).get("export")
    except (zipfile.BadZipFile, StopIteration, ValueError):
        return None


def _pickled_by_an_earlier_version(path: Path) -> bool:
    """Earlier versions wrote the default model pickled, with a .sha256 beside it: rebuilt as a state_dict."""
    return _earlier_version_marker(path).is_file()


def _earlier_version_marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _add_model_options(command: argparse.ArgumentParser) -> None:
    """What the model file may not say itself, as the worker's environment variables of the same meaning."""
    command.add_argument("--arch", default="", help="architecture, e.g. resnext101_32x8d (as MODEL_ARCH)")
    command.add_argument("--trusted", action="store_true",
                         help="allow unpickling a file model_tools did not write (as MODEL_TRUSTED=1)")
    command.add_argument("--labels", default="", help="class names: one per line, a JSON list, or TorchServe's "
                         "index_to_name.json (as LABELS_PATH)")
    command.add_argument("--input-size", type=int, default=0, help="side of the square crop (as INPUT_SIZE)")
    command.add_argument("--resize-size", type=int, default=0, help="shorter side before the crop (as RESIZE_SIZE)")
    command.add_argument("--mean", default="", help="R,G,B mean of 0-1 pixels (as MEAN)")
    command.add_argument("--std", default="", help="R,G,B standard deviation (as STD)")


def _model_options(args: argparse.Namespace):
    from model_files.card import ModelOptions

    return ModelOptions(args.arch, args.labels, args.input_size, args.resize_size,
                        channel_values(args.mean, "--mean"), channel_values(args.std, "--std", positive=True),
                        args.trusted, FLAG_NAMES)


def build_default(out: Path) -> int:
    from model_files.checkpoints import build_default_checkpoint, load_model

    path = build_default_checkpoint(out)
    _earlier_version_marker(out).unlink(missing_ok=True)
    card = load_model(path).card  # read it back: a file that does not load is not built
    print(f"wrote {path}: {card.name}, {len(card.class_names)} classes, {card.preprocessing}")
    return 0


def quantize_and_report(args: argparse.Namespace, out: Path) -> int:
    from model_tools.quantize import quantize

    report = quantize(Path(args.checkpoint), Path(args.calibration), Path(args.held_out), out, args.method,
                      args.min_agreement, _model_options(args))
    print(f"wrote {out}: {report.summary()}")
    return 0


def export_and_verify(args: argparse.Namespace, out: Path) -> int:
    from engines import onnxruntime_cpu, torchscript
    from engines.eager import run_module
    from engines.verify import verify
    from model_files.card import require_servable_name
    from model_files.checkpoints import load_model
    from model_files.export import export_onnx, export_torchscript, serving_module
    from model_files.files import written_aside

    tolerance = args.tolerance
    loaded = load_model(args.checkpoint, _model_options(args))
    require_servable_name(loaded.card)
    cpu = "cpu"
    with written_aside(out) as partial:  # only a verified export replaces --out
        if args.command == "trace":
            method = "script" if args.script else "trace"
            export_torchscript(loaded, partial, method=method, optimize=args.optimize)
            candidate = torchscript.open_file(partial, cpu, 0)
            what = f"TorchScript ({method}{', frozen' if args.optimize else ''})"
        else:
            export_onnx(loaded, partial)
            candidate = onnxruntime_cpu.open_file(partial, cpu, 0)  # 0 threads: ONNX Runtime's own choice
            what = "ONNX"
        difference = verify(run_module(serving_module(loaded)), candidate,
                            loaded.card.preprocessing.input_size, tolerance=tolerance)
    print(f"wrote {out}: {what} of {loaded.card.name}; max abs difference from the eager model "
          f"{difference:.3g} over batch sizes 1 and 8 (tolerance {tolerance:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
