"""The `llmos` group's table of commands against the commands themselves.

`llmos.front.cli` names each top-level command, the module that defines it and its summary, so
that `llmos --help` imports no command module. These tests import every one and check that the
table names exactly the commands the modules define, that each name loads that command, that
the help is what a group built eagerly from the same commands prints (at every width), and that
an unknown command still names the close matches.
"""

from __future__ import annotations

import importlib

import click
import pytest

from llmos.front.cli import COMMANDS, cli


def defined_commands() -> dict[str, click.Command]:
    """The top-level commands of the command modules: each click command at module level that
    no group in the same module holds (a group's subcommands are module attributes too)."""
    found: dict[str, click.Command] = {}
    for name in sorted({entry.module for entry in COMMANDS.values()}):
        module = importlib.import_module(name)
        commands = [v for v in vars(module).values() if isinstance(v, click.Command)]
        held = {
            id(sub) for c in commands if isinstance(c, click.Group) for sub in c.commands.values()
        }
        for command in commands:
            if id(command) not in held:
                assert command.name is not None
                found[command.name] = command
    return found


def test_the_table_names_every_command_the_modules_define() -> None:
    defined = defined_commands()
    assert sorted(COMMANDS) == sorted(defined)
    ctx = click.Context(cli, info_name="llmos")
    for name in COMMANDS:
        assert cli.get_command(ctx, name) is defined[name], name
    assert cli.get_command(ctx, "nosuchcommand") is None


@pytest.mark.parametrize("width", [50, 64, 72, 80, 100, 140])
def test_the_help_is_an_eager_groups_help(width: int) -> None:
    eager = click.Group(
        "llmos",
        commands=defined_commands(),
        params=cli.params,
        help=cli.help,
        context_settings=cli.context_settings,
    )
    lazy_help = cli.get_help(click.Context(cli, info_name="llmos", terminal_width=width))
    eager_help = eager.get_help(click.Context(eager, info_name="llmos", terminal_width=width))
    assert "Commands:" in eager_help and "  run " in eager_help
    assert lazy_help == eager_help


def test_an_unknown_command_names_the_close_matches() -> None:
    with pytest.raises(click.UsageError) as caught:
        cli.main(["rum"], prog_name="llmos", standalone_mode=False)
    assert caught.value.format_message() == "No such command 'rum'. Did you mean 'run'?"
    with pytest.raises(click.UsageError) as caught:
        cli.main(["kernl", "start"], prog_name="llmos", standalone_mode=False)
    assert "Did you mean 'kernel'?" in caught.value.format_message()
