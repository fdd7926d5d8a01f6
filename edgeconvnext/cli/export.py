"""``edgeconvnext export``: checkpoint -> verified FP32/FP16 ONNX with metadata and a sidecar.

The library side is :mod:`edgeconvnext.export.onnx_export`.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import STATE, console, done, human_size, live_progress, print_skipped
from edgeconvnext.cli._options import CheckpointOpt, EmaOpt, ForceOpt, ImgSizeOpt, ModelOpt, NumClassesOpt, UnsafeOpt
from edgeconvnext.export.config import ExportConfig

PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        "-p",
        help="fp32 or fp16 (fp16 keeps float32 input/output; INT8 comes from 'edgeconvnext quantize').",
    ),
]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset, 17..20 (17+ keeps LayerNorm one op).")]
BatchOpt = Annotated[str, typer.Option("--batch", help="'dynamic' or a fixed batch size N.")]
OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="ONNX file to write (a .onnx.json sidecar goes beside it).", show_default=False
    ),
]


def export_cmd(
    output: OutputOpt,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    precision: PrecisionOpt = ExportConfig.precision.value,
    opset: OpsetOpt = ExportConfig.opset,
    batch: BatchOpt = str(ExportConfig.batch),
    allow_unsafe_pickle: UnsafeOpt = False,
    ema: EmaOpt = False,
    force: ForceOpt = False,
) -> None:
    """Export a checkpoint (or random weights) to ONNX, checked by onnx.checker and verified in onnxruntime."""
    from edgeconvnext.artifacts import Skipped
    from edgeconvnext.export.config import resolve
    from edgeconvnext.export.onnx_export import check_img_size, export_onnx, require_backends

    # refuse bad options and a missing onnx/onnxruntime before the (possibly slow) checkpoint load
    cfg = resolve(None, {"precision": precision, "opset": opset, "batch": batch})
    if img_size is not None:
        check_img_size(img_size)
    require_backends()
    from edgeconvnext.artifacts import check_output
    from edgeconvnext.models.checkpoint import load_model

    check_output(output, "--output", {"--checkpoint": checkpoint}, suffix=".onnx")

    c = console()
    with c.status("loading the model", spinner="dots") if live_progress() else nullcontext() as status:
        loaded = load_model(
            model, checkpoint, num_classes=num_classes, img_size=img_size, allow_unsafe=allow_unsafe_pickle, ema=ema
        )
        on_step = status.update if status is not None else None
        result = export_onnx(
            loaded,
            output,
            precision=cfg.precision,
            opset=cfg.opset,
            batch=cfg.batch_size,
            on_step=on_step,
            reuse=not force,
        )
    if isinstance(result, Skipped):
        return print_skipped(result)
    # soft_wrap: each of these stays one line when piped (rich wraps at 80 columns otherwise)
    if not STATE.quiet:
        for note in result.notes:
            c.print(f"note: {note}", soft_wrap=True, markup=False)
        c.print(result.parity_line(), soft_wrap=True, markup=False)
    from rich.markup import escape  # a path like run[2].onnx is data, not markup

    shape = f"({'N' if result.batch is None else result.batch}, 3, {result.img_size}, {result.img_size})"
    done(
        escape(
            f"{result.path}  {human_size(result.size_bytes)}  {loaded.arch.name} {result.precision} "
            f"opset {result.opset} input {shape}  {result.seconds:.1f} s"
        )
    )
