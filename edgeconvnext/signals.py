"""Termination signals: SIGTERM (timeout, kill, systemd) and SIGHUP (a closed terminal) take Ctrl-C's path, so
every :func:`edgeconvnext.artifacts.atomic_output` / ``temp_dir_beside`` cleans up; the CLI exits 128 + the
signal number.

Input: none. Output: :func:`terminate_like_interrupt`, a context manager yielding the signals received, and
:func:`signal_name`. Usage: ``with terminate_like_interrupt() as signals: run()``. Kept apart from artifacts so
that the CLI's start-up (every ``--help``) does not import what the artifacts need (json, hashlib, tempfile).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_RECEIVED: list[int] = []
#: the resumable state a long run left on disk (set after each finished epoch, cleared when the run ends): what an
#: interrupted run's last line points to
RESUMABLE: dict[str, Any] = {}


def note_resumable(path: Any, epochs: int) -> None:
    """Record that ``path`` holds the state after ``epochs`` finished epochs (``--resume`` continues from it)."""
    RESUMABLE.update(path=str(path), epochs=int(epochs))


def clear_resumable() -> None:
    RESUMABLE.clear()


def resume_hint() -> str:
    """'; <path> holds the state after epoch N: rerun with --resume to continue', or '' when none was left."""
    import os

    path = RESUMABLE.get("path")
    if not path or not os.path.isfile(path):
        return ""
    return f"; {path} holds the state after epoch {RESUMABLE['epochs']}: rerun the command with --resume to continue"


def _raise_interrupt(signum: int, frame: Any) -> None:
    _RECEIVED.append(signum)
    if len(_RECEIVED) == 1:  # a second signal must not break the cleanup the first one started
        raise KeyboardInterrupt(signal_name(signum))


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[list[int]]:
    """Within the block SIGTERM and SIGHUP raise KeyboardInterrupt (as SIGINT does); yields the list of the
    signals received. The previous handlers come back on exit. A no-op outside the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {s: signal.signal(s, _raise_interrupt) for s in wanted}
    _RECEIVED.clear()
    try:
        yield _RECEIVED
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
