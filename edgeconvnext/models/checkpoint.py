"""Checkpoints in, a ready fp32 model out: official, timm, HuggingFace and our own files.

Input: an architecture name and/or a checkpoint: an official facebookresearch ``.pth`` (weights under
``model``, optionally ``model_ema``), a timm ``.pth``/``.bin``/``.safetensors``, a HuggingFace
``pytorch_model.bin``/``model.safetensors`` (or the folder holding it and ``config.json``), a PyTorch
Lightning ``.ckpt`` (any of those layouts under the module's attribute, e.g. ``model.``), or a file
written by :func:`save_checkpoint`. The format is told from the keys, not the file name.
Output: :class:`LoadedModel`: the model in eval mode, its :class:`~edgeconvnext.zoo.Arch` (inferred from
tensor shapes when no name is given), preprocessing, class names, the file's sha256 and notes.

Remapping to our (timm) keys is done by pure functions over a state dict (:func:`remap_official`,
:func:`remap_huggingface`, :func:`remap_timm`); loading is strict.

Usage::

    loaded = load_model(None, Path("convnextv2_nano_1k_224_ema.pt"), num_classes=10)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.artifacts import atomic_output, sha256_file
from edgeconvnext.errors import CheckpointError, UsageError
from edgeconvnext.models.registry import ARCHS, Arch, Preprocess, create_model, resolve

if TYPE_CHECKING:  # torch stays out of import time (the CLI's --help must stay fast)
    import torch

    from edgeconvnext.models.convnext import ConvNeXt

log = logging.getLogger(__name__)

FORMAT_MARKER = "edgeconvnext"
FORMAT_VERSION = 1
# Top-level keys of our checkpoints; ``extra`` may not use them.
_RESERVED = frozenset({FORMAT_MARKER, "arch", "num_classes", "class_names", "preprocess", "state_dict"})
# Files a HuggingFace (transformers or timm hub) model folder holds, in order of preference.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
# PIL resample codes used by HuggingFace image processors.
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass
class LoadedModel:
    """A model ready for export/evaluation, with everything needed to reproduce its inputs."""

    model: ConvNeXt
    arch: Arch
    preprocess: Preprocess
    class_names: list[str] | None
    source: Path | None
    source_sha256: str | None
    source_format: str  # "official" | "timm" | "huggingface" | "edgeconvnext" | "random"
    notes: list[str] = field(default_factory=list)
    # Non-reserved top-level entries of an edgeconvnext checkpoint (optimizer, epoch ... for resuming).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes


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


_REMAPS = {"official": remap_official, "huggingface": remap_huggingface, "timm": remap_timm}


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


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What was read from disk before any interpretation."""

    obj: Any
    weights_file: Path
    config: dict[str, Any] | None = None
    preprocessor_config: dict[str, Any] | None = None
    safetensors_metadata: dict[str, str] | None = None
    unsafe: bool = False


def _sniff(path: Path) -> str | None:
    """ "zip" (torch.save), "pickle" (legacy torch.save), "safetensors", "index" (sharded HF) or None."""
    if path.name.endswith(".index.json"):
        return "index"
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
    return None


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(". ")[0].rstrip(".")


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # noqa: BLE001 - safetensors raises its own (Rust) error types
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt safetensors file ({_first_sentence(e)}); download or copy it again"
        ) from e


