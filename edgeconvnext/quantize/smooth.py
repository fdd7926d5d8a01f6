"""Per-channel equalisation folded into LayerNorm's affine and the next layer's input weights.

Why: TensorRT quantizes activations per tensor. A LayerNorm output with a few channels tens to hundreds of
times larger than the rest (the ImageNet case, KNOWLEDGE.md "Activation outliers") leaves every other channel
a handful of INT8 levels. LayerNorm's output is ``y_c = gamma_c * xhat_c + beta_c``, so dividing ``gamma_c``
and ``beta_c`` by ``s_c`` and multiplying the next layer's input channel ``c`` of its weight by ``s_c`` leaves
the function unchanged (cross-layer equalisation, Nagel et al. 2019; SmoothQuant's migration) and adds no
node. ``s_c = amax(y_c)^alpha / amax(W[:, c])^(1 - alpha)`` (SmoothQuant) gives activation and weight
channel ranges ``amax(y_c)^(1-alpha) * amax(W[:, c])^alpha``: they depend only on the product
``amax(y_c) * amax(W[:, c])``, which any such rescaling preserves, so the smoothed model is the same
whatever outlier scaling the checkpoint had.

Pairs folded in a ConvNeXt (every INT8 layer of the default policy except fc2 reads one of them):

- ``stages.i.blocks.j.norm`` -> ``stages.i.blocks.j.mlp.fc1`` (Linear);
- ``stages.i.downsample.0`` -> ``stages.i.downsample.1`` (the 2x2 stride-2 Conv; no padding);
- ``head.norm`` -> ``head.fc`` (the classifier, INT8 under ``--policy all``).

The stem's LayerNorm feeds the residual stream (a depthwise conv and a skip): no exact fold exists there.

:func:`inject_outliers` is the same fold with ``1 / m``: the function-preserving stress model of the
outlier benchmark (benchmarks/outliers.py) and the tests.

Usage::

    report = smooth(model, channel_absmax(model, images))     # in place; torch model, FP32
    smoothed = smoothed_copy(loaded, images)                   # a LoadedModel copy, for export
    scales, report = plan_scales(model, absmax)                # s only (quantize/smooth_graph.py folds it in ONNX)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from edgeconvnext.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

#: SmoothQuant's migration strength: 0.5 balances activation and weight ranges
DEFAULT_ALPHA = 0.5
#: calibration images the per-channel ranges are measured on (a torch forward; ranges settle quickly)
STATS_IMAGES = 64
#: without images, a LayerNorm channel's range is estimated as |gamma| * XHAT_MAX + |beta|
XHAT_MAX = 4.0
_MIN_S, _MAX_S = 1e-4, 1e4


@dataclass
class FoldPair:
    """A LayerNorm whose output feeds exactly one Conv/Linear's input channels."""

    norm: str
    layer: str
    norm_module: Any = field(repr=False)
    layer_module: Any = field(repr=False)


@dataclass
class PairReport:
    norm: str
    layer: str
    outlier_ratio_before: float  # max / median of the per-channel activation range
    outlier_ratio_after: float
    scale_min: float
    scale_max: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class SmoothReport:
    """What :func:`smooth` did (the sidecar's ``smoothing`` section)."""

    alpha: float
    statistics: str  # "calibration images (N)[, from the calibration session]" or "LayerNorm affine (data-free)"
    pairs: list[PairReport]
    #: the folded s per LayerNorm name (float32 tensors; not in the sidecar): :func:`with_scales` redoes the fold
    scales: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> list[str]:
        return [p.layer for p in self.pairs]

    @property
    def worst_before(self) -> float:
        return max((p.outlier_ratio_before for p in self.pairs), default=1.0)

    @property
    def worst_after(self) -> float:
        return max((p.outlier_ratio_after for p in self.pairs), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "per-channel equalisation folded into LayerNorm affine + next layer's weights (exact)",
            "alpha": self.alpha,
            "statistics": self.statistics,
            "pairs": len(self.pairs),
            "outlier_ratio_before_max": round(self.worst_before, 2),
            "outlier_ratio_after_max": round(self.worst_after, 2),
            "layers": [p.to_dict() for p in self.pairs],
        }

    def summary(self) -> str:
        return (
            f"{len(self.pairs)} LayerNorm -> layer pairs equalised (alpha {self.alpha}); worst channel range "
            f"max/median {self.worst_before:.1f} -> {self.worst_after:.1f}"
        )


