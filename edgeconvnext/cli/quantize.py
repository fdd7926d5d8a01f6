"""``edgeconvnext quantize``: checkpoint + calibration images -> INT8 Q/DQ ONNX for TensorRT
(see :mod:`edgeconvnext.quantize.ptq`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconvnext.cli._budget import budget_from_options, load_validation, print_budget
from edgeconvnext.cli._common import STATE, StepProgress, console, done, human_size, live_progress, print_skipped
from edgeconvnext.cli._options import (
    BackendOpt,
    CalibDataOpt,
    CalibMethodOpt,
    CalibSizeOpt,
    CheckpointOpt,
    EmaOpt,
    ExcludeOpt,
    ForceOpt,
    ImgSizeOpt,
    JsonResultOpt,
    ManifestOpt,
    MaxDisagreeOpt,
    MaxDropOpt,
    MinCalibOpt,
    MinShareOpt,
    MinValOpt,
    ModelOpt,
    NumClassesOpt,
    PolicyOpt,
    RecipeOpt,
    SeedOpt,
    SmoothOpt,
    SubsetOpt,
    UnsafeOpt,
    ptq_values,
)
from edgeconvnext.cli.qat import (
    AugmentOpt,
    BatchSizeOpt,
    ClipOpt,
    DeviceOpt,
    DistillOpt,
    EmaDecayOpt,
    EpochsOpt,
    HflipOpt,
    LabelsOpt,
    LogitMseOpt,
    LrOpt,
    OptimizerOpt,
    ResumeOpt,
    ScalesOpt,
    StepsOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrainDataOpt,
    ValDataOpt,
    WarmupOpt,
    WorkersOpt,
)

OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        show_default=False,
        help="INT8 ONNX to write; OUT.onnx.json, OUT.calib.json and OUT.fp32.onnx go beside it.",
    ),
]
MethodOpt = Annotated[
    str | None,
    typer.Option("--method", help="ptq (post-training quantization, default) or qat (quantization-aware training)."),
]
Fp32Opt = Annotated[
    bool | None,
    typer.Option(
        "--fp32-baseline/--no-fp32-baseline",
        help="Keep the FP32 ONNX the INT8 model was made from as OUT.fp32.onnx (for validate --baseline; default on).",
    ),
]


def quantize_cmd(
    ctx: typer.Context,
    output: OutputOpt,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    calib_data: CalibDataOpt = None,
    calib_size: CalibSizeOpt = None,
    seed: SeedOpt = None,
    method: MethodOpt = None,
    backend: BackendOpt = None,
    calib_method: CalibMethodOpt = None,
    policy: PolicyOpt = None,
    exclude: ExcludeOpt = None,
    img_size: ImgSizeOpt = None,
    calib_manifest: ManifestOpt = None,
    min_calib_size: MinCalibOpt = None,
    fp32_baseline: Fp32Opt = None,
    smooth: SmoothOpt = None,
    max_drop: MaxDropOpt = None,
    max_disagree: MaxDisagreeOpt = None,
    min_val_size: MinValOpt = None,
    subset_size: SubsetOpt = None,
    min_int8_share: MinShareOpt = None,
    num_classes: NumClassesOpt = None,
    allow_unsafe_pickle: UnsafeOpt = False,
    ema: EmaOpt = False,
    json_out: JsonResultOpt = False,
    recipe: RecipeOpt = None,
    train_data: TrainDataOpt = None,
    val_data: ValDataOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    steps: StepsOpt = None,
    distill_weight: DistillOpt = None,
    temperature: TemperatureOpt = None,
    logit_mse: LogitMseOpt = None,
    optimizer: OptimizerOpt = None,
    warmup_steps: WarmupOpt = None,
    clip_grad: ClipOpt = None,
    ema_decay: EmaDecayOpt = None,
    scales: ScalesOpt = None,
    labels: LabelsOpt = None,
    augment: AugmentOpt = None,
    hflip: HflipOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Quantize a checkpoint to INT8 ONNX with explicit Q/DQ that follows TensorRT's rules, calibrated on images."""
    from edgeconvnext.quantize.ptq import prepare
    from edgeconvnext.recipes import load_recipe

    # defaults < recipe < options given here; every option that cannot be honoured is refused before the
    # (slow) checkpoint load
    rec = load_recipe(recipe) if recipe else None
    cfg = prepare(
        rec,
        {"method": method, **ptq_values(ctx.params), "keep_fp32": fp32_baseline},
        calib_data=calib_data,
        calib_manifest=calib_manifest,
    )
    recipe_img_size = None  # the recipe's size, when --img-size does not set one: checked against the checkpoint
    if rec is not None:
        model = rec.model_to_load(model, checkpoint)
        if img_size is None and rec.img_size is not None:
            recipe_img_size = rec.img_size
            if checkpoint is None:  # random weights: nothing was trained at another size
                img_size = rec.img_size
    from edgeconvnext.cli.qat import QAT_FLAGS, qat_given, run_qat
    from edgeconvnext.errors import UsageError

    qat_values = {k: ctx.params[k] for k in QAT_FLAGS}  # the QAT options, as given (None: not given)

    # the accuracy budget: the options over the recipe's budget: section; refused with qat or without --val-data
    budget_cfg = budget_from_options(
        rec, val_data, cfg.method, max_drop, max_disagree, subset_size, min_int8_share, min_val_size, optional=False
    )
    budget = budget_cfg.to_budget() if budget_cfg is not None else None
    if cfg.method != "qat":
        # --val-data is shared: qat validates each epoch, ptq measures the accuracy budget on it
        only_qat = [o for o in qat_given(qat_values) if o != "--val-data"]
        if only_qat:
            from edgeconvnext.quantize.qat_config import only_with_qat

            raise only_with_qat(only_qat)

    from edgeconvnext.artifacts import check_output
    from edgeconvnext.models.checkpoint import load_model

    check_output(output, "--output", {"--checkpoint": checkpoint}, suffix=".onnx")
    if cfg.method == "qat":
        img_size = img_size or recipe_img_size
        run_qat(
            output=output,
            model=model,
            checkpoint=checkpoint,
            calib_data=calib_data,
            calib_manifest=calib_manifest,
            quant_cfg=cfg,
            qat_values=qat_values,
            load_kwargs={
                "num_classes": num_classes,
                "img_size": img_size,
                "allow_unsafe": allow_unsafe_pickle,
                "ema": ema,
            },
            json_out=json_out,
            recipe=rec,
        )
        return
    from edgeconvnext.artifacts import Skipped
    from edgeconvnext.quantize import quantize

    with StepProgress(enabled=live_progress() and not json_out) as prog:
        prog.step("loading the model")
        loaded = load_model(
            model, checkpoint, num_classes=num_classes, img_size=img_size, allow_unsafe=allow_unsafe_pickle, ema=ema
        )
        if rec is not None:
            rec.check_loaded(loaded.arch.name, checkpoint)
        if checkpoint is not None and recipe_img_size is not None and recipe_img_size != loaded.preprocess.img_size:
            have = loaded.preprocess.img_size
            raise UsageError(
                f"--recipe {recipe} quantizes at {recipe_img_size} px but {checkpoint} is for {have} px inputs "
                f"(crop_pct {loaded.preprocess.crop_pct}): pass --img-size {recipe_img_size} to use the recipe's size "
                f"anyway, or --img-size {have} to keep the checkpoint's"
            )
        val = None
        if budget is not None and val_data is not None:
            val = load_validation(prog, val_data, loaded, budget_cfg.min_val_size)
        result = quantize(
            loaded,
            output,
            calib_data=calib_data,
            config=cfg,
            calib_manifest=calib_manifest,
            on_step=prog.step,
            on_progress=prog.advance,
            val=val,
            budget=budget,
            reuse=not force,
        )
    if json_out and isinstance(result, Skipped):
        import json

        print(json.dumps({"output": str(result.path), "skipped": True, "message": result.line()}))
        return
    if isinstance(result, Skipped):
        return print_skipped(result)
    _print(result, loaded, json_out)


