"""``edgeconvnext quantize --method qat``: its options (declared once here, taken by ``quantize``), the
progress bar, and the call into :func:`edgeconvnext.quantize.qat.qat`. Under ``torchrun`` only rank 0 shows
progress and the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconvnext.cli._common import STATE, EpochProgress, console, done, human_size
from edgeconvnext.errors import UsageError

TrainDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--train-data",
        help="qat: training images: an ImageFolder (label loss + distillation) or any folder of images "
        "(distillation only; the calibration folder works).",
    ),
]
ValDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--val-data",
        help="qat: labelled images validated after each epoch (top-1, agreement with FP32); ptq with --max-drop: "
        "the accuracy budget's images (a plain folder: budget on agreement, --max-disagree).",
    ),
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="qat: epochs (default 1; ~10% of the original).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="qat: peak learning rate (default 1e-5, ~1% of finetune's).")]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", help="qat: images per step and process (default 32).")
]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="qat: at most this many optimizer steps per epoch.")]
DistillOpt = Annotated[
    float | None,
    typer.Option(
        "--distill-weight", help="qat: weight of the distillation loss (default 1.0 without labels, 0.5 with)."
    ),
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="qat: distillation temperature (default 2.0).")
]
LogitMseOpt = Annotated[
    float | None,
    typer.Option(
        "--logit-mse",
        help="qat: weight of a mean-squared error between student and teacher logits, added to the KL "
        "(default 10; 0: KL only).",
    ),
]
OptimizerOpt = Annotated[str | None, typer.Option("--optimizer", help="qat: adamw (default) or sgd.")]
WarmupOpt = Annotated[int | None, typer.Option("--warmup-steps", help="qat: linear warm-up steps (default 5%).")]
ClipOpt = Annotated[float | None, typer.Option("--clip-grad", help="qat: gradient-norm clip (default 1.0; 0 off).")]
EmaDecayOpt = Annotated[
    float | None, typer.Option("--ema-decay", help="qat: keep an EMA of the weights with this decay (default off).")
]
ScalesOpt = Annotated[
    str | None, typer.Option("--scales", help="qat: frozen (calibrated PTQ scales, default) or learned (LSQ).")
]
LabelsOpt = Annotated[
    bool | None,
    typer.Option(
        "--labels/--no-labels",
        help="qat: labels are used when --train-data has them (--labels: required); --no-labels distils only.",
    ),
]
AugmentOpt = Annotated[
    bool | None,
    typer.Option(
        "--augment/--no-augment",
        help="qat: random crop + flip (default); --no-augment trains on the eval transform and computes each "
        "image's teacher logits once (later epochs reuse them).",
    ),
]
HflipOpt = Annotated[
    float | None,
    typer.Option(
        "--hflip",
        help="qat: horizontal flip probability of the augmentation (default 0.5; 0: no flips, for data where "
        "flips change meaning; as finetune's --hflip).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="qat: torch intra-op threads per process (default: the cpus / processes)."),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="qat: data-loading processes (default min(2, cpus)).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="qat: cpu (default) or cuda.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="qat: continue the interrupted run saved beside --output (OUT.qat.last.pt).")
]


class _QatProgress(EpochProgress):
    """QAT's ProgressHook on a rich progress bar (calibration steps, then one bar per epoch)."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled, epoch_label="QAT epoch")

    def __enter__(self) -> _QatProgress:
        super().__enter__()
        self._new("starting", None)
        return self

    def on_step(self, desc: str) -> None:
        self._new(desc, None)

    def on_progress(self, done_: int, total: int) -> None:
        self.progress.update(self.task, total=total, completed=done_)

    def end_epoch(self, r: Any) -> None:
        if not self.enabled:
            return
        val = (
            f", val top-1 {r.val_top1:.2f}%, agreement with FP32 {r.val_agreement:.2f}%"
            if r.val_top1 is not None
            else ""
        )
        self.line(
            f"epoch {r.epoch}/{self.epochs}: loss {r.loss:.4f}{val}, {r.steps} steps, lr {r.lr:.2e} at the end, "
            f"{r.images_per_s:.0f} img/s, {r.seconds:.1f} s"
        )


# the QAT options: quantize_cmd's parameter -> its flag
QAT_FLAGS = {
    "train_data": "--train-data",
    "val_data": "--val-data",
    "epochs": "--epochs",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "steps": "--steps",
    "distill_weight": "--distill-weight",
    "temperature": "--temperature",
    "logit_mse": "--logit-mse",
    "optimizer": "--optimizer",
    "warmup_steps": "--warmup-steps",
    "clip_grad": "--clip-grad",
    "ema_decay": "--ema-decay",
    "scales": "--scales",
    "labels": "--labels/--no-labels",
    "augment": "--augment/--no-augment",
    "hflip": "--hflip",
    "threads": "--threads",
    "workers": "--workers",
    "device": "--device",
    "resume": "--resume",
}


def qat_given(values: dict[str, Any]) -> list[str]:
    """The QAT-only options given (for refusing them with --method ptq)."""
    # `is`, not `in (None, False)`: --hflip 0 is given (0 == False)
    return [flag for k, flag in QAT_FLAGS.items() if values.get(k) is not None and values.get(k) is not False]


