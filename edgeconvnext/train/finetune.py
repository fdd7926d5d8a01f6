"""Fine-tune a ConvNeXt on an image-folder dataset: AdamW, warm-up + cosine (per step), label smoothing.

Input: an architecture (and optionally a checkpoint to start from), a train and a val folder in
ImageFolder layout (the val folder may be flat with a labels file naming the train classes).
Output: an edgeconvnext checkpoint (checkpoint.save_checkpoint) holding the weights, the train class
names, the eval Preprocess every later stage uses, and ``extra`` = optimizer state, step, epoch,
best top-1, history and the arguments; a sidecar ``<output>.json`` with the same summary.

While training, ``<output stem>.last<suffix>`` holds the state after the last finished epoch
(written atomically); ``resume=True`` continues from it (or from a finished output, to add epochs).

Usage::

    result = finetune(FinetuneConfig(model="convnextv2_atto", train_data=Path("train"),
                                     val_data=Path("val"), output=Path("atto.pt"), img_size=32))
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconvnext.artifacts import (
    Sidecar,
    Skipped,
    check_output,
    environment,
    input_ref,
    output_ref,
    reuse_if_current,
    sidecar_path,
    write_json_atomic,
)
from edgeconvnext.data.augment import TrainTransform
from edgeconvnext.data.folders import LabelledImages, find_labels_file, is_hidden, warn_overlap
from edgeconvnext.data.preprocess import eval_transform
from edgeconvnext.errors import CheckpointError, DataError, UsageError
from edgeconvnext.models.registry import Preprocess
from edgeconvnext.signals import clear_resumable, note_resumable
from edgeconvnext.train.config import FinetuneConfig
from edgeconvnext.train.loop import (
    EpochLog,
    ImageDataset,
    ProgressHook,
    cpu_count,
    lr_at,
    make_loader,
    param_groups,
    train_epoch,
)

if TYPE_CHECKING:
    import torch

    from edgeconvnext.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

LOW_RES_SAMPLE = 32  # images looked at to decide whether the data is already at the target size


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    train_top1: float  # % on the augmented train batches
    val_loss: float
    val_top1: float  # %
    lr: float  # at the end of the epoch
    images_per_s: float  # training throughput
    seconds: float
    skipped: int = 0  # unreadable images in this epoch (train + val)


@dataclass
class FinetuneResult:
    output: Path
    class_names: list[str]
    preprocess: Preprocess
    history: list[EpochResult]
    best_top1: float
    best_epoch: int
    final_top1: float
    start_epoch: int  # epochs already done when this run started (resume)
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "class_names": self.class_names,
            "preprocess": self.preprocess.to_dict(),
            "history": [asdict(h) for h in self.history],
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "final_top1": self.final_top1,
            "start_epoch": self.start_epoch,
            "seconds": self.seconds,
            "notes": self.notes,
        }


class LogProgress(EpochLog):
    """Default hook: one log line per epoch."""

    def line(self, r: EpochResult) -> str:
        return (
            f"epoch {r.epoch}/{self._epochs}: loss {r.train_loss:.4f}, val top-1 {r.val_top1:.2f}%, "
            f"{r.images_per_s:.0f} img/s, {r.seconds:.1f} s"
        )


def last_state_path(output: Path) -> Path:
    """``atto.pt`` -> ``atto.last.pt``: the state after the last finished epoch, for --resume."""
    return output.with_name(f"{output.stem}.last{output.suffix}")


def load_datasets(train: Path, val: Path) -> tuple[LabelledImages, LabelledImages]:
    """Train classes from the train folder (its class sub-folders or labels file); val must hold the same."""
    train_ds = LabelledImages.discover(train, option="--train-data")
    if len(train_ds.class_names) < 2:
        n = len(train_ds.class_names)
        raise DataError(
            f"--train-data {train} holds {n} class{'es' if n != 1 else ''}; a classifier needs at least 2: give a "
            "folder with one sub-folder of images per class"
        )
    counts = np.bincount(np.asarray(train_ds.labels, dtype=np.int64), minlength=len(train_ds.class_names))
    empty = [c for c, n in zip(train_ds.class_names, counts, strict=False) if n == 0]
    if empty:  # an output the classifier never sees an example of: almost always a stray or unfilled folder
        raise DataError(
            f"classes {empty[:5]}{' ...' if len(empty) > 5 else ''} have no images in {train}: "
            "add images or remove the empty class folders"
        )
    val = Path(val)
    has_labels_file = val.is_dir() and find_labels_file(val) is not None
    if val.is_dir() and not has_labels_file:  # ImageFolder val: exactly the train class folders
        val_dirs = {d.name for d in val.iterdir() if d.is_dir() and not is_hidden(d.name)}
        missing = sorted(set(train_ds.class_names) - val_dirs)
        extra = sorted(val_dirs - set(train_ds.class_names))
        if val_dirs and (missing or extra):
            raise DataError(
                f"class folders of {train} and {val} differ: "
                + "; ".join(
                    f"{what} {names[:5]}{' ...' if len(names) > 5 else ''}"
                    for what, names in ((f"{val} lacks", missing), (f"{val} adds", extra))
                    if names
                )
                + ": both need the same class folders"
            )
    val_ds = LabelledImages.discover(val, class_names=train_ds.class_names, option="--val-data")
    warn_overlap(train_ds.paths, val_ds.paths, train, val)
    return train_ds, val_ds


def _choose_preprocess(
    base: Preprocess, cfg: FinetuneConfig, train_paths: Sequence[Path], notes: list[str]
) -> Preprocess:
    """The eval Preprocess stored in the checkpoint: the checkpoint's, with the options' overrides.

    crop_pct defaults to 1.0 when the training images are already no larger than img_size (low-res data
    such as 28 px Fashion-MNIST at 32 px): a 0.875 centre crop would cut off the object's border for no gain.
    """
    pp = base
    if cfg.img_size is not None:
        pp = replace(pp, img_size=cfg.img_size)
    if cfg.interpolation is not None:
        pp = replace(pp, interpolation=cfg.interpolation)
    if cfg.crop_pct is not None:
        return replace(pp, crop_pct=cfg.crop_pct)
    from PIL import Image

    step = max(1, len(train_paths) // LOW_RES_SAMPLE)
    sides = []
    for p in list(train_paths)[::step][:LOW_RES_SAMPLE]:
        try:
            with Image.open(p) as im:
                sides.append(max(im.size))
        except (OSError, Image.DecompressionBombError):  # unreadable files are skipped (and counted) later
            continue
    if sides and max(sides) <= pp.img_size and pp.crop_pct != 1.0:
        notes.append(
            f"crop_pct 1.0 (images are at most {max(sides)} px, no larger than img_size "
            f"{pp.img_size}); pass --crop-pct to override"
        )
        pp = replace(pp, crop_pct=1.0)
    return pp


def training_state(loaded: LoadedModel) -> dict[str, Any]:
    """The fine-tuning state (optimizer, step, epoch ...) stored beside the weights of a finetune checkpoint."""
    extra = loaded.extra
    if "epoch" not in extra or "optimizer" not in extra:
        raise CheckpointError(
            f"{loaded.source} holds no fine-tuning state (optimizer, epoch): it was not "
            "written by 'edgeconvnext finetune'; start without --resume"
        )
    return extra


def _resume_source(cfg: FinetuneConfig) -> Path:
    last = last_state_path(cfg.output)
    if last.is_file():
        return last
    if cfg.output.is_file():
        return cfg.output
    raise CheckpointError(
        f"--resume: nothing to resume, neither {last} nor {cfg.output} exists; run without --resume to start"
    )


def _evaluate(model: torch.nn.Module, loader, device: str, hook: ProgressHook) -> tuple[float, float, int]:
    """(mean cross-entropy, top-1 %, skipped images) of ``model`` over ``loader``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, n, skipped = 0.0, 0, 0, 0
    hook.validating(len(loader))
    with torch.inference_mode():
        for x, y, s in loader:
            skipped += s
            if len(y):
                x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
            hook.val_step()
    if n == 0:
        raise DataError("no readable validation images")
    return loss_sum / n, 100.0 * correct / n, skipped


