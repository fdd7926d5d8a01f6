"""The settings of quantization-aware training (``quantize --method qat``): :class:`QatConfig` (one source of
defaults, which the CLI's help and the recipe's ``qat:`` section read) and :func:`resolve` (defaults < recipe
``qat:`` section < explicit overrides). Imports nothing heavy.

Usage::

    cfg = resolve(load_recipe("my.yaml"), {"train_data": Path("train/"), "epochs": 2})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.config import StrEnum, as_dict, check_value, resolve_config, setting, specs
from edgeconvnext.errors import UsageError

if TYPE_CHECKING:
    from edgeconvnext.recipes import Recipe


class Optimizer(StrEnum):
    ADAMW = "adamw"
    SGD = "sgd"


class Scales(StrEnum):
    FROZEN = "frozen"  # the calibrated PTQ scales, not trained (ModelOpt, pytorch-quantization)
    LEARNED = "learned"  # LSQ step sizes trained with the weights (NNCF)


@dataclass
class QatConfig:
    """Options of quantization-aware training (CLI: ``edgeconvnext quantize --method qat --help``; recipe:
    ``qat:`` sets the hyperparameters, not the paths or the machine)."""

    train_data: Path | None = setting(
        None, help="ImageFolder (labels + distillation) or a folder of images (distillation only)", recipe=False
    )
    val_data: Path | None = setting(None, help="labelled images validated after each epoch", recipe=False)
    epochs: int = setting(1, help="epochs (~10% of the original schedule)")
    lr: float = setting(1e-5, help="peak learning rate (~1% of finetune's 1e-3: too high destroys the network)")
    min_lr: float = setting(0.0, help="learning rate at the end of the cosine")
    batch_size: int = setting(32, help="images per step and process")
    steps: int | None = setting(None, help="at most this many optimizer steps per epoch (None: the whole folder)")
    optimizer: Optimizer = setting(Optimizer.ADAMW, help="adamw or sgd (momentum 0.9, Nesterov)")
    weight_decay: float = setting(0.0, help="weight decay (not on norms/biases)")
    warmup_steps: int | None = setting(None, help="linear warm-up steps (None: 5% of the run)")
    clip_grad: float | None = setting(1.0, help="gradient-norm clip (0 or None: off)")
    ema_decay: float | None = setting(None, help="keep an EMA of the weights with this decay (None: off)")
    distill_weight: float | None = setting(
        None, help="weight of the distillation loss (None: 1.0 without labels, 0.5 with labels)"
    )
    temperature: float = setting(2.0, help="distillation temperature")
    logit_mse: float = setting(
        10.0,
        help="weight of a mean-squared error between the student's and the teacher's logits, added to the KL "
        "(0: KL only; it holds the student to the teacher where the label loss pulls it away)",
    )
    scales: Scales = setting(Scales.FROZEN, help="frozen (the calibrated PTQ scales) or learned (LSQ)")
    labels: bool = setting(True, help="false: distillation only even when train_data has class folders")
    hflip: float = setting(0.5, help="horizontal flip probability of the augmentation")
    augment: bool = setting(
        True, help="random crop + flip; false: the eval transform, each image's teacher logits computed once"
    )
    seed: int = setting(0, help="random seed (order, augmentation)")
    workers: int | None = setting(None, help="data-loading processes (None: min(2, cpus))", recipe=False)
    threads: int | None = setting(None, help="torch threads (None: the cpus / processes)", recipe=False)
    device: str = setting("cpu", help="cpu or cuda", recipe=False)
    resume: bool = setting(False, help="continue the interrupted run saved beside the output", recipe=False)

    def validated(self) -> QatConfig:
        """A normalised copy; every value that cannot be honoured is a UsageError naming its option."""
        if self.train_data is None:
            raise UsageError(
                "--method qat needs --train-data DIR (an ImageFolder for label loss + distillation, or a "
                "folder of images for distillation only; the calibration folder works)"
            )
        s = specs(QatConfig)
        cfg = replace(self, **{k: check_value(s[k].label, s[k], getattr(self, k)) for k in s})
        checks = [
            (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
            (math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
            (0 <= cfg.min_lr <= cfg.lr, f"--min-lr must be in [0, --lr], got {cfg.min_lr}"),
            (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
            (cfg.steps is None or cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}"),
            (cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}"),
            (
                cfg.warmup_steps is None or cfg.warmup_steps >= 0,
                f"--warmup-steps must be >= 0, got {cfg.warmup_steps}",
            ),
            (cfg.clip_grad is None or cfg.clip_grad >= 0, f"--clip-grad must be >= 0, got {cfg.clip_grad}"),
            (
                cfg.ema_decay is None or 0 <= cfg.ema_decay < 1,
                f"--ema-decay must be in [0, 1), got {cfg.ema_decay}",
            ),
            (
                cfg.distill_weight is None or 0 <= cfg.distill_weight <= 1,
                f"--distill-weight must be in [0, 1], got {cfg.distill_weight}",
            ),
            (cfg.temperature > 0, f"--temperature must be > 0, got {cfg.temperature}"),
            (
                math.isfinite(cfg.logit_mse) and cfg.logit_mse >= 0,
                f"--logit-mse must be >= 0, got {cfg.logit_mse}",
            ),
            (0 <= cfg.hflip <= 1, f"--hflip must be in [0, 1], got {cfg.hflip}"),
            (cfg.workers is None or cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
            (cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain values (Enums as strings, paths as strings): the sidecar's and the resume state's form."""
        return as_dict(self)


def only_with_qat(options: list[str]) -> UsageError:
    """The error for QAT-only options given without ``--method qat`` (quantize's and run's)."""
    return UsageError(
        f"{', '.join(options)}: only with --method qat (add --method qat, or drop "
        + ("it)" if len(options) == 1 else "them)")
    )


def resolve_sources(recipe: Recipe | None, overrides: dict[str, Any] | None = None) -> tuple[QatConfig, dict[str, str]]:
    """defaults < the recipe's ``qat:`` section < ``overrides`` (None values: not given), validated; and, per
    key, where its value came from ("default", "recipe", "cli")."""
    section = recipe.sections.get("qat", {}) if recipe is not None else {}
    cfg, sources = resolve_config(QatConfig, "qat", section, overrides)
    try:
        return cfg.validated(), sources
    except UsageError as e:  # a value out of range that the recipe set: say so, the message names the option
        s = specs(QatConfig)
        for k, src in sources.items():
            if src == "recipe" and str(e).startswith((f"{s[k].label} ", f"{s[k].label}:")):
                raise UsageError(f"{e} (set by the recipe's 'qat.{k}')") from None
        raise


def resolve(recipe: Recipe | None, overrides: dict[str, Any] | None = None) -> QatConfig:
    """:func:`resolve_sources` without the sources."""
    return resolve_sources(recipe, overrides)[0]
