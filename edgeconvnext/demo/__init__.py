"""The embedded default: a ConvNeXt-V2 atto fine-tuned on Fashion-MNIST (32 px, 10 classes), stored in fp16,
with 520 Fashion-MNIST train images for calibration and 500 test images (50 per class) for validation.

Fashion-MNIST is (c) Zalando SE, MIT licence. The weights were trained by benchmarks/fashion_mnist.py.

Usage::

    from edgeconvnext.demo import assets
    a = assets(); a.checkpoint, a.calib, a.val
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeconvnext.errors import DataError


@dataclass(frozen=True)
class DemoAssets:
    checkpoint: Path
    calib: Path
    val: Path


def assets() -> DemoAssets:
    root = Path(__file__).resolve().parent
    a = DemoAssets(root / "convnextv2_atto_fmnist.safetensors", root / "calib", root / "val")
    missing = [p for p in (a.checkpoint, a.calib, a.val) if not p.exists()]
    if missing:
        raise DataError(f"demo files missing from the installed package ({missing[0]}): reinstall edgeconvnext")
    return a
