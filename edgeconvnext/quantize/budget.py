"""Accuracy budget -> mixed precision: the INT8 placement with the most INT8 layers whose drop on the validation
images stays within ``--max-drop`` (top-1 points vs FP32) or, without labels, ``--max-disagree`` (% of images
whose top-1 differs from FP32).

Input: the all-INT8 Q/DQ model (calibrated once), the FP32 model it came from, the placement, a
:class:`~edgeconvnext.quantize.valset.ValSet`. Output: the model with the chosen layers' Q/DQ dropped, the
updated placement and a :class:`BudgetResult` (every step, the ranking, the cost).

Search (NNCF accuracy control's shape, cheaper): the all-INT8 model on every image (1 pass; FP32 is 1 pass,
once); if over budget, rank the layer groups by reverting each alone on the ranking subset (groups x subset
fraction, :func:`~edgeconvnext.quantize.sensitivity.rank`); then keep the most harmful group in higher
precision, one at a time, each step estimated on the subset (images outside it keep the all-INT8 prediction),
until the estimate is within budget; that placement is re-checked on every image (the images outside the
subset: 1 - f pass, one onnxruntime session serving the estimate and the check) and the search goes on if the
check misses. Cost: groups x f + steps x f + checks x (1 - f) + 2 passes, printed. The last INT8 layer is never
reverted (that would be FP32, not INT8) and ``min_int8_share`` bounds how far the search may go: when the
budget is still missed there, :class:`~edgeconvnext.errors.AccuracyError` (exit 7) and nothing is written.

Usage::

    q2, placement2, result = search(q, fp32_model, placement, val, Budget(max_drop=0.3))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgeconvnext.errors import AccuracyError, UsageError
from edgeconvnext.quantize import sensitivity as sens

if TYPE_CHECKING:
    import onnx

    from edgeconvnext.quantize.policy import Placement
    from edgeconvnext.quantize.valset import ValSet

log = logging.getLogger(__name__)

DEFAULT_MAX_DISAGREE = 0.5


@dataclass
class Budget:
    """``max_drop`` in top-1 points (labelled data) or ``max_disagree`` in % of images (any data)."""

    max_drop: float | None = None
    max_disagree: float | None = None
    subset_size: int = sens.DEFAULT_SUBSET
    min_int8_share: float = 0.0  # fraction of MACs the search may not go below

    def validated(self) -> Budget:
        for opt, v in (("--max-drop", self.max_drop), ("--max-disagree", self.max_disagree)):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise UsageError(f"{opt} must be a finite number of points >= 0, got {v}")
        if self.max_disagree is not None and self.max_disagree > 100:
            raise UsageError(f"--max-disagree is a percentage of images (0-100), got {self.max_disagree}")
        if self.max_drop is None and self.max_disagree is None:
            raise UsageError("an accuracy budget needs --max-drop POINTS (labelled data) or --max-disagree PCT")
        if self.subset_size < 1:
            raise UsageError(f"--subset-size must be at least 1, got {self.subset_size}")
        if not 0.0 <= self.min_int8_share <= 1.0:
            raise UsageError(f"--min-int8-share must be a percentage of MACs in 0-100, got {100 * self.min_int8_share}")
        return self

    def criterion(self, labelled: bool) -> tuple[str, float, str | None]:
        """(metric, limit, note): top-1 drop with labels when --max-drop is given, else disagreement."""
        if labelled and self.max_drop is not None:
            return "top1_drop", self.max_drop, None
        limit = self.max_disagree if self.max_disagree is not None else DEFAULT_MAX_DISAGREE
        note = None
        if not labelled and self.max_drop is not None:
            note = (
                f"--val-data has no labels: the budget is on top-1 disagreement with FP32 <= {limit:g}% "
                "(--max-disagree) instead of --max-drop"
            )
        return "disagreement", limit, note


def value(metric: str, m: sens.Metrics, fp32: sens.Metrics) -> float:
    if metric == "top1_drop":
        d = m.drop(fp32)
        return float("nan") if d is None else d
    return 100.0 - m.agreement


@dataclass
class Step:
    layer: str | None  # kept in higher precision at this step (None: the all-INT8 start)
    value: float  # the budget metric after the step (points or % of images)
    int8_share: float | None
    int8_layers: int
    checked: bool  # measured on every image (else a subset estimate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "value": round(self.value, 4),
            "int8_macs_share": None if self.int8_share is None else round(self.int8_share, 5),
            "int8_layers": self.int8_layers,
            "measured_on": "all images" if self.checked else "ranking subset (estimate)",
        }


@dataclass
class BudgetResult:
    metric: str
    limit: float
    met: bool
    reverted: list[str]
    steps: list[Step]
    final: sens.Metrics
    fp32: sens.Metrics
    ranking: list[sens.GroupScore] = field(default_factory=list)
    subset: int = 0
    groups: int = 0
    cost: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    @property
    def bound_passes(self) -> float:
        """Issue 11's target: groups x subset fraction + 3 FP32 passes."""
        n = self.final.n
        return self.groups * (self.subset / n if n else 0.0) + 3

    def exclude_patterns(self) -> list[str]:
        return list(self.reverted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "limit": self.limit,
            "met": self.met,
            "value": round(value(self.metric, self.final, self.fp32), 4),
            "reverted": list(self.reverted),
            "exclude": self.exclude_patterns(),
            "steps": [s.to_dict() for s in self.steps],
            "fp32": self.fp32.to_dict(),
            "final": self.final.to_dict(),
            "ranking": [s.to_dict() for s in self.ranking],
            "ranking_subset": self.subset,
            "groups": self.groups,
            "cost": {**self.cost, "bound_fp32_passes": round(self.bound_passes, 2)},
            "note": self.note,
        }


