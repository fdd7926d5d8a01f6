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


#: validation images the sensitivity ranking runs on (the hardest; NNCF's accuracy control ranks on 300), and
#: the fewest the budget accepts (below 100, one image is more than 1 point)
DEFAULT_SUBSET = 300
MIN_VAL_IMAGES = 100

#: BudgetConfig keys -> the options that set them (quantize, run, sensitivity)
BUDGET_OPTIONS = {
    "max_drop": "--max-drop",
    "max_disagree": "--max-disagree",
    "subset_size": "--subset-size",
    "min_int8_share": "--min-int8-share",
    "min_val_size": "--min-val-size",
}


@dataclass
class BudgetConfig:
    """The accuracy-budget search of PTQ (CLI: ``--max-drop`` ... with ``--val-data``; recipe: ``budget:``).

    The budget is measured on validation images, which a recipe cannot carry: a recipe's ``budget:`` applies
    to a command given ``--val-data`` (with ``--method ptq``), and the command says so when it does not.
    """

    max_drop: float | None = setting(
        None, help="top-1 points the INT8 model may lose against FP32 on --val-data (labelled)", minimum=0
    )
    max_disagree: float | None = setting(
        None, help="% of images whose top-1 may differ from FP32 (any --val-data)", minimum=0, maximum=100
    )
    subset_size: int = setting(DEFAULT_SUBSET, help="validation images the layer ranking runs on", minimum=1)
    min_int8_share: float = setting(0.0, help="% of MACs the search keeps in INT8 at least", minimum=0, maximum=100)
    min_val_size: int = setting(MIN_VAL_IMAGES, help="refuse fewer usable validation images", minimum=1)

    def to_budget(self) -> Any:
        """The :class:`edgeconvnext.quantize.budget.Budget` searched with (checked: a UsageError names the option)."""
        if self.min_val_size < 1:
            raise UsageError(f"--min-val-size must be at least 1, got {self.min_val_size}")
        from edgeconvnext.quantize.budget import Budget

        return Budget(
            max_drop=self.max_drop,
            max_disagree=self.max_disagree,
            subset_size=self.subset_size,
            min_int8_share=self.min_int8_share / 100.0,
        ).validated()


@dataclass
class BudgetRequest:
    """What :func:`resolve_budget` decided: the settings (None: no search), where each came from, and a note
    when the recipe's ``budget:`` section was not applied (said to the user, never silently dropped)."""

    config: BudgetConfig | None
    sources: dict[str, str]
    note: str | None = None


LIMITS = frozenset({"max_drop", "max_disagree"})  # the budget's limits (BudgetConfig keys)


def resolve_budget(
    recipe: Recipe | None, overrides: dict[str, Any], *, val_data: bool, method: str, optional: bool = True
) -> BudgetRequest:
    """defaults < the recipe's ``budget:`` section < the options (``overrides``: BudgetConfig keys, None = not
    given), for a command with or without ``--val-data`` and with ``method``.

    Refused (UsageError naming the options): a budget option with ``--method qat`` or without ``--val-data``;
    a budget option without a limit (``--max-drop``/``--max-disagree``). The recipe's section alone is not
    applied then, with a note. A limit among the options replaces the recipe's limits (``--max-disagree 1``
    over a recipe's ``max_drop: 0.3`` is a disagreement budget, not both). ``optional=False``: ``--val-data``
    is only for a budget (quantize's PTQ), so neither a limit given nor one in the recipe is an error.
    """
    unknown = sorted(set(overrides) - set(BUDGET_OPTIONS))
    if unknown:
        raise UsageError(f"unknown accuracy-budget setting(s) {unknown}; known: {', '.join(BUDGET_OPTIONS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    names = ", ".join(BUDGET_OPTIONS[k] for k in BUDGET_OPTIONS if k in given)
    section = dict(recipe.sections.get("budget") or {}) if recipe is not None else {}
    shown = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in section.items())
    where = f"recipe {recipe.name}: budget ({shown})" if recipe is not None else ""
    if method == "qat":
        if given:
            raise UsageError(
                f"--method qat and {names} cannot be combined: the accuracy-budget search keeps layers of the "
                "post-training INT8 graph in higher precision, QAT trains every INT8 layer instead; use --method "
                f"ptq with {names}, or --method qat without it"
            )
        return BudgetRequest(None, {}, f"{where} is for --method ptq: not applied to QAT" if section else None)
    if not val_data:
        if given:
            raise UsageError(f"{names} needs --val-data DIR: the accuracy budget is measured on validation images")
        note = f"{where} is measured on validation images: not applied without --val-data DIR" if section else None
        return BudgetRequest(None, {}, note)
    values: dict[str, Any] = {k: s.default for k, s in specs(BudgetConfig).items()}
    sources = {k: "default" for k in values}
    for k, v in {**section, **given}.items():
        values[k] = v
        sources[k] = "cli" if k in given else "recipe"
    if given.keys() & LIMITS:  # the options' limit is the budget asked for: the recipe's other one is not added
        for k in LIMITS - given.keys():
            values[k], sources[k] = None, "cli"
    if values["max_drop"] is None and values["max_disagree"] is None:
        if given:
            raise UsageError(f"{names}: only with an accuracy budget; add --max-drop POINTS (or --max-disagree PCT)")
        if not optional:
            raise UsageError("--val-data is for an accuracy budget: add --max-drop POINTS (or --max-disagree PCT)")
        note = f"{where} sets no max_drop or max_disagree: no budget search" if section else None
        return BudgetRequest(None, {}, note)
    return BudgetRequest(BudgetConfig(**values), sources)
