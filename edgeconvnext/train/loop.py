"""The training loop fine-tuning and quantization-aware training share: data loading, the warm-up + cosine
schedule, one epoch of optimizer steps (gradient clipping, EMA, a step cap), progress hooks.

Input: a model, a DataLoader of ``(images, labels, skipped)`` batches (labels are -1 for unlabelled images),
an optimizer and a ``loss_fn(model, x, y) -> (loss, logits)``. Output: :class:`EpochStats` (loss, top-1 on
the labelled train images, throughput, the global step). The callers (``finetune.py``, ``quantize/qat.py``)
own what is trained, the checkpoints and resuming.

Usage::

    loader = make_loader(ImageDataset(paths, labels, transform), batch=64, shuffle=True, workers=2, seed=epoch)
    stats = train_epoch(model, loader, opt, loss_fn=ce, lr_fn=lambda s: lr_at(s, total, warm, 1e-3), step=0)
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgeconvnext.data.preprocess import open_rgb
from edgeconvnext.errors import DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: label of an image from an unlabelled folder (distillation only)
NO_LABEL = -1

LossFn = Callable[[Any, Any, Any], tuple[Any, Any]]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up to base_lr, then cosine to min_lr."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class ProgressHook(Protocol):
    """What a front end implements to show progress; the library itself only logs."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, loss: float, images_per_s: float, lr: float) -> None: ...

    def validating(self, steps: int) -> None: ...

    def val_step(self) -> None: ...

    def end_epoch(self, result: Any) -> None: ...


class EpochLog:
    """A ProgressHook that shows nothing while an epoch runs and logs one line per epoch (``line``)."""

    _epochs = 0

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epochs = epochs

    def step(self, loss: float, images_per_s: float, lr: float) -> None:
        pass

    def validating(self, steps: int) -> None:
        pass

    def val_step(self) -> None:
        pass

    def end_epoch(self, result: Any) -> None:
        log.info("%s", self.line(result))

    def line(self, result: Any) -> str:
        return f"epoch {result.epoch}/{self._epochs}"


class ImageDataset:
    """torch Dataset over (path, label) pairs; an unreadable image yields None (skipped by collate)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Any) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int] | None:
        img = None
        try:
            img = open_rgb(self.paths[i])
            return self.transform(img), self.labels[i]
        except DataError as e:  # open_rgb's message names the file; a transform's (a resize bomb) does not
            log.warning("skipping %s", e if img is None else f"{self.paths[i]}: {e}")
            return None


def collate(items: list[tuple[np.ndarray, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    import torch

    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    x = torch.from_numpy(np.stack([g[0] for g in good]))
    y = torch.tensor([g[1] for g in good], dtype=torch.long)
    return x, y, skipped


def make_loader(ds: ImageDataset, batch: int, shuffle: bool, workers: int, seed: int, sampler: Any = None):
    """A DataLoader whose order is a function of ``seed`` (or of ``sampler``, e.g. a DistributedSampler)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,  # type: ignore[arg-type]  # map-style (__len__, __getitem__) without subclassing torch's Dataset
        batch_size=batch,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=g,
        drop_last=False,
        pin_memory=False,
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, GRN and LayerScale (1-D parameters), as timm does."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ModelEma:
    """Exponential moving average of a model's parameters and buffers (``decay`` per optimizer step)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def update(self, model: torch.nn.Module) -> None:
        import torch

        with torch.no_grad():
            for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
                if e.dtype.is_floating_point:
                    e.mul_(self.decay).add_(m.detach(), alpha=1.0 - self.decay)
                else:
                    e.copy_(m)


@dataclass
class EpochStats:
    """What one call of :func:`train_epoch` did."""

    loss: float  # mean over the images seen
    top1: float | None  # % on the labelled train images (None: no labels)
    seen: int
    steps: int  # optimizer steps of this epoch
    step: int  # global optimizer step after the epoch
    lr: float  # the last learning rate used
    images_per_s: float
    seconds: float
    skipped: int


def train_epoch(
    model: torch.nn.Module,
    loader: Any,
    opt: torch.optim.Optimizer,
    *,
    loss_fn: LossFn,
    lr_fn: Callable[[int], float],
    step: int,
    device: str = "cpu",
    hook: ProgressHook | None = None,
    max_steps: int | None = None,
    clip_grad: float | None = None,
    ema: ModelEma | None = None,
) -> EpochStats:
    """One pass over ``loader`` (at most ``max_steps`` optimizer steps); ``step`` is the global step so far."""
    import torch

    model.train()
    t0 = time.perf_counter()
    loss_sum, correct, labelled, seen, skipped, steps = 0.0, 0, 0, 0, 0, 0
    lr = lr_fn(step)
    for x, y, s in loader:
        if max_steps is not None and steps >= max_steps:
            break
        skipped += s
        if len(y) == 0:
            continue
        lr = lr_fn(step)
        for g in opt.param_groups:
            g["lr"] = lr
        x = x.to(device, memory_format=torch.channels_last, non_blocking=True)
        y = y.to(device, non_blocking=True)
        loss, logits = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        opt.step()
        if ema is not None:
            ema.update(model)
        step += 1
        steps += 1
        loss_value = float(loss.detach())
        loss_sum += loss_value * len(y)
        has = y != NO_LABEL
        correct += int((logits.detach().argmax(1)[has] == y[has]).sum())
        labelled += int(has.sum())
        seen += len(y)
        if hook is not None:
            hook.step(loss_value, seen / (time.perf_counter() - t0), lr)
    seconds = time.perf_counter() - t0
    return EpochStats(
        loss=loss_sum / seen if seen else float("nan"),
        top1=100.0 * correct / labelled if labelled else None,
        seen=seen,
        steps=steps,
        step=step,
        lr=lr,
        images_per_s=seen / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        skipped=skipped,
    )
