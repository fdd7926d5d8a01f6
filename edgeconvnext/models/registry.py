"""The architecture registry: every ConvNeXt V1/V2 variant named as in timm, aliases, preprocessing.

Input: a model name as a user types it (``convnextv2_nano``, ``v2_nano``, ``nano`` is ambiguous).
Output: an :class:`Arch` (depths, dims, flags) and :func:`create_model` builds it.

Usage::

    model = create_model("v2_nano", num_classes=10)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeconvnext.errors import CheckpointError, UsageError, nearest


class PreprocessError(CheckpointError, ValueError):
    """A stored preprocessing value that cannot be used (a ValueError too: readers of config files that wrap
    ValueError with the file's name keep doing so)."""


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preprocessing of a checkpoint (timm's pretrained_cfg fields)."""

    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the stored preprocessing") -> Preprocess:
        """Read preprocessing stored in a file (checkpoint, ONNX metadata, config.json, manifest), checked field
        by field: a bad value is a CheckpointError naming ``source`` and the field, never a ZeroDivisionError
        in a later stage. Unknown keys are ignored (timm's pretrained_cfg holds many)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k, v in known.items():
            why = _field_problem(k, v)
            if why is not None:
                raise PreprocessError(
                    f"{source}: preprocess {k} {v!r} {why}; fix the file (or re-export the model from its checkpoint)"
                )
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        if "crop_pct" in known:
            known["crop_pct"] = float(known["crop_pct"])
        return cls(**known)


#: resize filters the eval transform knows (Pillow's names, as timm's pretrained_cfg spells them)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")


def _is_number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _field_problem(key: str, v: Any) -> str | None:
    """Why a stored preprocessing value cannot be used, or None."""
    if key == "img_size":
        if not isinstance(v, int) or isinstance(v, bool):
            return "is not a whole number of pixels"
        if v < STRIDE or v % STRIDE:
            return f"is not a positive multiple of {STRIDE} (ConvNeXt downsamples by {STRIDE})"
    elif key == "crop_pct":
        if not _is_number(v) or not 0 < v <= 1:
            return "must be a number in (0, 1] (the centre crop's share of the resized image)"
    elif key == "interpolation":
        if v not in INTERPOLATIONS:
            return f"is not a known interpolation ({', '.join(INTERPOLATIONS)})"
    elif key in ("mean", "std"):
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v):
            return "must be 3 numbers (R, G, B)"
        if key == "std" and not all(x > 0 for x in v):
            return "must be 3 positive numbers (the image is divided by it)"
    return None


def repeated_names(names: list[str] | None) -> list[str]:
    """The class names that occur more than once, as "'a' (10 times)" (ImageNet's own list repeats 'crane' and
    'maillot': a model may load with them; mapping data onto outputs by name cannot)."""
    seen: dict[str, int] = {}
    for n in names or []:
        seen[n] = seen.get(n, 0) + 1
    return [f"'{n}' ({k} times)" for n, k in seen.items() if k > 1]


@dataclass(frozen=True)
class Arch:
    name: str
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    use_grn: bool
    ls_init_value: float | None
    published_params_m: float | None = None
    published_gmacs: float | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights_licence: str = ""

    @property
    def version(self) -> int:
        return 2 if self.use_grn else 1


_SIZES = {
    # size: (depths, dims)
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

# Published params (M) and GMACs at 224 px (KNOWLEDGE.md: official READMEs). V1 atto..nano are timm's.
_V1 = {
    "atto": (3.7, 0.55),
    "femto": (5.2, 0.79),
    "pico": (9.1, 1.37),
    "nano": (15.6, 2.46),
    "tiny": (28.6, 4.5),
    "small": (50.2, 8.7),
    "base": (88.6, 15.4),
    "large": (197.8, 34.4),
    "xlarge": (350.2, 60.9),
}
_V2 = {
    "atto": (3.7, 0.55),
    "femto": (5.2, 0.78),
    "pico": (9.1, 1.37),
    "nano": (15.6, 2.45),
    "tiny": (28.6, 4.47),
    "base": (89.0, 15.4),
    "large": (198.0, 34.4),
    "huge": (660.0, 115.0),
}


def _build_registry() -> dict[str, Arch]:
    reg: dict[str, Arch] = {}
    for size, (params, gmacs) in _V1.items():
        depths, dims = _SIZES[size]
        lic = "Apache-2.0 (timm)" if size in ("atto", "femto", "pico", "nano") else "MIT (facebookresearch)"
        reg[f"convnext_{size}"] = Arch(
            f"convnext_{size}", depths, dims, False, 1e-6, params, gmacs, weights_licence=lic
        )
    for size, (params, gmacs) in _V2.items():
        depths, dims = _SIZES[size]
        reg[f"convnextv2_{size}"] = Arch(
            f"convnextv2_{size}",
            depths,
            dims,
            True,
            None,
            params,
            gmacs,
            weights_licence="CC-BY-NC-4.0 (facebookresearch)",
        )
    # Test-only variant beside the real ones: builds and runs in milliseconds.
    reg["convnextv2_test"] = Arch("convnextv2_test", (1, 1, 2, 1), (8, 16, 32, 64), True, None)
    reg["convnext_test"] = Arch("convnext_test", (1, 1, 2, 1), (8, 16, 32, 64), False, 1e-6)
    return reg


ARCHS: dict[str, Arch] = _build_registry()
TEST_ARCHS = ("convnextv2_test", "convnext_test")


def public_names() -> list[str]:
    """Every real architecture (the test variants are hidden from listings)."""
    return [n for n in ARCHS if n not in TEST_ARCHS]


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ARCHS:
        size = name.split("_", 1)[1]
        if name.startswith("convnextv2_"):
            for a in (f"v2_{size}", f"v2{size}", f"convnextv2-{size}", f"convnext_v2_{size}", f"convnextv2{size}"):
                out[a] = name
        else:
            for a in (f"v1_{size}", f"v1{size}", f"convnext-{size}", f"convnext_v1_{size}", f"convnextv1_{size}"):
                out[a] = name
    return out


ALIASES: dict[str, str] = _aliases()


#: ConvNeXt's total stride: a 4x4/4 stem and three 2x2/2 downsamples, none padded
STRIDE = 32


def forward_bytes(arch: Arch | None, img_size: int, batch: int, bytes_per: int = 4) -> int:
    """A lower estimate of the memory one inference of ``batch`` images needs: the input, and (``arch`` known)
    the tensors alive in a stage-0 block (residual, depthwise and LayerNorm outputs, fc1/GELU/GRN at 4x width:
    about 15 activations of stage 0's width at a quarter of the resolution)."""
    n = batch * 3 * img_size * img_size * bytes_per
    if arch is not None:
        n += 15 * batch * arch.dims[0] * (img_size // 4) ** 2 * bytes_per
    return n


def check_img_size(img_size: int) -> int:
    """``img_size`` when it is a positive multiple of :data:`STRIDE`; else UsageError naming the nearest.

    Another size runs, but the unpadded stride-4 stem and stride-2 downsamples floor the feature maps, so
    the last rows/columns of every image would be silently ignored.
    """
    if img_size < STRIDE or img_size % STRIDE:
        lo, hi = max(STRIDE, img_size // STRIDE * STRIDE), max(STRIDE, -(-img_size // STRIDE) * STRIDE)
        sizes = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise UsageError(
            f"--img-size {img_size} is not a positive multiple of {STRIDE} (ConvNeXt downsamples by {STRIDE}); "
            f"use {sizes}"
        )
    from edgeconvnext.env.probes import check_memory

    # two images (export's trace, the smallest batch anything runs) must fit: --img-size 100000 tried 240 GB
    check_memory(forward_bytes(None, img_size, 2), f"--img-size {img_size}", "use a smaller --img-size")
    return int(img_size)


def resolve(name: str) -> Arch:
    """Architecture for a name or alias, case-insensitive; an unknown name suggests the nearest."""
    key = name.strip().lower().replace(" ", "")
    if key in ARCHS:
        return ARCHS[key]
    if key in ALIASES:
        return ARCHS[ALIASES[key]]
    hint = nearest(key, list(ARCHS) + list(ALIASES))
    if hint is not None:
        hint = ALIASES.get(hint, hint)
    msg = f"unknown model '{name}'"
    msg += f"; did you mean '{hint}'?" if hint else "; run 'edgeconvnext models' for the list"
    raise UsageError(msg)


def create_model(name: str | Arch, num_classes: int = 1000, drop_path_rate: float = 0.0, device: str | None = None):
    """Build the model for ``name`` with fresh weights (load a checkpoint with checkpoint.load_model)."""
    import torch

    from edgeconvnext.models.convnext import ConvNeXt

    arch = name if isinstance(name, Arch) else resolve(name)
    with torch.device(device or "cpu"):
        return ConvNeXt(
            arch.depths,
            arch.dims,
            num_classes=num_classes,
            use_grn=arch.use_grn,
            ls_init_value=arch.ls_init_value,
            drop_path_rate=drop_path_rate,
        )


def count_stats(arch: Arch | str, img_size: int = 224, num_classes: int = 1000) -> dict[str, float]:
    """Params (M) and MACs (G) of ``arch``, counted analytically from its depths and dims (no torch, ~10 us).

    MACs count convolutions and linear layers (the convention of the published tables): an output element of
    a conv costs in_channels/groups x kH x kW MACs, of a linear layer in_features. tests/test_zoo.py checks
    these counts against the built model (parameters and forward hooks) and against the published tables.
    """
    a = arch if isinstance(arch, Arch) else resolve(arch)
    d = a.dims
    side = img_size // 4  # stem: 4x4 conv, stride 4
    params = 3 * 16 * d[0] + d[0] + 2 * d[0]  # stem conv (+bias) and its LayerNorm
    macs = 3 * 16 * d[0] * side * side
    for i, (depth, dim) in enumerate(zip(a.depths, d, strict=True)):
        if i > 0:  # downsample: LayerNorm + 2x2 conv, stride 2
            side //= 2
            params += 2 * d[i - 1] + 4 * d[i - 1] * dim + dim
            macs += 4 * d[i - 1] * dim * side * side
        dw = 49 * dim + dim  # 7x7 depthwise conv
        mlp = (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim)  # fc1, fc2
        extra = 8 * dim if a.use_grn else dim if a.ls_init_value is not None else 0  # GRN gamma/beta | LayerScale
        block = dw + 2 * dim + mlp + extra  # 2 * dim: the block's LayerNorm
        params += depth * block
        macs += depth * (49 * dim + 8 * dim * dim) * side * side
    params += 2 * d[-1] + d[-1] * num_classes + num_classes  # head: LayerNorm + fc
    macs += d[-1] * num_classes
    return {"params_m": params / 1e6, "gmacs": macs / 1e9}
