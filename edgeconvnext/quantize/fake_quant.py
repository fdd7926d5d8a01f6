"""Fake quantization of a ConvNeXt at exactly the places the INT8 ONNX carries Q/DQ (for QAT).

Input: a float ConvNeXt and the PTQ placement (layer name -> INT8 or not) with the PTQ scales. Output: the
same model where each INT8 layer (``nn.Linear`` / ``nn.Conv2d``) is a :class:`QuantLinear` /
:class:`QuantConv2d` that fake-quantizes its activation input (per tensor) and its weight (per output
channel), signed INT8 [-128, 127], zero point 0, straight-through gradients. Nothing else is quantized, as in
the ONNX: LayerNorm, GELU, GRN and the residual stream stay float, with one exception that follows the PTQ
graph: an INT8 depthwise conv (``--policy all``) reads the block's input, which the residual Add reads too,
and the PTQ ONNX carries one Q/DQ on that tensor for both; so the block's input is fake-quantized once (a
forward pre-hook of the block, with the conv's scale) and the shortcut gets the quantized values as well.

Scales are either ``frozen`` (the calibrated PTQ values, as ModelOpt and pytorch-quantization train) or
``learned`` (LSQ: the scale is a parameter with the gradient scaled by 1/sqrt(numel * 127), as NNCF trains).
Training with frozen scales and every forward outside training use torch's own fused
``torch.fake_quantize_per_{tensor,channel}_affine``, which the TorchScript exporter writes as
QuantizeLinear/DequantizeLinear; learned scales train through a plain-torch LSQ with the same rounding.

The wrapped layers keep their ``weight`` / ``bias`` parameters under the original names, so the float
state dict (:func:`float_state_dict`) loads into a plain ConvNeXt; the quantizer state (:func:`quantizer_state`)
is a separate dict of layer -> {act_scale, w_scale}.

Usage::

    qmodel = wrap(model, {"stages.0.blocks.0.mlp.fc1": (act_scale, w_scale), ...}, scales="frozen")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

QMIN, QMAX = -128, 127  # signed INT8; symmetric scales are max|x| / 127 (zero point 0)
SCALE_MODES = ("frozen", "learned")
_EPS = 1e-12


class _FakeQuant(torch.autograd.Function):
    """``clamp(round(x / s), -128, 127) * s`` with the straight-through gradient (zero where clamped): the
    arithmetic of ``torch.fake_quantize_per_*_affine`` (zero point 0; bit-identical on our tests) in plain
    vectorised ops, which on CPU train ~2x (per tensor 1.1x) faster than torch's fused cachemask kernels;
    ``s`` broadcasts (a scalar, or (C, 1) per output channel). Forward outside training uses torch's ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        r = torch.mul(x, torch.reciprocal(s)).round_()
        q = torch.clamp(r, QMIN, QMAX)
        ctx.save_for_backward(q == r)  # inside the integer range: the gradient passes
        return q.mul_(s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """``s`` forward, ``g * grad`` backward (LSQ's step-size gradient scale)."""
    return (s - s * g).detach() + s * g


def _lsq(x: torch.Tensor, s: torch.Tensor, g: float) -> torch.Tensor:
    """LSQ fake quantization: round(clamp(x / s)) * s with a straight-through round; grads to x and s."""
    s = _grad_scale(s.abs().clamp_min(_EPS), g)
    v = torch.clamp(x / s, QMIN, QMAX)
    v = (torch.round(v) - v).detach() + v
    return v * s


class _QuantMixin(nn.Module):
    """Shared quantizer state: ``act_scale`` (scalar) and ``w_scale`` (one per output channel)."""

    act_scale: nn.Parameter
    w_scale: nn.Parameter
    learned: bool
    weight: torch.Tensor
    _zp_w: torch.Tensor  # buffers (register_buffer in _init_quant)
    _zp_a: torch.Tensor

    def _init_quant(self, act_scale: torch.Tensor, w_scale: torch.Tensor, learned: bool) -> None:
        out = self.weight.shape[0]
        w_scale = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1)
        if w_scale.numel() != out:
            raise ValueError(f"{w_scale.numel()} weight scales for {out} output channels")
        self.learned = learned
        self.act_scale = nn.Parameter(torch.as_tensor(act_scale, dtype=torch.float32).reshape(()), learned)
        self.w_scale = nn.Parameter(w_scale.clone(), learned)
        self.register_buffer("_zp_w", torch.zeros(out, dtype=torch.int32), persistent=False)
        self.register_buffer("_zp_a", torch.zeros((), dtype=torch.int32), persistent=False)

    def freeze_for_export(self) -> None:
        """Store the scales as plain buffers so the exporter writes them as constant initializers (the
        ``abs``/``clamp`` of the trainable values would otherwise be graph ops: TensorRT needs constants)."""
        self._export_a = self.act_scale.detach().abs().clamp_min(_EPS).reshape(())
        self._export_w = self.w_scale.detach().abs().clamp_min(_EPS).reshape(-1)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_export_a", None) is not None:
            return torch.fake_quantize_per_tensor_affine(x, self._export_a, self._zp_a, QMIN, QMAX)
        if self.training:
            if self.learned:
                return _lsq(x, self.act_scale, 1.0 / (x[0].numel() * QMAX) ** 0.5)
            return _FakeQuant.apply(x, self.act_scale.detach().abs().clamp_min(_EPS))
        s = self.act_scale.detach().abs().clamp_min(_EPS)
        return torch.fake_quantize_per_tensor_affine(x, s, self._zp_a, QMIN, QMAX)

    def quant_weight(self, w: torch.Tensor, axis: int) -> torch.Tensor:
        """Per-output-channel fake quantization; ``axis`` is the output-channel axis of ``w`` as given."""
        if self.training and getattr(self, "_export_w", None) is None:
            shape = [1] * w.ndim
            shape[axis] = -1
            if self.learned:
                fan_in = w.numel() // w.shape[axis]
                return _lsq(w, self.w_scale.reshape(shape), 1.0 / (fan_in * QMAX) ** 0.5)
            return _FakeQuant.apply(w, self.w_scale.detach().abs().clamp_min(_EPS).reshape(shape))
        s = (
            self._export_w
            if getattr(self, "_export_w", None) is not None
            else self.w_scale.detach().abs().clamp_min(_EPS)
        )
        return torch.fake_quantize_per_channel_affine(w, s, self._zp_w, axis, QMIN, QMAX)


