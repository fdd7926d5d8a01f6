"""``edgeconvnext validate``: accuracy of an ONNX model on labelled images, next to its FP32 baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import STATE, console, done


def _table(rep) -> None:
    from rich.table import Table

    has_base = rep.baseline_top1 is not None
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("")
    t.add_column(f"model ({rep.precision})", justify="right")
    if has_base:
        t.add_column("baseline", justify="right")

    def row(label: str, a: str, b: str | None = None) -> None:
        t.add_row(label, a, *([b or ""] if has_base else []))

    row("top-1 %", f"{rep.top1:.2f}", f"{rep.baseline_top1:.2f}" if has_base else None)
    row("top-5 %", f"{rep.top5:.2f}", f"{rep.baseline_top5:.2f}" if has_base else None)
    row("images/s", f"{rep.images_per_s:.0f}", f"{rep.baseline_images_per_s:.0f}" if has_base else None)
    if has_base:
        limit = f" (max {rep.max_drop})" if rep.max_drop is not None else ""
        row("drop, points", f"{rep.drop:.2f}{limit}")
        row("top-1 agreement %", f"{rep.top1_agreement:.2f}")
        row("logit cosine mean/min", f"{rep.cosine_mean:.5f} / {rep.cosine_min:.5f}")
    row("images (skipped)", f"{rep.images} ({rep.skipped})")
    console().print(t)


def validate_cmd(
    model: Annotated[Path, typer.Argument(help="Model to evaluate (.onnx).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled images: class sub-folders, or a flat folder with a labels file.")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels file '<file> <label>' (default: labels.txt/val.txt ... in --data).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="FP32 ONNX to compare with (onnxruntime CPU).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Checkpoint as the FP32 baseline instead (torch CPU).")] = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Images per inference batch.")] = 32,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Fail (exit 7) when top-1 drops more than this many points below the baseline.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the full report (per-class table) as JSON.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate a seeded random subset of N images.")] = None,
) -> None:
    """Top-1/top-5 of MODEL on labelled images; with a baseline (--baseline ONNX or --checkpoint) the drop,
    top-1 agreement and logit cosine similarity."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..errors import AccuracyError
    from ..validate import summary_line, validate

    with Progress(TextColumn("validate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console(), transient=True, disable=STATE.quiet) as bar:
        task = bar.add_task("validate", total=None)

        def progress(n: int, total: int) -> None:
            bar.update(task, completed=n, total=total)

        try:
            rep = validate(model, data, baseline=baseline, checkpoint=checkpoint, batch=batch, max_drop=max_drop,
                           labels=labels, limit=limit, report=report, progress=progress)
        except AccuracyError as e:
            bar.stop()
            if not STATE.quiet:
                _table(e.report)  # type: ignore[attr-defined]
            raise
    if not STATE.quiet:
        _table(rep)
    done(summary_line(rep, report))
