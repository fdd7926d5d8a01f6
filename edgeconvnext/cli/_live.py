"""The CLI's log handler. While a progress display (a rich ``Live``: bar, spinner, status) is drawn on the
terminal, log records are printed by that display's console, above it; written to stderr directly, each one landed
in the middle of the display and left a torn copy of the bar behind. Without a live display, or when stderr is not
a terminal (``2> log``, a pipe), records are ``LEVEL name: message`` lines on stderr as before, and stdout carries
only results.

The root callback installs :class:`LogHandler`; :class:`edgeconvnext.cli._console.CliConsole` (what
:func:`edgeconvnext.cli._common.console` returns) says when it draws a live display. No rich import here: a
command's ``--help`` runs the root callback and has no use for rich's console.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

LIVE: list[Console] = []  # the consoles drawing a live display now, the innermost last


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed file
        return False


def ours_or_warning(record: logging.LogRecord) -> bool:
    """The log filter without --debug: our INFO lines (and py.warnings'), the libraries' warnings and errors; the
    libraries' INFO lines only with --debug (torch's fake-tensor cache statistics, logged at exit, came out after
    an interrupted export had left torch's log levels changed)."""
    return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in ("edgeconvnext", "py")


class LogHandler(logging.StreamHandler):
    """Log records on ``stream`` (stderr), or above the live display while one is drawn on the terminal that
    ``stream`` also is."""

    def emit(self, record: logging.LogRecord) -> None:
        live = LIVE[-1] if LIVE else None
        if live is None or not _is_terminal(self.stream):
            super().emit(record)
            return
        try:
            # markup off: a message naming a path like run[2] is data; highlight off: the plain line of stderr
            live.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own contract: a failing handler reports, never raises
            self.handleError(record)
