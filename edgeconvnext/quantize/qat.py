"""Quantization-aware training: the calibrated PTQ model, fine-tuned with fake quantization and distillation
from the frozen FP32 checkpoint, exported to the same TensorRT-valid Q/DQ ONNX as PTQ.

Input: a :class:`~edgeconvnext.models.checkpoint.LoadedModel` (the FP32 teacher and the starting weights),
calibration images (as PTQ), training images (an ImageFolder: label loss + distillation; a plain folder of
images: distillation only), optional labelled validation images, a :class:`QatConfig` and the PTQ options
(:class:`~edgeconvnext.quantize.ptq.QuantizeConfig`: policy, ``--exclude``, calibration). Output (all or
nothing, beside ``OUT.onnx``): ``OUT.onnx`` (explicit Q/DQ, opset 17, the PTQ layer names), ``OUT.onnx.json``
(placement, training history, parity, TensorRT check), ``OUT.calib.json`` (the calibration manifest),
``OUT.fp32.onnx`` (the baseline) and ``OUT.qat.pt`` (the trained weights, loadable as a plain edgeconvnext
checkpoint, with the quantizer state under ``qat``). While training, ``OUT.qat.last.pt`` holds the state after
the last finished epoch (``resume=True`` continues from it); it is removed when the outputs are written.

Steps: PTQ exactly as ``quantize --method ptq`` (rank 0; same policy, exclude list, calibration) -> its
Q/DQ scales installed as fake quantizers on the torch model (checked: same logits as the PTQ ONNX) -> train
(AdamW/SGD, warm-up + cosine, gradient clipping, optional EMA; KL(teacher || student) on logits softened by
``temperature``, times T^2, plus ``logit_mse`` x the logits' mean-squared error, plus cross-entropy with
labels) -> validate each epoch (fake-quant top-1 and agreement with FP32), keep the best epoch -> export
(TorchScript, opset 17) -> TensorRT rules -> parity of onnxruntime against the torch fake-quant model ->
atomic write.

Under ``torchrun`` (see :mod:`edgeconvnext.train.distributed`) rank 0 calibrates and broadcasts the scales,
every rank trains its DistributedSampler shard under DDP, only rank 0 validates and writes.

Usage::

    result = qat(load_model("convnextv2_nano", ckpt), Path("nano.qat.int8.onnx"), calib_data=Path("calib/"),
                 config=QatConfig(train_data=Path("train/"), val_data=Path("val/"), epochs=2))
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconvnext.artifacts import Sidecar, Skipped, atomic_output, check_output, environment, input_ref
from edgeconvnext.errors import CheckpointError, DataError, ExportError, UsageError
from edgeconvnext.quantize import policy as policy_mod
from edgeconvnext.quantize.config import Method
from edgeconvnext.quantize.ptq import QuantizeConfig, output_paths
from edgeconvnext.quantize.qat_config import QatConfig
from edgeconvnext.signals import clear_resumable, note_resumable, terminate_like_interrupt
from edgeconvnext.train.loop import NO_LABEL, EpochLog, ProgressHook, cpu_count, lr_at

if TYPE_CHECKING:
    import torch

    from edgeconvnext.models.checkpoint import LoadedModel
    from edgeconvnext.onnx.trt_rules import TrtReport
    from edgeconvnext.train.distributed import Dist

log = logging.getLogger(__name__)

STATE_FORMAT = "edgeconvnext-qat-state"
#: 2: the PTQ start (epoch 0) is a best-epoch candidate and the key is :func:`best_key` (1, unversioned: top-1 alone
#: decided, the start never); a state of another version is refused on --resume
STATE_VERSION = 2
#: how the exported epoch is chosen (the sidecar's ``training.best_rule``)
BEST_RULE = (
    "highest min(val top-1, FP32 val top-1), then highest val agreement with FP32, among the start (epoch 0) and "
    "the trained epochs; a tie keeps the earlier epoch; without --val-data the last epoch"
)
#: images the start (epoch 0) is compared with the PTQ ONNX on, and the export with the torch model on
CHECK_IMAGES = 64
#: the torch fake-quant model and the PTQ / exported ONNX must agree within this (max |diff| / max |logit|),
#: onnxruntime running the Q/DQ graph as written (graph optimizations off: QuantizeLinear, DequantizeLinear and
#: float Conv/MatMul, the exact arithmetic TensorRT's int8 kernels carry out). A value one rounding step away
#: flips to the next level (float accumulation order differs), which with coarse per-tensor scales (activation
#: outliers) moves logits by up to 3% (measured: 3.3e-2 at 50x outliers without smoothing, 8e-4 at 200x).
#: onnxruntime's fused int8 CPU kernels (u8s8 on AVX2) are not used for the check: on the same 200x model
#: they differ from the exact semantics by 0.61 relative (cosine 0.42). A wrong scale or a missed transform
#: is far larger than the tolerance.
PARITY_REL_TOL = 5e-2
#: options that may change on --resume (they do not change what is computed)
RESUMABLE_CHANGES = frozenset({"resume", "workers", "threads", "val_data"})


@dataclass
class EpochRecord:
    """One epoch of QAT (validation numbers are None without --val-data)."""

    epoch: int  # 1-based
    loss: float
    train_top1: float | None
    lr: float
    steps: int
    images: int
    images_per_s: float
    seconds: float
    val_top1: float | None = None
    val_agreement: float | None = None  # top-1 agreement of the fake-quant model with FP32 (%)
    skipped: int = 0


@dataclass
class QatResult:
    """What :func:`qat` wrote and measured."""

    path: Path
    sidecar: Path
    manifest: Path
    checkpoint: Path
    fp32_path: Path | None
    config: QatConfig
    quant: QuantizeConfig
    mode: str  # "labels+distillation" or "distillation only"
    placement: list[policy_mod.Placement]
    report: TrtReport
    history: list[EpochRecord]
    best_epoch: int
    start_vs_ptq: dict[str, Any]
    parity: dict[str, Any]
    agreement: dict[str, Any]
    fp32_val_top1: float | None
    ptq_val_top1: float | None
    ptq_val_agreement: float | None
    world_size: int
    seconds: float
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    resumed_after: int = 0  # epochs the resumed state had finished (``history`` holds them too)

    def table(self, compress: bool = True) -> list[dict[str, Any]]:
        return policy_mod.table(self.placement, compress=compress)

    @property
    def int8_macs_share(self) -> float | None:
        return policy_mod.int8_macs_share(self.placement)


def qat_paths(output: Path) -> dict[str, Path]:
    """PTQ's files for ``output`` plus the QAT checkpoint ``x.qat.pt`` and the resumable ``x.qat.last.pt``."""
    paths = output_paths(output)
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    paths["checkpoint"] = output.with_name(f"{stem}.qat.pt")
    paths["state"] = output.with_name(f"{stem}.qat.last.pt")
    return paths


# ---------------------------------------------------------------------------------------------------
# data


@dataclass
class TrainData:
    paths: list[Path]
    labels: list[int]  # NO_LABEL for every image in distillation-only mode
    labelled: bool
    class_names: list[str] | None

    @property
    def mode(self) -> str:
        return "labels+distillation" if self.labelled else "distillation only"


def _check_classes(names: list[str], loaded: LoadedModel, where: Path) -> None:
    """Labels must name the checkpoint's classes (by name when it has names, else by count)."""
    if loaded.class_names is not None:
        unknown = [c for c in names if c not in loaded.class_names]
        if unknown:
            raise DataError(
                f"classes {unknown[:5]} of {where} are not among the checkpoint's {len(loaded.class_names)} "
                f"classes (e.g. {loaded.class_names[:3]}): the labels would not match its outputs; use a folder "
                "with the checkpoint's classes, or --no-labels for distillation only"
            )
    elif len(names) != loaded.num_classes:
        raise DataError(
            f"{where} has {len(names)} classes but the checkpoint's classifier has {loaded.num_classes} outputs: "
            "the labels would not match; use a folder with its classes, or --no-labels for distillation only"
        )


def load_train_data(root: Path, loaded: LoadedModel, labels: bool) -> TrainData:
    """Labelled (ImageFolder / labels file) or unlabelled (any images, recursively) training images."""
    from edgeconvnext.data.folders import LabelledImages, check_folder, has_labels, list_images

    root = check_folder(root, "--train-data", "training images")
    if labels and has_labels(root):
        folder = LabelledImages.discover(root)
        _check_classes(folder.class_names, loaded, root)
        names = loaded.class_names or folder.class_names
        ds = LabelledImages.discover(root, class_names=names)
        present = len(set(ds.labels))
        if present < len(names):
            log.warning(
                "--train-data %s holds images of %d of the checkpoint's %d classes: the label loss pulls every "
                "prediction towards those; give a folder with every class, or --no-labels (distillation only)",
                root,
                present,
                len(names),
            )
        return TrainData(ds.paths, ds.labels, True, names)
    paths = list_images(root)
    if not paths:
        raise DataError(f"no images found in --train-data {root} (searched recursively)")
    return TrainData(paths, [NO_LABEL] * len(paths), False, None)


