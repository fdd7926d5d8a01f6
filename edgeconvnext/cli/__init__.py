"""The ``edgeconvnext`` command: wires one module per command; each command parses options and calls
the library. Errors from the library become one line on stderr and a distinct exit code (traceback only
with --debug).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import typer

from edgeconvnext.cli import _common
from edgeconvnext.cli._lazy import LazyGroup
from edgeconvnext.errors import EdgeError


class _Group(LazyGroup):
    """The commands of ``_common.COMMANDS``, each imported and built when it runs or shows its help."""

    def prepare(self, command: Any) -> None:
        _finite_floats(command, _click_exceptions())


app = typer.Typer(
    name="edgeconvnext",
    cls=_Group,
    help="ConvNeXt V1/V2: checkpoint -> INT8 Q/DQ ONNX -> TensorRT engine -> validated accuracy and latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: rich's boxed table cut option names at 80 columns ("--allow-unsafe-…") and gave every
    # flag a "<bool>" metavar
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from edgeconvnext import __version__

        print(f"edgeconvnext {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final line."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    _common.STATE.debug = debug
    _common.STATE.quiet = quiet
    import logging  # here, not at the top: a bare --help has no use for it

    from edgeconvnext.cli._live import LogHandler, ours_or_warning

    # --quiet: "only errors and the final line" (warnings such as skipped images are counted in that line);
    # stderr, or above a progress bar while one is drawn (cli/_live.py)
    handler = LogHandler(sys.stderr)
    if not debug:
        handler.addFilter(ours_or_warning)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )


GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


def _hoist_global_flags(args: list[str]) -> list[str]:
    """``edgeconvnext export ... --quiet`` -> ``edgeconvnext --quiet export ...``: the root's flags work after
    the command too (no command defines options of these names; ``--`` ends the search)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def _expand_user(args: list[str]) -> list[str]:
    """``--output=~/m.onnx`` -> ``--output=/home/me/m.onnx``: the shell expands ``~`` in ``--output ~/m.onnx``
    but not after ``=``, and every stage would otherwise write into a folder literally named ``~``."""
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if a.startswith("--") and eq and value.startswith("~"):
            a = f"{key}={os.path.expanduser(value)}"
        out.append(a)
    return out


