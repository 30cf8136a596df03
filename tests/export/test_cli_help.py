"""Every `convserve` command's --help states each default that means something.

A user should learn that a request gives up after 10 s, or that export writes into model_repo/,
from --help alone. Options whose default is empty (flags, None = "ask the server") need not.
"""

from __future__ import annotations

import argparse

import pytest

from export import cli as export_cli
from export import optimize_cli
from loadtest.cli import add_loadtest_parser
from service.cli import add_serve_parser
from service.client.cli import add_client_parsers
from service.config_init import add_config_parser

EMPTY = (None, False, "", (), [])


def _commands() -> dict[str, argparse.ArgumentParser]:
    top = argparse.ArgumentParser(prog="convserve")
    subparsers = top.add_subparsers()
    for add in (add_serve_parser, add_config_parser, add_loadtest_parser, add_client_parsers):
        add(subparsers)
    leaves = {}
    for root in (top, export_cli._parser(), optimize_cli._parser()):
        leaves |= _leaves(root)
    return leaves


def _leaves(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        return {parser.prog: parser}
    found = {}
    for child in children[0].choices.values():
        found |= _leaves(child)
    return found


def _meaningful(default) -> bool:
    if default is argparse.SUPPRESS:
        return False
    return not any(type(default) is type(empty) and default == empty for empty in EMPTY)


COMMANDS = _commands()


def test_every_command_is_covered():
    names = {name.removeprefix("convserve ") for name in COMMANDS}
    assert {"serve", "health", "config init", "loadtest", "export", "models", "train classifier", "optimize"} <= names
    assert {"classify", "detect", "segment", "explain"} <= names


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_states_every_meaningful_default(prog):
    parser = COMMANDS[prog]
    assert "(default: None)" not in parser.format_help()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and _meaningful(action.default):
            entry = " ".join(formatter._format_action(action).split())
            assert "default" in entry.lower(), f"{prog}: {entry!r} does not say its default {action.default!r}"
