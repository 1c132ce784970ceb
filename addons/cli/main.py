"""The `pangate` operator command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module registers its own subcommands with `register(subparsers)`.
COMMAND_MODULES = ("pangate.cli.policy", "pangate.cli.token", "pangate.dev.demo_upstream", "pangate.cli.audit",
                   "pangate.cli.pan", "pangate.cli.approve", "pangate.cli.revoke")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pangate", description="Operate the pangate egress gateway.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
