"""The ``edgeconvnext`` command: wires one module per command; each command parses options and calls
the library. Errors from the library become one line on stderr and a distinct exit code (traceback only
with --debug).
"""

from __future__ import annotations

import logging
import sys

import typer

from ..errors import EdgeError
from . import _common
from .demo import demo_cmd
from .models import models_cmd

app = typer.Typer(
    name="edgeconvnext",
    help="ConvNeXt V1/V2: checkpoint -> INT8 Q/DQ ONNX -> TensorRT engine -> validated accuracy and latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final line."),
) -> None:
    _common.STATE.debug = debug
    _common.STATE.quiet = quiet
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


app.command("models")(models_cmd)
app.command("demo")(demo_cmd)
for _name, _mod, _fn in _common.COMMANDS:
    app.command(_name)(getattr(__import__(f"{__name__}.{_mod}", fromlist=[_fn]), _fn))


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=True, prog_name="edgeconvnext")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code
    except EdgeError as e:
        if debug:
            raise
        _common.err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _common.err("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI boundary: one line, traceback with --debug
        if debug:
            raise
        _common.err(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
