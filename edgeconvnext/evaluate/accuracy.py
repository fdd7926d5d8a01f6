"""The accuracy pass: top-1/top-5 of a runner on labelled images, next to a baseline runner.

Input: an opened :class:`~edgeconvnext.runtime.runners.Runner` (its metadata gives class names and
preprocessing), a labelled image folder (or flat folder + labels file), and optionally an FP32 baseline
(an ONNX on onnxruntime CPU, or a checkpoint on torch CPU). Output: the accuracy fields of a
:class:`~edgeconvnext.evaluate.report.ValidationReport` as a dict (top-1/top-5 of both, the drop in
points, top-1 agreement, cosine similarity of the logits, skipped images, per-class top-1).

Usage::

    fields = accuracy_pass(runner, runners, Path("val/"), display="int8.onnx", baseline=Path("fp32.onnx"),
                           checkpoint=None, batch=32, labels=None, limit=None, threads=None,
                           allow_unsafe=False, notes=[], progress=None)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeconvnext.artifacts import sha256_file
from edgeconvnext.data.folders import LabelledImages
from edgeconvnext.errors import CheckpointError, DataError, UsageError
from edgeconvnext.models.registry import Preprocess
from edgeconvnext.runtime.runners import Runner, open_runner

log = logging.getLogger(__name__)

SKIPPED_LISTED = 20  # skipped files named in the report (all are counted)
LIMIT_SEED = 0  # --limit takes a seeded random subset so every class is represented


@dataclass
class Scores:
    """Accumulated accuracy of one runner."""

    num_classes: int
    correct1: np.ndarray = field(init=False)  # per class
    correct5: int = 0
    count: np.ndarray = field(init=False)  # per class
    images_per_s: float = 0.0

    def __post_init__(self) -> None:
        self.correct1 = np.zeros(self.num_classes, np.int64)
        self.count = np.zeros(self.num_classes, np.int64)

    def update(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Add a batch; returns its top-1 predictions."""
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        pred = top[:, 0]
        np.add.at(self.count, labels, 1)
        np.add.at(self.correct1, labels[pred == labels], 1)
        self.correct5 += int((top == labels[:, None]).any(axis=1).sum())
        return pred

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def top1(self) -> float:
        return 100.0 * float(self.correct1.sum()) / max(1, self.n)

    @property
    def top5(self) -> float | None:
        """None for 5 classes or fewer: every image would count as a top-5 hit (100% says nothing)."""
        if self.num_classes <= 5:
            return None
        return 100.0 * self.correct5 / max(1, self.n)

    def per_class_top1(self) -> np.ndarray:
        return 100.0 * self.correct1 / np.maximum(self.count, 1)


@dataclass
class Agreement:
    """How close two runners' outputs are: same top-1, and cosine similarity of the logits."""

    same_top1: int = 0
    n: int = 0
    cos_sum: float = 0.0
    cos_min: float = 1.0

    def update(self, pred_a: np.ndarray, pred_b: np.ndarray, logits_a: np.ndarray, logits_b: np.ndarray) -> None:
        a, b = logits_a.astype(np.float64), logits_b.astype(np.float64)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), 1.0)
        self.same_top1 += int((pred_a == pred_b).sum())
        self.n += len(pred_a)
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))

    @property
    def top1_agreement(self) -> float:
        return 100.0 * self.same_top1 / max(1, self.n)

    @property
    def cos_mean(self) -> float:
        return self.cos_sum / max(1, self.n)


def limit_subset(ds: LabelledImages, limit: int | None) -> LabelledImages:
    """A seeded random subset of ``limit`` images (in their original order), so no class is left out by sorting."""
    if limit is None or limit >= len(ds):
        return ds
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    keep = np.sort(np.random.default_rng(LIMIT_SEED).permutation(len(ds))[:limit])
    subset = LabelledImages([ds.paths[i] for i in keep], [ds.labels[i] for i in keep], ds.class_names, ds.root)
    subset.skipped = list(ds.skipped)  # unreadable sub-folders stay counted
    return subset


