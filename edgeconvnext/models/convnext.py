"""ConvNeXt V1 and V2 in one class, told apart by flags (``use_grn``, ``ls_init_value``).

State-dict keys follow timm (stem.0, stages.i.blocks.j.conv_dw, .mlp.fc1, .mlp.grn.weight, head.fc ...)
so timm checkpoints load as they are; official and HuggingFace files are remapped in :mod:`edgeconvnext.models.remap`.
The MLP is always ``nn.Linear`` on channels-last tensors (it exports as MatMul); timm's 1x1-conv MLP
weights of atto..nano are reshaped on load.

Usage::

    model = ConvNeXt(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), use_grn=True, ls_init_value=None)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the last dim; statistics in fp32 when the tensor is fp16/bf16.

    In fp32 this is exactly ``F.layer_norm`` (one ONNX LayerNormalization at opset >= 17). In fp16 the
    input and parameters are cast to fp32 around the op so the variance cannot overflow.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        y = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
        return y.to(x.dtype)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the channel (last) dim of a channels-last tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(x, self)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (stem, downsample, head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = _layer_norm(x, self)
        return x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


class GlobalResponseNorm(nn.Module):
    """GRN of ConvNeXt V2 on channels-last input, numerically the official definition.

    gx = ||x||_2 over (H, W) per channel; nx = gx / (mean_c(gx) + eps); y = gamma * (x * nx) + beta + x.
    The reduction runs in fp32 whatever the input dtype: its sum of squares overflows fp16.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, H, W, C)
        gx = torch.norm(x.float(), p=2, dim=(1, 2), keepdim=True)  # (N, 1, 1, C)
        nx = (gx / (gx.mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        return self.weight.to(x.dtype) * (x * nx) + self.bias.to(x.dtype) + x


class Mlp(nn.Module):
    """fc1 -> GELU -> (GRN) -> fc2 on channels-last tensors; keys as timm's Mlp/GlobalResponseNormMlp."""

    def __init__(self, dim: int, hidden: int, use_grn: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden) if use_grn else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.grn(self.act(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """dwconv 7x7 -> LayerNorm -> fc1 -> GELU -> (GRN) -> fc2 -> (LayerScale) -> drop path -> + x."""

    def __init__(self, dim: int, use_grn: bool, ls_init_value: float | None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, use_grn)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value)) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


class Stage(nn.Module):
    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        use_grn: bool,
        ls_init_value: float | None,
        drop_paths: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, 2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[Block(dim, use_grn, ls_init_value, drop_paths[j]) for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pool -> LayerNorm -> Linear (timm's NormMlpClassifierHead keys: head.norm, head.fc)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)
        return self.fc(self.norm(x))


class ConvNeXt(nn.Module):
    """ConvNeXt V1 (LayerScale) or V2 (GRN, no LayerScale) image classifier."""

    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        num_classes: int = 1000,
        use_grn: bool = False,
        ls_init_value: float | None = 1e-6,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.depths = tuple(depths)
        self.dims = tuple(dims)
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist() if drop_path_rate > 0 else [0.0] * sum(depths)
        stages, start = [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=False)):
            stages.append(
                Stage(
                    dims[max(i - 1, 0)],
                    dim,
                    depth,
                    use_grn,
                    ls_init_value,
                    rates[start : start + depth],
                    downsample=i > 0,
                )
            )
            start += depth
        self.stages = nn.Sequential(*stages)
        self.head = Head(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.is_meta:
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs."""
        fc = nn.Linear(self.head.fc.in_features, num_classes)
        self._init_weights(fc)
        self.head.fc = fc
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