def _read_torch(path: Path, allow_unsafe: bool) -> tuple[Any, bool]:
    """torch.load with weights_only=True; full unpickling only with the user's consent."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not m:
            raise CheckpointError(
                f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint ({_first_sentence(e)})"
            ) from None
        if not allow_unsafe:
            raise CheckpointError(
                f"checkpoint {path} stores a Python object ({m.group(1)}) that safe "
                f"(weights-only) loading refuses; pass --allow-unsafe-pickle only if you trust "
                f"the file (unpickling can run arbitrary code)"
            ) from None
        log.warning("loading %s with full unpickling (allowed by the caller): it stores %s", path, m.group(1))
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, IndexError) as e:
        if "TorchScript" in str(e):
            return _read_torchscript(path, allow_unsafe), True
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt "
            f"({_first_sentence(e)}); download or copy it again"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except Exception as e:  # noqa: BLE001 - arbitrary unpickling can raise anything
        raise CheckpointError(f"cannot unpickle checkpoint {path}: {type(e).__name__}: {_first_sentence(e)}") from None


def _read_torchscript(path: Path, allow_unsafe: bool) -> dict[str, Any]:
    """The weights (state dict) of a TorchScript archive (torch.jit.save), with the user's consent."""
    import torch

    if not allow_unsafe:
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a weights checkpoint: give "
            f"the checkpoint it was made from, or pass --allow-unsafe-pickle to read its weights "
            f"(loading TorchScript compiles the code stored in it: only for files you trust)"
        )
    log.warning("reading the weights of TorchScript archive %s (allowed by the caller)", path)
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as e:  # noqa: BLE001 - the TorchScript loader raises many types
        raise CheckpointError(
            f"cannot load TorchScript archive {path}: {type(e).__name__}: {_first_sentence(e)}"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {_first_sentence(e)}; fix or remove the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; fix or remove the file")
    return data


def _read_weights_file(path: Path, allow_unsafe: bool) -> _Raw:
    kind = _sniff(path)
    if kind == "safetensors":
        sd, meta = _read_safetensors(path)
        return _Raw(sd, path, safetensors_metadata=meta)
    if kind in ("zip", "pickle"):
        obj, unsafe = _read_torch(path, allow_unsafe)
        return _Raw(obj, path, unsafe=unsafe)
    if kind == "index":  # sharded HuggingFace weights: {"weight_map": {key: shard file}}
        index = _read_json(path)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise CheckpointError(f"{path} has no weight_map; it is not a sharded checkpoint index")
        merged: dict[str, Any] = {}
        unsafe = False
        for name in shards:
            shard = path.parent / name
            if not shard.is_file():
                raise CheckpointError(f"shard {shard} named in {path} is missing; download it too")
            raw = _read_weights_file(shard, allow_unsafe)
            if not isinstance(raw.obj, Mapping):
                raise CheckpointError(f"shard {shard} does not hold a state dict")
            merged.update(raw.obj)
            unsafe |= raw.unsafe
        return _Raw(merged, path, unsafe=unsafe)
    if path.suffix.lower() in (".onnx", ".engine", ".plan"):
        raise CheckpointError(
            f"{path} is a deployed model, not a checkpoint: give the PyTorch checkpoint it was made "
            f"from (validate, inspect and build-engine take {path.suffix} files)"
        )
    raise CheckpointError(f"{path} is not a checkpoint: it is neither a PyTorch file (torch.save) nor safetensors")


def _read(path: Path, allow_unsafe: bool) -> _Raw:
    """Read a weights file or a HuggingFace model folder (weights + config.json + preprocessor_config.json)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    folder: Path | None = None
    if path.is_dir():
        folder = path
        found = [path / n for n in _HF_WEIGHTS if (path / n).is_file()]
        if not found:
            raise CheckpointError(
                f"{path} is a folder without model.safetensors or pytorch_model.bin; give the "
                f"checkpoint file itself or a HuggingFace model folder"
            )
        weights = found[0]
    else:
        weights = path
        if path.name in _HF_WEIGHTS:  # a file from a HuggingFace folder: its config sits beside it
            folder = path.parent
    raw = _read_weights_file(weights, allow_unsafe)
    if folder is not None:
        if (folder / "config.json").is_file():
            raw.config = _read_json(folder / "config.json")
        if (folder / "preprocessor_config.json").is_file():
            raw.preprocessor_config = _read_json(folder / "preprocessor_config.json")
    return raw


# ---------------------------------------------------------------------------------------------------
# Interpreting what was read
# ---------------------------------------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_wrappers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DistributedDataParallel's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = dict(sd)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _find_model_prefix(sd: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Weights kept under an attribute of a training wrapper (PyTorch Lightning's ``model.``/``net.``):
    the prefix whose keys, stripped of it, form a ConvNeXt layout, and those keys; None if there is none."""
    groups: dict[str, dict[str, Any]] = {}
    for k, v in sd.items():
        head, dot, tail = str(k).partition(".")
        if dot:
            groups.setdefault(head + ".", {})[tail] = v
    for prefix, sub in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if detect_layout(sub) in ("official", "timm", "huggingface"):
            return prefix, sub
        deeper = _find_model_prefix(sub)  # e.g. "model.backbone."
        if deeper is not None:
            return prefix + deeper[0], deeper[1]
    return None


@dataclass
class _Unwrapped:
    state_dict: dict[str, Any]
    container: str  # "edgeconvnext", "training" (model/model_ema, state_dict/state_dict_ema) or "plain"
    ours: dict[str, Any] = field(default_factory=dict)  # our checkpoint's metadata + extra
    notes: list[str] = field(default_factory=list)


def _unwrap(raw: _Raw, ema: bool) -> _Unwrapped:
    """Find the weights in whatever container the file holds; pick the EMA copy when asked."""
    import torch

    path = raw.weights_file
    obj = raw.obj
    if isinstance(obj, torch.nn.Module):  # a whole pickled model (only reachable with unsafe loading)
        obj = obj.state_dict()
    if raw.safetensors_metadata and FORMAT_MARKER in raw.safetensors_metadata:
        meta = raw.safetensors_metadata
        ours = {k: json.loads(meta[k]) for k in ("arch", "num_classes", "class_names", "preprocess") if k in meta}
        if ema:
            raise CheckpointError(f"--ema was given but {path} holds no EMA weights; drop --ema")
        return _Unwrapped(dict(obj), FORMAT_MARKER, ours)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} is not a ConvNeXt checkpoint: it holds a {type(obj).__name__}, not a dict of weights"
        )
    if FORMAT_MARKER in obj:
        key = "state_dict_ema" if ema else "state_dict"
        if key not in obj:
            raise CheckpointError(
                f"--ema was given but {path} holds no EMA weights (state_dict_ema); drop --ema"
                if ema
                else f"{path} is an edgeconvnext checkpoint without a state_dict; it is damaged"
            )
        ours = {k: v for k, v in obj.items() if k != key}
        return _Unwrapped(dict(obj[key]), FORMAT_MARKER, ours)
    for main_key, ema_key in (("model", "model_ema"), ("state_dict", "state_dict_ema")):
        if isinstance(obj.get(main_key), Mapping) or isinstance(obj.get(ema_key), Mapping):
            notes: list[str] = []
            if ema:
                if not isinstance(obj.get(ema_key), Mapping):
                    raise CheckpointError(
                        f"--ema was given but {path} holds no EMA weights ('{ema_key}'; it has "
                        f"{_list(list(obj))}); drop --ema"
                    )
                chosen = obj[ema_key]
                notes.append(f"using the EMA weights ('{ema_key}')")
            else:
                if not isinstance(obj.get(main_key), Mapping):
                    raise CheckpointError(f"{path} holds only EMA weights ('{ema_key}'); pass --ema to load them")
                chosen = obj[main_key]
                if isinstance(obj.get(ema_key), Mapping):
                    notes.append(f"the checkpoint also holds EMA weights ('{ema_key}'); pass --ema to use them")
            ignored = [k for k in obj if k not in (main_key, ema_key)]
            if ignored:
                log.info("ignoring training entries of %s: %s", path, ", ".join(map(str, ignored)))
            return _Unwrapped(dict(chosen), "training", notes=notes)
    if ema:
        raise CheckpointError(
            f"--ema was given but {path} holds no EMA weights (no 'model_ema' or 'state_dict_ema'); drop --ema"
        )
    return _Unwrapped(dict(obj), "plain")


def _list(items: list[str], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _class_names_from_config(config: dict[str, Any] | None) -> list[str] | None:
    """HuggingFace ``id2label`` (ignoring the LABEL_i placeholders) or timm hub ``label_names``."""
    if not config:
        return None
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            pairs = sorted((int(k), str(v)) for k, v in id2label.items())
        except ValueError:
            return None
        if [i for i, _ in pairs] != list(range(len(pairs))):
            return None
        if all(re.fullmatch(r"LABEL_\d+", v) for _, v in pairs):
            return None
        return [v for _, v in pairs]
    return None


def _preprocess_from_configs(raw: _Raw, default: Preprocess) -> tuple[Preprocess, str | None]:
    """timm hub ``pretrained_cfg`` or a HuggingFace ``preprocessor_config.json``, else ``default``."""
    cfg = (raw.config or {}).get("pretrained_cfg")
    if isinstance(cfg, dict) and "input_size" in cfg:
        try:
            d = {"img_size": int(cfg["input_size"][-1])}
            for k in ("crop_pct", "interpolation", "mean", "std"):
                if cfg.get(k) is not None:
                    d[k] = cfg[k]
            return Preprocess.from_dict({**default.to_dict(), **d}), "config.json pretrained_cfg"
        except (TypeError, ValueError, IndexError) as e:
            raise CheckpointError(
                f"config.json beside {raw.weights_file} has an unreadable pretrained_cfg ({e}); fix or remove the file"
            ) from None
    pc = raw.preprocessor_config
    if pc and isinstance(pc.get("size"), dict) and pc["size"].get("shortest_edge") is not None:

        def get(key: str, fallback: Any) -> Any:  # a key set to null means the processor's default
            return fallback if pc.get(key) is None else pc[key]

        try:
            size = int(pc["size"]["shortest_edge"])
            d = {
                "img_size": size,
                # transformers' ConvNextImageProcessor resizes without cropping from 384 px up
                "crop_pct": float(get("crop_pct", 224 / 256)) if size < 384 else 1.0,
                "interpolation": _HF_RESAMPLE.get(pc.get("resample"), default.interpolation),
                "mean": get("image_mean", list(default.mean)),
                "std": get("image_std", list(default.std)),
            }
            return Preprocess.from_dict({**default.to_dict(), **d}), "preprocessor_config.json"
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"preprocessor_config.json beside {raw.weights_file} has an unreadable value "
                f"({e}); fix or remove the file"
            ) from None
    return default, None


def _check_keys(
    sd: Mapping[str, Any], model_sd: Mapping[str, Any], path: Path, arch: Arch, allow_missing: tuple[str, ...] = ()
) -> None:
    """Strict loading with a readable message: missing, unexpected and mis-shaped keys, a few of each."""
    missing = [k for k in model_sd if k not in sd and k not in allow_missing]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(model_sd[k].shape)}"
        for k in sd
        if k in model_sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model) {_list(mismatched, 3)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {arch.name}: " + "; ".join(problems))


def _check_img_size(img_size: int | None) -> None:
    # Another size would run, but the stride-2 downsamples would silently drop the last rows/columns.
    if img_size is not None and (img_size < 32 or img_size % 32):
        lo, hi = max(32, img_size // 32 * 32), max(32, -(-img_size // 32) * 32)
        sizes = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise UsageError(f"--img-size {img_size} is not a multiple of 32 (ConvNeXt downsamples by 32); use {sizes}")


def load_model(
    model: str | None,
    checkpoint: Path | None = None,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    allow_unsafe: bool = False,
    ema: bool = False,
) -> LoadedModel:
    """Build ``model`` (a name or alias) and/or load ``checkpoint`` into it; see the module docstring.

    No checkpoint: random weights, 1000 classes unless ``num_classes``. With a checkpoint the head size
    is the checkpoint's; ``num_classes`` of another size replaces the classifier with a fresh one.
    """
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes must be at least 1, got {num_classes}")
    _check_img_size(img_size)
    requested = resolve(model) if model is not None else None

    if checkpoint is None:
        if requested is None:
            raise UsageError("give --model NAME (random weights) or --checkpoint FILE")
        if ema:
            raise UsageError("--ema needs a --checkpoint that holds EMA weights")
        net = create_model(requested, num_classes=num_classes or 1000).eval()
        pp = requested.preprocess if img_size is None else replace(requested.preprocess, img_size=img_size)
        log.info("built %s with random weights (%d classes)", requested.name, net.num_classes)
        return LoadedModel(
            net,
            requested,
            pp,
            None,
            None,
            None,
            "random",
            ["random weights (no checkpoint): for tests and timing, not for accuracy"],
        )

    path = Path(checkpoint).expanduser()
    raw = _read(path, allow_unsafe)
    source = raw.weights_file
    unwrapped = _unwrap(raw, ema)
    notes = list(unwrapped.notes)
    if raw.unsafe:
        notes.append("loaded with full unpickling (--allow-unsafe-pickle)")
    sd = _strip_wrappers(unwrapped.state_dict)
    if not _is_state_dict(sd):
        raise CheckpointError(
            f"{source} is not a ConvNeXt checkpoint: it holds no state dict of tensors (keys "
            f"{_list([str(k) for k in sd])})"
        )

    layout = detect_layout(sd)
    if layout is None and (found := _find_model_prefix(sd)) is not None:
        prefix, sub = found
        others = [k for k in sd if not str(k).startswith(prefix)]
        notes.append(
            f"weights taken from the '{prefix}' keys (a training wrapper's attribute)"
            + (f"; ignored {len(others)} other tensors ({_list(others, 3)})" if others else "")
        )
        sd = _strip_wrappers(sub)
        layout = detect_layout(sd)
    if layout == "fcmae":
        raise CheckpointError(
            f"{source} is a ConvNeXt-V2 FCMAE pre-training checkpoint (sparse encoder, no "
            f"classifier): it has no classifier and must be fine-tuned first; use a fine-tuned "
            f"(*_ft_*) checkpoint"
        )
    if layout is None:
        raise CheckpointError(
            f"{source} is not a ConvNeXt checkpoint: no stem/downsample keys in the official, "
            f"timm or HuggingFace layout (first keys: {_list(list(sd), 3)})"
        )
    fmt = FORMAT_MARKER if unwrapped.container == FORMAT_MARKER else layout
    sd = _REMAPS[layout](sd)
    log.info("checkpoint %s: %s format (%s keys)", source, fmt, layout)

    # Architecture: from the shapes; a given name must agree with them.
    try:
        inferred: Arch | None = infer_arch(sd)
    except CheckpointError:
        if requested is None:
            raise
        inferred = None
    if requested is not None and inferred is not None and inferred.name != requested.name:
        raise CheckpointError(
            f"checkpoint {source} is {inferred.name}, not {requested.name}: drop --model to use "
            f"{inferred.name}, or give the checkpoint made for {requested.name}"
        )
    arch = requested or inferred
    assert arch is not None  # one of them is set: inference raised otherwise

    # Classifier: its size comes from the checkpoint unless num_classes is given.
    fc = sd.get("head.fc.weight")
    ckpt_classes = int(fc.shape[0]) if fc is not None else None
    if ckpt_classes is None and num_classes is None:
        raise CheckpointError(
            f"checkpoint {source} has no classifier (head.fc): it is a backbone; pass "
            f"--num-classes N to add a new N-class classifier and fine-tune it"
        )
    import torch

    net = create_model(arch, num_classes=ckpt_classes or num_classes, device="meta")
    allow_missing = ("head.fc.weight", "head.fc.bias") if ckpt_classes is None else ()
    _check_keys(sd, net.state_dict(), source, arch, allow_missing)
    net = net.to_empty(device="cpu")
    with torch.no_grad():
        net.load_state_dict(sd, strict=not allow_missing)
    if ckpt_classes is None:
        net.reset_classifier(num_classes)
        notes.append(f"the checkpoint has no classifier: added a new {num_classes}-class one (train it)")
    elif num_classes is not None and num_classes != ckpt_classes:
        net.reset_classifier(num_classes)
        notes.append(f"replaced the {ckpt_classes}-class classifier with a new {num_classes}-class one (train it)")
    net = net.float().eval()
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()} - {"float32"})
    if dtypes:
        log.info("checkpoint weights stored as %s; loaded as float32", ", ".join(dtypes))

    # Class names and preprocessing.
    ours = unwrapped.ours
    if ours:
        stored = ours.get("arch")
        if isinstance(stored, str) and stored != arch.name:
            log.warning("checkpoint %s says arch %s but its shapes are %s", source, stored, arch.name)
        names = ours.get("class_names")
        pp = Preprocess.from_dict(ours["preprocess"]) if isinstance(ours.get("preprocess"), dict) else arch.preprocess
        pp_from = "the checkpoint" if isinstance(ours.get("preprocess"), dict) else None
    else:
        names = _class_names_from_config(raw.config)
        pp, pp_from = _preprocess_from_configs(raw, arch.preprocess)
    class_names = [str(n) for n in names] if isinstance(names, list) and names else None
    if ckpt_classes != net.num_classes:
        class_names = None  # they named the outputs of the classifier that was replaced
    elif class_names is not None and len(class_names) != net.num_classes:
        notes.append(f"ignored {len(class_names)} class names: the classifier has {net.num_classes} outputs")
        class_names = None
    if img_size is not None:
        pp = replace(pp, img_size=img_size)
    log.info("preprocessing from %s: %s", pp_from or f"{arch.name} defaults", pp.to_dict())

    extra = {k: v for k, v in ours.items() if k not in _RESERVED}
    return LoadedModel(net, arch, pp, class_names, source, sha256_file(source), fmt, notes, extra)


