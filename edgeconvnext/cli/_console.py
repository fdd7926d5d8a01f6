"""The CLI's rich Console: it records when it draws a live display, so that log records print through it, above
the display (see :mod:`edgeconvnext.cli._live`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from edgeconvnext.cli._live import LIVE

if TYPE_CHECKING:
    from rich.live import Live


class CliConsole(Console):
    """rich calls ``set_live``/``clear_live`` as a ``Live`` (progress bar, status spinner) starts and stops on it."""

    def set_live(self, live: Live) -> bool:
        top = super().set_live(live)
        LIVE.append(self)
        return top

    def clear_live(self) -> None:
        super().clear_live()
        for i in range(len(LIVE) - 1, -1, -1):  # this console's innermost display ended
            if LIVE[i] is self:
                del LIVE[i]
                break
