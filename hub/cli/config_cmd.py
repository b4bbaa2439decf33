"""``kitt-hub config check``."""

from __future__ import annotations

import argparse

from hub.cli.common import add_config_arg, load_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate; exit 2 with one line per problem")
    add_config_arg(check)
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    print(f"ok: hub {config.hub.id}, {len(config.devices)} devices, {len(config.jobs)} jobs")
    return 0
