"""Foreign checkpoint keys -> ours, and the architecture a state dict's shapes describe.

Input: a state dict (name -> tensor, meta tensors work) in the official facebookresearch, HuggingFace
transformers or timm layout. Output: the same tensors under our (timm) keys and shapes
(:func:`remap_official`, :func:`remap_huggingface`, :func:`remap_timm`: pure functions), the layout a
state dict uses (:func:`detect_layout`) and the registered :class:`~edgeconvnext.models.registry.Arch`
its depths, widths and V1/V2 flags match (:func:`infer_arch`).

Usage::

    sd = REMAPS[detect_layout(sd)](sd)
    arch = infer_arch(sd)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgeconvnext.errors import CheckpointError
from edgeconvnext.models.registry import ARCHS, Arch

# ---------------------------------------------------------------------------------------------------
# Pure remaps: foreign state dict -> our (timm) keys and shapes
# ---------------------------------------------------------------------------------------------------


def _rename(
    sd: Mapping[str, Any], prefix_rules: list[tuple[str, str]], block_rules: list[tuple[str, str]]
) -> dict[str, Any]:
    """Apply the first matching prefix rule, then the block-suffix rules to ``stages.i.blocks.j.*``."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in prefix_rules:
            new, n = re.subn(pattern, repl, new, count=1)
            if n:
                break
        m = re.match(r"(stages\.\d+\.blocks\.\d+\.)(.*)$", new)
        if m:
            head, tail = m.groups()
            for old, rep in block_rules:
                if tail == old or tail.startswith(old + "."):
                    tail = rep + tail[len(old) :]
                    break
            new = head + tail
        out[new] = value
    return out


def _flat_grn(sd: dict[str, Any]) -> dict[str, Any]:
    """GRN gamma/beta stored as (1, 1, 1, C) -> (C,)."""
    return {
        k: (v.reshape(-1) if k.endswith((".mlp.grn.weight", ".mlp.grn.bias")) and v.ndim > 1 else v)
        for k, v in sd.items()
    }


