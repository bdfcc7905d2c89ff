"""The ``hrvit-nas`` command: one argparse tree, each package contributes its sub-commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from hrvit_nas import __version__
from hrvit_nas.errors import UserError

# Each module has ``register(subparsers)``; handlers are ``func(args) -> int``.
COMMAND_MODULES = (
    "hrvit_space.cli",
    "profiling.cli",
    "search.cli",
    "reports.cli",
    "training.cli",
    "hrvit_nas.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrvit-nas",
        description="Hardware-aware architecture search for HRViT segmentation backbones.",
    )
    parser.add_argument("--version", action="version", version=f"hrvit-nas {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
