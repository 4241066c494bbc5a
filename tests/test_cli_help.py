"""`python -m agent --help` and each command's help: plain text for a terminal (no reST
markup), every command's actions, and the exit codes the command line really uses."""

from __future__ import annotations

import argparse
import re

import pytest

from agent import cli
from tests.cli import run_cli

# reST that a terminal shows as is: ``literals``, roles (:func:`x`), `interpreted text`.
REST = re.compile(r"``|:[a-z]+:`|`[^`\s][^`]*`")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _assert_plain_with_exit_codes(text: str) -> None:
    assert REST.search(text) is None, REST.search(text)
    assert "exit codes:" in text
    for code in (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_INVALID):
        assert re.search(rf"^  {code}  \S", text, flags=re.M), f"exit code {code} missing"
    assert "invalid configuration or command line" in text


def test_top_level_help_is_plain_and_lists_commands_and_exit_codes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    _assert_plain_with_exit_codes(result.stdout)
    for name in _subparsers():
        assert re.search(rf"^\s+{re.escape(name)}\b", result.stdout, flags=re.M), name


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_each_command_help_is_plain_and_lists_exit_codes(name: str) -> None:
    text = _subparsers()[name].format_help()
    _assert_plain_with_exit_codes(text)
    description = cli.COMMANDS[name][1]
    assert description.splitlines()[0] in text  # the description, lines as written


@pytest.mark.parametrize(
    ("name", "actions"), [("outbox", ["show", "retry"]), ("models", ["install-default", "verify"])]
)
def test_commands_with_actions_list_them(name: str, actions: list[str]) -> None:
    text = _subparsers()[name].format_help()
    listed = text[text.index("actions:") :]
    for action in actions:
        assert re.search(rf"^  {re.escape(action)}\b", listed, flags=re.M), action


def test_the_markup_check_catches_rest() -> None:
    """The check above can fail: it sees what the old help showed."""
    assert REST.search("Command line: ``python -m agent <command>``") is not None
    assert REST.search("see :func:`agent.devkit.demo.main`") is not None


def test_an_invalid_command_line_exits_2() -> None:
    assert run_cli("no-such-command").returncode == cli.EXIT_INVALID