def model_info(runner: Runner) -> dict[str, Any]:
    """The edgeconvnext metadata a runner read from its artifact (empty for foreign models)."""
    meta = getattr(runner, "metadata", None)
    if isinstance(meta, dict):
        return meta
    loaded = getattr(runner, "loaded", None)
    if loaded is not None:
        return {
            "class_names": loaded.class_names,
            "preprocess": loaded.preprocess.to_dict(),
            "num_classes": loaded.num_classes,
            "arch": loaded.arch.name,
            "source_sha256": loaded.source_sha256,
            "source_format": loaded.source_format,
        }
    return {}


def num_classes_of(runner: Runner, meta: dict[str, Any], what: str) -> int:
    out = getattr(runner, "num_classes", None)
    stored = meta.get("num_classes")
    names = meta.get("class_names")
    if out is not None and stored is not None and int(stored) != out:
        raise CheckpointError(f"{what} says {stored} classes in its metadata but outputs {out} logits")
    n = out if out is not None else stored
    if n is None:
        raise CheckpointError(f"cannot tell how many classes {what} has (dynamic output, no metadata)")
    if names is not None and len(names) != int(n):
        raise CheckpointError(f"{what} stores {len(names)} class names for {n} outputs")
    return int(n)


def preprocess_of(runner: Runner, meta: dict[str, Any], what: str, notes: list[str]) -> Preprocess:
    raw = meta.get("preprocess")
    if isinstance(raw, dict):
        pp = Preprocess.from_dict(raw, f"the metadata of {what}")
        if runner.input_size is not None and runner.input_size != pp.img_size:
            raise CheckpointError(
                f"{what} takes {runner.input_size} px inputs but its metadata says img_size "
                f"{pp.img_size}: the file was edited; re-export it"
            )
        return pp
    size = runner.input_size or 224
    notes.append(
        f"{what} has no edgeconvnext preprocess metadata: used the default at {size} px "
        f"(resize {size}/0.875 bicubic, ImageNet mean/std)"
    )
    log.warning("%s", notes[-1])
    return Preprocess(img_size=size)


def labelled_dataset(
    data: Path, labels: Path | None, class_names: list[str] | None, num_classes: int, what: str, notes: list[str]
) -> LabelledImages:
    """Labelled images whose label indices are the model's outputs; mismatches are errors."""
    ds = LabelledImages.discover(data, labels, class_names=class_names, labels_option="--labels", option="--data")
    notes.extend(ds.notes)  # which labels file was read, images it does not label
    if class_names is not None:
        return ds  # discover mapped every folder/label name onto the model's classes or refused
    index_labels = ds.class_names == [str(i) for i in range(len(ds.class_names))]
    if index_labels:
        if len(ds.class_names) > num_classes:
            raise DataError(
                f"the labels of {data} go up to {len(ds.class_names) - 1} but {what} has {num_classes} outputs"
            )
        ds.class_names = [str(i) for i in range(num_classes)]
    else:
        if len(ds.class_names) != num_classes:
            raise DataError(
                f"{data} has {len(ds.class_names)} classes but {what} has {num_classes} outputs and no "
                "class names to map them: use a dataset with the model's classes, or a labels file "
                "of class indices"
            )
        notes.append(
            f"{what} stores no class names: assumed output i is the i-th class folder in sorted order "
            f"({', '.join(ds.class_names[:3])}, ...)"
        )
        log.warning("%s", notes[-1])
    return ds