def run_qat(
    *,
    output: Path,
    model: str | None,
    checkpoint: Path | None,
    calib_data: Path | None,
    calib_manifest: Path | None,
    quant_cfg: Any,
    qat_values: dict[str, Any],
    load_kwargs: dict[str, Any],
    json_out: bool,
    recipe: Any = None,
) -> None:
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize.qat import qat
    from edgeconvnext.quantize.qat_config import resolve
    from edgeconvnext.train.distributed import env_world

    # defaults < the recipe's qat: section < the options given; refused before the (slow) checkpoint load
    cfg = resolve(recipe, qat_values)
    if qat_values.get("hflip") and not cfg.augment:
        raise UsageError(
            f"--hflip {qat_values['hflip']:g}: flips are part of the augmentation, which --no-augment turns off "
            "(the recipe's qat.augment false, or the option): drop --hflip, or --no-augment"
        )
    _check_labels_asked(qat_values.get("labels"), cfg.train_data)
    rank, _, _ = env_world()
    show = rank == 0 and not STATE.quiet and not json_out
    with _QatProgress(enabled=show) as prog:
        prog.on_step("loading the model")
        loaded = load_model(model, checkpoint, **load_kwargs)
        if recipe is not None:
            recipe.check_loaded(loaded.arch.name, checkpoint)
        result = qat(
            loaded,
            output,
            config=cfg,
            quant=quant_cfg,
            calib_data=calib_data,
            calib_manifest=calib_manifest,
            progress=prog,
            on_step=prog.on_step,
            on_progress=prog.on_progress,
        )
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return
    _print(result, loaded, json_out)


def _check_labels_asked(asked: bool | None, train_data: Path | None) -> None:
    """``--labels`` given on a --train-data folder without labels is refused (QAT silently distilled only)."""
    from edgeconvnext.data.folders import LABEL_FILES, has_labels

    if asked is not True or train_data is None or not Path(train_data).is_dir():
        return
    if not has_labels(Path(train_data)):
        raise UsageError(
            f"--labels: --train-data {train_data} has no class folders and no labels file "
            f"({' / '.join(LABEL_FILES)}), so there are no labels to train on; drop --labels to distil from "
            "the FP32 model only, or give an ImageFolder with the checkpoint's classes"
        )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _print(result: Any, loaded: Any, json_out: bool) -> None:
    import json

    from rich.markup import escape

    t = result.history
    summary = {
        "output": str(result.path),
        "sidecar": str(result.sidecar),
        "manifest": str(result.manifest),
        "checkpoint": str(result.checkpoint),
        "fp32_baseline": str(result.fp32_path) if result.fp32_path else None,
        "bytes": result.size_bytes,
        "mode": result.mode,
        "scales": result.config.scales,
        "world_size": result.world_size,
        "int8_macs_share": result.int8_macs_share,
        "placement": result.table(),
        "history": [h.__dict__ for h in t],
        "best_epoch": result.best_epoch,
        "fp32_val_top1": result.fp32_val_top1,
        "ptq_val_top1": result.ptq_val_top1,
        "ptq_val_agreement": result.ptq_val_agreement,
        "start_vs_ptq": result.start_vs_ptq,
        "parity_onnx_vs_torch": result.parity,
        "agreement_vs_fp32": result.agreement,
        "trt_check": result.report.to_dict(),
        "seconds": round(result.seconds, 3),
    }
    if json_out:
        print(json.dumps(summary, indent=2, default=str))
        return
    c = console()
    if not STATE.quiet:
        from rich.table import Table

        cfg = result.quant
        tab = Table(
            title=f"INT8 placement ({cfg.policy} policy"
            + (f", --exclude {' '.join(cfg.exclude)}" if cfg.exclude else "")
            + ")",
            title_justify="left",
        )
        for col in ("layer", "op", "precision", "MACs", "why"):
            tab.add_column(col, justify="right" if col == "MACs" else "left", no_wrap=col != "why")
        for r in result.table():
            name = r["layer"] + (f" (x{r['count']})" if r["count"] > 1 else "")
            share = f"{r['macs_share']:.1%}" if r["macs_share"] is not None else "-"
            tab.add_row(escape(name), r["op"], r["precision"], share, escape(r["reason"]))
        c.print(tab)
        for note in result.notes:
            c.print(f"note: {note}", soft_wrap=True, markup=False)
        best = next((h for h in t if h.epoch == result.best_epoch), None)
        if result.best_epoch == 0:  # the start stayed the best: QAT's numbers are PTQ's
            best_top1, best_agree = result.ptq_val_top1, result.ptq_val_agreement
        else:
            best_top1, best_agree = (best.val_top1, best.val_agreement) if best is not None else (None, None)
        c.print(
            f"QAT ({result.mode}, {result.config.scales} scales, {result.world_size} process"
            f"{'es' if result.world_size > 1 else ''}): {len(t) - result.resumed_after} epoch(s) this run"
            + (f" (resumed after epoch {result.resumed_after})" if result.resumed_after else "")
            + f", best epoch {result.best_epoch}"
            + (" (the start)" if result.best_epoch == 0 else "")
            + (
                f"; val top-1 FP32 {_pct(result.fp32_val_top1)}, PTQ {_pct(result.ptq_val_top1)}, "
                f"QAT {_pct(best_top1)} (agreement with FP32 {_pct(best_agree)})"
                if best_top1 is not None
                else ""
            ),
            soft_wrap=True,
            markup=False,
        )
        p = result.parity
        c.print(
            f"onnxruntime vs torch fake-quant on {p['images']} {p['inputs']}: top-1 agreement "
            f"{p['top1_agreement']:.1%}, max logit diff {p['max_abs_diff']:.3g}",
            soft_wrap=True,
            markup=False,
        )
        c.print(f"TensorRT rules: {result.report.summary()}", soft_wrap=True, markup=False)
        extra = [result.manifest.name, result.checkpoint.name] + ([result.fp32_path.name] if result.fp32_path else [])
        c.print(f"beside it: {result.sidecar.name}, {', '.join(extra)}", soft_wrap=True, markup=False)
    done(
        escape(
            f"{result.path}  {human_size(result.size_bytes)}  {loaded.arch.name} int8 (qat, {result.mode})  "
            f"{result.seconds:.1f} s"
        )
    )
