"""``edgeconvnext sensitivity``: which INT8 layer groups cost the accuracy (see edgeconvnext.quantize.sensitivity)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconvnext.cli._budget import load_validation
from edgeconvnext.cli._common import STATE, StepProgress, console, done, live_progress
from edgeconvnext.cli._options import (
    BackendOpt,
    CalibDataOpt,
    CalibMethodOpt,
    CalibSizeOpt,
    CheckpointOpt,
    EmaOpt,
    ExcludeOpt,
    ImgSizeOpt,
    JsonResultOpt,
    ManifestOpt,
    MinCalibOpt,
    MinValOpt,
    ModelOpt,
    NumClassesOpt,
    PolicyOpt,
    SeedOpt,
    SmoothOpt,
    SubsetOpt,
    UnsafeOpt,
    ptq_values,
)

ValOpt = Annotated[
    Path,
    typer.Option(
        "--val-data",
        show_default=False,
        help="Validation images: labelled (class folders or a labels file) or a plain folder (agreement only).",
    ),
]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Write a PNG bar chart of the ranking (needs the 'plot' extra).")
]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write the ranking as Markdown.")]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="isolate (default): each group alone in INT8; revert: each group reverted alone from all-INT8.",
    ),
]
JsonFileOpt = Annotated[Path | None, typer.Option("--json-file", help="Also write the JSON result to this file.")]


def sensitivity_cmd(
    ctx: typer.Context,
    val_data: ValOpt,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    calib_data: CalibDataOpt = None,
    calib_size: CalibSizeOpt = None,
    seed: SeedOpt = None,
    backend: BackendOpt = None,
    calib_method: CalibMethodOpt = None,
    policy: PolicyOpt = None,
    exclude: ExcludeOpt = None,
    smooth: SmoothOpt = None,
    img_size: ImgSizeOpt = None,
    calib_manifest: ManifestOpt = None,
    min_calib_size: MinCalibOpt = None,
    min_val_size: MinValOpt = None,
    subset_size: SubsetOpt = None,
    mode: ModeOpt = "isolate",
    num_classes: NumClassesOpt = None,
    allow_unsafe_pickle: UnsafeOpt = False,
    ema: EmaOpt = False,
    plot: PlotOpt = None,
    report: ReportOpt = None,
    json_out: JsonResultOpt = False,
    json_file: JsonFileOpt = None,
) -> None:
    """Rank the INT8 layer groups by harm on validation images (each alone in INT8; calibrated once)."""
    from edgeconvnext.artifacts import atomic_output, check_output
    from edgeconvnext.errors import BackendMissing, UsageError
    from edgeconvnext.quantize.ptq import prepare
    from edgeconvnext.quantize.sensitivity import DEFAULT_SUBSET, check_mode
    from edgeconvnext.quantize.valset import check_root

    cfg = prepare(
        None,
        ptq_values(ctx.params),
        calib_data=calib_data,
        calib_manifest=calib_manifest,
    )
    mode = check_mode(mode)
    check_root(val_data)  # before the model load: a typo costs no wait
    if min_val_size is not None and min_val_size < 1:
        raise UsageError(f"--min-val-size must be at least 1, got {min_val_size}")
    if subset_size is not None and subset_size < 1:
        raise UsageError(f"--subset-size must be at least 1, got {subset_size}")
    inputs: dict[str, str | Path | None] = {
        "--checkpoint": checkpoint,
        "--val-data": val_data,
        "--calib-data": calib_data,
        "--calib-manifest": calib_manifest,
    }
    for opt, path, suffix in (("--plot", plot, ".png"), ("--report", report, ".md"), ("--json-file", json_file, None)):
        if path is not None:
            check_output(path, opt, inputs, suffix=suffix, report=True, example_suffix=".json")
            inputs[opt] = path  # the next output may not be this one either
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BackendMissing(
                "--plot needs matplotlib, which is not installed: pip install 'edgeconvnext[plot]' (or drop --plot)"
            ) from None

    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize.sensitivity import analyse, plot_png

    with StepProgress(enabled=live_progress() and not json_out) as prog:
        prog.step("loading the model")
        loaded = load_model(
            model, checkpoint, num_classes=num_classes, img_size=img_size, allow_unsafe=allow_unsafe_pickle, ema=ema
        )
        val = load_validation(prog, val_data, loaded, min_val_size, purpose="a sensitivity ranking")
        result = analyse(
            loaded,
            val,
            cfg,
            calib_data=calib_data,
            calib_manifest=calib_manifest,
            subset_size=subset_size if subset_size is not None else DEFAULT_SUBSET,
            mode=mode,
            on_step=prog.step,
            on_progress=prog.advance,
        )
        import json

        data = result.to_dict()
        with (
            _maybe(plot, atomic_output) as t_plot,
            _maybe(report, atomic_output) as t_rep,
            _maybe(json_file, atomic_output) as t_json,
        ):
            if t_plot is not None:
                prog.step(f"plotting to {plot}")
                plot_png(result, t_plot)
            if t_rep is not None:
                t_rep.write_text(result.markdown())
            if t_json is not None:
                t_json.write_text(json.dumps(data, indent=2) + "\n")
    if json_out:
        print(json.dumps(data, indent=2))
        return
    _print(result)
    written = [str(p) for p in (plot, report, json_file) if p is not None]
    done(
        f"{result.arch}: {len(result.scores)} groups ranked in {result.seconds:.1f} s"
        + (f"; wrote {', '.join(written)}" if written else "")
    )


def _print(result: Any) -> None:
    if STATE.quiet:
        return
    from rich.markup import escape
    from rich.table import Table

    c = console()
    c.print(result.headline(), soft_wrap=True, markup=False)
    from rich import box

    t = Table(
        title="layer groups, most harmful first ("
        + ("each alone in INT8" if result.mode == "isolate" else "each reverted alone from all-INT8")
        + ")",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    # harm: top-1 points (agreement points without labels) lost alone in INT8 (isolate) / bought back (revert)
    cols = ["#", "layer", "MACs", "drop", "harm", "agree", "KL", "min cos"]
    for col in cols:
        t.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for r in result.rows():
        t.add_row(
            str(r["rank"]), escape(r["layer"]), r["macs"], r["drop"], r["harm"], r["agreement"], r["kl"], r["cos_min"]
        )
    c.print(t)
    c.print(result.cost_line(), soft_wrap=True, markup=False)
    for n in result.notes:
        c.print(f"note: {n}", soft_wrap=True, markup=False)


class _maybe:  # noqa: N801 - used like a context-manager function
    """``factory(path)`` when a path is given, else a context yielding None."""

    def __init__(self, path: Path | None, factory: Any) -> None:
        self._cm = factory(path) if path is not None else None

    def __enter__(self) -> Path | None:
        return self._cm.__enter__() if self._cm is not None else None

    def __exit__(self, *exc: object) -> Any:
        return self._cm.__exit__(*exc) if self._cm is not None else None
