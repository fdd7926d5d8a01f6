"""Checkpoints in, a ready fp32 model out: official, timm, HuggingFace and our own files.

Input: an architecture name and/or a checkpoint: an official facebookresearch ``.pth`` (weights under
``model``, optionally ``model_ema``), a timm ``.pth``/``.bin``/``.safetensors``, a HuggingFace
``pytorch_model.bin``/``model.safetensors`` (or the folder holding it and ``config.json``), a PyTorch
Lightning ``.ckpt`` (any of those layouts under the module's attribute, e.g. ``model.``), or a file
written by :func:`save_checkpoint`. The format is told from the keys, not the file name.
Output: :class:`LoadedModel`: the model in eval mode, its :class:`~edgeconvnext.models.registry.Arch` (inferred from
tensor shapes when no name is given), preprocessing, class names, the file's sha256 and notes.

Reading files and finding the weights in their container is :mod:`edgeconvnext.models.readers`; remapping
to our (timm) keys is done by pure functions over a state dict in :mod:`edgeconvnext.models.remap`
(:func:`remap_official`, :func:`remap_huggingface`, :func:`remap_timm`, re-exported here); loading is strict.

Usage::

    loaded = load_model(None, Path("convnextv2_nano_1k_224_ema.pt"), num_classes=10)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.artifacts import atomic_output, sha256_file
from edgeconvnext.errors import CheckpointError, UsageError
from edgeconvnext.models.readers import (
    FORMAT_MARKER,
    RawCheckpoint,
    Unwrapped,
    class_names_from_config,
    find_model_prefix,
    is_state_dict,
    preprocess_from_configs,
    read_raw,
    short_list,
    strip_wrappers,
    unwrap,
)
from edgeconvnext.models.registry import Arch, Preprocess, check_img_size, create_model, repeated_names, resolve
from edgeconvnext.models.remap import REMAPS, detect_layout, infer_arch, remap_huggingface, remap_official, remap_timm

if TYPE_CHECKING:  # torch stays out of import time (the CLI's --help must stay fast)
    import torch

    from edgeconvnext.models.convnext import ConvNeXt

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Top-level keys of our checkpoints; ``extra`` may not use them.
_RESERVED = frozenset({FORMAT_MARKER, "arch", "num_classes", "class_names", "preprocess", "state_dict"})


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
        problems.append(f"missing keys {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model) {short_list(mismatched, 3)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {arch.name}: " + "; ".join(problems))


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
    if img_size is not None:
        check_img_size(img_size)
    requested = resolve(model) if model is not None else None
    if checkpoint is None:
        return _random_model(requested, num_classes, img_size, ema)

    found = _find_weights(Path(checkpoint).expanduser(), allow_unsafe, ema)
    source = found.raw.weights_file
    arch = _choose_arch(found.state_dict, requested, source)
    net, ckpt_classes = _build_and_load(found.state_dict, arch, num_classes, source, found.notes)
    class_names, pp = _names_and_preprocess(found, arch, net.num_classes, ckpt_classes, source)
    where = found.preprocess_from or f"{arch.name} defaults"
    if img_size is not None and img_size != pp.img_size:
        pp = replace(pp, img_size=img_size)
        where += f", img_size {img_size} from the caller (--img-size or a recipe)"
    log.info("preprocessing from %s: %s", where, pp.to_dict())
    extra = {k: v for k, v in found.unwrapped.ours.items() if k not in _RESERVED}
    return LoadedModel(net, arch, pp, class_names, source, sha256_file(source), found.source_format, found.notes, extra)


def _random_model(requested: Arch | None, num_classes: int | None, img_size: int | None, ema: bool) -> LoadedModel:
    """No checkpoint: ``requested`` with fresh weights (for tests and timing)."""
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


@dataclass
class _FoundWeights:
    """A checkpoint's weights in our keys, with what was read around them."""

    raw: RawCheckpoint
    unwrapped: Unwrapped
    state_dict: dict[str, Any]
    source_format: str
    notes: list[str]
    preprocess_from: str | None = None


def _find_weights(path: Path, allow_unsafe: bool, ema: bool) -> _FoundWeights:
    """Read ``path``, find the state dict in its container (or under a training wrapper's attribute),
    refuse what is not a ConvNeXt classifier, and remap the keys to ours."""
    raw = read_raw(path, allow_unsafe)
    source = raw.weights_file
    unwrapped = unwrap(raw, ema)
    notes = list(unwrapped.notes)
    if raw.unsafe:
        notes.append("loaded with full unpickling (--allow-unsafe-pickle)")
    sd = strip_wrappers(unwrapped.state_dict)
    if not is_state_dict(sd):
        raise CheckpointError(
            f"{source} is not a ConvNeXt checkpoint: it holds no state dict of tensors (keys "
            f"{short_list([str(k) for k in sd])})"
        )

    layout = detect_layout(sd)
    if layout is None and (found := find_model_prefix(sd)) is not None:
        prefix, sub = found
        others = [k for k in sd if not str(k).startswith(prefix)]
        notes.append(
            f"weights taken from the '{prefix}' keys (a training wrapper's attribute)"
            + (f"; ignored {len(others)} other tensors ({short_list(others, 3)})" if others else "")
        )
        sd = strip_wrappers(sub)
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
            f"timm or HuggingFace layout (first keys: {short_list(list(sd), 3)})"
        )
    fmt = FORMAT_MARKER if unwrapped.container == FORMAT_MARKER else layout
    log.info("checkpoint %s: %s format (%s keys)", source, fmt, layout)
    return _FoundWeights(raw, unwrapped, REMAPS[layout](sd), fmt, notes)


