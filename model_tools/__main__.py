"""Command line: `python -m model_tools build-default [--out PATH] [--if-missing]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_tools.checkpoints import build_default_checkpoint, load_model
from serving.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_tools")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-default",
                                help="write EfficientNet-Lite0 with its ImageNet weights as a trusted checkpoint")
    # The default model always goes to the default path, whatever MODEL_PATH says.
    build.add_argument("--out", default=Settings().model_path)
    build.add_argument("--if-missing", action="store_true", help="do nothing when the file exists")
    args = parser.parse_args(argv)

    if args.command == "build-default":
        if args.if_missing and Path(args.out).is_file():
            return 0
        path = build_default_checkpoint(args.out)
        card = load_model(path).card  # read it back: a file that does not load is not built
        print(f"wrote {path}: {card.name}, {len(card.class_names)} classes, {card.preprocessing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
