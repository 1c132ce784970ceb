"""The command table in cli/main.py: lazy loading must not lose or misplace a command."""

from __future__ import annotations

import argparse

import pytest

from pangate.cli.main import COMMANDS, build_parser, main


def choices(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_table_lists_every_registered_command():
    assert choices(build_parser()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_builds_from_its_module_alone(command):
    assert command in choices(build_parser(command))


def test_unexpected_errors_are_one_line(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("disk on fire")

    import pangate.cli.policy as policy_cli
    monkeypatch.setattr(policy_cli, "check_cmd", boom)
    monkeypatch.delenv("PANGATE_DEBUG", raising=False)
    assert main(["policy", "check", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "pangate policy: internal error: RuntimeError: disk on fire (PANGATE_DEBUG=1 shows the traceback)\n"