def _choose_arch(sd: Mapping[str, Any], requested: Arch | None, source: Path) -> Arch:
    """The architecture from the shapes; a given name must agree with them."""
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
    return arch


def _check_values(sd: dict[str, Any], source: Path) -> None:
    """Weights stored as integers (int32 copies of float weights load as all-zero or truncated values and an
    export that 'matches' them) or holding NaN/Inf are a CheckpointError naming the first such tensor."""
    import torch

    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        if not (v.is_floating_point() or v.is_complex()):
            raise CheckpointError(
                f"checkpoint {source}: tensor {k} is stored as {str(v.dtype).replace('torch.', '')}, not floating "
                "point: the weights were converted wrongly; save them as float32 / float16 / bfloat16"
            )
        if not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(
                f"checkpoint {source}: tensor {k} holds {bad} NaN/Inf value(s) of {v.numel()}: the training "
                "diverged or the file is damaged; use an earlier checkpoint"
            )


def _build_and_load(
    sd: dict[str, Any], arch: Arch, num_classes: int | None, source: Path, notes: list[str]
) -> tuple[ConvNeXt, int | None]:
    """The fp32 eval-mode model with ``sd`` loaded strictly, and the checkpoint's classifier size (None:
    it has none). The classifier's size comes from the checkpoint unless ``num_classes`` is given."""
    fc = sd.get("head.fc.weight")
    ckpt_classes = int(fc.shape[0]) if fc is not None else None
    if ckpt_classes is None and num_classes is None:
        raise CheckpointError(
            f"checkpoint {source} has no classifier (head.fc): it is a backbone; pass "
            f"--num-classes N to add a new N-class classifier and fine-tune it"
        )
    import torch

    classes = ckpt_classes or num_classes
    assert classes is not None  # refused above when both are missing
    net = create_model(arch, num_classes=classes, device="meta")
    allow_missing = ("head.fc.weight", "head.fc.bias") if ckpt_classes is None else ()
    _check_keys(sd, net.state_dict(), source, arch, allow_missing)
    _check_values(sd, source)
    with torch.no_grad():
        # assign: the checkpoint's tensors become the parameters of the meta-device model, with no allocation
        # and copy (Module.to_empty's first empty_like from meta imports sympy through torch's meta
        # registrations: ~0.6 s that nothing else of a quantize needs). A tensor viewing a larger storage is
        # copied, so the rest of that storage is not kept alive.
        owned = {k: v.clone() if _views_more(v) else v.contiguous() for k, v in sd.items()}
        net.load_state_dict(owned, strict=not allow_missing, assign=True)
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
    return net, ckpt_classes


def _views_more(t: Any) -> bool:
    """Whether tensor ``t`` views only part of its storage (a slice of a larger saved tensor)."""
    return bool(t.untyped_storage().nbytes() > t.numel() * t.element_size())


def _names_and_preprocess(
    found: _FoundWeights, arch: Arch, net_classes: int, ckpt_classes: int | None, source: Path
) -> tuple[list[str] | None, Preprocess]:
    """Class names and preprocessing from our checkpoint's metadata or a HuggingFace/timm config (sets
    ``found.preprocess_from``); names are dropped when the classifier they named was replaced."""
    ours = found.unwrapped.ours
    if ours:
        stored = ours.get("arch")
        if isinstance(stored, str) and stored != arch.name:
            log.warning("checkpoint %s says arch %s but its shapes are %s", source, stored, arch.name)
        names = ours.get("class_names")
        stored_pp = ours.get("preprocess")
        pp = Preprocess.from_dict(stored_pp, f"checkpoint {source}") if isinstance(stored_pp, dict) else arch.preprocess
        found.preprocess_from = "the checkpoint" if isinstance(ours.get("preprocess"), dict) else None
    else:
        names = class_names_from_config(found.raw.config)
        pp, found.preprocess_from = preprocess_from_configs(found.raw, arch.preprocess)
    class_names = [str(n) for n in names] if isinstance(names, list) and names else None
    if repeated_names(class_names):
        log.warning("checkpoint %s repeats class names: %s", source, ", ".join(repeated_names(class_names)[:5]))
    if ckpt_classes != net_classes:
        class_names = None  # they named the outputs of the classifier that was replaced
    elif class_names is not None and len(class_names) != net_classes:
        found.notes.append(f"ignored {len(class_names)} class names: the classifier has {net_classes} outputs")
        class_names = None
    return class_names, pp


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
                f"extra entries ({short_list(list(extra))}) to a .pt file instead"
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


__all__ = [
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "LoadedModel",
    "detect_layout",
    "infer_arch",
    "load_model",
    "remap_huggingface",
    "remap_official",
    "remap_timm",
    "save_checkpoint",
]
