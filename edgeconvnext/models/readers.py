"""Reading checkpoint files and finding the weights in them, before any remapping.

Input: a path: a torch.save file (zip or legacy pickle; weights-only unless the caller allows full
unpickling), a TorchScript archive (with consent), safetensors, a sharded HuggingFace index, or a
HuggingFace model folder (weights + ``config.json`` + ``preprocessor_config.json``). Output: a
:class:`RawCheckpoint` (what was read) and, through :func:`unwrap`, the state dict found in its
container (our own format, a training checkpoint with ``model``/``model_ema``, or a plain state dict),
plus class names and preprocessing from HuggingFace/timm configs.

Usage::

    raw = read_raw(Path("model.safetensors"), allow_unsafe=False)
    sd = strip_wrappers(unwrap(raw, ema=False).state_dict)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.errors import CheckpointError
from edgeconvnext.models.pickle_scan import blocked_globals
from edgeconvnext.models.registry import Preprocess
from edgeconvnext.models.remap import detect_layout

log = logging.getLogger(__name__)

#: the marker key (and safetensors metadata key) of files written by checkpoint.save_checkpoint
FORMAT_MARKER = "edgeconvnext"
# Files a HuggingFace (transformers or timm hub) model folder holds, in order of preference.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
# PIL resample codes used by HuggingFace image processors.
_HF_RESAMPLE: dict[Any, str] = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass
class RawCheckpoint:
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
        blocked = blocked_globals(path) or re.findall(
            r"unsupported GLOBAL ([\w.]+) whose module \S+ is blocked", str(e)
        )
        if blocked:  # an attack, not a checkpoint: refused even with the user's consent to unpickle
            raise CheckpointError(
                f"checkpoint {path} calls {', '.join(blocked[:3])} when unpickled: it can run commands on this "
                "machine, so it was not loaded (not even with --allow-unsafe-pickle); get the weights from a "
                "trusted source"
            ) from None
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


def _read_weights_file(path: Path, allow_unsafe: bool) -> RawCheckpoint:
    kind = _sniff(path)
    if kind == "safetensors":
        sd, meta = _read_safetensors(path)
        return RawCheckpoint(sd, path, safetensors_metadata=meta)
    if kind in ("zip", "pickle"):
        obj, unsafe = _read_torch(path, allow_unsafe)
        return RawCheckpoint(obj, path, unsafe=unsafe)
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
        return RawCheckpoint(merged, path, unsafe=unsafe)
    if path.suffix.lower() in (".onnx", ".engine", ".plan"):
        raise CheckpointError(
            f"{path} is a deployed model, not a checkpoint: give the PyTorch checkpoint it was made "
            f"from (validate, inspect and build-engine take {path.suffix} files)"
        )
    raise CheckpointError(f"{path} is not a checkpoint: it is neither a PyTorch file (torch.save) nor safetensors")


def read_raw(path: Path, allow_unsafe: bool) -> RawCheckpoint:
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


def is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_wrappers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DistributedDataParallel's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = dict(sd)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def find_model_prefix(sd: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
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
        deeper = find_model_prefix(sub)  # e.g. "model.backbone."
        if deeper is not None:
            return prefix + deeper[0], deeper[1]
    return None


@dataclass
class Unwrapped:
    state_dict: dict[str, Any]
    container: str  # "edgeconvnext", "training" (model/model_ema, state_dict/state_dict_ema) or "plain"
    ours: dict[str, Any] = field(default_factory=dict)  # our checkpoint's metadata + extra
    notes: list[str] = field(default_factory=list)


def unwrap(raw: RawCheckpoint, ema: bool) -> Unwrapped:
    """Find the weights in whatever container the file holds; pick the EMA copy when asked."""
    import torch

    path = raw.weights_file
    obj = raw.obj
    if isinstance(obj, torch.nn.Module):  # a whole pickled model (only reachable with unsafe loading)
        obj = obj.state_dict()
    if raw.safetensors_metadata and FORMAT_MARKER in raw.safetensors_metadata:
        meta = raw.safetensors_metadata
        ours: dict[str, Any] = {}
        for k in ("arch", "num_classes", "class_names", "preprocess"):
            if k in meta:
                try:
                    ours[k] = json.loads(meta[k])
                except json.JSONDecodeError as e:
                    raise CheckpointError(
                        f"checkpoint {path}: its safetensors metadata '{k}' is not valid JSON ({e.msg} at "
                        f"character {e.pos}): the file was edited; fix the value or save the checkpoint again"
                    ) from None
        if ema:
            raise CheckpointError(f"--ema was given but {path} holds no EMA weights; drop --ema")
        return Unwrapped(dict(obj), FORMAT_MARKER, ours)
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
        ours = {str(k): v for k, v in obj.items() if k != key}
        return Unwrapped(dict(obj[key]), FORMAT_MARKER, ours)
    for main_key, ema_key in (("model", "model_ema"), ("state_dict", "state_dict_ema")):
        if isinstance(obj.get(main_key), Mapping) or isinstance(obj.get(ema_key), Mapping):
            notes: list[str] = []
            if ema:
                if not isinstance(obj.get(ema_key), Mapping):
                    raise CheckpointError(
                        f"--ema was given but {path} holds no EMA weights ('{ema_key}'; it has "
                        f"{short_list(list(obj))}); drop --ema"
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
            return Unwrapped(dict(chosen), "training", notes=notes)
    if ema:
        raise CheckpointError(
            f"--ema was given but {path} holds no EMA weights (no 'model_ema' or 'state_dict_ema'); drop --ema"
        )
    return Unwrapped(dict(obj), "plain")


def short_list(items: list[str], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def class_names_from_config(config: dict[str, Any] | None) -> list[str] | None:
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


def preprocess_from_configs(raw: RawCheckpoint, default: Preprocess) -> tuple[Preprocess, str | None]:
    """timm hub ``pretrained_cfg`` or a HuggingFace ``preprocessor_config.json``, else ``default``."""
    cfg = (raw.config or {}).get("pretrained_cfg")
    if isinstance(cfg, dict) and "input_size" in cfg:
        try:
            d: dict[str, Any] = {"img_size": int(cfg["input_size"][-1])}
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
