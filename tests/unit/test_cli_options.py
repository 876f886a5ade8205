"""The command line's surface: every option explained, one set of connection options everywhere."""

from __future__ import annotations

import importlib.metadata

import click
from click.testing import CliRunner

from cluster.cli import cli

CONNECTION_OPTIONS = {"--kafka", "--redis", "--kafka-config", "--state-dir"}
CONNECTING_COMMANDS = ("start", "status", "send", "tail", "drill")


def walk(command: click.Command, path: str = "orderbook-cluster"):
    """(path, command) for the command and every subcommand below it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, f"{path} {name}")


def test_every_option_has_help_text():
    missing = [
        f"{path} {param.opts[0]}"
        for path, command in walk(cli)
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert not missing, f"options without help text: {', '.join(missing)}"


def test_every_connecting_command_has_the_same_connection_options():
    for name in CONNECTING_COMMANDS:
        command = cli.commands[name]
        options = {opt for param in command.params for opt in param.opts}
        assert CONNECTION_OPTIONS <= options, f"{name} lacks {sorted(CONNECTION_OPTIONS - options)}"
        helps = {p.opts[0]: p.help for p in command.params if p.opts[0] in CONNECTION_OPTIONS}
        assert helps == {
            p.opts[0]: p.help for p in cli.commands["status"].params if p.opts[0] in CONNECTION_OPTIONS
        }, f"{name} declares its connection options differently"


def test_version_is_the_package_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip()
        == f"orderbook-cluster, version {importlib.metadata.version('orderbook-cluster')}"
    )


# `bench ids` attacks one core's id map: its --core names a core (no auto), on purpose.
SHARED_OPTIONS = ("--config", "--core", "--seed", "--json", *sorted(CONNECTION_OPTIONS))
OWN_MEANING = {("orderbook-cluster bench ids", "--core")}


def test_a_shared_option_means_the_same_in_every_command():
    seen: dict[str, tuple[str, click.Option]] = {}
    for path, command in walk(cli):
        for param in command.params:
            name = param.opts[0]
            if name not in SHARED_OPTIONS or (path, name) in OWN_MEANING:
                continue
            first_path, first = seen.setdefault(name, (path, param))
            assert (param.name, param.default, param.is_flag, param.type.to_info_dict()) == (
                first.name,
                first.default,
                first.is_flag,
                first.type.to_info_dict(),
            ), f"{path} declares {name} unlike {first_path}"
    assert set(seen) == set(SHARED_OPTIONS)