def fold_pairs(model: nn.Module) -> list[FoldPair]:
    """The (LayerNorm, next layer) pairs of a ConvNeXt that a per-channel scale folds through exactly."""
    from torch import nn

    pairs: list[FoldPair] = []
    stages: Any = model.stages  # a ConvNeXt: nn.Sequential of Stage
    for i, stage in enumerate(stages):
        ds = stage.downsample
        if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[1], nn.Conv2d):
            conv = ds[1]
            if conv.groups == 1 and conv.padding in ((0, 0), 0, "valid"):
                pairs.append(FoldPair(f"stages.{i}.downsample.0", f"stages.{i}.downsample.1", ds[0], conv))
        for j, blk in enumerate(stage.blocks):
            pairs.append(
                FoldPair(f"stages.{i}.blocks.{j}.norm", f"stages.{i}.blocks.{j}.mlp.fc1", blk.norm, blk.mlp.fc1)
            )
    head = getattr(model, "head", None)
    if head is not None and isinstance(getattr(head, "fc", None), nn.Linear):
        pairs.append(FoldPair("head.norm", "head.fc", head.norm, head.fc))
    return pairs


def _weight_in_absmax(layer: nn.Module) -> torch.Tensor:
    """amax over everything but the input-channel dim: Linear (out, in), Conv2d (out, in, kh, kw)."""
    weight: Any = layer.weight
    w = weight.detach().abs()
    return w.amax(dim=0) if w.ndim == 2 else w.amax(dim=(0, 2, 3))


def fold_scales(pair: FoldPair, s: torch.Tensor) -> None:
    """LayerNorm output channel c divided by s[c], the next layer's input channel c multiplied by s[c]."""
    import torch

    with torch.no_grad():
        s = s.to(pair.layer_module.weight.dtype)
        pair.norm_module.weight.div_(s)
        pair.norm_module.bias.div_(s)
        w = pair.layer_module.weight
        w.mul_(s.view(1, -1) if w.ndim == 2 else s.view(1, -1, 1, 1))


def _channel_dim(pair: FoldPair) -> int:
    # LayerNorm2d (downsample) returns NCHW: channels at dim 1; the block/head norms are channels-last
    return 1 if pair.norm.endswith("downsample.0") else -1


