"""``edgeconvnext doctor``: what this machine offers for TensorRT builds and runs (see edgeconvnext.env.doctor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconvnext.cli._common import console
from edgeconvnext.cli._options import JsonOpt


def doctor_cmd(
    trtexec: Annotated[Path | None, typer.Option("--trtexec", help="Also check this trtexec binary.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Report GPU, driver, CUDA, TensorRT (bindings and trtexec), Jetson model, JetPack, power mode, clocks,
    onnxruntime providers and torch. Works without torch, TensorRT or a GPU."""
    from edgeconvnext.env.doctor import probe

    report = probe(trtexec)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        _exit_if_trtexec_failed(report, trtexec)
        return
    from rich.markup import escape
    from rich.table import Table

    marks = {
        "ok": "[green]ok[/green]",
        "missing": "[red]missing[/red]",
        "warn": "[yellow]warn[/yellow]",
        "info": "[dim]info[/dim]",
    }
    t = Table(title="edgeconvnext doctor", show_lines=False)
    for col in ("check", "", "found", "what to do"):
        t.add_column(col, overflow="fold")
    for c in report.checks:
        t.add_row(escape(c.name), marks.get(c.status, escape(c.status)), escape(c.value), escape(c.hint))
    out = console()
    out.print(t)
    blockers = report.build_blockers()
    out.print(
        "can build engines here: "
        + ("yes" if not blockers else f"no ({'; '.join(blockers)}; build-engine --dry-run works anyway)")
    )
    _exit_if_trtexec_failed(report, trtexec)


def _exit_if_trtexec_failed(report: Any, trtexec: Path | None) -> None:
    """The report is printed whatever it found; a --trtexec that was asked for and does not work also makes the
    exit status 8 (a missing one exited 0, so `doctor --trtexec X && build-engine ...` went on)."""
    from edgeconvnext.cli._common import err

    te = report.sections.get("trtexec") or {}
    if trtexec is not None and not te.get("ok"):
        err(te.get("error") or f"--trtexec {trtexec} does not work")
        raise typer.Exit(8)
