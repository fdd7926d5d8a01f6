"""The demo pipeline on the bundled Fashion-MNIST assets: checkpoint -> INT8 Q/DQ ONNX (TensorRT rules
checked) -> validation against the FP32 checkpoint. The steps are library calls with configs resolved by
the stages' own ``resolve``; the CLI (``edgeconvnext demo``) shows their progress and results.

Usage::

    plan = plan_demo(Path("edgeconvnext-demo"))
    loaded, q = quantize_step(plan)
    report = validate_step(plan)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.demo import assets
from edgeconvnext.evaluate.config import ValidateConfig
from edgeconvnext.evaluate.config import resolve as resolve_validate
from edgeconvnext.quantize.config import QuantizeConfig
from edgeconvnext.quantize.config import resolve as resolve_quantize

if TYPE_CHECKING:
    from edgeconvnext.evaluate.validate import ValidationReport
    from edgeconvnext.models.checkpoint import LoadedModel
    from edgeconvnext.quantize.ptq import QuantizeResult

#: calibration images (of the 520 bundled) and images per validation batch
CALIB_SIZE = 512
VAL_BATCH = 100


@dataclass(frozen=True)
class DemoPlan:
    """Inputs, outputs and resolved configs of the demo's two steps."""

    checkpoint: Path
    calib: Path
    val: Path
    int8: Path
    report: Path
    quantize: QuantizeConfig
    validate: ValidateConfig


def plan_demo(output_dir: Path, *, backend: str = "ort", max_drop: float = 1.0) -> DemoPlan:
    """The demo's files and configs; bad options are refused here, before any work."""
    a = assets()
    return DemoPlan(
        checkpoint=a.checkpoint,
        calib=a.calib,
        val=a.val,
        int8=Path(output_dir) / "convnextv2_atto_fmnist.int8.onnx",
        report=Path(output_dir) / "report.json",
        quantize=resolve_quantize(None, {"backend": backend, "calib_size": CALIB_SIZE}),
        validate=resolve_validate(None, {"batch": VAL_BATCH, "max_drop": max_drop}),
    )


def quantize_step(
    plan: DemoPlan,
    *,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[LoadedModel, QuantizeResult]:
    """Step 1: the bundled checkpoint -> ``plan.int8`` (always redone: the demo shows the whole pipeline)."""
    from edgeconvnext.artifacts import Skipped, check_output
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize.ptq import quantize, require_backend

    require_backend(plan.quantize.backend)
    check_output(plan.int8, "--output-dir", suffix=".onnx")
    if on_step is not None:
        on_step("loading the model")
    loaded = load_model(None, plan.checkpoint)
    result = quantize(
        loaded, plan.int8, calib_data=plan.calib, config=plan.quantize, on_step=on_step, on_progress=on_progress
    )
    assert not isinstance(result, Skipped)  # reuse=False: never skipped
    return loaded, result


def validate_step(plan: DemoPlan, *, progress: Callable[[int, int], None] | None = None, **kw: Any) -> ValidationReport:
    """Step 2: ``plan.int8`` vs the FP32 checkpoint on the bundled test images, report in ``plan.report``;
    AccuracyError (with ``.report``) when the drop exceeds the plan's max_drop."""
    from edgeconvnext.artifacts import Skipped
    from edgeconvnext.evaluate.validate import validate

    cfg = plan.validate
    rep = validate(
        plan.int8,
        plan.val,
        checkpoint=plan.checkpoint,
        batch=cfg.batch,
        max_drop=cfg.max_drop,
        limit=cfg.limit,
        report=plan.report,
        progress=progress,
    )
    assert not isinstance(rep, Skipped)  # reuse=False: never skipped
    return rep