#: settings that do not change what a run produces (where it goes, how fast it gets there)
_NOT_IN_KEY = ("train_data", "val_data", "output", "resume", "workers", "threads", "allow_unsafe")


def _start(
    cfg: FinetuneConfig, classes: list[str], train_paths: Sequence[Path], notes: list[str]
) -> tuple[LoadedModel, dict[str, Any] | None, Preprocess]:
    """The model to train, the training state ``--resume`` continues (None for a new run) and the
    preprocessing; what was chosen is added to ``notes``. A resumed run must keep its classes and its
    preprocessing; a new run refuses to start over an interrupted one."""
    from edgeconvnext.models.checkpoint import load_model

    state: dict[str, Any] | None = None
    if cfg.resume:
        src = _resume_source(cfg)
        loaded = load_model(cfg.model, src, allow_unsafe=cfg.allow_unsafe)
        state = training_state(loaded)
        if loaded.class_names != classes:
            raise DataError(
                f"--resume: {src} was trained on classes {loaded.class_names[:5] if loaded.class_names else None}"
                f" but {cfg.train_data} holds {classes[:5]}: use the same train folder"
            )
        pp = loaded.preprocess
        for option, val, saved in (
            ("--img-size", cfg.img_size, pp.img_size),
            ("--crop-pct", cfg.crop_pct, pp.crop_pct),
            ("--interpolation", cfg.interpolation, pp.interpolation),
        ):
            if val is not None and val != saved:
                raise UsageError(
                    f"--resume: {option} {val} differs from the resumed run's {saved}; drop {option} or start a new run"
                )
        notes.append(f"resumed from {src} after epoch {state['epoch']}")
    else:
        last = last_state_path(cfg.output)
        if last.is_file():
            raise UsageError(
                f"{last} holds an interrupted run: pass --resume to continue it, or delete it to start over"
            )
        loaded = load_model(
            cfg.model,
            cfg.checkpoint,
            num_classes=len(classes),
            img_size=cfg.img_size,
            allow_unsafe=cfg.allow_unsafe,
            ema=cfg.ema,
        )
        if loaded.source_format == "random":  # training from scratch: the result is a trained model, not a timing one
            notes.append(f"trained from random weights ({loaded.arch.name}, no --checkpoint)")
        else:
            notes.extend(getattr(loaded, "notes", []) or [])  # e.g. "replaced the 1000-class classifier ...", as export
        pp = _choose_preprocess(loaded.preprocess, cfg, train_paths, notes)
    return loaded, state, pp


