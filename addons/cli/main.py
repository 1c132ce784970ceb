"""The `pangate` operator command: one entry point, one subcommand per job.

Only the chosen subcommand's module is imported: `pangate mask` in a shell
pipeline must not pay for the token, audit and approval code (requests, jwt,
cryptography), and the CLI never imports mitmproxy at all. `pangate --help`
and an unknown command build every parser, to list them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Command name -> the module whose `register(subparsers)` adds it. A module may
# register several commands; each of them is listed here.
COMMANDS = {
    "policy": "pangate.cli.policy",
    "token": "pangate.cli.token",
    "demo-upstream": "pangate.dev.demo_upstream",
    "audit": "pangate.cli.audit",
    "mask": "pangate.cli.pan",
    "scan": "pangate.cli.pan",
    "approve": "pangate.cli.approve",
    "deny": "pangate.cli.approve",
    "approvals": "pangate.cli.approve",
    "approver": "pangate.cli.approve",
    "revoke": "pangate.cli.revoke",
    "unrevoke": "pangate.cli.revoke",
    "ca": "pangate.cli.ca",
    "review": "pangate.cli.review",
    "evidence": "pangate.cli.review",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s module registered, or every module when None."""
    parser = argparse.ArgumentParser(prog="pangate", description="Operate the pangate egress gateway.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the top level has no options but --help)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`pangate scan ... | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not print a traceback either.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (OSError, ValueError) as e:  # a file that cannot be read, a policy error (file:line: ...)
        print(f"pangate {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("PANGATE_DEBUG"):
            raise
        print(f"pangate {args.command}: internal error: {type(e).__name__}: {e} "
              "(PANGATE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
