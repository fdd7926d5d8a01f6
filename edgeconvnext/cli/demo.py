"""``edgeconvnext demo``: the whole pipeline on the embedded default, no files of your own needed.

Checkpoint (ConvNeXt-V2 atto, Fashion-MNIST) -> INT8 Q/DQ ONNX checked against TensorRT's rules ->
validation against the FP32 checkpoint with the accuracy drop printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import info


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
    from edgeconvnext.cli.quantize import quantize_cmd
    from edgeconvnext.cli.validate import validate_cmd
    from edgeconvnext.demo import assets

    a = assets()
    onnx_path = output_dir / "convnextv2_atto_fmnist.int8.onnx"
    info(
        "[bold]1/2 quantize[/bold]: bundled convnextv2_atto (Fashion-MNIST, 32 px) with 512 bundled calibration images"
    )
    quantize_cmd(output=onnx_path, checkpoint=a.checkpoint, calib_data=a.calib, calib_size=512, backend=backend)
    info("[bold]2/2 validate[/bold]: INT8 ONNX vs the FP32 checkpoint on 500 bundled Fashion-MNIST test images")
    validate_cmd(
        model=onnx_path,
        data=a.val,
        checkpoint=a.checkpoint,
        batch=100,
        max_drop=max_drop,
        report=output_dir / "report.json",
    )