def _check_batches(n_images: int, batch: int, world: int, root: Path) -> None:
    if n_images < batch:
        raise DataError(
            f"--train-data {root} holds {n_images} image{'s' if n_images != 1 else ''}, fewer than one batch "
            f"(--batch-size {batch}): "
            f"add images or pass --batch-size {n_images}"
        )
    batches = n_images // batch
    if world > batches:
        fixes = [f"--nproc-per-node {batches}"] if batches >= 1 else []
        fixes.append(f"--batch-size {n_images // world}" if n_images >= world else "more images")
        raise UsageError(
            f"{world} processes but --train-data {root} gives only {batches} full batch{'es' if batches != 1 else ''}"
            f" of {batch}: every process needs at least one; use {' or '.join(fixes)}"
        )


# ---------------------------------------------------------------------------------------------------
# start: PTQ, then its scales on the torch model


def scales_from_onnx(q: Any, placement: list[policy_mod.Placement]) -> dict[str, tuple[Any, Any]]:
    """layer -> (activation scale, per-channel weight scales) of the INT8 layers of a PTQ Q/DQ ONNX."""
    import torch

    from edgeconvnext.onnx.graph import GraphIndex

    g = GraphIndex(q)
    by_name = {n.name: n for n in g.nodes}
    out: dict[str, tuple[Any, Any]] = {}
    for p in placement:
        if not p.int8:
            continue
        node = by_name.get(p.node)
        if node is None:
            raise ExportError(f"the PTQ graph has no node {p.node} ({p.layer})")
        found = []
        for inp in node.input[:2]:
            src, dq = g.trace_back(inp)
            if dq is None or dq.op_type != "DequantizeLinear":
                raise ExportError(f"{p.layer}: input {inp} of the PTQ graph does not come from a DequantizeLinear")
            scale = g.const(dq.input[1])
            zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
            if scale is None or (zp is not None and np.any(zp != 0)):
                raise ExportError(f"{p.layer}: the PTQ scale is not a constant or its zero point is not 0")
            found.append(np.asarray(scale, dtype=np.float32))
        a, w = found
        if a.size != 1:
            raise ExportError(f"{p.layer}: the PTQ activation scale is not per tensor ({a.size} values)")
        out[p.layer] = (torch.tensor(float(a.reshape(-1)[0])), torch.from_numpy(w.reshape(-1).copy()))
    return out