def check_baseline(
    base: Runner,
    base_meta: dict[str, Any],
    num_classes: int,
    class_names: list[str] | None,
    pp: Preprocess,
    what: str,
    notes: list[str],
    model_meta: dict[str, Any] | None = None,
) -> None:
    """Refuse a baseline that cannot be compared with the model (classes, their order, input size); warn when it
    is another network (architecture, random weights, another checkpoint: the drop is then not what the model's
    own quantization cost)."""
    n = num_classes_of(base, base_meta, what)
    if n != num_classes:
        raise UsageError(
            f"the baseline {what} has {n} classes but the model has {num_classes}: "
            "compare models of the same classifier"
        )
    names = base_meta.get("class_names")
    if names is not None and class_names is not None and list(names) != list(class_names):
        diff = next(i for i, (a, b) in enumerate(zip(names, class_names, strict=False)) if a != b)
        raise UsageError(
            f"the baseline {what} orders its classes differently from the model (output {diff}: "
            f"'{names[diff]}' vs '{class_names[diff]}'): compare models trained on the same classes"
        )
    if base.input_size is not None and base.input_size != pp.img_size:
        raise UsageError(f"the baseline {what} takes {base.input_size} px inputs, the model {pp.img_size} px")
    _warn_if_other_network(base_meta, model_meta or {}, what, notes)
    raw = base_meta.get("preprocess")
    if isinstance(raw, dict) and Preprocess.from_dict(raw, f"the metadata of the baseline {what}") != pp:
        notes.append(
            f"the baseline's stored preprocessing differs from the model's; both were fed the model's ({pp.to_dict()})"
        )
        log.warning("%s", notes[-1])


def _warn_if_other_network(base_meta: dict[str, Any], model_meta: dict[str, Any], what: str, notes: list[str]) -> None:
    """One warning when the baseline's metadata says it is not the model's own network in FP32: another
    architecture, random weights, or exported from another checkpoint (foreign ONNX files say nothing: no
    warning)."""
    ba, ma = base_meta.get("arch"), model_meta.get("arch")
    bs, ms = base_meta.get("source_sha256"), model_meta.get("source_sha256")
    why = None
    if ba and ma and ba != ma:
        why = f"is a {ba} and the model a {ma}"
    elif base_meta.get("source_format") == "random" and model_meta.get("source_format") not in (None, "random"):
        why = "has random weights"
    elif bs and ms and bs != ms:
        why = f"comes from another checkpoint (sha256 {str(bs)[:12]}... vs the model's {str(ms)[:12]}...)"
    if why is None:
        return
    notes.append(
        f"the baseline {what} {why}: the drop compares two different networks, not what quantization cost; use the "
        "FP32 model of the same checkpoint as --baseline (quantize's OUT.fp32.onnx) or --checkpoint"
    )
    log.warning("%s", notes[-1])


def _warn_if_quantized(path: Path, base: Runner, notes: list[str]) -> None:
    """One warning when the --baseline ONNX is itself INT8 (Q/DQ nodes or int8 metadata): the drop then says how
    far the model is from another quantized model, not what quantization cost."""
    from edgeconvnext.onnx.graph import QDQ_OPS
    from edgeconvnext.onnx.info import load_proto, op_histogram

    ops = op_histogram(load_proto(path))
    qdq = sum(ops.get(op, 0) for op in QDQ_OPS)
    if qdq == 0 and base.precision != "int8":
        return
    notes.append(
        f"the baseline {path.name} is an INT8 model ({qdq} Q/DQ nodes): the drop is measured against a quantized "
        "model, not FP32; for the cost of quantization use the FP32 ONNX (quantize's OUT.fp32.onnx) as --baseline"
    )
    log.warning("%s", notes[-1])


