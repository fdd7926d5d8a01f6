"""The export stage's settings: :class:`ExportConfig` (one source of defaults, which the CLI's options
show) and :func:`resolve` (defaults < recipe ``export:`` section < explicit overrides). Imports nothing
heavy.

Usage::

    cfg = resolve(None, {"precision": "fp16", "batch": "8"})   # ExportConfig(precision=FP16, opset=17, batch=8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeconvnext.config import StrEnum, as_dict, resolve_config, setting

if TYPE_CHECKING:
    from edgeconvnext.recipes import Recipe


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"


@dataclass
class ExportConfig:
    """Options of the export stage (CLI: ``edgeconvnext export --help``; recipe: ``export:``)."""

    precision: Precision = setting(Precision.FP32, help="fp32 or fp16 (fp16 keeps float32 input/output)")
    opset: int = setting(17, help="ONNX opset, 17..20 (17+ keeps LayerNorm one op)")
    batch: str | int | None = setting("dynamic", help="'dynamic' or a fixed batch size N")

    @property
    def batch_size(self) -> int | None:
        """The fixed batch, or None for a dynamic batch."""
        from edgeconvnext.export.onnx_export import parse_batch

        return parse_batch(self.batch)

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


def resolve(recipe: Recipe | None, overrides: dict[str, Any] | None = None) -> ExportConfig:
    """defaults < the recipe's ``export:`` section < ``overrides`` (None: not given); every value that
    cannot be honoured is refused naming its option (``--precision int8`` says to run quantize)."""
    from edgeconvnext.export.onnx_export import check_options

    over = dict(overrides or {})
    section = dict(recipe.sections.get("export", {})) if recipe is not None else {}
    for values in (section, over):  # the export's own precision message (int8, near misses) first
        if isinstance(values.get("precision"), str):
            from edgeconvnext.export.onnx_export import check_precision

            values["precision"] = check_precision(values["precision"])
    cfg, _ = resolve_config(ExportConfig, "export", section, over)
    _, _, batch = check_options(cfg.precision, cfg.opset, cfg.batch)
    return ExportConfig(precision=cfg.precision, opset=cfg.opset, batch="dynamic" if batch is None else batch)