def _share(placement: Sequence[Placement], reverted: set[str]) -> float | None:
    total = sum(p.macs or 0 for p in placement)
    if not total or any(p.macs is None for p in placement):
        return None
    return sum(p.macs or 0 for p in placement if p.int8 and p.layer not in reverted) / total


def search(
    q_model: onnx.ModelProto,
    fp32_model: onnx.ModelProto,
    placement: Sequence[Placement],
    val: ValSet,
    budget: Budget,
    *,
    on_step: Callable[[Step], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, list[Placement], BudgetResult]:
    """Find the placement (see the module doc). Raises AccuracyError when the budget cannot be met."""
    budget = budget.validated()
    say = on_message or (lambda s: None)
    metric, limit, note = budget.criterion(val.labelled)
    if note:
        log.warning("%s", note)
    ev = sens.Evaluator(fp32_model.SerializeToString(), val.images, val.labels)
    base_logits = ev.run(q_model)
    base = ev.metrics(base_logits)
    int8 = [p for p in placement if p.int8]
    steps = [Step(None, value(metric, base, ev.fp32), _share(placement, set()), len(int8), True)]
    if on_step:
        on_step(steps[-1])
    groups = sens.groups_of(placement)
    result = BudgetResult(metric, limit, False, [], steps, base, ev.fp32, groups=len(groups), note=note)
    if steps[-1].value <= limit:
        result.met = True
        result.cost = ev.cost()
        return q_model, list(placement), result
    subset = ev.subset(base_logits, budget.subset_size)
    result.subset = len(subset)
    say(f"ranking {len(groups)} layer groups on {len(subset)} of {len(ev)} images (each alone in INT8)")
    ranking = sens.rank(ev, q_model, fp32_model, groups, subset, base_logits)
    result.ranking = ranking
    by_layer = {g.layer: g for g in groups}
    reverted: list[str] = []
    current = q_model
    final = base
    for s in ranking[:-1]:  # the last INT8 layer stays: all reverted is FP32, not INT8
        share = _share(placement, {*reverted, s.layer})
        if share is not None and share < budget.min_int8_share:
            break
        reverted.append(s.layer)
        nodes = [n for layer in reverted for n in by_layer[layer].nodes]
        current = sens.revert(q_model, fp32_model, nodes)
        sess = ev.session(current)  # one session for the estimate and the re-check
        sub_logits = ev.run(sess, subset)
        est = ev.estimate(sub_logits, subset, base_logits, agreement=metric == "disagreement")
        steps.append(Step(s.layer, est, share, len(int8) - len(reverted), False))
        if on_step:
            on_step(steps[-1])
        if steps[-1].value > limit:
            continue
        # the re-check on every image: the subset's logits are this model's already
        final = ev.metrics(ev.run(sess, known=(subset, sub_logits)))
        steps.append(Step(None, value(metric, final, ev.fp32), share, len(int8) - len(reverted), True))
        if on_step:
            on_step(steps[-1])
        if steps[-1].value <= limit:
            result.met = True
            break
    result.reverted = reverted
    result.final = final
    result.cost = ev.cost()
    if not result.met:
        last = steps[-1]
        what = "top-1 drop" if metric == "top1_drop" else "top-1 disagreement with FP32"
        unit = "points" if metric == "top1_drop" else "%"
        floor = (
            f" without going below --min-int8-share {100 * budget.min_int8_share:g}%" if budget.min_int8_share else ""
        )
        raise AccuracyError(
            f"the accuracy budget cannot be met{floor}: with {len(reverted)} of {len(int8)} layers kept in higher "
            f"precision ({last.int8_layers} INT8, {100 * (last.int8_share or 0):.1f}% of MACs) the {what} is "
            f"{last.value:.2f} {unit} > {limit:g}; nothing was written (raise the budget, use --smooth, or "
            "deploy FP16)"
        )
    option = "--max-drop" if metric == "top1_drop" else "--max-disagree"
    rank_of = {layer: i + 1 for i, layer in enumerate(reverted)}
    new_placement = [
        replace(p, int8=False, reason=f"{option}: kept in higher precision (harm rank {rank_of[p.layer]})")
        if p.layer in rank_of
        else replace(p)
        for p in placement
    ]
    return current, new_placement, result
