"""``edgeconvnext demo``: the whole pipeline on the embedded default, no files of your own needed.

Checkpoint (ConvNeXt-V2 atto, Fashion-MNIST) -> INT8 Q/DQ ONNX checked against TensorRT's rules ->
validation against the FP32 checkpoint with the accuracy drop printed. The steps are library calls
(edgeconvnext.pipeline.demo); this module shows them as quantize and validate do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import console, done, info, live_progress


def demo_cmd(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the demo's artifacts go.")] = Path(
        "edgeconvnext-demo"
    ),
    backend: Annotated[str, typer.Option("--backend", help="Quantization library: ort or nncf.")] = "ort",
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="Fail (exit 7) when INT8 top-1 drops more than this.")
    ] = 1.0,
) -> None:
    """Run checkpoint -> INT8 ONNX (TensorRT rules checked) -> validation vs FP32 on the bundled Fashion-MNIST demo."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeconvnext.cli._common import StepProgress
    from edgeconvnext.cli.quantize import _print
    from edgeconvnext.cli.validate import _show
    from edgeconvnext.errors import AccuracyError
    from edgeconvnext.evaluate.validate import summary_line
    from edgeconvnext.pipeline.demo import plan_demo, quantize_step, validate_step

    plan = plan_demo(output_dir, backend=backend, max_drop=max_drop)
    info(
        "[bold]1/2 quantize[/bold]: bundled convnextv2_atto (Fashion-MNIST, 32 px) with 512 bundled calibration images"
    )
    with StepProgress(enabled=live_progress()) as prog:
        loaded, result = quantize_step(plan, on_step=prog.step, on_progress=prog.advance)
    _print(result, loaded, False)
    info("[bold]2/2 validate[/bold]: INT8 ONNX vs the FP32 checkpoint on 500 bundled Fashion-MNIST test images")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(),
        transient=True,
        disable=not live_progress(),
    ) as bar:
        task = bar.add_task("validate", total=None)
        try:
            rep = validate_step(plan, progress=lambda n, total: bar.update(task, completed=n, total=total))
        except AccuracyError as e:
            bar.stop()
            _show(e.report, None)  # type: ignore[attr-defined]
            raise
    _show(rep, None)
    done(escape(summary_line(rep, plan.report, None)))