def channel_absmax(model: nn.Module, images: np.ndarray, batch: int = 16) -> dict[str, torch.Tensor]:
    """Per-channel amax of every fold pair's LayerNorm output over ``images`` (N, 3, S, S), one torch pass."""
    import torch

    pairs = fold_pairs(model)
    stats: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str, dim: int):
        def fn(_m: Any, _i: Any, out: torch.Tensor) -> None:
            a = out.detach().abs().float()
            d = dim % a.ndim
            a = a.movedim(d, -1).reshape(-1, a.shape[d]).amax(0)
            stats[name] = a if name not in stats else torch.maximum(stats[name], a)

        return fn

    for p in pairs:
        hooks.append(p.norm_module.register_forward_hook(hook(p.norm, _channel_dim(p))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(torch.from_numpy(images[i : i + batch]).float())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def _affine_absmax(pair: FoldPair) -> torch.Tensor:
    m = pair.norm_module
    return m.weight.detach().abs() * XHAT_MAX + m.bias.detach().abs()


def _ratio(a: torch.Tensor) -> float:
    med = float(a.median())
    return float(a.max()) / med if med > 0 else float("inf")


def plan_scales(
    model: nn.Module, absmax: dict[str, torch.Tensor] | None = None, alpha: float = DEFAULT_ALPHA
) -> tuple[dict[str, torch.Tensor], SmoothReport]:
    """The per-channel scale ``s`` (float32, one per input channel) of every fold pair of ``model``, by
    LayerNorm name, and the report of what folding them does; ``model`` is not changed (see :func:`smooth`)."""
    import torch

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    reports: list[PairReport] = []
    scales: dict[str, torch.Tensor] = {}
    for p in fold_pairs(model):
        act = absmax[p.norm].to(torch.float64) if absmax is not None else _affine_absmax(p).to(torch.float64)
        w = _weight_in_absmax(p.layer_module).to(torch.float64)
        ok = (act > 0) & (w > 0)
        s = torch.ones_like(act)
        s[ok] = act[ok].pow(alpha) / w[ok].pow(1.0 - alpha)
        s = s.clamp(_MIN_S, _MAX_S)
        scales[p.norm] = s.float()
        reports.append(PairReport(p.norm, p.layer, _ratio(act), _ratio(act / s), float(s.min()), float(s.max())))
    stats = "LayerNorm affine (data-free)" if absmax is None else "calibration images"
    return scales, SmoothReport(alpha=alpha, statistics=stats, pairs=reports, scales=scales)


def smooth(
    model: nn.Module, absmax: dict[str, torch.Tensor] | None = None, alpha: float = DEFAULT_ALPHA
) -> SmoothReport:
    """Equalise every fold pair of ``model`` in place (see the module doc); returns what was done.

    ``absmax`` (from :func:`channel_absmax`) gives the measured per-channel activation ranges; without it they
    are estimated from the LayerNorm's affine. ``alpha`` in [0, 1]: 0 leaves activations alone, 1 moves all of
    their range into the weights.
    """
    scales, report = plan_scales(model, absmax, alpha)
    fold_all(model, scales)
    return report


def fold_all(model: nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """:func:`fold_scales` of ``scales`` (by LayerNorm name, from :func:`plan_scales`) into ``model``, in place;
    a pair without a scale is a KeyError naming it."""
    for p in fold_pairs(model):
        fold_scales(p, scales[p.norm])


def smoothed_copy(
    loaded: LoadedModel, images: np.ndarray | None, alpha: float = DEFAULT_ALPHA, max_images: int = STATS_IMAGES
) -> tuple[LoadedModel, SmoothReport]:
    """A copy of ``loaded`` with its model smoothed on the first ``max_images`` of ``images`` (N, 3, S, S)."""
    model = copy.deepcopy(loaded.model).float().eval()
    stats = None
    n = 0
    if images is not None and len(images):
        n = min(len(images), max_images)
        stats = channel_absmax(model, images[:n])
    report = smooth(model, stats, alpha)
    if stats is not None:
        report.statistics = f"calibration images ({n})"
    log.info("smoothing: %s", report.summary())
    return replace(loaded, model=model), report


def with_scales(loaded: LoadedModel, scales: dict[str, torch.Tensor]) -> LoadedModel:
    """A copy of ``loaded`` with ``scales`` (a :class:`SmoothReport`'s) folded in: the float model a smoothed
    quantization was made from, whichever way its statistics were collected."""
    model = copy.deepcopy(loaded.model).float().eval()
    fold_all(model, scales)
    return replace(loaded, model=model)


def inject_outliers(
    model: nn.Module, magnitude: float, channels: int = 2, seed: int = 0, where: str = "all"
) -> list[tuple[str, list[int]]]:
    """Make ``channels`` channels of every fold pair's LayerNorm output ``magnitude`` times larger, exactly
    compensated in the next layer's weights (FP32 function unchanged). In place; returns (norm, channels).

    ``where``: ``all`` pairs, ``fc1`` (block norms) or ``downsample`` (downsample norms). The classifier's
    norm is left alone: the stress is on the layers the default policy quantizes.
    """
    import torch

    if magnitude <= 0:
        raise ValueError(f"outlier magnitude must be > 0, got {magnitude}")
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[str, list[int]]] = []
    for p in _stress_pairs(model, where):
        c = p.norm_module.weight.numel()
        idx = torch.randperm(c, generator=g)[: min(channels, c)]
        s = torch.ones(c)
        s[idx] = 1.0 / magnitude
        fold_scales(p, s)
        out.append((p.norm, sorted(int(i) for i in idx)))
    return out


def _stress_pairs(model: nn.Module, where: str) -> Iterator[FoldPair]:
    for p in fold_pairs(model):
        if p.layer == "head.fc":
            continue
        if (
            where == "all"
            or (where == "fc1" and p.layer.endswith("fc1"))
            or (where == "downsample" and "downsample" in p.layer)
        ):
            yield p