def _print(result: Any, loaded: Any, json_out: bool) -> None:
    import json

    c = console()
    if json_out:
        print(
            json.dumps(
                {
                    "output": str(result.path),
                    "sidecar": str(result.sidecar),
                    "manifest": str(result.manifest),
                    "fp32_baseline": str(result.fp32_path) if result.fp32_path else None,
                    "bytes": result.size_bytes,
                    "int8_macs_share": result.int8_macs_share,
                    "placement": result.table(),
                    "calibration": {
                        "images": result.calib_images,
                        "skipped": result.calib_skipped,
                        "seconds": round(result.calib_seconds, 3),
                    },
                    "agreement_vs_fp32": result.agreement,
                    "smoothing": result.smoothing,
                    "budget": result.budget.to_dict() if result.budget else None,
                    "peak_rss_mb": round(result.peak_rss_mb, 1),
                    "trt_check": result.report.to_dict(),
                    "seconds": round(result.seconds, 3),
                },
                indent=2,
                default=str,
            )
        )
        return
    if not STATE.quiet:
        title = (
            f"INT8 placement ({result.config.policy} policy"
            + (f", --exclude {' '.join(result.config.exclude)}" if result.config.exclude else "")
            + ")"
        )
        c.print(placement_table(result.table(), title))
        if result.smoothing is not None:
            sm = result.smoothing
            c.print(
                f"smoothing: {sm['pairs']} LayerNorm -> layer pairs equalised (alpha {sm['alpha']}, "
                f"{sm['statistics']}); worst channel range max/median {sm['outlier_ratio_before_max']:.1f} "
                f"-> {sm['outlier_ratio_after_max']:.1f}",
                soft_wrap=True,
                markup=False,
            )
        else:
            c.print("smoothing: off (--no-smooth)", soft_wrap=True, markup=False)
        if result.budget is not None:
            print_budget(c, result.budget)
        for note in result.notes:
            c.print(f"note: {note}", soft_wrap=True, markup=False)
        share = result.int8_macs_share
        a = result.agreement
        c.print(
            f"INT8 on {sum(p.int8 for p in result.placement)}/{len(result.placement)} layers"
            + (f", {share:.1%} of MACs" if share is not None else "")
            + f"; calibration {result.calib_images} images"
            + (f" ({result.calib_skipped} unreadable skipped)" if result.calib_skipped else "")
            + f" in {result.calib_seconds:.1f} s, peak RSS {result.peak_rss_mb:.0f} MiB",
            soft_wrap=True,
        )
        if a:
            c.print(
                f"vs FP32 on {a['images']} calibration images: top-1 agreement {a['top1_agreement']:.1%}, "
                f"cosine {a['cosine_mean']:.4f} (min {a['cosine_min']:.4f})"
                + (
                    " (INT8 emulated in float: this CPU's int8 kernels may saturate)"
                    if a.get("int8_math") == "emulated"
                    else ""
                ),
                soft_wrap=True,
            )
        c.print(f"TensorRT rules: {result.report.summary()}", soft_wrap=True, markup=False)
        extra = [result.manifest.name] + ([result.fp32_path.name] if result.fp32_path else [])
        c.print(f"beside it: {result.sidecar.name}, {', '.join(extra)}", soft_wrap=True, markup=False)
    from rich.markup import escape  # a path like run[2].onnx is data, not markup

    cfg = result.config
    done(
        escape(
            f"{result.path}  {human_size(result.size_bytes)}  {loaded.arch.name} int8 ({cfg.backend}, "
            f"{cfg.calib_method})  {result.seconds:.1f} s"
        )
    )


def placement_table(rows: list[dict[str, Any]], title: str) -> Any:
    """The placement rows as a rich table that stays one line per row at 80 columns (no vertical rules; the
    boxed version wrapped the "why" cells of a nano into three-line rows)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from edgeconvnext.quantize.policy import SMOOTHED

    t = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for col in ("layer", "op", "prec.", "MACs", "why"):
        t.add_column(col, justify="right" if col == "MACs" else "left", no_wrap=col != "why")
    marked = False
    for r in rows:
        name = r["layer"] + (f" (x{r['count']})" if r["count"] > 1 else "")
        share = f"{r['macs_share']:.1%}" if r["macs_share"] is not None else "-"
        reason, prec = r["reason"], r["precision"]
        if reason.endswith(f", {SMOOTHED}"):  # as a mark: ", input equalised" wrapped fc1 rows onto 2 lines
            reason, prec, marked = reason[: -len(SMOOTHED) - 2], prec + "*", True
        t.add_row(escape(name), r["op"], escape(prec), share, escape(reason))
    if marked:
        t.caption, t.caption_justify = f"* {SMOOTHED} (LayerNorm smoothing)", "left"
    return t