def compare_logits(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """max |a - b|, its ratio to max |a|, top-1 agreement and min cosine of two sets of logits."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = float(np.abs(a64 - b64).max()) if a.size else 0.0
    m = float(np.abs(a64).max()) if a.size else 0.0
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-12)
    return {
        "images": int(len(a)),
        "max_abs_diff": d,
        "rel_diff": d / max(m, 1e-12),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else 1.0,
        "cosine_min": float(cos.min()) if len(a) else 1.0,
        "finite": bool(np.isfinite(b64).all()),
    }


def torch_logits(model: torch.nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(model(torch.from_numpy(images[i : i + batch])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def ort_logits(onnx_bytes: bytes, images: np.ndarray, batch: int = 32, *, exact: bool = True) -> np.ndarray:
    """onnxruntime CPU logits; ``exact``: graph optimizations off, so Q/DQ run as written (see PARITY_REL_TOL),
    else onnxruntime's default (fused int8 kernels, how it runs the model in production on a CPU)."""
    from edgeconvnext.onnx.session import cpu_session

    sess = cpu_session(onnx_bytes, int8="exact" if exact else "kernels")
    out = [sess.run(["logits"], {"input": images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def rounding_noise(model: torch.nn.Module, images: np.ndarray, sigma: float = 1e-6) -> float:
    """How far the fake-quant ``model`` moves by itself when its input changes by N(0, ``sigma``): max |diff| /
    max |logit|. Tiny for a model with fine INT8 steps; with coarse per-tensor scales (activation outliers,
    no smoothing) values one rounding step apart flip levels, and the flips compound through the network."""
    x = images + np.random.default_rng(0).normal(0.0, sigma, images.shape).astype(images.dtype)
    a, b = torch_logits(model, images), torch_logits(model, x)
    return float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))


def checked_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    failure: str,
    tail: str = "",
    noise: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """:func:`compare_logits` of ``reference`` and ``candidate`` with the tolerance recorded; ExportError
    "<failure>: max abs diff .. (rel .. > tolerance)<tail>" when the candidate is not finite or not within
    PARITY_REL_TOL (``tail`` may name fields of the comparison, e.g. ``{top1_agreement:.1%}``). ``noise``
    (:func:`rounding_noise` of the torch model), called only on a failure: when the model itself moves by more
    than half the tolerance, the error says that, and the fix, instead of ``tail``."""
    check = compare_logits(reference, candidate)
    check["tolerance_rel"] = PARITY_REL_TOL
    check["onnxruntime"] = "graph optimizations off (Q/DQ as written)"
    if not (check["finite"] and check["rel_diff"] <= PARITY_REL_TOL):
        moved = noise() if noise is not None and check["finite"] else 0.0
        if moved > PARITY_REL_TOL / 2:
            tail = (
                f"; the torch fake-quant model itself moves by {moved:.3g} relative when its input changes by "
                "1e-6: its per-tensor INT8 steps are too coarse to compare (activation outlier channels set the "
                "scales; drop --no-smooth, so smoothing equalises them before calibration); nothing was written"
            )
        raise ExportError(
            f"{failure}: max abs diff {check['max_abs_diff']:.3g} (rel {check['rel_diff']:.3g} > "
            f"{PARITY_REL_TOL:g}){tail.format(**check)}"
        )
    return check


def prepare_float(loaded: LoadedModel, ptq_result: Any, images: np.ndarray) -> LoadedModel:
    """The float model PTQ quantized. PTQ may transform the float model before quantizing it (an exact
    LayerNorm -> next-layer equalisation, ``smoothing`` in its result, its scales in ``smooth_scales``):
    QAT must start from those same float weights. :func:`start_from_ptq` compares the logits with the PTQ
    ONNX, so a transform missed here cannot pass unseen."""
    scales = getattr(ptq_result, "smooth_scales", None)
    if scales:  # the s PTQ folded (from the calibration pass or a torch forward: the result carries them)
        from edgeconvnext.quantize.smooth import with_scales  # type: ignore[import-not-found,import-untyped]

        return with_scales(loaded, scales)
    return loaded


@dataclass
class Start:
    """The calibrated start on rank 0: placement, scales, and what the outputs reuse from PTQ."""

    placement: list[policy_mod.Placement]
    scales: dict[str, tuple[Any, Any]]
    float_model: Any  # the float weights PTQ quantized (after its pre-quantization transforms)
    manifest_bytes: bytes
    fp32_bytes: bytes
    fp32_sidecar_bytes: bytes
    ptq_summary: dict[str, Any]
    start_vs_ptq: dict[str, Any]
    ptq_bytes: bytes
    calib_images: np.ndarray  # the first CHECK_IMAGES calibration images (preprocessed)


@dataclass
class _Ptq:
    result: Any  # quantize.ptq.QuantizeResult
    paths: dict[str, Path]
    onnx_bytes: bytes
    images: np.ndarray  # the calibration images, preprocessed

    def start(
        self,
        placement: list[policy_mod.Placement],
        scales: dict[str, tuple[Any, Any]],
        float_model: torch.nn.Module,
        summary: dict[str, Any],
        check: dict[str, Any],
        check_images: np.ndarray,
    ) -> Start:
        """The QAT start on these scales, with the manifest, FP32 baseline and PTQ ONNX of this PTQ run."""
        return Start(
            placement=placement,
            scales=scales,
            float_model=float_model,
            manifest_bytes=self.paths["manifest"].read_bytes(),
            fp32_bytes=self.paths["fp32"].read_bytes(),
            fp32_sidecar_bytes=self.paths["fp32_sidecar"].read_bytes(),
            ptq_summary=summary,
            start_vs_ptq=check,
            ptq_bytes=self.onnx_bytes,
            calib_images=check_images,
        )


def _ptq(
    loaded: LoadedModel,
    config: QuantizeConfig,
    workdir: Path,
    calib_data: Path | None,
    calib_manifest: Path | None,
    on_step: Callable[[str], None] | None,
    on_progress: Callable[[int, int], None] | None,
    name: str = "ptq.onnx",
) -> _Ptq:
    """``quantize --method ptq`` into ``workdir / name`` and its calibration images, as the manifest lists them.
    ``name``: the QAT output's, so the manifest and FP32 baseline (and their sidecars) carry the names they are
    written under beside it."""
    from edgeconvnext.data.calibration import load_manifest
    from edgeconvnext.quantize.ptq import quantize

    out = workdir / name
    res = quantize(
        loaded, out, calib_data=calib_data, config=config, calib_manifest=calib_manifest, on_step=on_step,
        on_progress=on_progress,
    )  # fmt: skip
    assert not isinstance(res, Skipped)  # reuse=False: always quantized
    paths = output_paths(out)
    manifest = json.loads(paths["manifest"].read_text())
    # the PTQ run above warned about a small set already: once, not twice
    cs = load_manifest(
        paths["manifest"], preprocess=loaded.preprocess, root=manifest["root"], min_images=1, warn_size=False
    )
    return _Ptq(res, paths, out.read_bytes(), cs.images)


def start_from_ptq(
    loaded: LoadedModel,
    quant: QuantizeConfig,
    scales_mode: str,
    *,
    calib_data: Path | None,
    calib_manifest: Path | None,
    workdir: Path,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    name: str = "ptq.onnx",
) -> Start:
    """Run PTQ exactly as ``quantize --method ptq`` into ``workdir``, read its Q/DQ scales, install them on the
    torch model and check that the fake-quant torch model computes what the PTQ ONNX computes."""
    import onnx

    from edgeconvnext.quantize.fake_quant import wrap

    ptq = _ptq(loaded, replace(quant, method=Method.PTQ, keep_fp32=True), workdir, calib_data, calib_manifest,
               on_step, on_progress, name)  # fmt: skip
    res, paths, ptq_bytes = ptq.result, ptq.paths, ptq.onnx_bytes
    scales = scales_from_onnx(onnx.load_from_string(ptq_bytes), res.placement)
    if on_step:
        on_step("checking that the fake-quant torch model computes what the PTQ ONNX computes")
    images = ptq.images[:CHECK_IMAGES]
    float_loaded = prepare_float(loaded, res, ptq.images)
    qmodel = wrap(float_loaded.model, scales, scales_mode)
    check = checked_parity(
        ort_logits(ptq_bytes, images),
        torch_logits(qmodel, images),
        "the QAT start (PTQ scales on the torch model) differs from the PTQ ONNX",
        "; a pre-quantization transform of PTQ is not applied to the torch model (quantize.qat.prepare_float)",
        noise=lambda: rounding_noise(qmodel, images),
    )
    ptq_side = Sidecar.read(paths["onnx"])
    ptq_details = ptq_side.details if ptq_side is not None else {}
    summary = {
        "agreement_vs_fp32": res.agreement,
        "calibration": ptq_details.get("calibration"),
        "backend": ptq_details.get("backend"),
        "int8_layers": sum(p.int8 for p in res.placement),
        "layers": len(res.placement),
    }
    return ptq.start(res.placement, scales, float_loaded.model, summary, check, images)


def qat_checkpoint_info(loaded: LoadedModel) -> dict[str, Any] | None:
    """The quantizer state of a QAT checkpoint (``OUT.qat.pt``, written by this stage), else None."""
    info = (getattr(loaded, "extra", None) or {}).get("qat")
    return info if isinstance(info, dict) and isinstance(info.get("quantizers"), dict) else None


def check_qat_checkpoint(loaded: LoadedModel, quant: QuantizeConfig) -> dict[str, Any] | None:
    """A QAT checkpoint's quantizer state, refused when this run's placement options are not the ones its
    scales were made for (None for any other checkpoint)."""
    info = qat_checkpoint_info(loaded)
    if info is None:
        return None
    saved = info.get("quantize") or {}
    for key, now in (("policy", str(quant.policy)), ("exclude", list(quant.exclude))):
        was = saved.get(key)
        was = list(was) if key == "exclude" and was is not None else was
        if was is not None and was != now:
            flag = f"--{key}"
            raise UsageError(
                f"{loaded.source} is a QAT checkpoint made with {flag} {was!r}; this run asks {flag} {now!r}, so its "
                f"quantizer state does not fit: give {flag} {was!r} to continue its training, or start from the "
                "FP32 checkpoint it was made from"
            )
    return info


def start_from_qat_checkpoint(
    loaded: LoadedModel,
    quant: QuantizeConfig,
    scales_mode: str,
    *,
    calib_data: Path | None,
    calib_manifest: Path | None,
    workdir: Path,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    name: str = "ptq.onnx",
) -> Start:
    """Continue from a QAT checkpoint: its weights (already equalised when its run smoothed) and its quantizer
    state, not a fresh calibration. The calibration images still give the manifest, the FP32 baseline and the
    check images (a PTQ run without smoothing, whose scales are not used); the placement must be the one the
    checkpoint's scales belong to, and epoch 0 is compared with the QAT ONNX beside the checkpoint when it is
    there (its sha256 as recorded)."""
    from edgeconvnext.quantize.fake_quant import wrap

    info = check_qat_checkpoint(loaded, quant)
    assert info is not None
    src = loaded.source
    ptq = _ptq(loaded, replace(quant, method=Method.PTQ, keep_fp32=True, smooth=False), workdir, calib_data,
               calib_manifest, on_step, on_progress, name)  # fmt: skip
    res = ptq.result
    int8 = {p.layer for p in res.placement if p.int8}
    if int8 != set(info["quantizers"]):
        diff = sorted(int8 ^ set(info["quantizers"]))
        raise CheckpointError(
            f"the quantizer state of {src} covers other layers than this model's INT8 placement (e.g. {diff[:3]}): "
            "start from the FP32 checkpoint it was made from"
        )
    placement = [
        policy_mod.Placement(**{k: v for k, v in p.items() if k != "precision"}) for p in info.get("placement", [])
    ] or res.placement
    scales = {k: (v["act_scale"], v["w_scale"]) for k, v in info["quantizers"].items()}
    images = ptq.images[:CHECK_IMAGES]
    qmodel = wrap(loaded.model, scales, scales_mode)
    check: dict[str, Any] = {"compared_with": None}
    onnx_name = info.get("onnx")
    prev = src.with_name(onnx_name) if src is not None and onnx_name else None
    if prev is not None and prev.is_file() and _sha256(prev.read_bytes()) == info.get("onnx_sha256"):
        if on_step:
            on_step(f"checking that the QAT checkpoint's fake-quant model computes what {prev.name} computes")
        check = checked_parity(
            ort_logits(prev.read_bytes(), images),
            torch_logits(qmodel, images),
            f"the quantizer state of {src} does not reproduce {prev.name}",
            noise=lambda: rounding_noise(qmodel, images),
        )
        check["compared_with"] = prev.name
    summary = {
        "continued_from": str(src),
        "calibration": None,
        "int8_layers": len(int8),
        "layers": len(placement),
        "note": "quantizer state of the QAT checkpoint; the calibration images gave the manifest and baseline only",
    }
    return ptq.start(placement, scales, loaded.model, summary, check, images)


# ---------------------------------------------------------------------------------------------------
# loss


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2, averaged over the batch (Hinton et al.; ModelOpt's KD)."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True, reduction="batchmean"
    ) * (t * t)


class TeacherLogits:
    """The frozen FP32 teacher's logits of a batch, under ``torch.inference_mode`` (no autograd bookkeeping).

    With ``cache`` (training without random augmentation: the same image gives the same input tensor every
    epoch) each distinct input runs through the teacher once; later epochs reuse its logits, looked up by a
    digest of the input's bytes, so a cached value is exactly what the teacher computes on that input (up to
    the float rounding of a different batch). ``max_entries`` bounds the memory (logits of that many images).
    """

    def __init__(self, teacher: torch.nn.Module, *, cache: bool = False, max_entries: int = 200_000) -> None:
        self.teacher = teacher
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache else None
        self.max_entries = max_entries
        self.hits = self.misses = 0

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            out = self.teacher(x)
        return out.clone()  # a normal tensor: inference tensors cannot take part in the student's autograd graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self._run(x)
        import hashlib

        import torch

        flat = x.detach().cpu().contiguous().numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self._run(x[missing] if len(missing) < len(keys) else x)
            for j, i in enumerate(missing):
                if len(self.cache) < self.max_entries:
                    self.cache[keys[i]] = fresh[j].cpu()
            if len(missing) == len(keys):
                return fresh
            got = {i: fresh[j] for j, i in enumerate(missing)}
        else:
            got = {}
        rows = [got[i] if i in got else self.cache[k].to(x.device) for i, k in enumerate(keys)]
        return torch.stack(rows)


def make_loss(
    teacher: torch.nn.Module | TeacherLogits,
    weight: float,
    temperature: float,
    labelled: bool,
    *,
    logit_mse: float = 0.0,
) -> Callable[..., Any]:
    """``weight * (KD + logit_mse * MSE(logits)) + (1 - weight) * CE`` (CE only with labels and weight < 1)."""
    import torch.nn.functional as F

    logits_of = teacher if isinstance(teacher, TeacherLogits) else TeacherLogits(teacher)

    def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = logits_of(x)
        s = model(x)
        loss = distill_loss(s, t, temperature)
        if logit_mse:
            loss = loss + logit_mse * F.mse_loss(s, t)
        if labelled and weight < 1:
            loss = weight * loss + (1 - weight) * F.cross_entropy(s, y)
        return loss, s

    return loss_fn


# ---------------------------------------------------------------------------------------------------
# export


def _trace(module: Any, img_size: int) -> bytes:
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(record=True), torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, img_size, img_size),),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter also writes to a file object
            dynamo=False,  # the dynamo exporter fails on fake-quantized models (KNOWLEDGE.md)
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    return buf.getvalue()