class QuantLinear(_QuantMixin):
    """nn.Linear with fake-quantized input and weight. On (N, ..., C) inputs it computes
    ``x @ q(W^T) + b`` outside training (the exporter folds W^T into a (K, N) initializer: MatMul + Add with the
    weight's Q/DQ on axis 1, as onnxruntime places them); on 2-D inputs and in training ``F.linear`` (Gemm,
    weight Q/DQ on axis 0; the same values)."""

    def __init__(self, fc: nn.Linear, act_scale: torch.Tensor, w_scale: torch.Tensor, learned: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = fc.in_features, fc.out_features
        self.weight = fc.weight
        self.bias = fc.bias
        self._init_quant(act_scale, w_scale, learned)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_input(x)
        if x.ndim == 2 or self.training:  # training: the contiguous (out, in) weight (no strided copy)
            return F.linear(x, self.quant_weight(self.weight, 0), self.bias)
        y = torch.matmul(x, self.quant_weight(self.weight.t(), 1))
        return y + self.bias if self.bias is not None else y


class QuantConv2d(_QuantMixin):
    """nn.Conv2d with fake-quantized input and weight (weight Q/DQ on axis 0)."""

    def __init__(self, conv: nn.Conv2d, act_scale: torch.Tensor, w_scale: torch.Tensor, learned: bool) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode {conv.padding_mode} is not supported")
        self.weight = conv.weight
        self.bias = conv.bias
        self._init_quant(act_scale, w_scale, learned)

    #: the input arrives quantized (:func:`_quant_block_input`): the block's shortcut shares the conv's Q/DQ
    input_quantized: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quant_weight(self.weight, 0)
        x = x if self.input_quantized else self.quant_input(x)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


QUANT_TYPES = (QuantLinear, QuantConv2d)


def _quant_block_input(block: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of a block whose depthwise conv is INT8: its input quantized once with the conv's
    scale, for the conv and the shortcut (the one Q/DQ the PTQ ONNX puts on that tensor). Looks the conv up on
    the block it is called with, so a deep copy of the model uses its own quantizer."""
    conv = block.conv_dw
    assert isinstance(conv, QuantConv2d)  # wrap registers this hook only then
    return (conv.quant_input(args[0]), *args[1:])


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    mod = model
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def wrap(
    model: nn.Module, scales: Mapping[str, tuple[Any, Any]], mode: str = "frozen", *, inplace: bool = False
) -> nn.Module:
    """``model`` with the layers named in ``scales`` (layer -> (act_scale, w_scale)) fake-quantized."""
    if mode not in SCALE_MODES:
        raise ValueError(f"scales must be one of {SCALE_MODES}, got {mode}")
    import copy

    m = model if inplace else copy.deepcopy(model)
    modules = dict(m.named_modules())
    for name, (a, w) in scales.items():
        layer = modules.get(name)
        parent, leaf = _parent(m, name)
        if isinstance(layer, nn.Linear):
            q: nn.Module = QuantLinear(layer, torch.as_tensor(a), torch.as_tensor(w), mode == "learned")
        elif isinstance(layer, nn.Conv2d):
            q = QuantConv2d(layer, torch.as_tensor(a), torch.as_tensor(w), mode == "learned")
        else:
            raise ValueError(f"{name} is not a Linear or Conv2d layer of the model ({type(layer).__name__})")
        setattr(parent, leaf, q)
        if leaf == "conv_dw" and isinstance(q, QuantConv2d):  # (N, C, H, W) block input, also the shortcut
            q.input_quantized = True
            parent.register_forward_pre_hook(_quant_block_input)
    return m


def quant_layers(model: nn.Module) -> dict[str, _QuantMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def quantizer_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """layer -> {"act_scale": (), "w_scale": (out,)} (positive, as exported)."""
    return {
        n: {
            "act_scale": m.act_scale.detach().abs().clamp_min(_EPS).cpu().clone(),
            "w_scale": m.w_scale.detach().abs().clamp_min(_EPS).cpu().clone(),
        }
        for n, m in quant_layers(model).items()
    }


def float_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the float ConvNeXt (quantizer scales left out): loads into a plain ConvNeXt."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.endswith((".act_scale", ".w_scale"))
    }


def strip(model: nn.Module, template: nn.Module) -> nn.Module:
    """A plain float copy of ``template`` holding ``model``'s (trained) weights."""
    import copy

    plain = copy.deepcopy(template).cpu().float()
    plain.load_state_dict(float_state_dict(model), strict=True)
    return plain.eval()
