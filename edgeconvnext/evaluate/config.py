"""The validate stage's settings: :class:`ValidateConfig` (one source of defaults) and :func:`resolve`
(defaults < recipe ``validate:`` section < explicit overrides). Imports nothing heavy.

The latency settings default to None: the device picks them (5 warm-up + 30 timed iterations and
batches 1,8 on CPU; 50 + 200 and 1,32 on CUDA; see :mod:`edgeconvnext.evaluate.validate`). A recipe's
latency settings apply when the latency mode is on (``--latency``); given as options without it they
are refused by the CLI.

Usage::

    cfg = resolve(load_recipe("convnextv2_nano-orin_nano"), {"max_drop": 1.0})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeconvnext.config import as_dict, resolve_config, setting

if TYPE_CHECKING:
    from edgeconvnext.evaluate.validate import LatencyOptions
    from edgeconvnext.recipes import Recipe

#: the settings that belong to the latency mode
LATENCY_KEYS = ("latency_batch", "warmup", "iters", "cuda_graph")


@dataclass
class ValidateConfig:
    """Options of the validate stage (CLI: ``edgeconvnext validate --help``; recipe: ``validate:``)."""

    batch: int = setting(32, help="images per inference batch for accuracy", minimum=1)
    max_drop: float | None = setting(None, help="fail when top-1 drops more points than this vs FP32", minimum=0)
    limit: int | None = setting(None, help="evaluate a seeded subset of N images (None: all)", minimum=1)
    latency_batch: str | int | None = setting(
        None, help="batch sizes timed, e.g. 1 or '1,32' (None: 1,8 on CPU, 1,32 on CUDA)"
    )
    warmup: int | None = setting(None, help="untimed warm-up iterations (None: 5 on CPU, 50 on CUDA)", minimum=0)
    iters: int | None = setting(None, help="timed iterations (None: 30 on CPU, 200 on CUDA)", minimum=1)
    cuda_graph: bool | None = setting(
        None, help="replay as a CUDA graph when timing (None: where the runner can)", option="--cuda-graph"
    )

    def latency_options(self) -> LatencyOptions:
        """The latency mode's settings."""
        from edgeconvnext.evaluate.validate import LatencyOptions, parse_batches

        return LatencyOptions(
            batches=parse_batches(str(self.latency_batch)) if self.latency_batch is not None else None,
            warmup=self.warmup,
            iters=self.iters,
            cuda_graph=self.cuda_graph,
        )

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


def resolve(recipe: Recipe | None, overrides: dict[str, Any] | None = None) -> ValidateConfig:
    """defaults < the recipe's ``validate:`` section < ``overrides`` (None: not given)."""
    return resolve_sources(recipe, overrides)[0]


def resolve_sources(
    recipe: Recipe | None, overrides: dict[str, Any] | None = None, labels: dict[str, str] | None = None
) -> tuple[ValidateConfig, dict[str, str]]:
    """:func:`resolve` and each key's source; ``labels``: option names that differ from validate's own."""
    section = recipe.sections.get("validate", {}) if recipe is not None else {}
    cfg, sources = resolve_config(ValidateConfig, "validate", section, overrides, labels=labels)
    if cfg.latency_batch is not None:
        cfg.latency_options()  # '1,x' is refused now, naming --latency-batch
    return cfg, sources