def fold_weight_quantize(proto: Any) -> int:
    """Replace each ``QuantizeLinear(float weight initializer)`` with the int8 initializer it computes, so the
    weights are stored as int8 + DequantizeLinear like the PTQ ONNX (a quarter of the bytes; TensorRT reads
    both forms). Rounding as QuantizeLinear: half to even, saturated to [-128, 127]. Returns how many."""
    from onnx import numpy_helper

    from edgeconvnext.onnx.graph import GraphIndex

    gi = GraphIndex(proto)
    g = proto.graph
    inits = {t.name for t in g.initializer}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    keep, folded, drop = [], 0, set()
    for n in g.node:
        w = gi.const(n.input[0]) if n.op_type == "QuantizeLinear" and n.input[0] in inits else None
        scale = gi.const(n.input[1]) if w is not None else None
        zp = gi.const(n.input[2]) if w is not None and len(n.input) > 2 else None
        if w is None or scale is None or zp is None or zp.dtype != np.int8 or zp.any():
            keep.append(n)
            continue
        w, scale = w.astype(np.float32), scale.astype(np.float32)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * w.ndim
            shape[axis % w.ndim] = -1
            scale = scale.reshape(shape)
        q = np.clip(np.rint(w / scale), -128, 127).astype(np.int8)
        g.initializer.append(numpy_helper.from_array(q, name=n.output[0]))
        folded += 1
        if users.get(n.input[0]) == 1:
            drop.add(n.input[0])
    if folded:
        del g.node[:]
        g.node.extend(keep)
        kept_inits = [t for t in g.initializer if t.name not in drop]
        del g.initializer[:]
        g.initializer.extend(kept_inits)
    return folded


def export_qat(
    qmodel: torch.nn.Module,
    loaded: LoadedModel,
    placement: list[policy_mod.Placement],
    quant_meta: dict[str, Any],
) -> tuple[bytes, TrtReport]:
    """The fake-quant model as a Q/DQ ONNX (opset 17, our metadata), checked against TensorRT's rules and the
    planned placement; RuleViolation / ExportError when it is not what PTQ would have written."""
    import onnx

    from edgeconvnext.errors import RuleViolation
    from edgeconvnext.export.onnx_export import _inline_identity_initializers, build_metadata
    from edgeconvnext.onnx.metadata import set_metadata
    from edgeconvnext.onnx.trt_rules import check_model
    from edgeconvnext.quantize.fake_quant import quant_layers
    from edgeconvnext.quantize.ptq import _verify_placement

    m = copy.deepcopy(qmodel).cpu().float().eval()
    for layer in quant_layers(m).values():
        layer.freeze_for_export()
    try:
        raw = _trace(m, int(loaded.preprocess.img_size))
    except Exception as e:  # the exporter raises many types
        raise ExportError(f"torch.onnx.export of the QAT model failed: {type(e).__name__}: {e}") from e
    proto = onnx.load_from_string(raw)
    _inline_identity_initializers(proto)
    fold_weight_quantize(proto)
    proto.graph.name = loaded.arch.name
    proto.doc_string = (
        f"edgeconvnext: {loaded.arch.name} INT8 Q/DQ (QAT, policy {quant_meta['policy']}), input 'input' "
        "float32, output 'logits' float32"
    )
    meta = build_metadata(loaded, precision="int8")
    meta["edgeconvnext.quantization"] = json.dumps(quant_meta, sort_keys=True)
    set_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the QAT graph: {e}") from e
    report = check_model(proto)
    try:
        report.raise_for_violations()
    except RuleViolation as e:
        raise RuleViolation(f"the QAT export breaks a TensorRT rule, so nothing was written: {e}") from None
    _verify_placement(placement, report, "qat")
    return proto.SerializeToString(), report


# ---------------------------------------------------------------------------------------------------
# state (resume)


def _bytes_tensor(b: bytes) -> Any:
    import torch

    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone() if b else torch.zeros(0, dtype=torch.uint8)


def _tensor_bytes(t: Any) -> bytes:
    return bytes(t.numpy().tobytes())


def _run_args(cfg: QatConfig, quant: QuantizeConfig, loaded: LoadedModel, world: int, calib: str | None) -> dict:
    """What a resumed run must share with the interrupted one (option name -> value)."""
    args = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    args.update({f"quant.{k}": v for k, v in quant.to_dict().items()})
    args["checkpoint_sha256"] = loaded.source_sha256
    args["world_size"] = world
    args["calib"] = calib
    return args


def _option_name(key: str) -> str:
    names = {
        "quant.calib_size": "--calib-size",
        "quant.calib_method": "--calib-method",
        "quant.policy": "--policy",
        "quant.exclude": "--exclude",
        "quant.seed": "--seed",
        "checkpoint_sha256": "--checkpoint (its sha256)",
        "world_size": "the number of processes",
        "calib": "--calib-data/--calib-manifest",
    }
    return names.get(key, "--" + key.removeprefix("quant.").replace("_", "-"))


def _check_resume_args(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        parts = [f"{_option_name(k)} {now.get(k)!r} (was {saved.get(k)!r})" for k in diff[:6]]
        raise UsageError(
            f"--resume: {path} was written with other options: {'; '.join(parts)}; give the interrupted run's "
            f"options, or delete {path} to start over"
        )


def load_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt files raise many types
        raise CheckpointError(f"--resume: cannot read {path} ({type(e).__name__}: {e}); delete it to start over") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"--resume: {path} is not a QAT state written by 'edgeconvnext quantize --method qat'")
    if state.get("version", 1) != STATE_VERSION:
        raise CheckpointError(
            f"--resume: {path} was written by another edgeconvnext version (state version {state.get('version', 1)}, "
            f"this one reads {STATE_VERSION}: the best epoch is now chosen among the PTQ start and the trained "
            "epochs by closeness to FP32, which that state cannot continue); delete it to start over"
        )
    return state


# ---------------------------------------------------------------------------------------------------
# the stage


class LogProgress(EpochLog):
    """Default hook: one log line per epoch."""

    def line(self, r: EpochRecord) -> str:
        val = f", val top-1 {r.val_top1:.2f}%, agreement {r.val_agreement:.2f}%" if r.val_top1 is not None else ""
        return f"QAT epoch {r.epoch}/{self._epochs}: loss {r.loss:.4f}{val}, {r.images_per_s:.0f} img/s"


def _evaluate(model: torch.nn.Module, images: np.ndarray, device: str, hook: ProgressHook | None) -> np.ndarray:
    """Predicted classes of ``model`` on preprocessed ``images``."""
    import torch

    model.eval()
    preds = []
    batch = 64
    if hook is not None:
        hook.validating(math.ceil(len(images) / batch))
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).to(device, memory_format=torch.channels_last)
            preds.append(model(x).argmax(1).cpu().numpy())
            if hook is not None:
                hook.val_step()
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


@dataclass
class _Data:
    train: TrainData
    weight: float  # of the distillation loss
    val_images: np.ndarray | None
    val_labels: np.ndarray | None
    notes: list[str]