def accuracy_pass(
    runner: Runner,
    runners: list[Runner],
    data: Path,
    *,
    display: str,
    baseline: Path | None,
    checkpoint: Path | None,
    batch: int,
    labels: Path | None,
    limit: int | None,
    threads: int | None,
    allow_unsafe: bool,
    notes: list[str],
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """The accuracy pass: ValidationReport fields as a dict. Opened baseline runners are appended to
    ``runners`` (the caller closes them)."""
    meta = model_info(runner)
    num_classes = num_classes_of(runner, meta, display)
    class_names = meta.get("class_names")
    pp = preprocess_of(runner, meta, display, notes)
    ds = limit_subset(labelled_dataset(data, labels, class_names, num_classes, display, notes), limit)

    base: Runner | None = None
    base_sha: str | None = None
    base_path = baseline if baseline is not None else checkpoint
    if baseline is not None:
        base = open_runner(Path(baseline), "onnxruntime", "cpu", threads=threads)
        base_sha = sha256_file(baseline)
        _warn_if_quantized(Path(baseline), base, notes)
    elif checkpoint is not None:
        from edgeconvnext.models.checkpoint import load_model

        loaded = load_model(None, Path(checkpoint), allow_unsafe=allow_unsafe)  # hashes the file once
        if loaded.preprocess.img_size != pp.img_size:  # ConvNeXt runs at any multiple of 32: compare like for like
            notes.append(
                f"the baseline {Path(checkpoint).name} ran at the model's {pp.img_size} px (its preprocessing says "
                f"{loaded.preprocess.img_size} px); quantize's OUT.fp32.onnx is the exact baseline (--baseline)"
            )
            log.info("%s", notes[-1])
            loaded.preprocess = replace(loaded.preprocess, img_size=pp.img_size)
        base = open_runner(loaded, "torch", "cpu", "fp32")
        base_sha = loaded.source_sha256
    if base is not None:
        assert base_path is not None  # base is opened from one of them
        runners.append(base)
        check_baseline(base, model_info(base), num_classes, class_names, pp, Path(base_path).name, notes, meta)

    active = [runner] + ([base] if base is not None else [])
    scores = [Scores(num_classes) for _ in active]
    agree = Agreement()
    done = 0
    folders = len(ds.skipped)  # unreadable sub-folders found by the scan; the images skipped follow
    for x, y in ds.batches(pp, batch):
        outs = [r.infer(x) for r in active]
        preds = [s.update(o, y) for s, o in zip(scores, outs, strict=False)]
        if base is not None:
            agree.update(preds[0], preds[1], outs[0], outs[1])
        done += len(y)
        if progress is not None:
            progress(done + len(ds.skipped) - folders, len(ds))
    for s, r in zip(scores, active, strict=False):
        s.images_per_s = r.images_per_s
    if done == 0:
        first = ds.skipped[0][1] if ds.skipped else "no images"
        raise DataError(f"none of the {len(ds)} images in {data} could be read (first: {first})")

    ms = scores[0]
    out: dict[str, Any] = dict(
        data=str(data),
        images=ms.n,
        skipped=len(ds.skipped),
        num_classes=num_classes,
        preprocess=pp.to_dict(),
        top1=ms.top1,
        top5=ms.top5,
        images_per_s=ms.images_per_s,
        skipped_files=[{"file": str(p), "reason": why} for p, why in ds.skipped[:SKIPPED_LISTED]],
    )
    if base is not None:
        bs = scores[1]
        out.update(
            baseline=str(base_path),
            baseline_sha256=base_sha,
            baseline_runner=base.name,
            baseline_top1=bs.top1,
            baseline_top5=bs.top5,
            baseline_images_per_s=bs.images_per_s,
            drop=bs.top1 - ms.top1,
            top1_agreement=agree.top1_agreement,
            cosine_mean=agree.cos_mean,
            cosine_min=agree.cos_min,
        )
    out["per_class"] = _per_class(ms, scores[1] if base is not None else None, ds.class_names)
    return out


def _per_class(ms: Scores, bs: Scores | None, class_names: list[str]) -> list[dict[str, Any]]:
    """One row per class that has images: its count, top-1 and (with a baseline) the baseline's top-1."""
    per_model = ms.per_class_top1()
    per_base = bs.per_class_top1() if bs is not None else None
    rows = []
    for i in np.flatnonzero(ms.count):
        row: dict[str, Any] = {
            "index": int(i),
            "class": class_names[i],
            "count": int(ms.count[i]),
            "top1": float(per_model[i]),
        }
        if per_base is not None:
            row["baseline_top1"] = float(per_base[i])
        rows.append(row)
    return rows
