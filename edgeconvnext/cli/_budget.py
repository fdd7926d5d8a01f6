"""Shared pieces of the accuracy-budget options (``quantize --max-drop``, ``sensitivity``): their checks and
the printed search (the option types are in :mod:`edgeconvnext.cli._options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def budget_from_options(
    val_data: Path | None,
    max_drop: float | None,
    max_disagree: float | None,
    subset_size: int | None,
    min_int8_share: float | None,
    min_val_size: int | None,
) -> Any:
    """The accuracy budget asked for (checked now, before any heavy work), or None."""
    from edgeconvnext.errors import UsageError

    budget_opts = {"--max-drop": max_drop, "--max-disagree": max_disagree}
    others = {"--subset-size": subset_size, "--min-int8-share": min_int8_share, "--min-val-size": min_val_size}
    if val_data is None:
        given = [k for k, v in {**budget_opts, **others}.items() if v is not None]
        if given:
            raise UsageError(f"{given[0]} needs --val-data DIR: the budget is measured on validation images")
        return None
    if max_drop is None and max_disagree is None:
        raise UsageError("--val-data is for an accuracy budget: add --max-drop POINTS (or --max-disagree PCT)")
    from edgeconvnext.quantize.budget import Budget
    from edgeconvnext.quantize.sensitivity import DEFAULT_SUBSET

    if min_val_size is not None and min_val_size < 1:
        raise UsageError(f"--min-val-size must be at least 1, got {min_val_size}")
    return Budget(
        max_drop=max_drop,
        max_disagree=max_disagree,
        subset_size=subset_size if subset_size is not None else DEFAULT_SUBSET,
        min_int8_share=(min_int8_share or 0.0) / 100.0,
    ).validated()


def load_validation(prog: Any, val_data: Path, loaded: Any, min_val_size: int | None) -> Any:
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