def _load_data(cfg: QatConfig, loaded: LoadedModel, rank: int, world: int) -> _Data:
    """Training images (every rank: the same checks, the same error everywhere) and, on rank 0, the
    preprocessed validation images."""
    from edgeconvnext.data.folders import LabelledImages, load_images, warn_overlap

    notes: list[str] = []
    train = load_train_data(Path(cfg.train_data), loaded, cfg.labels)  # type: ignore[arg-type]
    _check_batches(len(train.paths), cfg.batch_size, world, Path(cfg.train_data))  # type: ignore[arg-type]
    weight = cfg.distill_weight if cfg.distill_weight is not None else (0.5 if train.labelled else 1.0)
    if not train.labelled and weight < 1:
        raise UsageError(
            f"--distill-weight {weight} mixes in a label loss, but --train-data {cfg.train_data} is used without "
            "labels (distillation only): drop --distill-weight, or give an ImageFolder with class folders"
        )
    val_images = val_labels = None
    if cfg.val_data is not None and rank == 0:
        names = loaded.class_names or (train.class_names if train.labelled else None)
        if names is None:
            folder = LabelledImages.discover(cfg.val_data)
            _check_classes(folder.class_names, loaded, Path(cfg.val_data))
            names = folder.class_names
        val = LabelledImages.discover(cfg.val_data, class_names=names)
        warn_overlap(train.paths, val.paths, Path(cfg.train_data), Path(cfg.val_data))  # type: ignore[arg-type]
        val_images, used, skipped = load_images(val.paths, loaded.preprocess)
        if len(used) == 0:
            raise DataError(f"no readable validation images in {cfg.val_data}")
        lab = dict(zip(val.paths, val.labels, strict=False))
        val_labels = np.asarray([lab[p] for p in used], dtype=np.int64)
        if skipped:
            notes.append(f"{len(skipped)} unreadable validation images skipped")
    log.info("QAT data: %d training images (%s)", len(train.paths), train.mode)
    return _Data(train, weight, val_images, val_labels, notes)


def qat(
    loaded: LoadedModel,
    output: str | Path,
    *,
    config: QatConfig,
    quant: QuantizeConfig | None = None,
    calib_data: str | Path | None = None,
    calib_manifest: str | Path | None = None,
    progress: ProgressHook | None = None,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> QatResult | None:
    """Quantization-aware training of ``loaded`` to ``output`` (see the module doc). Returns the result on the
    writing process (rank 0) and None on the other ranks of a torchrun job."""
    from edgeconvnext.runtime.runners import check_device
    from edgeconvnext.train import distributed

    cfg = config.validated()
    qcfg = replace(quant or QuantizeConfig(), method=Method.PTQ).validated()
    if qcfg.backend != "ort":
        raise UsageError(
            f"--method qat calibrates its start with --backend ort (its Q/DQ sit directly on the layers the fake "
            f"quantizers wrap); --backend {qcfg.backend} is not supported with qat: drop --backend"
        )
    check_device(cfg.device)
    if calib_data is None and calib_manifest is None:
        raise UsageError("give --calib-data DIR (a folder of images) or --calib-manifest FILE")
    output = Path(output)
    check_output(output, "--output", {"--checkpoint": loaded.source}, suffix=".onnx")
    paths = qat_paths(output)
    check_output(paths["checkpoint"], "--output", {"--checkpoint": loaded.source})
    policy_mod.check_excludes(qcfg.exclude, policy_mod.torch_layer_names(loaded.model))
    check_qat_checkpoint(loaded, qcfg)  # continuing a QAT checkpoint: its placement options, before any work
    if cfg.resume and not paths["state"].is_file():  # before the data: "fewer than one batch" hid this
        raise CheckpointError(
            f"--resume: nothing to resume, {paths['state']} does not exist; run without --resume to start"
        )
    rank, world, _ = distributed.env_world()
    data = _load_data(cfg, loaded, rank, world)  # before joining the group: a data error stops every rank alike
    d = distributed.init(cfg.device)
    try:
        with terminate_like_interrupt():  # SIGTERM/SIGHUP unwind like Ctrl-C; the CLI exits 128 + signal
            return _run(loaded, cfg, qcfg, paths, d, data, calib_data, calib_manifest, progress, on_step, on_progress)
    finally:
        d.close()


@dataclass
class _Session:
    """What one QAT run shares between its steps (setup -> start -> optimiser -> epochs -> export)."""

    loaded: LoadedModel
    cfg: QatConfig
    qcfg: QuantizeConfig
    paths: dict[str, Path]
    d: Dist
    data: _Data
    device: str
    workers: int
    hook: ProgressHook | None
    step_msg: Callable[[str], None]
    args: dict[str, Any]  # what a resumed run must share (_run_args)
    state: dict[str, Any] | None  # the interrupted run's state with --resume
    t_start: float
    notes: list[str] = field(default_factory=list)


@dataclass
class _Kept:
    """What the outputs reuse from the start (PTQ or the saved state): kept in the state for a resumed run."""

    manifest: bytes
    fp32: bytes
    fp32_sidecar: bytes
    ptq_summary: dict[str, Any]
    start_vs_ptq: dict[str, Any]
    check_images: np.ndarray

    def to_state(self) -> dict[str, Any]:
        import torch

        return {
            "manifest": _bytes_tensor(self.manifest),
            "fp32": _bytes_tensor(self.fp32),
            "fp32_sidecar": _bytes_tensor(self.fp32_sidecar),
            "ptq_summary": json.dumps(self.ptq_summary, default=str),
            "start_vs_ptq": json.dumps(self.start_vs_ptq, default=str),
            "check_images": torch.from_numpy(np.ascontiguousarray(self.check_images)),
        }

    @classmethod
    def from_state(cls, kept: dict[str, Any]) -> _Kept:
        return cls(
            _tensor_bytes(kept["manifest"]),
            _tensor_bytes(kept["fp32"]),
            _tensor_bytes(kept["fp32_sidecar"]),
            json.loads(kept["ptq_summary"]),
            json.loads(kept["start_vs_ptq"]),
            kept["check_images"].numpy(),
        )


@dataclass
class _Training:
    """The optimiser, schedule and progress of the epochs (restored from the state on --resume)."""

    opt: Any  # torch.optim.Optimizer
    ema: Any  # ModelEma | None
    steps_per_epoch: int
    total_steps: int
    warmup: int
    start_epoch: int = 0
    step: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "key": None, "model": None})
    fp32_val_top1: float | None = None
    ptq_val_top1: float | None = None
    ptq_val_agreement: float | None = None


def best_key(top1: float, agreement: float, fp32_top1: float) -> list[float]:
    """The best-epoch key (higher is better, compared as a list): top-1 counts only up to FP32's (an epoch above
    FP32 on the validation images is not better than one equal to it: the label loss pulls away from the teacher
    there), then agreement with FP32 decides."""
    return [min(top1, fp32_top1), agreement]


def _run(
    loaded: LoadedModel,
    cfg: QatConfig,
    qcfg: QuantizeConfig,
    paths: dict[str, Path],
    d: Dist,
    data: _Data,
    calib_data: str | Path | None,
    calib_manifest: str | Path | None,
    progress: ProgressHook | None,
    on_step: Callable[[str], None] | None,
    on_progress: Callable[[int, int], None] | None,
) -> QatResult | None:
    s = _setup(loaded, cfg, qcfg, paths, d, data, calib_data, calib_manifest, progress, on_step)
    teacher = _make_teacher(s)
    placement, qmodel, kept = _start(s, calib_data, calib_manifest, on_progress)
    tr = _optimiser(s, qmodel)
    teacher_logits = TeacherLogits(teacher, cache=not cfg.augment)
    _train_epochs(s, qmodel, teacher, teacher_logits, tr, placement, kept)
    if not d.is_main:
        d.barrier()
        return None
    return _export_and_write(s, qmodel, tr, placement, kept, teacher_logits)


