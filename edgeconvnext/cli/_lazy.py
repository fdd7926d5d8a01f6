"""The root command group: a command's module is imported, and its click command built, only when that
command runs or shows its help.

Input: the rows of ``_common.COMMANDS`` (name, module, function, summary). Output: a typer group whose
``--help`` lists every name with its summary without importing a command module (each one pulls in its option
types and the config layer, and typer inspects every signature it builds: together most of a bare ``--help``).
Usage: ``typer.Typer(cls=LazyGroup, ...)``; subclasses override ``prepare`` to adjust each command once, when it
is built.
"""

from __future__ import annotations

import importlib
from difflib import get_close_matches
from gettext import gettext as _
from typing import Any

import typer
from typer._click import Command, Context, HelpFormatter  # typer >= 0.2x vendors click
from typer._click.exceptions import UsageError
from typer._click.utils import make_default_short_help
from typer.core import TyperCommand, TyperGroup

from edgeconvnext.cli._common import COMMANDS


def _pass_through() -> Any:
    try:
        from typer._coercion import PassThroughRuntimeParam
    except ImportError:  # a typer without it: flags keep its usual coercion
        return None
    return PassThroughRuntimeParam


_PASS_THROUGH = _pass_through()

_ROWS = {name: (module, function, summary) for name, module, function, summary in COMMANDS}


def _plain_flags(params: list[Any]) -> list[Any]:
    """typer coerces an option's value with a pydantic TypeAdapter built on first use, importing pydantic (about
    0.1 s, more than the rest of ``quantize --help``), even for an unset --help flag's None. A bool flag's value
    is True, False or None (it has no environment variable), which typer passes through anyway: the flags get
    typer's pass-through coercion up front instead."""
    for p in params:
        td = getattr(p, "type_descriptor", None)
        if (
            _PASS_THROUGH is not None
            and td is not None
            and td.annotation is bool
            and getattr(p, "is_flag", False)
            and not getattr(p, "envvar", None)
            and getattr(p, "_runtime_param", False) is None
        ):
            p._runtime_param = _PASS_THROUGH(parameter_info=td.parameter_info, annotation=bool)
    return params


class _Command(TyperCommand):
    """A command whose bool flags need no pydantic (see ``_plain_flags``)."""

    def get_params(self, ctx: Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class LazyGroup(TyperGroup):
    """A TyperGroup that knows the commands of ``_common.COMMANDS`` by name and builds each on first use;
    commands registered on the Typer app itself (the tests' hidden ones) are listed after them, as before."""

    def get_params(self, ctx: Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def prepare(self, command: Command) -> None:
        """Called once on each command built from the table (nothing by default)."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*_ROWS, *(name for name in self.commands if name not in _ROWS)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands and cmd_name in _ROWS:
            self.commands[cmd_name] = self._build(cmd_name)
        return self.commands.get(cmd_name)

    def _build(self, name: str) -> Command:
        module, function, _summary = _ROWS[name]
        callback = getattr(importlib.import_module(f"edgeconvnext.cli.{module}"), function)
        holder = typer.Typer(rich_markup_mode=self.rich_markup_mode)  # the CommandInfo app.command(name) made
        holder.command(name, cls=_Command)(callback)
        command = typer.main.get_command_from_info(
            holder.registered_commands[0],
            pretty_exceptions_short=holder.pretty_exceptions_short,
            rich_markup_mode=self.rich_markup_mode,
        )
        self.prepare(command)
        return command

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """typer's listing (each name, then its help shortened to what fits), from the table's summary for a
        command not built yet."""
        shown = [n for n in self.list_commands(ctx) if n not in self.commands or not self.commands[n].hidden]
        if not shown:
            return
        limit = formatter.width - 6 - max(len(n) for n in shown)

        def short(name: str) -> str:
            if name in self.commands:
                return self.commands[name].get_short_help_str(limit)
            return make_default_short_help(_ROWS[name][2], limit).strip()

        with formatter.section(_("Commands")):
            formatter.write_dl([(n, short(n)) for n in shown])

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        """typer's, with "Did you mean ...?" drawn from every command's name (typer's looks only at the commands
        built so far)."""
        try:
            return self._click_resolve_command(ctx, args)
        except UsageError as e:
            if self.suggest_commands and args:
                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    e.message = f"{e.message.rstrip('.')}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise
