"""The build-engine stage's settings: :class:`BuildRequest` (one source of defaults) and :func:`resolve`
(defaults < recipe ``build:`` section < explicit overrides). Imports nothing heavy (no TensorRT, no torch).

Usage::

    req, sources = resolve_sources(load_recipe("convnextv2_nano-orin_nano"), {"onnx": path, "batch": "1,8,32"})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.config import as_dict, resolve_config, setting

if TYPE_CHECKING:
    from edgeconvnext.recipes import Recipe

DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_OPT_LEVEL = 3
OPT_LEVELS = range(0, 6)


@dataclass
class BuildRequest:
    """What the user asked for (``build-engine`` options; recipe: ``build:``)."""

    onnx: Path = setting(help="the ONNX to build", recipe=False)
    output: Path | None = setting(None, help="engine file (None: beside the ONNX, .engine)", recipe=False)
    fp16: bool = setting(False, help="run the non-INT8 layers in FP16 (converts an FP32 ONNX)")
    batch: str | int | None = setting(None, help="N or MIN,OPT,MAX (None: the ONNX's batch, or 1)")
    workspace_mib: int = setting(
        DEFAULT_WORKSPACE_MIB, help="builder workspace limit in MiB", minimum=1, option="--workspace"
    )
    timing_cache: Path | None = setting(None, help="timing cache file reused and saved between builds")
    opt_level: int = setting(DEFAULT_OPT_LEVEL, help="builder optimization level", minimum=0, maximum=5)
    dla_core: int | None = setting(None, help="DLA core (always refused for ConvNeXt)")
    trtexec: Path | None = setting(None, help="build with this trtexec instead of the Python bindings", recipe=False)

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


def resolve_sources(recipe: Recipe | None, overrides: dict[str, Any]) -> tuple[BuildRequest, dict[str, str]]:
    """defaults < the recipe's ``build:`` section < ``overrides`` (None: not given; ``onnx`` is required).
    Returns the request and, per recipe key, where its value came from."""
    section = recipe.sections.get("build", {}) if recipe is not None else {}
    return resolve_config(BuildRequest, "build", section, overrides)


def resolve(recipe: Recipe | None, overrides: dict[str, Any]) -> BuildRequest:
    return resolve_sources(recipe, overrides)[0]