def _setup(
    loaded: LoadedModel,
    cfg: QatConfig,
    qcfg: QuantizeConfig,
    paths: dict[str, Path],
    d: Dist,
    data: _Data,
    calib_data: str | Path | None,
    calib_manifest: str | Path | None,
    progress: ProgressHook | None,
    on_step: Callable[[str], None] | None,
) -> _Session:
    """Threads, device and progress of this process; with --resume the interrupted run's state, checked
    against this run's options; without it, an interrupted run's state left beside the output is refused."""
    import torch

    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads or max(1, cpu_count() // d.world_size))
    calib_key = str(calib_manifest) if calib_manifest is not None else str(calib_data)
    s = _Session(
        loaded=loaded,
        cfg=cfg,
        qcfg=qcfg,
        paths=paths,
        d=d,
        data=data,
        device=d.device(cfg.device),
        workers=min(2, cpu_count()) if cfg.workers is None else cfg.workers,
        hook=(progress or LogProgress()) if d.is_main else None,
        step_msg=on_step if d.is_main and on_step else (lambda msg: None),
        args=_run_args(cfg, qcfg, loaded, d.world_size, calib_key),
        state=None,
        t_start=t_start,
        notes=list(data.notes),
    )
    if cfg.resume:  # qat() checked that the state exists
        s.state = load_state(paths["state"])
        _check_resume_args(s.state["args"], s.args, paths["state"])
        s.notes.append(f"resumed from {paths['state'].name} after epoch {s.state['epoch']}")
    elif paths["state"].is_file():
        raise UsageError(
            f"{paths['state']} holds an interrupted QAT run: pass --resume to continue it, or delete it to start over"
        )
    return s


def _make_teacher(s: _Session) -> torch.nn.Module:
    """The frozen FP32 teacher: the checkpoint's own model."""
    import torch

    # torch's type stubs for Module.to omit memory_format, which it takes
    teacher = copy.deepcopy(s.loaded.model).to(s.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _placements(rows: list[dict[str, Any]]) -> list[policy_mod.Placement]:
    return [policy_mod.Placement(**{k: v for k, v in p.items() if k != "precision"}) for p in rows]


def _start(
    s: _Session,
    calib_data: str | Path | None,
    calib_manifest: str | Path | None,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[list[policy_mod.Placement], torch.nn.Module, _Kept]:
    """The fake-quant model training starts from: the saved state (--resume), else PTQ (or a QAT checkpoint's
    quantizer state) on rank 0, its placement and scales broadcast, rank 0's weights on every rank."""
    import torch

    from edgeconvnext.quantize.fake_quant import wrap
    from edgeconvnext.train.distributed import run_on_main

    cfg, d, loaded = s.cfg, s.d, s.loaded
    start: Start | None = None
    continuing = qat_checkpoint_info(loaded) is not None
    if continuing and s.state is None:
        s.notes.append(
            f"continuing the QAT checkpoint {loaded.source.name if loaded.source else ''}: its quantizer state and "
            "weights are the start (no fresh calibration); the teacher is its weights in float"
        )
    if s.state is None:

        def calibrate() -> dict[str, Any]:
            nonlocal start
            parent = s.paths["onnx"].parent
            workdir = Path(tempfile.mkdtemp(prefix=".edgeconvnext-qat-", dir=parent if parent.is_dir() else None))
            try:
                start = (start_from_qat_checkpoint if continuing else start_from_ptq)(
                    loaded,
                    s.qcfg,
                    str(cfg.scales),
                    calib_data=Path(calib_data) if calib_data is not None else None,
                    calib_manifest=Path(calib_manifest) if calib_manifest is not None else None,
                    workdir=workdir,
                    on_step=s.step_msg,
                    on_progress=on_progress,
                    name=s.paths["onnx"].name,  # the manifest and baseline named as written beside the output
                )
            finally:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
            return {"placement": [p.to_dict() for p in start.placement], "scales": start.scales}

        shared = run_on_main(d, calibrate)
        placement = _placements(shared["placement"])
        scales = shared["scales"]
    else:
        placement = _placements(s.state["placement"])
        scales = {k: (v["act_scale"], v["w_scale"]) for k, v in s.state["quantizers"].items()}

    start_weights = start.float_model if start is not None else loaded.model
    qmodel = wrap(start_weights, scales, str(cfg.scales)).to(s.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    if s.state is not None:
        qmodel.load_state_dict(s.state["model"])
    # every rank starts from rank 0's weights (PTQ's transforms ran there) and scales
    d.broadcast_tensors(list(qmodel.parameters()))

    if s.state is not None:
        kept = _Kept.from_state(s.state["kept"])
    elif start is not None:
        kept = _Kept(
            start.manifest_bytes,
            start.fp32_bytes,
            start.fp32_sidecar_bytes,
            start.ptq_summary,
            start.start_vs_ptq,
            start.calib_images,
        )
    else:  # ranks > 0 write nothing
        kept = _Kept(b"", b"", b"", {}, {}, np.zeros((0,), np.float32))
    if start is not None and not continuing and not s.qcfg.smooth:
        warning = no_smooth_warning(start.ptq_summary.get("agreement_vs_fp32") or {})
        log.warning("%s", warning)
        s.notes.append(warning)
    return placement, qmodel, kept


def no_smooth_warning(agreement: dict[str, Any]) -> str:
    """What QAT from a --no-smooth PTQ start cannot do, with the start's measured agreement with FP32 (PTQ's
    ``agreement_vs_fp32`` on the first calibration images) and the fix."""
    measured = (
        f"the PTQ start agrees with FP32 on {agreement['top1_agreement']:.1%} of {agreement['images']} calibration "
        f"images (min cosine {agreement['cosine_min']:.4f}); "
        if agreement.get("images")
        else ""
    )
    return (
        f"--method qat with --no-smooth: {measured}QAT does not repair per-tensor activation scales set by "
        "outlier channels (measured on outlier-stress models, frozen or learned scales: it recovered 9-33% of "
        "PTQ's 0.79-point loss at 50x outliers, none at 200x); drop --no-smooth, so smoothing equalises the "
        "outlier channels before calibration and QAT starts from that"
    )


def _optimiser(s: _Session, qmodel: torch.nn.Module) -> _Training:
    """AdamW / SGD over the trainable weights, the warm-up + cosine schedule's length, the EMA; restored from
    the state on --resume (optimiser, EMA, step, history, best epoch, RNG)."""
    import torch

    from edgeconvnext.train.loop import ModelEma, param_groups

    cfg, d = s.cfg, s.d
    trainable = param_groups(qmodel, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD(trainable, lr=cfg.lr, momentum=0.9, nesterov=True)
    n_per_rank = math.ceil(len(s.data.train.paths) / d.world_size)
    steps_per_epoch = math.ceil(n_per_rank / cfg.batch_size)
    if cfg.steps is not None:
        if cfg.steps > steps_per_epoch:
            s.notes.append(
                f"--steps {cfg.steps} caps nothing: --train-data gives {steps_per_epoch} steps per epoch of "
                f"{cfg.batch_size} images per process, and each epoch runs them all"
            )
            log.info("%s", s.notes[-1])
        steps_per_epoch = min(steps_per_epoch, cfg.steps)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(0.05 * total_steps))
    ema = ModelEma(qmodel, cfg.ema_decay) if cfg.ema_decay else None
    tr = _Training(opt, ema, steps_per_epoch, total_steps, warmup)
    state = s.state
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        tr.start_epoch, tr.step = int(state["epoch"]), int(state["step"])
        tr.history = [EpochRecord(**h) for h in state["history"]]
        tr.best = {"epoch": int(state["best"]["epoch"]), "key": state["best"]["key"], "model": state["best"]["model"]}
        tr.ptq_val_top1 = state.get("ptq_val_top1")
        tr.ptq_val_agreement = state.get("ptq_val_agreement")
        random.setstate(_python_rng(state["rng"]["python"]))
        torch.set_rng_state(state["rng"]["torch"])
    return tr


def _save_state(
    s: _Session, qmodel: torch.nn.Module, tr: _Training, placement: list[policy_mod.Placement], kept: _Kept, epoch: int
) -> None:
    """The resumable state after ``epoch`` finished epochs (OUT.qat.last.pt, written atomically)."""
    import torch

    from edgeconvnext.quantize.fake_quant import quantizer_state

    st = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "args": s.args,
        "epoch": epoch,
        "step": tr.step,
        "model": {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()},
        "optimizer": tr.opt.state_dict(),
        "ema": tr.ema.module.state_dict() if tr.ema is not None else None,
        "quantizers": quantizer_state(qmodel),
        "placement": [p.to_dict() for p in placement],
        "history": [asdict(h) for h in tr.history],
        "best": tr.best,
        "ptq_val_top1": tr.ptq_val_top1,
        "ptq_val_agreement": tr.ptq_val_agreement,
        "rng": {"python": _plain_rng(random.getstate()), "torch": torch.get_rng_state()},
        "kept": kept.to_state(),
    }
    with atomic_output(s.paths["state"]) as tmp:
        torch.save(st, tmp)
    note_resumable(s.paths["state"], epoch)  # what an interrupted run's last line points to


def _train_epochs(
    s: _Session,
    qmodel: torch.nn.Module,
    teacher: torch.nn.Module,
    teacher_logits: TeacherLogits,
    tr: _Training,
    placement: list[policy_mod.Placement],
    kept: _Kept,
) -> None:
    """FP32 and epoch-0 validation (the start is the first best-epoch candidate), then the epochs: train (DDP
    under torchrun), validate and keep the best epoch (:func:`best_key`) on rank 0, save the resumable state
    after each."""
    import torch

    from edgeconvnext.data.augment import TrainTransform
    from edgeconvnext.data.preprocess import eval_transform
    from edgeconvnext.train.loop import ImageDataset, make_loader, train_epoch

    cfg, d, data, hook = s.cfg, s.d, s.data, s.hook
    train, val_images, val_labels = data.train, data.val_images, data.val_labels
    model: torch.nn.Module = qmodel
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(qmodel, device_ids=[d.local_rank] if cfg.device == "cuda" else None)
    # without random augmentation an image is the same tensor every epoch: its teacher logits are computed once
    loss_fn = make_loss(
        teacher_logits,
        data.weight,
        cfg.temperature,
        train.labelled,
        logit_mse=cfg.logit_mse,
    )
    train_tf: Any = (
        TrainTransform(s.loaded.preprocess, hflip=cfg.hflip)
        if cfg.augment
        else functools.partial(eval_transform, pp=s.loaded.preprocess)
    )
    train_set = ImageDataset(train.paths, train.labels, train_tf)

    fp32_val_pred = _evaluate(teacher, val_images, s.device, None) if val_images is not None else None
    tr.fp32_val_top1 = float((fp32_val_pred == val_labels).mean() * 100) if fp32_val_pred is not None else None
    if fp32_val_pred is not None and tr.fp32_val_top1 is not None and s.state is None:
        # epoch 0 (the PTQ model) on the validation set: the candidate a trained epoch must beat
        pred0 = _evaluate(qmodel, val_images, s.device, None)  # type: ignore[arg-type]
        tr.ptq_val_top1 = float((pred0 == val_labels).mean() * 100)
        tr.ptq_val_agreement = float((pred0 == fp32_val_pred).mean() * 100)
        tr.best = {
            "epoch": 0,
            "key": best_key(tr.ptq_val_top1, tr.ptq_val_agreement, tr.fp32_val_top1),
            "model": {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()},
        }

    if tr.start_epoch >= cfg.epochs:
        s.notes.append(f"the saved state already finished {tr.start_epoch} epochs: exporting it")
    sampler: Any = None
    if d.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            train_set,  # type: ignore[arg-type]  # map-style, not a torch Dataset subclass
            num_replicas=d.world_size,
            rank=d.rank,
            shuffle=True,
            seed=cfg.seed,
        )
    for epoch in range(tr.start_epoch, cfg.epochs):
        # order and augmentation are a function of (seed, epoch): a resumed run sees what the uninterrupted saw
        random.seed(cfg.seed + epoch)
        torch.manual_seed(cfg.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = make_loader(train_set, cfg.batch_size, True, s.workers, cfg.seed + epoch, sampler=sampler)
        if hook is not None:
            hook.start_epoch(epoch + 1, cfg.epochs, tr.steps_per_epoch)
        stats = train_epoch(
            model,
            loader,
            tr.opt,
            loss_fn=loss_fn,
            lr_fn=lambda step: lr_at(step, tr.total_steps, tr.warmup, cfg.lr, cfg.min_lr),
            step=tr.step,
            device=s.device,
            hook=hook,
            max_steps=tr.steps_per_epoch,
            clip_grad=cfg.clip_grad or None,
            ema=tr.ema,
        )
        tr.step = stats.step
        if not d.all_ok(stats.seen > 0):
            raise DataError(f"no readable training images in {cfg.train_data}")
        rec = EpochRecord(
            epoch=epoch + 1,
            loss=stats.loss,
            train_top1=stats.top1,
            lr=stats.lr,
            steps=stats.steps,
            images=stats.seen * d.world_size,
            images_per_s=stats.images_per_s * d.world_size,
            seconds=stats.seconds,
            skipped=stats.skipped,
        )
        eval_model = tr.ema.module if tr.ema is not None else qmodel
        if d.is_main:
            if val_images is not None and val_labels is not None and fp32_val_pred is not None:
                pred = _evaluate(eval_model, val_images, s.device, hook)
                rec.val_top1 = float((pred == val_labels).mean() * 100)
                rec.val_agreement = float((pred == fp32_val_pred).mean() * 100)
                key = best_key(rec.val_top1, rec.val_agreement, tr.fp32_val_top1)  # type: ignore[arg-type]
            else:
                key = [float(epoch)]  # without validation: the last epoch
            if tr.best["key"] is None or key > tr.best["key"]:
                tr.best = {
                    "epoch": epoch + 1,
                    "key": key,
                    "model": {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()},
                }
            tr.history.append(rec)
            _save_state(s, qmodel, tr, placement, kept, epoch + 1)
            if hook is not None:
                hook.end_epoch(rec)
        else:
            tr.history.append(rec)
        d.barrier()


def _parity(final: torch.nn.Module, onnx_bytes: bytes, images: np.ndarray, inputs: str) -> dict[str, Any]:
    """onnxruntime (Q/DQ as written) against the torch fake-quant model; ExportError when they disagree."""
    parity = checked_parity(
        torch_logits(final, images),
        ort_logits(onnx_bytes, images),
        "the QAT ONNX disagrees with the torch fake-quant model",
        ", top-1 agreement {top1_agreement:.1%}; nothing was written",
        noise=lambda: rounding_noise(final, images),
    )
    parity["inputs"] = inputs
    return parity


@dataclass
class _Exported:
    """The chosen epoch, exported and checked (rank 0), before anything is written."""

    model: torch.nn.Module  # the fake-quant model of the best epoch, on the CPU, in eval mode
    onnx_bytes: bytes
    report: TrtReport
    parity: dict[str, Any]
    agreement: dict[str, Any]
    digest: str  # sha256 of onnx_bytes


def _export_and_write(
    s: _Session,
    qmodel: torch.nn.Module,
    tr: _Training,
    placement: list[policy_mod.Placement],
    kept: _Kept,
    teacher_logits: TeacherLogits,
) -> QatResult:
    """Rank 0: the best epoch exported (opset 17, TensorRT rules), its parity with the torch model checked,
    then every output written together (all or nothing) and the resumable state removed."""
    if tr.best["epoch"] == 0 and tr.history:
        s.notes.append(_start_kept_note(tr, qat_checkpoint_info(s.loaded) is not None))
    ex = _export_checked(s, _final_model(qmodel, tr), placement, kept)
    seconds = _write_outputs(s, tr, placement, kept, ex, _train_summary(s, tr, teacher_logits))
    if s.paths["state"].exists():
        s.paths["state"].unlink()
    clear_resumable()
    s.d.barrier()
    log.info("QAT %s: %d epochs, best %d", s.loaded.arch.name, len(tr.history), tr.best["epoch"])
    return _result(s, tr, placement, kept, ex, seconds)


def _final_model(qmodel: torch.nn.Module, tr: _Training) -> torch.nn.Module:
    """The model to export: the best epoch's weights (the start's when it stayed best), else the EMA's or the
    last epoch's, on the CPU in eval mode."""
    final = copy.deepcopy(qmodel).cpu()
    if tr.best["model"] is not None:
        final.load_state_dict(tr.best["model"])
    elif tr.ema is not None:
        final.load_state_dict(tr.ema.module.state_dict())
    return final.eval()


def _export_checked(
    s: _Session, final: torch.nn.Module, placement: list[policy_mod.Placement], kept: _Kept
) -> _Exported:
    """Export (TorchScript, opset 17) with the TensorRT rules, onnxruntime's parity with the torch model and the
    agreement with the FP32 baseline, on the validation images (else the calibration images)."""
    from edgeconvnext.quantize.ptq import AGREEMENT_IMAGES, _agreement

    cfg, qcfg, val_images = s.cfg, s.qcfg, s.data.val_images
    quant_meta = {
        "method": "qat",
        "backend": qcfg.backend,
        "calib_method": qcfg.calib_method,
        "policy": qcfg.policy,
        "exclude": list(qcfg.exclude),
        "calib_images": (kept.ptq_summary.get("calibration") or {}).get("images"),
        "activations": "int8 per tensor, symmetric",
        "weights": "int8 per output channel, symmetric",
        "scales": str(cfg.scales),
        "training": s.data.train.mode,
    }
    s.step_msg("exporting the QAT model to ONNX (opset 17) and checking it against TensorRT's rules")
    onnx_bytes, report = export_qat(final, s.loaded, placement, quant_meta)
    report.path = s.paths["onnx"]
    s.step_msg("comparing onnxruntime with the torch fake-quant model")
    images = val_images[:CHECK_IMAGES] if val_images is not None else kept.check_images
    parity = _parity(final, onnx_bytes, images, "validation images" if val_images is not None else "calibration images")
    agreement = _agreement(kept.fp32, onnx_bytes, images[:AGREEMENT_IMAGES]) if kept.fp32 else {}
    return _Exported(final, onnx_bytes, report, parity, agreement, _sha256(onnx_bytes))


def _train_summary(s: _Session, tr: _Training, teacher_logits: TeacherLogits) -> dict[str, Any]:
    """The sidecar's ``training`` section: mode, schedule, history and the best epoch's validation."""
    cfg, d, train, history, best = s.cfg, s.d, s.data.train, tr.history, tr.best
    best_rec = next((h for h in history if h.epoch == best["epoch"]), None)
    return {
        "mode": train.mode,
        "images": len(train.paths),
        "distill_weight": s.data.weight,
        "temperature": cfg.temperature,
        "logit_mse": cfg.logit_mse,
        "scales": str(cfg.scales),
        "world_size": d.world_size,
        "backend": d.backend,
        "steps_per_epoch": tr.steps_per_epoch,
        "total_steps": tr.total_steps,
        "warmup_steps": tr.warmup,
        "augment": cfg.augment,
        "teacher_cache": {"hits": teacher_logits.hits, "misses": teacher_logits.misses} if not cfg.augment else None,
        "best_epoch": best["epoch"],
        "best_rule": BEST_RULE,
        "history": [asdict(h) for h in history],
        "fp32_val_top1": tr.fp32_val_top1,
        "ptq_val_top1": tr.ptq_val_top1,
        "ptq_val_agreement": tr.ptq_val_agreement,
        "qat_val_top1": best_rec.val_top1 if best_rec else (tr.ptq_val_top1 if best["epoch"] == 0 else None),
        "seconds_per_epoch": (sum(h.seconds for h in history) / len(history)) if history else None,
    }


def _write_outputs(
    s: _Session,
    tr: _Training,
    placement: list[policy_mod.Placement],
    kept: _Kept,
    ex: _Exported,
    train_summary: dict[str, Any],
) -> float:
    """Every output together (all or nothing): the ONNX, the manifest, the FP32 baseline, the QAT checkpoint
    and the sidecar. Returns the run's seconds (as the sidecar records them)."""
    from edgeconvnext.models.checkpoint import save_checkpoint
    from edgeconvnext.quantize.fake_quant import quantizer_state, strip

    cfg, qcfg, loaded, paths = s.cfg, s.qcfg, s.loaded, s.paths
    plain = strip(ex.model, loaded.model)
    extra = {
        "qat": {
            "quantizers": quantizer_state(ex.model),
            "scales": str(cfg.scales),
            "placement": [p.to_dict() for p in placement],
            "onnx": paths["onnx"].name,
            "onnx_sha256": ex.digest,
            "config": cfg.to_dict(),
            "quantize": qcfg.to_dict(),
            "best_epoch": tr.best["epoch"],
        }
    }
    seconds = time.perf_counter() - s.t_start
    with contextlib.ExitStack() as stack:
        t_onnx = stack.enter_context(atomic_output(paths["onnx"]))
        t_side = stack.enter_context(atomic_output(paths["sidecar"]))
        t_man = stack.enter_context(atomic_output(paths["manifest"]))
        t_ckpt = stack.enter_context(atomic_output(paths["checkpoint"]))
        t_fp = stack.enter_context(atomic_output(paths["fp32"])) if _keeps_fp32(s, kept) else None
        t_fps = stack.enter_context(atomic_output(paths["fp32_sidecar"])) if t_fp is not None else None
        t_onnx.write_bytes(ex.onnx_bytes)
        t_man.write_bytes(kept.manifest)
        if t_fp is not None and t_fps is not None:
            t_fp.write_bytes(kept.fp32)
            t_fps.write_bytes(kept.fp32_sidecar)
        save_checkpoint(
            t_ckpt, plain, loaded.arch, class_names=loaded.class_names, preprocess=loaded.preprocess, extra=extra
        )
        ckpt = {
            "path": paths["checkpoint"].name,
            "bytes": t_ckpt.stat().st_size,
            "sha256": _sha256(t_ckpt.read_bytes()),
        }
        t_side.write_text(_sidecar(s, placement, kept, ex, train_summary, ckpt, seconds).to_json())
    return seconds


def _keeps_fp32(s: _Session, kept: _Kept) -> bool:
    """Whether OUT.fp32.onnx is written (--fp32-baseline, and rank 0 has the baseline)."""
    return bool(s.qcfg.keep_fp32 and kept.fp32)


def _sidecar(
    s: _Session,
    placement: list[policy_mod.Placement],
    kept: _Kept,
    ex: _Exported,
    train_summary: dict[str, Any],
    ckpt: dict[str, Any],
    seconds: float,
) -> Sidecar:
    """OUT.onnx.json: inputs, outputs, the resolved configuration and what was measured."""
    import torch

    cfg, qcfg, loaded, paths, report = s.cfg, s.qcfg, s.loaded, s.paths, ex.report
    return Sidecar(
        stage="quantize",
        # the data as listed (names, sizes, times: folder_sha256); the calibration images are in OUT.calib.json
        inputs=([input_ref("checkpoint", loaded.source, loaded.source_sha256)] if loaded.source else [])
        + [input_ref(role, d) for role, d in (("train_data", cfg.train_data), ("val_data", cfg.val_data)) if d],
        outputs=[{"path": paths["onnx"].name, "bytes": len(ex.onnx_bytes), "sha256": ex.digest}, ckpt],
        config={
            **qcfg.to_dict(),
            "method": "qat",
            "qat": cfg.to_dict(),
            "img_size": int(loaded.preprocess.img_size),
            "preprocess": loaded.preprocess.to_dict(),
            "opset": 17,
        },
        environment=environment(device=cfg.device),
        timings={"total_s": round(seconds, 3)},
        details={
            "method": "qat",
            "exporter": "torch.onnx.export (TorchScript, dynamo=False) of torch.fake_quantize_per_*_affine",
            "arch": {"name": loaded.arch.name, "version": loaded.arch.version},
            "source": {
                "path": str(loaded.source) if loaded.source else None,
                "sha256": loaded.source_sha256,
                "format": loaded.source_format,
            },
            "fake_quant": {
                "library": f"torch {torch.__version__} (fake_quantize_per_tensor/per_channel_affine)",
                "scales": str(cfg.scales),
                "scales_note": "frozen: the calibrated PTQ scales, not trained"
                if cfg.scales == "frozen"
                else "learned: LSQ step sizes trained with the weights",
                "activations": "per tensor, int8 [-128, 127], zero point 0",
                "weights": "per output channel, int8 [-128, 127], zero point 0",
                "gradients": "straight-through",
            },
            "training": train_summary,
            "placement": policy_mod.details(placement),
            "calibration": kept.ptq_summary.get("calibration"),
            "ptq": kept.ptq_summary,
            "start_vs_ptq": kept.start_vs_ptq,
            "parity_onnx_vs_torch": ex.parity,
            "agreement_vs_fp32": ex.agreement,
            "fp32_baseline": {"path": paths["fp32"].name} if _keeps_fp32(s, kept) else None,
            "qat_checkpoint": {"path": ckpt["path"], "sha256": ckpt["sha256"]},
            "trt_check": report.check_details(),
            "notes": list(getattr(loaded, "notes", []) or []) + s.notes,
        },
    )


def _result(
    s: _Session, tr: _Training, placement: list[policy_mod.Placement], kept: _Kept, ex: _Exported, seconds: float
) -> QatResult:
    paths = s.paths
    return QatResult(
        path=paths["onnx"],
        sidecar=paths["sidecar"],
        manifest=paths["manifest"],
        checkpoint=paths["checkpoint"],
        fp32_path=paths["fp32"] if _keeps_fp32(s, kept) else None,
        config=s.cfg,
        quant=s.qcfg,
        mode=s.data.train.mode,
        placement=placement,
        report=ex.report,
        history=tr.history,
        best_epoch=tr.best["epoch"],
        start_vs_ptq=kept.start_vs_ptq,
        parity=ex.parity,
        agreement=ex.agreement,
        fp32_val_top1=tr.fp32_val_top1,
        ptq_val_top1=tr.ptq_val_top1,
        ptq_val_agreement=tr.ptq_val_agreement,
        world_size=s.d.world_size,
        seconds=seconds,
        size_bytes=len(ex.onnx_bytes),
        notes=list(getattr(s.loaded, "notes", []) or []) + s.notes,
        resumed_after=tr.start_epoch,
    )


def _start_kept_note(tr: _Training, continuing: bool) -> str:
    """The note of a run whose start (epoch 0) stayed the best epoch: what was compared, and what is exported."""
    start = "the start (the QAT checkpoint)" if continuing else "the PTQ start"
    trained = [h for h in tr.history if h.val_top1 is not None and h.val_agreement is not None]
    best = (
        max(trained, key=lambda h: best_key(h.val_top1, h.val_agreement, tr.fp32_val_top1))  # type: ignore[arg-type]
        if trained and tr.fp32_val_top1 is not None
        else None
    )
    vs = (
        f"; best trained epoch {best.epoch}: {best.val_top1:.2f}%, {best.val_agreement:.2f}%"
        if best is not None
        else ""
    )
    return (
        f"best epoch 0: training did not improve on {start} (validation top-1 {tr.ptq_val_top1:.2f}% (FP32 "
        f"{tr.fp32_val_top1:.2f}%), agreement with FP32 {tr.ptq_val_agreement:.2f}%{vs}): the start is exported"
    )


def _sha256(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def _plain_rng(st: tuple) -> list:
    """random.getstate() as lists (plain types for weights-only loading)."""
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _python_rng(st: list) -> tuple:
    version, internal, gauss = st
    return (version, tuple(internal), gauss)


__all__ = ["QatConfig", "QatResult", "qat", "qat_paths", "distill_loss", "scales_from_onnx", "export_qat"]
