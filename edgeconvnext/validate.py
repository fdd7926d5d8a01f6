"""Accuracy of an exported model on labelled images, next to its FP32 baseline.

Input: a model (``.onnx``; the runner backend decides what else), a labelled image folder (ImageFolder,
or flat + labels file), optionally a baseline: an FP32 ONNX (onnxruntime CPU) or a checkpoint (torch
FP32 CPU). Class names and preprocessing come from the model's metadata.
Output: a :class:`ValidationReport`: top-1/top-5 of both, the drop in points, top-1 agreement, cosine
similarity of the logits, throughput, skipped images, per-class top-1; optionally written as JSON.

Evaluation is one loop over runners (runners.py), so other backends and devices plug in through
``open_runner``.

Usage::

    report = validate(Path("int8.onnx"), Path("val/"), baseline=Path("fp32.onnx"), max_drop=0.5)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import environment, sha256_file, write_json_atomic
from .data import LabelledImages
from .errors import AccuracyError, CheckpointError, DataError, UsageError
from .runners import Runner, open_runner
from .zoo import Preprocess

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
    def top5(self) -> float:
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


@dataclass
class ValidationReport:
    model: str
    model_sha256: str | None
    model_runner: str
    precision: str
    data: str
    images: int  # evaluated (readable) images
    skipped: int
    num_classes: int
    preprocess: dict[str, Any]
    top1: float
    top5: float
    images_per_s: float
    baseline: str | None = None
    baseline_sha256: str | None = None
    baseline_runner: str | None = None
    baseline_top1: float | None = None
    baseline_top5: float | None = None
    baseline_images_per_s: float | None = None
    drop: float | None = None  # baseline top-1 - model top-1, in points
    top1_agreement: float | None = None  # % of images where both predict the same class
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_drop: float | None = None
    passed: bool | None = None  # None when no --max-drop
    per_class: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    limit: int | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit(ds: LabelledImages, limit: int | None) -> LabelledImages:
    """A seeded random subset of ``limit`` images (in their original order), so no class is left out by sorting."""
    if limit is None or limit >= len(ds):
        return ds
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    keep = np.sort(np.random.default_rng(LIMIT_SEED).permutation(len(ds))[:limit])
    return LabelledImages([ds.paths[i] for i in keep], [ds.labels[i] for i in keep], ds.class_names, ds.root)


def _model_info(runner: Runner) -> dict[str, Any]:
    """The edgeconvnext metadata a runner read from its artifact (empty for foreign models)."""
    meta = getattr(runner, "metadata", None)
    if isinstance(meta, dict):
        return meta
    loaded = getattr(runner, "loaded", None)
    if loaded is not None:
        return {"class_names": loaded.class_names, "preprocess": loaded.preprocess.to_dict(),
                "num_classes": loaded.num_classes}
    return {}


def _num_classes(runner: Runner, meta: dict[str, Any], what: str) -> int:
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


def _preprocess(runner: Runner, meta: dict[str, Any], what: str, notes: list[str]) -> Preprocess:
    raw = meta.get("preprocess")
    if isinstance(raw, dict):
        pp = Preprocess.from_dict(raw)
        if runner.input_size is not None and runner.input_size != pp.img_size:
            raise CheckpointError(f"{what} takes {runner.input_size} px inputs but its metadata says img_size "
                                  f"{pp.img_size}: the file was edited; re-export it")
        return pp
    size = runner.input_size or 224
    notes.append(f"{what} has no edgeconvnext preprocess metadata: used the default at {size} px "
                 f"(resize {size}/0.875 bicubic, ImageNet mean/std)")
    log.warning("%s", notes[-1])
    return Preprocess(img_size=size)


def _dataset(data: Path, labels: Path | None, class_names: list[str] | None, num_classes: int,
             what: str, notes: list[str]) -> LabelledImages:
    """Labelled images whose label indices are the model's outputs; mismatches are errors."""
    ds = LabelledImages.discover(data, labels, class_names=class_names)
    if class_names is not None:
        return ds  # discover mapped every folder/label name onto the model's classes or refused
    index_labels = ds.class_names == [str(i) for i in range(len(ds.class_names))]
    if index_labels:
        if len(ds.class_names) > num_classes:
            raise DataError(f"the labels of {data} go up to {len(ds.class_names) - 1} but {what} has "
                            f"{num_classes} outputs")
        ds.class_names = [str(i) for i in range(num_classes)]
    else:
        if len(ds.class_names) != num_classes:
            raise DataError(f"{data} has {len(ds.class_names)} classes but {what} has {num_classes} outputs and no "
                            "class names to map them: use a dataset with the model's classes, or a labels file "
                            "of class indices")
        notes.append(f"{what} stores no class names: assumed output i is the i-th class folder in sorted order "
                     f"({', '.join(ds.class_names[:3])}, ...)")
        log.warning("%s", notes[-1])
    return ds


