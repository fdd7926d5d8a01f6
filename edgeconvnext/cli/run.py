"""``edgeconvnext run``: checkpoint -> FP32/FP16/INT8 ONNX -> TensorRT rules -> engines (or trtexec commands)
-> validation of every artifact -> report.json/md/html -> device bundle (see edgeconvnext.pipeline.run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconvnext.cli._common import STATE, StepProgress, console, done, live_progress
from edgeconvnext.cli._options import (
    BackendOpt,
    CalibDataOpt,
    CalibMethodOpt,
    CalibSizeOpt,
    CheckpointOpt,
    EmaOpt,
    ExcludeOpt,
    ImgSizeOpt,
    LatencyItersOpt,
    LatencyWarmupOpt,
    ManifestOpt,
    MaxDisagreeOpt,
    MaxDropOpt,
    MinCalibOpt,
    MinShareOpt,
    MinValOpt,
    ModelOpt,
    NumClassesOpt,
    PolicyOpt,
    RecipeOpt,
    SeedOpt,
    SmoothOpt,
    SubsetOpt,
    UnsafeOpt,
    ptq_values,
)


def run_cmd(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", show_default=False, help="Run folder (runs/NAME).")],
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    recipe: RecipeOpt = None,
    calib_data: CalibDataOpt = None,
    val_data: Annotated[
        Path | None,
        typer.Option(
            "--val-data",
            help="Validation images: class folders or a labels file give accuracy rows (and the --max-drop "
            "budget); a plain folder gives latency rows (the budget is then --max-disagree).",
        ),
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Labels file for a flat --val-data folder.")] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="ptq (post-training, default) or qat (quantization-aware training).")
    ] = None,
    train_data: Annotated[Path | None, typer.Option("--train-data", help="Training images for --method qat.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="--method qat: epochs of QAT (default 1).")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="--method qat: cap on optimizer steps per epoch.")
    ] = None,
    max_drop: MaxDropOpt = None,
    max_disagree: MaxDisagreeOpt = None,
    min_val_size: MinValOpt = None,
    subset_size: SubsetOpt = None,
    min_int8_share: MinShareOpt = None,
    calib_size: CalibSizeOpt = None,
    min_calib_size: MinCalibOpt = None,
    seed: SeedOpt = None,
    backend: BackendOpt = None,
    calib_method: CalibMethodOpt = None,
    policy: PolicyOpt = None,
    exclude: ExcludeOpt = None,
    smooth: SmoothOpt = None,
    calib_manifest: ManifestOpt = None,
    img_size: ImgSizeOpt = None,
    num_classes: NumClassesOpt = None,
    allow_unsafe_pickle: UnsafeOpt = False,
    ema: EmaOpt = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where the ONNX and torch rows run.")] = "cpu",
    latency_batch: Annotated[
        str | None,
        typer.Option("--latency-batch", help="Batch sizes to time, e.g. 1,8 (default: the recipe's, else 1,8 on CPU)."),
    ] = None,
    warmup: LatencyWarmupOpt = None,
    iters: LatencyItersOpt = None,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Accuracy only, no latency runs.")] = False,
    val_batch: Annotated[int | None, typer.Option("--val-batch", help="Images per inference batch (accuracy).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Validate a seeded subset of N images.")] = None,
    bundle_images: Annotated[
        int, typer.Option("--bundle-images", help="Copy N validation images into the bundle (for device-check).")
    ] = 0,
    trtexec: Annotated[
        Path | None, typer.Option("--trtexec", help="Build engines with this trtexec when TensorRT is here.")
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force",
            help="Re-run STAGE even when its record matches (repeatable); --force alone re-runs everything. "
            "Stages: export, quantize, fp16, rules, engines, validate, report, bundle.",
        ),
    ] = None,
) -> None:
    """Checkpoint to device bundle in one command: FP32, FP16 and INT8 ONNX, TensorRT rules, engines where
    TensorRT is, every artifact validated (accuracy and latency), report.json/md/html with plots, bundle/.

    The INT8 ONNX is post-training quantized (PTQ) by default; --method qat trains it; --max-drop POINTS (with
    --val-data) runs the accuracy-budget search on the validation images, keeping the most harmful layers in
    higher precision until the top-1 drop fits (exit 7, no INT8 file, when it cannot)."""
    from edgeconvnext.evaluate.validate import parse_batches
    from edgeconvnext.pipeline.run import RunOptions, run_pipeline

    opts = RunOptions(
        output=output,
        checkpoint=checkpoint,
        model=model,
        recipe=recipe,
        img_size=img_size,
        num_classes=num_classes,
        allow_unsafe=allow_unsafe_pickle,
        ema=ema,
        calib_data=calib_data,
        calib_manifest=calib_manifest,
        val_data=val_data,
        labels=labels,
        method=method,
        train_data=train_data,
        qat={"epochs": epochs, "steps": steps},
        budget={
            "max_drop": max_drop,
            "max_disagree": max_disagree,
            "subset_size": subset_size,
            "min_int8_share": min_int8_share,
            "min_val_size": min_val_size,
        },
        quantize=ptq_values(ctx.params),
        validate={"batch": val_batch, "limit": limit, "warmup": warmup, "iters": iters},
        latency_batches=parse_batches(latency_batch) if latency_batch else None,
        latency=not no_latency,
        device=device,
        bundle_images=bundle_images,
        trtexec=trtexec,
        force=tuple(force or ()),
    )
    with _Display(enabled=live_progress(), lines=not STATE.quiet) as disp:
        result = run_pipeline(opts, disp.events())
    _summary(result)


def _summary(result: Any) -> None:
    from rich.markup import escape

    c = console()
    if not STATE.quiet:
        c.print(escape((result.output / "report.md").read_text().split("\n\n", 3)[2]), soft_wrap=True)
        _print_search(c, result.report)
        for n in result.report.get("notes") or []:
            c.print(f"note: {n}", markup=False, soft_wrap=True)
    skipped = f", {len(result.skipped)} up to date" if result.skipped else ""
    done(
        escape(
            f"{result.report_html}  ({len(result.report['rows'])} rows; bundle {result.bundle}){skipped}  "
            f"{result.seconds:.1f} s"
        )
    )


def _print_search(c: Any, report: dict[str, Any]) -> None:
    """The accuracy-budget search's outcome: one paragraph and the layer groups kept in higher precision."""
    from rich.markup import escape
    from rich.table import Table

    from edgeconvnext.pipeline.report import search_lines

    search = search_lines(report)
    if search is None:
        return
    title, text, head, body = search
    c.print(f"{title}: {text}", markup=False, soft_wrap=True)
    if body:
        t = Table(title_justify="left")
        for col in head:
            t.add_column(col, justify="left" if col.startswith("layer") else "right")
        for row in body:
            t.add_row(*(escape(cell) for cell in row))
        c.print(t)


