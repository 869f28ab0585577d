"""The ``relay`` command tree, walked for tests generated from the app (a new command is covered
without being listed by hand)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(argv path, command)`` of every command and group under ``command`` (default: ``relay``)."""
    if command is None:
        import typer

        from relaytrain.cli import app

        command = typer.main.get_command(app)
    yield path, command
    if hasattr(command, "commands"):  # a group (typer's own click, vendored or not)
        for name, sub in command.commands.items():
            yield from commands(sub, (*path, name))


def flags(command: Any) -> set[str]:
    """Every option spelling ``command`` takes (``--commander``, ``-f``, …)."""
    return {flag for param in command.params for flag in getattr(param, "opts", [])}
