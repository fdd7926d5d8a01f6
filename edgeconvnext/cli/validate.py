"""``edgeconvnext validate``: accuracy of a model on labelled images next to its FP32 baseline, and/or its
latency (p50/p90/p99, images/s, memory) on onnxruntime, TensorRT or torch, CPU or CUDA, in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import STATE, console, done, live_progress, print_skipped
from edgeconvnext.cli._options import ImgSizeOpt, ModelOpt, UnsafeOpt


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
    if rep.top5 is not None:  # None for <= 5 classes, where every image is a top-5 hit
        row("top-5 %", f"{rep.top5:.2f}", f"{rep.baseline_top5:.2f}" if has_base else None)
    row("images/s", f"{rep.images_per_s:.0f}", f"{rep.baseline_images_per_s:.0f}" if has_base else None)
    if has_base:
        limit = f" (max {rep.max_drop})" if rep.max_drop is not None else ""
        row("drop, points", f"{rep.drop:.2f}{limit}")
        row("top-1 agreement %", f"{rep.top1_agreement:.2f}")
        row("logit cosine mean/min", f"{rep.cosine_mean:.5f} / {rep.cosine_min:.5f}")
    row("images (skipped)", f"{rep.images} ({rep.skipped})")
    console().print(t)


def _show(rep, markdown: Path | None) -> None:
    if STATE.quiet:
        return
    if rep.top1 is not None:
        _table(rep)
    if rep.latency or markdown is not None:
        console().print(rep.markdown, markup=False)


def validate_cmd(
    model: Annotated[
        Path | None,
        typer.Argument(
            help=(
                "Model: .onnx (onnxruntime), .engine/.plan (TensorRT), or a checkpoint file / "
                "HuggingFace folder (torch). Omit it with --model NAME for a random-weights torch model (latency only)."
            )
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help=(
                "Labelled images: class sub-folders, or a flat folder with a labels file. Optional with "
                "--latency (latency only)."
            ),
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Labels file '<file> <label>' (default: labels.txt/val.txt ... in --data)."),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="FP32 ONNX to compare with (onnxruntime CPU).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint as the FP32 baseline instead (torch CPU).")
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", "-b", help="Images per inference batch (accuracy; default 32).")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop", help="Fail (exit 7) when top-1 drops more than this many points below the baseline."
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the full report (per-class table, latency) as JSON.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate a seeded random subset of N images.")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help=(
                "onnxruntime, tensorrt, torch or torch-tensorrt (a checkpoint compiled by Torch-TensorRT; "
                "extra torch-tensorrt) (default: from MODEL: .onnx -> onnxruntime, .engine/.plan -> tensorrt, "
                "checkpoint -> torch)."
            ),
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda for tensorrt, else cpu).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="torch only: fp32 (default) or fp16. An ONNX/engine fixes its own precision."),
    ] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch only: run through torch.compile (one static graph per batch size).")
    ] = False,
    int8_math: Annotated[
        str,
        typer.Option(
            "--int8-math",
            help=(
                "onnxruntime only, how an INT8 model's Q/DQ are computed: auto (default: emulated on x86 CPUs "
                "without VNNI, where onnxruntime's int8 kernels saturate, else kernels), kernels (onnxruntime's "
                "int8 kernels), emulated (in float as written: TensorRT's arithmetic), exact (no graph "
                "optimisation; slowest)."
            ),
        ),
    ] = "auto",
    arch: ModelOpt = None,
    img_size: ImgSizeOpt = None,
    allow_unsafe: UnsafeOpt = False,
    latency: Annotated[
        bool,
        typer.Option("--latency", help="Also measure latency: warm-up, then timed iterations at each --latency-batch."),
    ] = False,
    latency_batch: Annotated[
        str | None,
        typer.Option(
            "--latency-batch",
            help="Batch sizes to time, comma-separated (default: 1,8 on CPU, 1,32 on CUDA; an artifact's fixed batch).",
        ),
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help="Untimed iterations per batch size (default: 5 on CPU, 50 on CUDA).")
    ] = None,
    iters: Annotated[
        int | None, typer.Option("--iters", help="Timed iterations per batch size (default: 30 on CPU, 200 on CUDA).")
    ] = None,
    cuda_graph: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graph/--no-cuda-graph", help="Replay as a CUDA graph (default: on for torch and TensorRT on CUDA)."
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="Recipe name or YAML file: its validate section (batch, max_drop, limit, latency settings) sets "
            "defaults the options given here override.",
        ),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            help=(
                "Write the Markdown table (artifact, backend, precision, top-1, drop, p50 ms, images/s "
                "...) to FILE; it is also printed."
            ),
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Validate again even when the --report's sidecar matches (same model, data, options and versions).",
        ),
    ] = False,
) -> None:
    """Top-1/top-5 of MODEL on labelled images; with a baseline (--baseline ONNX or --checkpoint) the drop,
    top-1 agreement and logit cosine similarity; with --latency, p50/p90/p99 latency, images/s and memory."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from edgeconvnext.artifacts import Skipped
    from edgeconvnext.errors import AccuracyError, UsageError
    from edgeconvnext.evaluate.config import resolve
    from edgeconvnext.evaluate.validate import summary_line, validate
    from edgeconvnext.recipes import load_recipe

    timing = {"--latency-batch": latency_batch, "--warmup": warmup, "--iters": iters, "--cuda-graph": cuda_graph}
    if not latency:
        given = [k if k != "--cuda-graph" or v else "--no-cuda-graph" for k, v in timing.items() if v is not None]
        if given:
            raise UsageError(f"{given[0]} sets up the latency mode: add --latency")
    # defaults < recipe < options given here
    rec = load_recipe(recipe) if recipe else None
    cfg = resolve(
        rec,
        {
            "batch": batch,
            "max_drop": max_drop,
            "limit": limit,
            "latency_batch": latency_batch,
            "warmup": warmup,
            "iters": iters,
            "cuda_graph": cuda_graph,
        },
    )
    opts = cfg.latency_options() if latency else None

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
        disable=not live_progress(),
    ) as bar:
        task = bar.add_task("validate", total=None)

        def progress(n: int, total: int) -> None:
            bar.update(task, completed=n, total=total)

        def on_latency_batch(b: int) -> None:
            bar.update(task, description=f"latency, batch {b}", completed=0, total=None)

        try:
            rep = validate(
                model,
                data,
                baseline=baseline,
                checkpoint=checkpoint,
                batch=cfg.batch,
                max_drop=cfg.max_drop,
                labels=labels,
                limit=cfg.limit,
                report=report,
                backend=backend,
                device=device,
                precision=precision,
                compile=compile,
                arch=arch,
                img_size=img_size,
                allow_unsafe=allow_unsafe,
                latency=opts,
                markdown=markdown,
                progress=progress,
                on_latency_batch=on_latency_batch,
                reuse=not force,
                int8_math=int8_math.strip().lower(),
            )
        except AccuracyError as e:
            bar.stop()
            _show(e.report, markdown)  # type: ignore[attr-defined]
            raise
    if isinstance(rep, Skipped):
        return print_skipped(rep)
    _show(rep, markdown)
    from rich.markup import escape  # paths like run[2].onnx are data, not markup

    done(escape(summary_line(rep, report, markdown)))
