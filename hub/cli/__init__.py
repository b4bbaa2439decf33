"""``kitt-hub``: one console script, one module per command group (each exposes ``register``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "hub.cli.run",
    "hub.cli.config_cmd",
    "hub.cli.ask",
    "hub.cli.admin",
    "hub.cli.simulate",
    "hub.cli.mcp_cmd",
    "hub.cli.vectors",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kitt-hub", description="KITT Edge Hub: the local AI brain of a house")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for dotted in COMMAND_MODULES:
        try:
            module = importlib.import_module(dotted)
        except ModuleNotFoundError as exc:
            if exc.name != dotted:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
