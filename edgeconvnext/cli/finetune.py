"""``edgeconvnext finetune``: train a ConvNeXt on an image-folder dataset (see :mod:`edgeconvnext.train.finetune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import STATE, EpochProgress, console, done, human_size, live_progress, print_skipped
from edgeconvnext.cli._options import CheckpointOpt, EmaOpt, ForceOpt, ImgSizeOpt, ModelOpt, UnsafeOpt
from edgeconvnext.train.config import FinetuneConfig


class _RichProgress(EpochProgress):
    """finetune.ProgressHook on a rich progress bar: one bar per epoch, loss/throughput/lr in the line."""

    def __init__(self) -> None:
        super().__init__(live_progress(), remaining=True)

    def end_epoch(self, r) -> None:
        skipped = f", {r.skipped} unreadable images skipped" if r.skipped else ""
        if not STATE.quiet:
            self.line(
                f"epoch {r.epoch}/{self.epochs}: train loss {r.train_loss:.4f}, val loss {r.val_loss:.4f}, "
                f"val top-1 {r.val_top1:.2f}%, {r.images_per_s:.0f} img/s, {r.seconds:.0f} s{skipped}"
            )


def finetune_cmd(
    train_data: Annotated[Path, typer.Option("--train-data", help="Train folder: one sub-folder per class.")],
    val_data: Annotated[
        Path, typer.Option("--val-data", help="Val folder: the same class folders (or flat + labels file).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.pt).")],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    img_size: ImgSizeOpt = None,
    crop_pct: Annotated[
        float | None,
        typer.Option(
            "--crop-pct",
            help=(
                "Eval crop fraction stored with the model (default: 1.0 when the images are no larger "
                "than --img-size, else the checkpoint's)."
            ),
        ),
    ] = None,
    interpolation: Annotated[
        str | None,
        typer.Option("--interpolation", help="Resize filter: bicubic, bilinear, ... (default: the checkpoint's)."),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.")] = FinetuneConfig.epochs,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size.")] = FinetuneConfig.batch,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = FinetuneConfig.lr,
    min_lr: Annotated[
        float, typer.Option("--min-lr", help="Learning rate at the end of the cosine.")
    ] = FinetuneConfig.min_lr,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="AdamW weight decay (not on norms/biases).")
    ] = FinetuneConfig.weight_decay,
    warmup_epochs: Annotated[
        float | None, typer.Option("--warmup-epochs", help="Linear warm-up length in epochs (default: 10% of the run).")
    ] = None,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", help="Label smoothing of the loss.")
    ] = FinetuneConfig.label_smoothing,
    aug_scale: Annotated[
        float | None,
        typer.Option("--aug-scale", help="Smallest random-crop area fraction (default 0.6 at <= 64 px, else 0.25)."),
    ] = None,
    hflip: Annotated[
        float, typer.Option("--hflip", help="Horizontal flip probability (0 for data where flips change meaning).")
    ] = FinetuneConfig.hflip,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Data-loading processes (default min(2, cpus)).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch threads (default: the cpus available).")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed (order, augmentation, new classifier).")
    ] = FinetuneConfig.seed,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run saved at OUTPUT (its .last file, or OUTPUT to add epochs)."),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = FinetuneConfig.device,
    allow_unsafe: UnsafeOpt = False,
    ema: EmaOpt = False,
    force: ForceOpt = False,
) -> None:
    """Fine-tune (or train) a ConvNeXt: AdamW, warm-up + cosine, label smoothing, mild augmentation."""
    from edgeconvnext.artifacts import Skipped
    from edgeconvnext.train.config import resolve
    from edgeconvnext.train.finetune import finetune

    cfg = resolve(
        None,
        dict(
            train_data=train_data,
            val_data=val_data,
            output=output,
            model=model,
            checkpoint=checkpoint,
            img_size=img_size,
            crop_pct=crop_pct,
            interpolation=interpolation,
            epochs=epochs,
            batch=batch,
            lr=lr,
            min_lr=min_lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
            aug_scale=aug_scale,
            hflip=hflip,
            workers=workers,
            threads=threads,
            seed=seed,
            resume=resume,
            device=device,
            allow_unsafe=allow_unsafe,
            ema=ema,
        ),
    )
    with _RichProgress() as hook:
        result = finetune(cfg, progress=hook, reuse=not force)
    if isinstance(result, Skipped):
        return print_skipped(result)
    from rich.markup import escape  # a path like run[2].pt is data, not markup

    if not STATE.quiet:
        for note in result.notes:
            console().print(f"note: {note}", soft_wrap=True, markup=False)
    pp = result.preprocess
    done(
        escape(
            f"{result.output} ({human_size(result.output.stat().st_size)}): {len(result.class_names)} classes, "
            f"val top-1 {result.final_top1:.2f}% (best {result.best_top1:.2f}% at epoch {result.best_epoch}), "
            f"input {pp.img_size}/{pp.crop_pct} {pp.interpolation}, {result.seconds:.0f} s"
        )
    )