def _check_baseline(base: Runner, base_meta: dict[str, Any], num_classes: int, class_names: list[str] | None,
                    pp: Preprocess, what: str, notes: list[str]) -> None:
    n = _num_classes(base, base_meta, what)
    if n != num_classes:
        raise UsageError(f"the baseline {what} has {n} classes but the model has {num_classes}: "
                         "compare models of the same classifier")
    names = base_meta.get("class_names")
    if names is not None and class_names is not None and list(names) != list(class_names):
        diff = next(i for i, (a, b) in enumerate(zip(names, class_names)) if a != b)
        raise UsageError(f"the baseline {what} orders its classes differently from the model (output {diff}: "
                         f"'{names[diff]}' vs '{class_names[diff]}'): compare models trained on the same classes")
    if base.input_size is not None and base.input_size != pp.img_size:
        raise UsageError(f"the baseline {what} takes {base.input_size} px inputs, the model {pp.img_size} px")
    raw = base_meta.get("preprocess")
    if isinstance(raw, dict) and Preprocess.from_dict(raw) != pp:
        notes.append(f"the baseline's stored preprocessing differs from the model's; both were fed the model's "
                     f"({pp.to_dict()})")
        log.warning("%s", notes[-1])


def validate(model: Path, data: Path, *, baseline: Path | None = None, checkpoint: Path | None = None,
             batch: int = 32, max_drop: float | None = None, labels: Path | None = None, limit: int | None = None,
             report: Path | None = None, backend: str | None = None, device: str = "cpu",
             threads: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Evaluate ``model`` (and the baseline) on ``data``; see the module docstring.

    ``report`` is written (atomically) before an AccuracyError for ``max_drop`` is raised; the error
    carries the report as ``.report``. ``progress(done, total)`` is called after every batch.
    ``backend``/``device`` choose the model's runner (open_runner); the baseline runs on CPU.
    """
    t0 = time.perf_counter()
    if baseline is not None and checkpoint is not None:
        raise UsageError("give either --baseline FP32.onnx or --checkpoint PATH as the baseline, not both")
    if max_drop is not None and baseline is None and checkpoint is None:
        raise UsageError("--max-drop needs a baseline: add --baseline FP32.onnx or --checkpoint PATH")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop must be >= 0 points, got {max_drop}")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    model = Path(model)
    if not model.is_file():
        raise CheckpointError(f"model not found: {model}")
    for p, opt in ((baseline, "--baseline"), (checkpoint, "--checkpoint")):
        if p is not None and not Path(p).is_file():
            raise CheckpointError(f"{opt} file not found: {p}")
    notes: list[str] = []

    runners: list[Runner] = []
    try:
        runner = open_runner(model, backend, device, threads=threads)
        runners.append(runner)
        meta = _model_info(runner)
        num_classes = _num_classes(runner, meta, model.name)
        class_names = meta.get("class_names")
        pp = _preprocess(runner, meta, model.name, notes)
        ds = _limit(_dataset(Path(data), labels, class_names, num_classes, model.name, notes), limit)

        base: Runner | None = None
        base_path = baseline if baseline is not None else checkpoint
        if baseline is not None:
            base = open_runner(Path(baseline), "onnxruntime", "cpu", threads=threads)
        elif checkpoint is not None:
            from .checkpoint import load_model

            base = open_runner(load_model(None, Path(checkpoint)), "torch", "cpu", "fp32")
        if base is not None:
            runners.append(base)
            _check_baseline(base, _model_info(base), num_classes, class_names, pp, Path(base_path).name, notes)

        scores = [Scores(num_classes) for _ in runners]
        agree = Agreement()
        done = 0
        for x, y in ds.batches(pp, batch):
            outs = [r.infer(x) for r in runners]
            preds = [s.update(o, y) for s, o in zip(scores, outs)]
            if base is not None:
                agree.update(preds[0], preds[1], outs[0], outs[1])
            done += len(y)
            if progress is not None:
                progress(done + len(ds.skipped), len(ds))
        for s, r in zip(scores, runners):
            s.images_per_s = r.images_per_s
    finally:
        for r in runners:
            r.close()
    if done == 0:
        first = ds.skipped[0][1] if ds.skipped else "no images"
        raise DataError(f"none of the {len(ds)} images in {data} could be read (first: {first})")

    ms = scores[0]
    rep = ValidationReport(
        model=str(model), model_sha256=sha256_file(model), model_runner=runner.name, precision=runner.precision,
        data=str(data), images=ms.n, skipped=len(ds.skipped), num_classes=num_classes, preprocess=pp.to_dict(),
        top1=ms.top1, top5=ms.top5, images_per_s=ms.images_per_s, max_drop=max_drop, limit=limit, notes=notes,
        skipped_files=[{"file": str(p), "reason": why} for p, why in ds.skipped[:SKIPPED_LISTED]],
        environment=environment())
    names = ds.class_names
    if base is not None:
        bs = scores[1]
        rep.baseline, rep.baseline_sha256, rep.baseline_runner = str(base_path), sha256_file(base_path), base.name
        rep.baseline_top1, rep.baseline_top5, rep.baseline_images_per_s = bs.top1, bs.top5, bs.images_per_s
        rep.drop = bs.top1 - ms.top1
        rep.top1_agreement, rep.cosine_mean, rep.cosine_min = agree.top1_agreement, agree.cos_mean, agree.cos_min
        if max_drop is not None:
            rep.passed = rep.drop <= max_drop
    per_model = ms.per_class_top1()
    per_base = scores[1].per_class_top1() if base is not None else None
    for i in np.flatnonzero(ms.count):
        row: dict[str, Any] = {"index": int(i), "class": names[i], "count": int(ms.count[i]),
                               "top1": float(per_model[i])}
        if per_base is not None:
            row["baseline_top1"] = float(per_base[i])
        rep.per_class.append(row)
    rep.seconds = time.perf_counter() - t0
    if report is not None:
        write_json_atomic(report, rep.to_dict())
    if rep.passed is False:
        where = f"; report: {report}" if report is not None else ""
        err = AccuracyError(f"{model.name} loses {rep.drop:.2f} top-1 points against {Path(base_path).name} "
                            f"({rep.baseline_top1:.2f}% -> {rep.top1:.2f}%), more than --max-drop {max_drop}{where}")
        err.report = rep  # type: ignore[attr-defined]
        raise err
    return rep


def summary_line(rep: ValidationReport, report: Path | None = None) -> str:
    """The one line validate ends with."""
    line = f"{Path(rep.model).name}: top-1 {rep.top1:.2f}%, top-5 {rep.top5:.2f}% on {rep.images} images"
    if rep.baseline_top1 is not None:
        line += (f" (baseline {rep.baseline_top1:.2f}%, drop {rep.drop:.2f} pts, "
                 f"agreement {rep.top1_agreement:.1f}%)")
    if rep.skipped:
        line += f", {rep.skipped} unreadable skipped"
    if report is not None:
        line += f" -> {report}"
    return line + f", {rep.seconds:.1f} s"


__all__ = ["ValidationReport", "validate", "summary_line", "Scores", "Agreement"]
