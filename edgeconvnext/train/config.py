"""The finetune stage's settings: :class:`FinetuneConfig` (one source of defaults, which the CLI's options
show) and :func:`resolve` (defaults < recipe ``finetune:`` section < explicit overrides). Imports nothing
heavy.

Usage::

    cfg = resolve(None, {"train_data": Path("train"), "val_data": Path("val"), "output": Path("m.pt"),
                         "model": "convnextv2_atto", "epochs": 2})
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.config import resolve_config, setting
from edgeconvnext.errors import UsageError

if TYPE_CHECKING:
    from edgeconvnext.recipes import Recipe


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved in the checkpoint as ``extra["args"]``; recipe:
    ``finetune:`` sets the hyperparameters, not the paths)."""

    train_data: Path = setting(help="train folder: one sub-folder per class", recipe=False)
    val_data: Path = setting(help="val folder: the same class folders (or flat + labels file)", recipe=False)
    output: Path = setting(help="checkpoint to write (.pt)", recipe=False)
    model: str | None = setting(None, help="architecture (timm name or alias)", recipe=False)
    checkpoint: Path | None = setting(None, help="checkpoint to start from", recipe=False)
    img_size: int | None = setting(None, help="input size in pixels (None: the checkpoint's, else 224)")
    crop_pct: float | None = setting(
        None, help="eval crop fraction (None: 1.0 when the images are no larger than img_size, else the checkpoint's)"
    )
    interpolation: str | None = setting(None, help="resize filter: bicubic, bilinear, ... (None: the checkpoint's)")
    epochs: int = setting(10, help="epochs to train")
    batch: int = setting(64, help="batch size")
    lr: float = setting(1e-3, help="peak learning rate (AdamW)")
    min_lr: float = setting(1e-6, help="learning rate at the end of the cosine")
    weight_decay: float = setting(0.05, help="AdamW weight decay (not on norms/biases)")
    warmup_epochs: float | None = setting(None, help="linear warm-up length in epochs (None: 10% of the run)")
    label_smoothing: float = setting(0.1, help="label smoothing of the loss")
    aug_scale: float | None = setting(
        None, help="smallest random-crop area fraction (None: 0.6 at <= 64 px, else 0.25)"
    )
    hflip: float = setting(0.5, help="horizontal flip probability (0 for data where flips change meaning)")
    workers: int | None = setting(None, help="data-loading processes (None: min(2, cpus))", recipe=False)
    threads: int | None = setting(None, help="torch threads (None: the cpus this process may use)", recipe=False)
    seed: int = setting(0, help="random seed (order, augmentation, new classifier)")
    resume: bool = setting(False, help="continue the run saved at OUTPUT", recipe=False)
    device: str = setting("cpu", help="cpu or cuda", recipe=False)
    allow_unsafe: bool = setting(False, help="allow full unpickling of a trusted checkpoint", recipe=False)
    ema: bool = setting(False, help="use the EMA weights of an official training checkpoint", recipe=False)

    def validate(self) -> None:
        """Refuse values that cannot be honoured, naming the option."""
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch >= 1, f"--batch must be >= 1, got {self.batch}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"--min-lr must be in [0, --lr], got {self.min_lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (
                self.warmup_epochs is None or 0 <= self.warmup_epochs <= self.epochs,
                f"--warmup-epochs must be in [0, --epochs], got {self.warmup_epochs}",
            ),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.img_size is None or self.img_size >= 32, f"--img-size must be >= 32, got {self.img_size}"),
            (self.crop_pct is None or 0 < self.crop_pct <= 1, f"--crop-pct must be in (0, 1], got {self.crop_pct}"),
            (self.aug_scale is None or 0 < self.aug_scale <= 1, f"--aug-scale must be in (0, 1], got {self.aug_scale}"),
            (0 <= self.hflip <= 1, f"--hflip must be in [0, 1], got {self.hflip}"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (
                self.model is not None or self.checkpoint is not None or self.resume,
                "give --model NAME (and optionally --checkpoint PATH) to fine-tune",
            ),
            (
                self.output.suffix != ".safetensors",
                f"--output {self.output}: use a .pt file (it keeps the optimizer state for --resume; "
                "safetensors holds weights only)",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if self.interpolation is not None:
            from edgeconvnext.data.preprocess import _pil_interp

            try:
                _pil_interp(self.interpolation)
            except UsageError as e:
                raise UsageError(f"--interpolation: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def resolve(recipe: Recipe | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """defaults < the recipe's ``finetune:`` section < ``overrides`` (None: not given), validated."""
    section = recipe.sections.get("finetune", {}) if recipe is not None else {}
    cfg, _ = resolve_config(FinetuneConfig, "finetune", section, overrides)
    cfg.validate()
    return cfg