# ---------------------------------------------------------------------------------------------------
# Writing our own checkpoints
# ---------------------------------------------------------------------------------------------------


def _check_plain(value: Any, where: str) -> None:
    """Only types torch.load(weights_only=True) accepts, so our files never need unsafe loading."""
    import torch

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.Size)):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise UsageError(f"save_checkpoint: {where} has a key of type {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise UsageError(
        f"save_checkpoint: {where} is a {type(value).__name__}, which weights-only loading refuses; "
        f"convert it to plain types (str, numbers, lists, dicts, tensors)"
    )


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    arch: Arch | str,
    *,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` with its architecture, class names and preprocessing; ``load_model`` reads it back.

    ``.safetensors`` stores the weights and metadata only; any other suffix is a torch.save dict that
    also carries ``extra`` (optimizer state, epoch ...) and loads with weights_only=True.
    """
    arch = resolve(arch) if isinstance(arch, str) else arch
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    shapes = infer_arch(sd)
    if shapes.name != arch.name:
        raise UsageError(f"save_checkpoint: the model is {shapes.name}, not {arch.name}")
    num_classes = int(sd["head.fc.weight"].shape[0])
    if class_names is not None and len(class_names) != num_classes:
        raise UsageError(f"save_checkpoint: {len(class_names)} class names for a {num_classes}-class classifier")
    pp = (preprocess or arch.preprocess).to_dict()
    names = [str(n) for n in class_names] if class_names is not None else None
    path = Path(path)
    if path.suffix == ".safetensors":
        if extra:
            raise UsageError(
                f"save_checkpoint: {path.name} is safetensors, which holds tensors only; save the "
                f"extra entries ({_list(list(extra))}) to a .pt file instead"
            )
        from safetensors.torch import save_file

        meta = {
            FORMAT_MARKER: str(FORMAT_VERSION),
            "arch": json.dumps(arch.name),
            "num_classes": json.dumps(num_classes),
            "class_names": json.dumps(names),
            "preprocess": json.dumps(pp),
        }
        with atomic_output(path) as tmp:
            save_file(sd, str(tmp), metadata=meta)
    else:
        import torch

        extra = dict(extra or {})
        clash = sorted(set(extra) & _RESERVED)
        if clash:
            raise UsageError(f"save_checkpoint: extra uses reserved keys {', '.join(clash)}; rename them")
        _check_plain(extra, "extra")
        obj = {
            FORMAT_MARKER: FORMAT_VERSION,
            "arch": arch.name,
            "num_classes": num_classes,
            "class_names": names,
            "preprocess": pp,
            "state_dict": sd,
            **extra,
        }
        with atomic_output(path) as tmp:
            torch.save(obj, tmp)
    log.info("saved %s checkpoint %s", arch.name, path)
    return path