def _bare_force(args: list[str]) -> list[str]:
    """``run ... --force`` (no stage after it) -> ``--force=all``: --force takes an optional STAGE, which click
    options cannot express; run has no positional arguments, so a following word is the stage (checked
    by the command), a following option or the end means every stage."""
    if "run" not in args or "--force" not in args:
        return args
    out = []
    for i, a in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else None
        out.append("--force=all" if a == "--force" and (nxt is None or nxt.startswith("-")) else a)
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _bare_force(_expand_user(_hoist_global_flags(list(sys.argv[1:] if argv is None else argv))))
    from edgeconvnext.signals import clear_resumable, terminate_like_interrupt

    clear_resumable()  # what an earlier command in this process left (tests, notebooks) is not this one's

    if hasattr(sys.stdout, "reconfigure"):  # any other text holding a non-UTF-8 file name: escaped, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    real_stdout = sys.stdout
    guard = _GuardedStdout(real_stdout)
    sys.stdout = guard
    try:
        # SIGTERM/SIGHUP clean up like Ctrl-C; Python warnings of the libraries become one log line each
        with terminate_like_interrupt() as signals, _warnings_to_logging("--debug" in args):
            rc = _main(args, signals)
        try:
            sys.stdout.flush()
        except OSError:
            pass
        failed = guard.failed
    finally:
        sys.stdout = real_stdout
    if failed is None:
        return rc
    try:  # what is still buffered would fail again at interpreter exit ("Exception ignored ...")
        os.dup2(os.open(os.devnull, os.O_WRONLY), real_stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    if failed.errno == errno.EPIPE:  # the reader closed the pipe (| head): no line, it is not an error of ours
        # a command that had finished (only its last output was cut) keeps 0, and its own error code stands;
        # one the closed pipe stopped exits 141 = 128 + SIGPIPE, as a coreutils program killed by it does
        return EXIT_SIGPIPE if rc == 1 else rc
    _common.err(f"cannot write to standard output: {failed.strerror or failed}; redirect it where it can be written")
    return rc if rc not in (0, 1) else 2  # a command's own error code stands; else exit 2 like any unwritable output


EXIT_SIGPIPE = 128 + 13  # 141: the output's reader went away before the command was done


def entry() -> NoReturn:
    """The ``edgeconvnext`` console script (and ``python -m edgeconvnext``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(rc: int) -> NoReturn:
    """Exit with ``rc`` once the output is out, without the interpreter's teardown.

    After a quantize, freeing torch's and onnxruntime's modules object by object took 1.2-1.4 s of a command
    whose work was done. The ``atexit`` functions run first (logging's shutdown, which flushes and closes the
    handlers, and temporary folders' finalizers among them), then stdout/stderr are flushed; the normal exit
    (``SystemExit``) is kept while anything else may still need the interpreter: a thread that is not a daemon,
    a multiprocessing child, or a torch.distributed process group (torchrun's ranks destroy theirs on the way
    out), and where Python has no ``atexit._run_exitfuncs`` (not CPython).
    """
    import atexit

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None or _others_running():
        raise SystemExit(rc)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed pipe: main() has said what it had to
            pass
    os._exit(rc & 0xFF if rc >= 0 else 1)


def _others_running() -> bool:
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return True
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.active_children():
        return True
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _warnings_to_logging(debug: bool) -> Iterator[None]:
    """Python warnings (torch's pickle and TorchScript notices, Pillow's DecompressionBombWarning) as one
    ``WARNING py.warnings: Category: message`` log line each, instead of Python's two lines ending in the
    warning's source line; --debug adds the whole message and where it was raised. Restored on return."""
    import warnings

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None):
        import logging  # on the first warning: a bare --help imports no logging

        logger = logging.getLogger("py.warnings")
        text = str(message).strip()
        if debug:
            logger.warning("%s: %s (%s:%d)", category.__name__, text, filename, lineno)
        else:
            logger.warning("%s: %s", category.__name__, text.splitlines()[0] if text else "")

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


class _GuardedStdout:
    """sys.stdout, remembering the first write error (``> /dev/full``, a closed pipe) so it becomes one line."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failed: OSError | None = None
        self.wrote = False  # anything printed: a --json error object would then be a second document

    def write(self, text: str) -> int:
        self.wrote = self.wrote or bool(text)
        try:
            return self._inner.write(text)
        except OSError as e:
            self.failed = self.failed or e
            raise

    def flush(self) -> None:
        try:
            self._inner.flush()
        except OSError as e:
            self.failed = self.failed or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _finite_floats(command: Any, cx: Any) -> None:
    """Every float option of every command refuses nan and inf: '--max-drop nan' was accepted and then failed
    every comparison (options parse floats as Python does)."""
    import math

    def wrap(previous: Any) -> Any:
        def check(ctx: Any, param: Any, value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                name = param.opts[0] if getattr(param, "opts", None) else param.name
                raise cx.BadParameter(f"{name} must be a finite number, got {value!r}", ctx=ctx, param=param)
            return previous(ctx, param, value) if previous is not None else value

        return check

    for cmd in [command, *getattr(command, "commands", {}).values()]:
        for p in cmd.params:
            td = getattr(p, "type_descriptor", None)
            if td is not None and td.annotation is float and not getattr(p, "_finite", False):
                p.callback, p._finite = wrap(p.callback), True


_COMMAND: dict[tuple[Any, ...], Any] = {}  # the click command typer built from ``app``, by its registered commands


def _command(cx: Any) -> Any:
    """The click group of ``app``, built once per set of commands registered on ``app`` itself (the tests' hidden
    ones; the table's are built by the group when used, once per process: typer inspects a command's signature
    to build it, which a process that runs many main() calls, such as the tests, would pay again)."""
    key = tuple(app.registered_commands)  # the objects themselves (by identity): a command added later rebuilds
    if key not in _COMMAND:
        command = typer.main.get_command(app)
        _finite_floats(command, cx)
        _COMMAND.clear()
        _COMMAND[key] = command
    return _COMMAND[key]


def _click_exceptions() -> Any:
    from typer._click import exceptions as cx  # the pinned typer vendors click (cli/_lazy.py builds on it too)

    return cx


def _interrupted(signals: list[int]) -> int:
    """The line and exit code of an interrupted run: 130 for Ctrl-C, 128 + N for signal N (SIGTERM: 143)."""
    from edgeconvnext.signals import resume_hint, signal_name

    if signals:
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        if signal_name(signals[0]) == "SIGTERM" and rank != "0" and world != "1":
            # torchrun stops the other processes with SIGTERM when one fails: not a second, contradicting error
            _common.err(
                f"rank {rank}: stopped by SIGTERM, as torchrun stops every process when one fails or the run is "
                "stopped (the first error says why); nothing half-written was kept"
            )
            return 128 + signals[0]
        _common.err(f"terminated by {signal_name(signals[0])}; nothing half-written was kept{resume_hint()}")
        return 128 + signals[0]
    _common.err(f"interrupted{resume_hint()}")
    return 130


def _json_error(args: list[str], message: str, code: int, kind: str) -> None:
    """With ``--json`` (before any ``--``), a failed command that printed nothing also prints its error as one JSON
    object on stdout, so a script that decodes stdout gets the error, its kind and the exit code instead of
    nothing; the 'error:' line on stderr stays."""
    head = args[: args.index("--")] if "--" in args else args
    if "--json" not in head or code == 0 or getattr(sys.stdout, "wrote", False):
        return  # a command that printed its JSON before failing (inspect --trt --json: exit 6) keeps one document
    import json

    try:
        print(json.dumps({"error": message, "kind": kind, "exit_code": code}), flush=True)
    except OSError:  # stdout itself failed: main() says so
        pass


def _main(args: list[str], signals: list[int]) -> int:
    rc, error = _run(args, signals)
    if error is not None:
        _json_error(args, error[0], rc, error[1])
    return rc


def _run(args: list[str], signals: list[int]) -> tuple[int, tuple[str, str] | None]:
    """The command's exit code, and (message, kind) when it failed with an error line."""
    cx = _click_exceptions()
    ClickException, ClickUsageError = cx.ClickException, cx.UsageError
    debug = "--debug" in args
    try:
        # not standalone: option-parsing errors come back here and become one 'error:' line like the library's
        command = _command(cx)
        rv = command(args=args, standalone_mode=False, prog_name="edgeconvnext")
        if rv == 130:  # typer turns Ctrl-C into exit code 130
            return _interrupted(signals), None
        return (rv if isinstance(rv, int) else 0), None  # an int is an exit code (--help: 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code, None
    except cx.NoArgsIsHelpError as e:  # no command: the help (click's plain formatter leaves printing it to us)
        print(e.format_message())
        return e.exit_code, None
    except ClickException as e:
        ctx = getattr(e, "ctx", None) if isinstance(e, ClickUsageError) else None
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        msg = e.format_message() + hint
        _common.err(msg)
        return e.exit_code, (msg, "UsageError")
    except typer.Abort:  # end of input at a prompt, or Ctrl-C / SIGTERM (click turns KeyboardInterrupt into Abort)
        return _interrupted(signals), None
    except EdgeError as e:
        if debug:
            raise
        _common.err(str(e))
        return e.exit_code, (str(e), type(e).__name__)
    except KeyboardInterrupt:
        return _interrupted(signals), None
    except MemoryError as e:  # an allocation the estimates did not foresee: one line, like the refusals
        if debug:
            raise
        msg = (
            f"out of memory{f' ({e})' if str(e) else ''}: the request needs more memory than this machine has; "
            "use a smaller batch or image size"
        )
        _common.err(msg)
        return 8, (msg, "MemoryError")
    except Exception as e:  # noqa: BLE001 - the CLI boundary: one line, traceback with --debug
        if isinstance(e, OSError) and getattr(sys.stdout, "failed", None) is e:
            return 1, None  # printing the result failed, not the command: main() says so
        if debug:
            raise
        msg = f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)"
        _common.err(msg)
        return 1, (msg, "InternalError")


if __name__ == "__main__":
    entry()