def finetune(
    cfg: FinetuneConfig, progress: ProgressHook | None = None, *, reuse: bool = False
) -> FinetuneResult | Skipped:
    """Run (or resume) fine-tuning as ``cfg`` says; returns the summary, the checkpoint is at cfg.output.

    ``reuse``: return :class:`~edgeconvnext.artifacts.Skipped` without training when the output's sidecar
    matches (same train/val folders and starting checkpoint, same settings and library versions; the
    checkpoint unchanged)."""
    import torch
    import torch.nn.functional as F

    from edgeconvnext.models.checkpoint import save_checkpoint
    from edgeconvnext.runtime.runners import check_device

    cfg.validate()
    # --resume reads the run saved at --output; otherwise the starting checkpoint must survive the run
    if cfg.output.suffix.lower() not in (".pt", ".pth"):
        raise UsageError(
            f"--output {cfg.output}: finetune writes a PyTorch checkpoint, name it .pt (e.g. "
            f"{cfg.output.with_suffix('.pt').name}); 'edgeconvnext export' makes the .onnx from it"
        )
    check_output(cfg.output, "--output", None if cfg.resume else {"--checkpoint": cfg.checkpoint})
    check_device(cfg.device)
    inputs = [input_ref("train_data", cfg.train_data), input_ref("val_data", cfg.val_data)]
    if cfg.checkpoint is not None:
        inputs.append(input_ref("checkpoint", cfg.checkpoint))
    key_config = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_KEY}
    if reuse and (reused := reuse_if_current(cfg.output, stage="finetune", inputs=inputs, config=key_config)):
        return reused
    hook: ProgressHook = progress or LogProgress()
    t_start = time.perf_counter()
    notes: list[str] = []
    cpus = cpu_count()
    torch.set_num_threads(cfg.threads or cpus)
    workers = min(2, cpus) if cfg.workers is None else cfg.workers

    train_ds, val_ds = load_datasets(cfg.train_data, cfg.val_data)
    classes = train_ds.class_names

    torch.manual_seed(cfg.seed)  # before load_model: a new classifier's init depends on it
    loaded, state, pp = _start(cfg, classes, train_ds.paths, notes)
    for n in notes:
        log.info("%s", n)

    # channels_last: the depthwise convs and the NCHW<->NHWC permutes around each block's MLP get cheaper
    # (measured ~1.2-1.5x faster training of atto at 32 px on CPU). Checkpoints are saved contiguous.
    model = loaded.model.to(cfg.device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else 0.1 * cfg.epochs
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))

    start_epoch, step, best_top1, best_epoch = 0, 0, -1.0, 0
    history: list[EpochResult] = []
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_top1, best_epoch = float(state.get("best_top1", -1.0)), int(state.get("best_epoch", 0))
        history = [EpochResult(**h) for h in state.get("history", [])]
        saved_args = state.get("args", {})
        changed = [
            k for k in ("epochs", "batch", "lr", "weight_decay") if k in saved_args and saved_args[k] != getattr(cfg, k)
        ]
        if changed:
            log.warning(
                "--resume with different %s than the saved run: the schedule continues from step %d "
                "with the new values",
                ", ".join(changed),
                step,
            )

    train_tf = TrainTransform(pp, scale=(cfg.aug_scale, 1.0) if cfg.aug_scale is not None else None, hflip=cfg.hflip)
    train_set = ImageDataset(train_ds.paths, train_ds.labels, train_tf)
    val_set = ImageDataset(val_ds.paths, val_ds.labels, functools.partial(eval_transform, pp=pp))
    val_loader = make_loader(val_set, cfg.batch, False, workers, cfg.seed)
    out_last = last_state_path(cfg.output)

    # the checkpoint the run started from, kept through resumes for the final sidecar's provenance
    init = (
        dict(state["init"])
        if state is not None and isinstance(state.get("init"), dict)
        else {
            "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
            "sha256": loaded.source_sha256 if state is None else None,
        }
    )

    def save(path: Path, epoch: int) -> None:
        extra = {
            "optimizer": opt.state_dict(),
            "step": step,
            "epoch": epoch,
            "best_top1": best_top1,
            "init": init,
            "best_epoch": best_epoch,
            "history": [asdict(h) for h in history],
            "args": cfg.to_dict(),
        }
        save_checkpoint(path, model, loaded.arch, class_names=classes, preprocess=pp, extra=extra)  # atomic

    if start_epoch >= cfg.epochs:
        notes.append(f"already trained {start_epoch} epochs (--epochs {cfg.epochs}): nothing to train")

    def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits

    for epoch in range(start_epoch, cfg.epochs):
        # Each epoch's order and augmentation are a function of (seed, epoch), so a resumed run
        # sees the same data as an uninterrupted one.
        random.seed(cfg.seed + epoch)
        loader = make_loader(train_set, cfg.batch, True, workers, cfg.seed + epoch)
        hook.start_epoch(epoch + 1, cfg.epochs, len(loader))
        t0 = time.perf_counter()
        stats = train_epoch(
            model,
            loader,
            opt,
            loss_fn=loss_fn,
            lr_fn=lambda s: lr_at(s, total_steps, warmup_steps, cfg.lr, cfg.min_lr),
            step=step,
            device=cfg.device,
            hook=hook,
        )
        step = stats.step
        if stats.seen == 0:
            raise DataError(f"no readable training images in {cfg.train_data}")
        val_loss, val_top1, val_skipped = _evaluate(model, val_loader, cfg.device, hook)
        if val_top1 > best_top1:
            best_top1, best_epoch = val_top1, epoch + 1
        result = EpochResult(
            epoch + 1,
            stats.loss,
            stats.top1 or 0.0,
            val_loss,
            val_top1,
            stats.lr,
            stats.images_per_s,
            time.perf_counter() - t0,
            stats.skipped + val_skipped,
        )
        history.append(result)
        save(out_last, epoch + 1)
        note_resumable(out_last, epoch + 1)  # what an interrupted run's last line points to
        hook.end_epoch(result)

    save(cfg.output, max(start_epoch, cfg.epochs))
    if out_last.exists():
        out_last.unlink()
    clear_resumable()
    seconds = time.perf_counter() - t_start
    result_obj = FinetuneResult(
        cfg.output,
        classes,
        pp,
        history,
        best_top1,
        best_epoch,
        history[-1].val_top1 if history else best_top1,
        start_epoch,
        seconds,
        notes,
    )
    write_json_atomic(
        sidecar_path(cfg.output),
        Sidecar(
            stage="finetune",
            inputs=inputs,
            outputs=[output_ref(cfg.output)],
            config=key_config,
            environment=environment(device=cfg.device),
            timings={"total_s": round(seconds, 3)},
            details={
                "arch": loaded.arch.name,
                "init_checkpoint": init["checkpoint"],
                "init_sha256": init["sha256"],
                "train_data": str(cfg.train_data),
                "train_images": len(train_ds),
                "val_data": str(cfg.val_data),
                "val_images": len(val_ds),
                "args": cfg.to_dict(),
                "result": result_obj.to_dict(),
            },
        ).to_dict(),
    )
    return result_obj
