"""The quantize stage's settings: one dataclass, one source of defaults, the choices as Enums shared with
the CLI's help, and :func:`resolve` (defaults < recipe ``quantize:`` section < explicit overrides).

Imports nothing heavy (the CLI reads the Enums at ``--help`` time).

Usage::

    cfg = resolve(load_recipe("convnextv2_nano-orin_nano"), {"calib_size": 256})
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from edgeconvnext.config import StrEnum, as_dict, check_value, resolve_config, setting, specs
from edgeconvnext.data import DEFAULT_SIZE, MIN_IMAGES
from edgeconvnext.errors import UsageError

if TYPE_CHECKING:
    from edgeconvnext.recipes import Recipe


class Method(StrEnum):
    PTQ = "ptq"
    QAT = "qat"


class Backend(StrEnum):
    ORT = "ort"
    NNCF = "nncf"


class CalibMethod(StrEnum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class Policy(StrEnum):
    CONVNEXT = "convnext"
    ALL = "all"


#: backend -> (python module it needs, calibration methods it can honour). Arguments are checked against it.
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    Backend.ORT: ("onnxruntime", (CalibMethod.MINMAX, CalibMethod.PERCENTILE, CalibMethod.ENTROPY)),
    Backend.NNCF: ("nncf", (CalibMethod.MINMAX, CalibMethod.MSE)),
}
CALIB_METHODS = tuple(m.value for m in CalibMethod)
METHODS = tuple(m.value for m in Method)
#: onnxruntime is the default: about 2x faster than NNCF's ONNX backend on calibration (KNOWLEDGE.md)
DEFAULT_BACKEND = Backend.ORT


@dataclass
class QuantizeConfig:
    """Options of the quantize stage (CLI: ``edgeconvnext quantize --help``; recipe: ``quantize:``)."""

    method: Method = setting(Method.PTQ, help="ptq (post-training quantization) or qat (quantization-aware training)")
    backend: Backend = setting(DEFAULT_BACKEND, help="quantizer: ort (onnxruntime quantize_static) or nncf")
    calib_method: CalibMethod = setting(
        CalibMethod.MINMAX, help="activation range estimator (ort: minmax/percentile/entropy; nncf: minmax/mse)"
    )
    policy: Policy = setting(
        Policy.CONVNEXT,
        help="convnext: INT8 MLPs and downsample convs, stem/depthwise/classifier in float; all: every conv/matmul",
    )
    exclude: tuple[str, ...] = setting((), help="extra layers kept out of INT8 (fnmatch patterns on module names)")
    calib_size: int = setting(DEFAULT_SIZE, help="calibration images (>= ~500 for CNNs)", minimum=1)
    seed: int = setting(0, help="seed choosing the calibration subset")
    min_calib_size: int = setting(MIN_IMAGES, help="refuse fewer calibration images than this", minimum=1)
    keep_fp32: bool = setting(
        True,
        help="keep the FP32 ONNX the INT8 one was made from (validate --baseline)",
        option="--fp32-baseline",
    )
    smooth: bool = setting(
        True,
        help="fold per-channel equalisation into LayerNorm affine + the next layer's weights (outlier channels)",
        option="--smooth",
    )

    def validated(self) -> QuantizeConfig:
        """A normalised copy; every option that cannot be honoured is a UsageError naming it."""
        s = specs(QuantizeConfig)
        norm = {k: check_value(s[k].label, s[k], getattr(self, k)) for k in s}
        cfg = replace(self, **norm)
        supported = BACKENDS[cfg.backend][1]
        if cfg.calib_method not in supported:
            cm = cfg.calib_method
            others = [b for b, (_, ms) in BACKENDS.items() if cm in ms]
            raise UsageError(
                f"--calib-method {cm} is not available with --backend {cfg.backend} (it offers "
                f"{', '.join(supported)}): use --calib-method {' / '.join(supported)}"
                + (f", or --backend {others[0]} for {cm}" if others else "")
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


def resolve(recipe: Recipe | None, overrides: dict[str, Any] | None = None) -> QuantizeConfig:
    """defaults < the recipe's ``quantize:`` section < ``overrides`` (None values: not given), validated."""
    return resolve_sources(recipe, overrides)[0]


def resolve_sources(
    recipe: Recipe | None, overrides: dict[str, Any] | None = None
) -> tuple[QuantizeConfig, dict[str, str]]:
    """:func:`resolve` and, per key, where its value came from ("default", "recipe", "cli")."""
    section = recipe.sections.get("quantize", {}) if recipe is not None else {}
    cfg, sources = resolve_config(QuantizeConfig, "quantize", section, overrides)
    return cfg.validated(), sources
