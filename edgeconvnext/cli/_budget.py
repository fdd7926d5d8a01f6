"""Shared pieces of the accuracy-budget options (``quantize --max-drop``, ``sensitivity``): their checks and
the printed search (the option types are in :mod:`edgeconvnext.cli._options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def budget_from_options(
    recipe: Any,
    val_data: Path | None,
    method: str,
    max_drop: float | None,
    max_disagree: float | None,
    subset_size: int | None,
    min_int8_share: float | None,
    min_val_size: int | None,
    *,
    optional: bool = True,
) -> Any:
    """The accuracy budget asked for by the options and the recipe's ``budget:`` section as a BudgetConfig
    (its ``to_budget()`` checks the values), or None; a recipe budget that does not apply is said in one log
    line. ``optional=False``: --val-data without a budget is refused (quantize's PTQ uses it for nothing else)."""
    from edgeconvnext.quantize.config import resolve_budget

    req = resolve_budget(
        recipe,
        {
            "max_drop": max_drop,
            "max_disagree": max_disagree,
            "subset_size": subset_size,
            "min_int8_share": min_int8_share,
            "min_val_size": min_val_size,
        },
        val_data=val_data is not None,
        method=method,
        optional=optional,
    )
    if req.note:
        import logging

        logging.getLogger("edgeconvnext.budget").warning(req.note)
    return req.config


def load_validation(prog: Any, val_data: Path, loaded: Any, min_val_size: int | None, purpose: str = "a budget") -> Any:
    """The validation images of the budget search or the sensitivity ranking (``--val-data``, at least
    ``--min-val-size``), loaded with the model's preprocessing while ``prog`` (a StepProgress) shows it."""
    from edgeconvnext.quantize.valset import MIN_VAL_IMAGES, load_valset

    prog.step(f"loading validation images from {val_data}")
    return load_valset(
        val_data,
        loaded.preprocess,
        loaded.class_names,
        loaded.num_classes,
        min_size=min_val_size if min_val_size is not None else MIN_VAL_IMAGES,
        on_progress=prog.advance,
        purpose=purpose,
    )


def print_budget(c: Any, b: Any) -> None:
    """The budget search, step by step (the layer kept in higher precision, the metric after, INT8 share)."""
    from rich.markup import escape
    from rich.table import Table

    what = "top-1 drop (pts)" if b.metric == "top1_drop" else "disagreement with FP32 (%)"
    if b.note:
        c.print(f"note: {b.note}", soft_wrap=True, markup=False)
    t = Table(title=f"accuracy budget: {what} <= {b.limit:g}", title_justify="left")
    for col in ("step", "kept in higher precision", what, "INT8 layers", "INT8 MACs", "measured on"):
        t.add_column(col, justify="left" if col.startswith("kept") or col == "measured on" else "right")
    for i, s in enumerate(b.steps):
        share = f"{100 * s.int8_share:.1f}%" if s.int8_share is not None else "-"
        label = escape(s.layer) if s.layer else ("all INT8" if i == 0 else "re-check")
        t.add_row(str(i), label, f"{s.value:.2f}", str(s.int8_layers), share, s.where(b.subset))
    c.print(t)
    cost = b.cost
    c.print(
        f"budget {'met' if b.met else 'missed'}; cost {cost.get('fp32_passes', 0):.1f} FP32-forward-passes over "
        f"the {b.final.n} validation images ({cost.get('image_passes', 0):.2f} image-passes; target "
        f"{b.bound_passes:.2f} = {b.groups} groups x {b.subset}/{b.final.n} + 3)",
        soft_wrap=True,
        markup=False,
    )
    if b.reverted:
        c.print("reuse: " + " ".join(f"--exclude '{x}'" for x in b.exclude_patterns()), soft_wrap=True, markup=False)