def remap_official(sd: Mapping[str, Any]) -> dict[str, Any]:
    """facebookresearch ConvNeXt / ConvNeXt-V2 keys -> ours (the weights under checkpoint['model']).

    downsample_layers.0 -> stem; downsample_layers.i -> stages.i.downsample; stages.i.j -> stages.i.blocks.j;
    dwconv -> conv_dw; pwconv1/2 -> mlp.fc1/2; grn.gamma/beta (1,1,1,4C) -> mlp.grn.weight/bias (4C);
    norm -> head.norm; head -> head.fc.
    """
    prefix_rules = [
        (r"^downsample_layers\.0\.", "stem."),
        (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
        (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
        (r"^norm\.", "head.norm."),
        (r"^head\.", "head.fc."),
    ]
    block_rules = [
        ("dwconv", "conv_dw"),
        ("pwconv1", "mlp.fc1"),
        ("pwconv2", "mlp.fc2"),
        ("grn.gamma", "mlp.grn.weight"),
        ("grn.beta", "mlp.grn.bias"),
    ]
    return _flat_grn(_rename(sd, prefix_rules, block_rules))


def remap_huggingface(sd: Mapping[str, Any]) -> dict[str, Any]:
    """transformers ConvNextV2/ConvNext keys -> ours (with or without the ``convnextv2.``/``convnext.`` prefix).

    embeddings.patch_embeddings/.layernorm -> stem.0/.1; encoder.stages.i.downsampling_layer.k ->
    stages.i.downsample.k; encoder.stages.i.layers.j.{dwconv, layernorm, pwconv1, pwconv2} ->
    stages.i.blocks.j.{conv_dw, norm, mlp.fc1, mlp.fc2}; grn.weight/bias (1,1,1,4C) -> mlp.grn.* (4C);
    layer_scale_parameter -> gamma; layernorm -> head.norm; classifier -> head.fc.
    (transformers' final LayerNorm uses eps 1e-12 where ours, like the original, uses 1e-6: a ~1e-6 effect.)
    """
    prefix_rules = [
        (r"^embeddings\.patch_embeddings\.", "stem.0."),
        (r"^embeddings\.layernorm\.", "stem.1."),
        (r"^encoder\.stages\.(\d+)\.downsampling_layer\.(\d+)\.", r"stages.\1.downsample.\2."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.blocks.\2."),
        (r"^layernorm\.", "head.norm."),
        (r"^classifier\.", "head.fc."),
    ]
    block_rules = [
        ("dwconv", "conv_dw"),
        ("layernorm", "norm"),
        ("pwconv1", "mlp.fc1"),
        ("pwconv2", "mlp.fc2"),
        ("grn", "mlp.grn"),
        ("layer_scale_parameter", "gamma"),
    ]
    stripped = {re.sub(r"^(convnextv2|convnext)\.", "", k): v for k, v in sd.items()}
    return _flat_grn(_rename(stripped, prefix_rules, block_rules))


def remap_timm(sd: Mapping[str, Any]) -> dict[str, Any]:
    """timm keys are ours; only the 1x1-conv MLP weights of atto..nano (conv_mlp) become Linear: (o,i,1,1) -> (o,i)."""
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if re.search(r"\.mlp\.fc[12]\.weight$", k) and v.ndim == 4 and tuple(v.shape[2:]) == (1, 1):
            v = v.reshape(v.shape[0], v.shape[1])
        out[k] = v
    return out


REMAPS = {"official": remap_official, "huggingface": remap_huggingface, "timm": remap_timm}


def detect_layout(sd: Mapping[str, Any]) -> str | None:
    """Key layout of a state dict: "official", "huggingface", "timm", "fcmae" or None (not ConvNeXt)."""
    keys = list(sd)
    if any(k.startswith(("convnextv2.", "convnext.", "embeddings.patch_embeddings.")) for k in keys):
        return "huggingface"
    # FCMAE: the masked autoencoder (mask_token, encoder., decoder.) or its sparse encoder alone, whose
    # MinkowskiEngine layers are named dwconv.kernel, pwconv1.linear.weight, norm.ln.weight.
    if (
        "mask_token" in sd
        or any(k.startswith(("encoder.downsample_layers.", "decoder.")) for k in keys)
        or any(k.endswith((".kernel", ".linear.weight", ".ln.weight")) for k in keys)
    ):
        return "fcmae"
    if "downsample_layers.0.0.weight" in sd:
        return "official"
    if "stem.0.weight" in sd:
        return "timm"
    return None


# ---------------------------------------------------------------------------------------------------
# Architecture from tensor shapes
# ---------------------------------------------------------------------------------------------------


def _describe_shapes(sd: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], bool, bool]:
    """(depths, dims, has GRN, has LayerScale) of a state dict in our keys; works on meta tensors."""
    if "stem.0.weight" not in sd:
        raise CheckpointError(
            "cannot infer the architecture: the weights have no stem convolution "
            "(stem.0.weight); pass --model NAME or use a ConvNeXt classifier checkpoint"
        )
    depths: list[int] = []
    dims: list[int] = []
    i = 0
    while True:
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        dw = sd.get(f"stages.{i}.blocks.0.conv_dw.weight")
        dims.append(int(dw.shape[0]) if dw is not None else -1)
        i += 1
    if dims:
        dims[0] = int(sd["stem.0.weight"].shape[0])  # the stem's output channels are stage 0's width
    has_grn = any(k.endswith(".mlp.grn.weight") for k in sd)
    has_ls = any(re.match(r"stages\.\d+\.blocks\.\d+\.gamma$", k) for k in sd)
    return tuple(depths), tuple(dims), has_grn, has_ls


def infer_arch(state_dict: Mapping[str, Any]) -> Arch:
    """The registered architecture whose depths, widths and V1/V2 flags match a state dict in our keys.

    Widths come from the stem and each stage's depthwise conv, depths from the block counts, V1 vs V2
    from LayerScale ``gamma`` vs GRN keys. Raises CheckpointError when nothing matches.
    """
    depths, dims, has_grn, has_ls = _describe_shapes(state_dict)
    for arch in ARCHS.values():
        if (
            arch.depths == depths
            and arch.dims == dims
            and arch.use_grn == has_grn
            and (arch.ls_init_value is not None) == has_ls
        ):
            return arch
    kind = "V2 (GRN)" if has_grn else "V1 (LayerScale)" if has_ls else "V1 without LayerScale"
    same_width = [a.name for a in ARCHS.values() if a.dims == dims and a.use_grn == has_grn]
    hint = (
        f"; same widths as {same_width[0]} (depths {_fmt(ARCHS[same_width[0]].depths)}): is the file truncated?"
        if same_width
        else "; run 'edgeconvnext models' for the known ones"
    )
    raise CheckpointError(
        f"the checkpoint is a ConvNeXt {kind} with depths {_fmt(depths)} and widths {_fmt(dims)}, "
        f"which matches no known architecture{hint}"
    )


def _fmt(t: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, t)) + ")"