class _Display(StepProgress):
    """A rich live display: the stage (i/n), its current step, a bar while images load, the elapsed time;
    each finished or skipped stage leaves one line above it."""

    bar_width = 24

    def __init__(self, enabled: bool, lines: bool) -> None:
        super().__init__(enabled)
        self._stage = ""
        self._lines = lines  # the finished/skipped stage lines, also without a live display (not a terminal)

    def lead_columns(self) -> list[Any]:
        from rich.progress import TextColumn

        return [TextColumn("[bold]{task.fields[stage]}[/bold]")]

    def task_fields(self) -> dict[str, Any]:
        return {"stage": ""}

    def _print(self, text: str) -> None:
        if self._lines:
            from rich.markup import escape

            (self._p.console if self._p is not None else console()).print(escape(text), soft_wrap=True)

    def events(self):

        from edgeconvnext.pipeline.run import Events

        def stage(name: str, i: int, n: int) -> None:
            self._stage = f"{i}/{n} {name}"
            if self._p is not None:
                self._p.update(self._task, stage=self._stage, description="", total=None, completed=0)

        def skipped(name: str, why: str) -> None:
            self._print(f"  {name}: skipped, up to date ({why})")

        def finished(name: str, summary: str, seconds: float) -> None:
            self._print(f"  {name}: {summary} ({seconds:.1f} s)")

        return Events(stage=stage, skipped=skipped, finished=finished, step=self.step, progress=self.advance)
