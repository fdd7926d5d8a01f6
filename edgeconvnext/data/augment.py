"""Train-time image transforms for fine-tuning, with Pillow and numpy only.

Input: a PIL RGB image. Output: a normalized (3, S, S) float32 array, like preprocess.eval_transform,
after a mild random-resized crop (scale jitter) and a horizontal flip. Evaluation never uses this
module: it uses preprocess.eval_transform with the checkpoint's Preprocess.

The jitter is milder than ImageNet training recipes (scale 0.08-1) because fine-tuning starts from a
trained model, and milder still at small sizes (<= 64 px) where a 0.08 crop of a 28 px image keeps a
few pixels of the object.

Usage::

    tf = TrainTransform(Preprocess(img_size=32, crop_pct=1.0))
    x = tf(open_rgb("shirt.png"))          # (3, 32, 32) float32, a different crop each call
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeconvnext.data.preprocess import _pil_interp, to_normalized_array
from edgeconvnext.errors import UsageError
from edgeconvnext.models.registry import Preprocess

SMALL_SIZE = 64  # at or below this many pixels the default jitter is milder


def default_scale(img_size: int) -> tuple[float, float]:
    """Area fraction range of the random crop: (0.25, 1) at normal sizes, (0.6, 1) at <= 64 px."""
    return (0.6, 1.0) if img_size <= SMALL_SIZE else (0.25, 1.0)


@dataclass(frozen=True)
class TrainTransform:
    """Random-resized crop (area ``scale``, aspect ``ratio``) to img_size, flip with ``hflip``, normalize."""

    pp: Preprocess
    scale: tuple[float, float] | None = None  # None: default_scale(pp.img_size)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.area_range
        if not 0 < lo <= hi <= 1:
            raise UsageError(f"augmentation scale must satisfy 0 < min <= max <= 1, got {self.area_range}")
        if not 0 <= self.hflip <= 1:
            raise UsageError(f"horizontal flip probability must be in [0, 1], got {self.hflip}")
        _pil_interp(self.pp.interpolation)  # unknown interpolation: fail here, not inside a worker

    @property
    def area_range(self) -> tuple[float, float]:
        return self.scale if self.scale is not None else default_scale(self.pp.img_size)

    def crop_box(self, width: int, height: int, rng: Any) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a random crop, as torchvision's RandomResizedCrop.get_params."""
        area = width * height
        lo, hi = self.area_range
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(lo, hi)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = rng.randint(0, width - w)
                top = rng.randint(0, height - h)
                return left, top, left + w, top + h
        # Fallback: the largest centre crop whose aspect is inside ``ratio``.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img, rng: random.Random | None = None) -> np.ndarray:
        """PIL RGB image -> (3, S, S) float32; ``rng`` defaults to the ``random`` module (seeded per worker)."""
        from PIL import Image

        r: Any = rng if rng is not None else random  # module functions: DataLoader seeds them per worker
        size = self.pp.img_size
        box = self.crop_box(img.width, img.height, r)
        img = img.resize((size, size), _pil_interp(self.pp.interpolation), box=box)
        if r.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalized_array(img, self.pp)
