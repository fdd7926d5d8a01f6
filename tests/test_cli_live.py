"""Log records and rich progress displays (cli/_live.py, cli/_console.py): above the bar on a terminal, on stderr
otherwise."""

from __future__ import annotations

import io
import logging

import pytest

from edgeconvnext.cli import _common
from edgeconvnext.cli._console import CliConsole
from edgeconvnext.cli._live import LIVE, LogHandler


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """A real rich console on a terminal (stdout) and the CLI's handler on a stderr that is the same terminal or
    (``tty=False``) a file; returns (stdout buffer, make_logger)."""
    out = io.StringIO()
    monkeypatch.setattr(_common, "console", lambda: CliConsole(file=out, force_terminal=True, width=100))
    loggers = []

    def make(stderr: io.StringIO) -> logging.Logger:
        log = logging.getLogger(f"edgeconvnext.test_live.{len(loggers)}")
        handler = LogHandler(stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        loggers.append((log, handler))
        return log

    yield out, make
    for log, handler in loggers:
        log.removeHandler(handler)
    assert LIVE == []  # every display that started also ended


def test_a_log_line_prints_above_the_live_bar_on_a_terminal(terminal):
    out, make = terminal
    err = _Tty()
    log = make(err)
    with _common.StepProgress(enabled=True) as prog:
        prog.step("calibrating")
        prog.advance(3, 10)
        assert len(LIVE) == 1
        log.info("checkpoint [a].pt: timm format")
        text = out.getvalue()
    assert err.getvalue() == ""  # not written under the bar
    line = "INFO edgeconvnext.test_live.0: checkpoint [a].pt: timm format"
    assert line in text  # printed by the bar's console, as it is (no markup)
    before, after = text.split(line, 1)
    assert "\x1b[2K" in before  # the bar was erased for the line ...
    assert "━" in after  # ... and drawn again under it
    assert after.startswith("\n")  # the line is whole: the bar did not land inside it
    log.info("done")  # no display any more: stderr again
    assert err.getvalue() == "INFO edgeconvnext.test_live.0: done\n"


def test_a_log_line_goes_to_stderr_when_it_is_not_the_terminal(terminal):
    out, make = terminal
    err = io.StringIO()  # 2> log: the records stay in the file, not on the terminal above the bar
    log = make(err)
    with _common.StepProgress(enabled=True) as prog:
        prog.step("calibrating")
        log.warning("3 unreadable images skipped")
    assert err.getvalue() == "WARNING edgeconvnext.test_live.0: 3 unreadable images skipped\n"
    assert "unreadable" not in out.getvalue()


def test_without_a_live_display_records_are_stderr_lines(terminal):
    out, make = terminal
    err = _Tty()
    log = make(err)
    with _common.StepProgress(enabled=False):  # --json, --quiet, not a terminal: no display
        log.info("loading")
    with _common.EpochProgress(enabled=False):  # rich's disable: no display either
        log.info("epoch")
    assert err.getvalue() == "INFO edgeconvnext.test_live.0: loading\nINFO edgeconvnext.test_live.0: epoch\n"
    assert out.getvalue() == ""


def test_an_epoch_bar_and_a_status_spinner_take_log_lines_above_them(terminal):
    out, make = terminal
    err = _Tty()
    log = make(err)
    with _common.EpochProgress(enabled=True) as prog:
        prog.start_epoch(1, 2, 5)
        log.info("epoch line")
    with _common.console().status("loading the model"):
        log.info("status line")
    assert err.getvalue() == ""
    assert "INFO edgeconvnext.test_live.0: epoch line" in out.getvalue()
    assert "INFO edgeconvnext.test_live.0: status line" in out.getvalue()
