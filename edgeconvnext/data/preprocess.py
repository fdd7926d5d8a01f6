"""Eval-time image preprocessing, equal to timm's eval transform, with Pillow and numpy only.

Resize the shorter side to floor(img_size / crop_pct) with the checkpoint's interpolation, center crop
img_size, scale to [0, 1], normalize with mean/std. Output: float32 CHW numpy array. No torch here:
the runtime side (onnxruntime, TensorRT) uses it too.

Usage::

    x = preprocess_image("cat.jpg", Preprocess(img_size=224))   # (3, 224, 224) float32
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgeconvnext.errors import DataError, UsageError
from edgeconvnext.models.registry import Preprocess

_INTERP = {
    "bicubic": "BICUBIC",
    "bilinear": "BILINEAR",
    "nearest": "NEAREST",
    "lanczos": "LANCZOS",
    "box": "BOX",
    "hamming": "HAMMING",
}


def _pil_interp(name: str):
    from PIL import Image

    try:
        return getattr(Image.Resampling, _INTERP[name])
    except KeyError:
        raise UsageError(f"unknown interpolation '{name}'; use one of {', '.join(_INTERP)}") from None


#: resized images larger than this are refused when Pillow's own limit is off (MAX_IMAGE_PIXELS = None)
_FALLBACK_MAX_PIXELS = 89_478_485


def resize_shorter(img, size: int, interpolation: str = "bicubic"):
    """Resize so the shorter side is ``size``, as torchvision.transforms.Resize(int) does.

    Raises DataError when the result would exceed Pillow's decompression-bomb limit: a 121-byte 1x20000 PNG
    resized to 256 on its short side is 1.3 G pixels (about 4 GB); Pillow's own guard counts only the source.
    """
    from PIL import Image

    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    limit = Image.MAX_IMAGE_PIXELS or _FALLBACK_MAX_PIXELS
    if new_w * new_h > limit:
        raise DataError(
            f"resizing its {w}x{h} pixels to {new_w}x{new_h} (shorter side {size}) would need "
            f"{new_w * new_h / 1e6:.0f} M pixels, over the decompression-bomb limit of {limit / 1e6:.0f} M"
        )
    return img.resize((new_w, new_h), _pil_interp(interpolation))


def center_crop(img, size: int):
    """Center crop to size x size (pads with zeros when the image is smaller, like torchvision)."""
    from PIL import Image

    w, h = img.size
    if w < size or h < size:
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_normalized_array(img, pp: Preprocess) -> np.ndarray:
    arr: np.ndarray = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, C)
    arr = (arr - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)


# 16-bit greyscale (PNG): Pillow's convert("RGB") clips these at 255, so any normal 16-bit image turns white.
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im):
    """A PIL image of any mode as 8-bit RGB; 16-bit greyscale is scaled (0..65535 -> 0..255), not clipped."""
    from PIL import Image

    if im.mode == "F":  # TIFF float pixels: their range (0..1? 0..255? raw sensor?) is unknown
        raise ValueError("32-bit float pixels have no standard 0..255 scale; save the image as 8- or 16-bit")
    if im.mode in _WIDE_GREY:
        grey = np.asarray(im).astype(np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def open_rgb(path: str | Path):
    """Open an image file as RGB; raises DataError naming the file when it is not a readable image
    (corrupt, truncated, empty, not an image, or larger than Pillow's decompression-bomb limit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def eval_transform(img, pp: Preprocess) -> np.ndarray:
    """PIL RGB image -> normalized (3, S, S) float32 array."""
    scale = math.floor(pp.img_size / pp.crop_pct)
    img = resize_shorter(img, scale, pp.interpolation)
    img = center_crop(img, pp.img_size)
    return to_normalized_array(img, pp)


def preprocess_image(path: str | Path, pp: Preprocess) -> np.ndarray:
    """Open and preprocess one file; DataError naming the file when it cannot be read or resized."""
    img = open_rgb(path)
    try:
        return eval_transform(img, pp)
    except DataError as e:
        raise DataError(f"cannot read image {path}: {e}") from None
