"""Accuracy of a model on labelled images next to its FP32 baseline, and its latency, in one report.

Input: a model (``.onnx`` on onnxruntime, ``.engine`` on TensorRT, a checkpoint on torch, or an
architecture name with random weights for timing only), optionally a labelled image folder (ImageFolder,
or flat + labels file) and a baseline: an FP32 ONNX (onnxruntime CPU) or a checkpoint (torch FP32 CPU).
Class names and preprocessing come from the model's metadata.
Output: a :class:`ValidationReport`: top-1/top-5 of both, the drop in points, top-1 agreement, cosine
similarity of the logits, skipped images, per-class top-1; with the latency mode, p50/p90/p99/mean
latency, images/s and memory at each batch size on the device it ran on; a Markdown table of it all;
optionally written as JSON and Markdown.

Evaluation and timing go through runners (runners.py), so every backend and device plugs in through
``open_runner`` and ``runner_latency``.

Usage::

    report = validate(Path("int8.onnx"), Path("val/"), baseline=Path("fp32.onnx"), max_drop=0.5,
                      latency=LatencyOptions(batches=[1, 8]))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconvnext import __version__
from edgeconvnext.artifacts import atomic_output, check_output, environment, sha256_file, write_json_atomic
from edgeconvnext.data.folders import LabelledImages
from edgeconvnext.errors import AccuracyError, CheckpointError, DataError, UsageError
from edgeconvnext.evaluate.latency import device_name
from edgeconvnext.models.registry import Preprocess
from edgeconvnext.runtime.runners import (
    BACKENDS,
    DEVICES,
    Runner,
    backend_for,
    check_device,
    cuda_graph_capable,
    open_runner,
    runner_latency,
)

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


@dataclass(kw_only=True)
class ValidationReport:
    """One validate call: accuracy (when images were given), latency (when asked), where it ran."""

    model: str
    model_sha256: str | None
    model_runner: str
    precision: str
    data: str | None = None
    images: int = 0  # evaluated (readable) images
    skipped: int = 0
    num_classes: int | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    top1: float | None = None
    top5: float | None = None
    images_per_s: float | None = None  # accuracy pass, preprocessing excluded (runner.infer time)
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
    backend: str = ""
    device: str = "cpu"
    device_name: str = ""
    compile: bool = False
    date: str = ""
    latency: list[dict[str, Any]] = field(default_factory=list)  # one entry per batch size (LatencyResult.to_dict)
    markdown: str = ""

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
        return {
            "class_names": loaded.class_names,
            "preprocess": loaded.preprocess.to_dict(),
            "num_classes": loaded.num_classes,
        }
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


def _dataset(
    data: Path, labels: Path | None, class_names: list[str] | None, num_classes: int, what: str, notes: list[str]
) -> LabelledImages:
    """Labelled images whose label indices are the model's outputs; mismatches are errors."""
    ds = LabelledImages.discover(data, labels, class_names=class_names)
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


def _check_baseline(
    base: Runner,
    base_meta: dict[str, Any],
    num_classes: int,
    class_names: list[str] | None,
    pp: Preprocess,
    what: str,
    notes: list[str],
) -> None:
    n = _num_classes(base, base_meta, what)
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
    raw = base_meta.get("preprocess")
    if isinstance(raw, dict) and Preprocess.from_dict(raw) != pp:
        notes.append(
            f"the baseline's stored preprocessing differs from the model's; both were fed the model's ({pp.to_dict()})"
        )
        log.warning("%s", notes[-1])


@dataclass
class LatencyOptions:
    """The latency mode's settings. None picks the default: batches 1,8 on CPU and 1,32 on CUDA (an
    artifact's fixed batch, or clamped into an engine's profile), 5 warm-up + 30 timed iterations on CPU
    and 50 + 200 on CUDA, CUDA graphs wherever the runner can replay them."""

    batches: list[int] | None = None
    warmup: int | None = None
    iters: int | None = None
    cuda_graph: bool | None = None  # None: where the backend allows (torch and TensorRT on CUDA)


CPU_BATCHES = (1, 8)  # small so a CPU run stays quick
CUDA_BATCHES = (1, 32)
CPU_WARMUP, CPU_ITERS = 5, 30
CUDA_WARMUP, CUDA_ITERS = 50, 200


def parse_batches(text: str) -> list[int]:
    """'1,32' -> [1, 32]; anything else is refused naming --latency-batch."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"--latency-batch '{text}': give positive integers separated by commas, e.g. 1,32")
        out.append(int(part))
    return list(dict.fromkeys(out))


def _default_batches(runner: Runner, device: str, notes: list[str]) -> list[int]:
    """The device's default batches, fitted to what the artifact accepts (fixed batch, engine profile)."""
    wanted = list(CUDA_BATCHES if device.startswith("cuda") else CPU_BATCHES)
    if runner.batch is not None:
        return [runner.batch]
    lo, hi = getattr(runner, "batch_range", (1, None))
    fit = list(dict.fromkeys(min(max(b, lo), hi if hi is not None else b) for b in wanted))
    if fit != wanted:
        notes.append(f"latency batches {fit} instead of the default {wanted}: {runner.name} accepts batch {lo}..{hi}")
        log.warning("%s", notes[-1])
    return fit


def _check_options(
    model: Path | None,
    data: Path | None,
    *,
    backend: str | None,
    device: str | None,
    precision: str | None,
    compile: bool,
    arch: str | None,
    allow_unsafe: bool,
    latency: LatencyOptions | None,
    accuracy_opts: dict[str, Any],
) -> tuple[str, str]:
    """Refuse what cannot be honoured before anything is loaded; returns (backend, device)."""
    if data is None and latency is None:
        raise UsageError("nothing to do: give --data IMAGES for accuracy, --latency for timing, or both")
    if data is None:
        for opt, value in accuracy_opts.items():
            if value is not None:
                raise UsageError(f"{opt} belongs to the accuracy run: add --data IMAGES, or drop {opt}")
    if model is None:
        if arch is None:
            raise UsageError(
                "give MODEL (.onnx, .engine, or a checkpoint), or --model NAME for a random-weights "
                "torch model (latency only)"
            )
        if backend not in (None, "torch"):
            raise UsageError(
                f"--model {arch} without MODEL builds a torch model: use --backend torch, or give "
                f"the artifact for --backend {backend} as MODEL"
            )
        if data is not None:
            raise UsageError(
                f"--data: --model {arch} without a checkpoint has random weights, so its accuracy means "
                "nothing; give the checkpoint as MODEL, or drop --data for a latency-only run"
            )
    backend = backend or (backend_for(model) if model is not None else "torch")
    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if backend != "torch":
        fixed = (
            "the engine fixes its precision at build time"
            if backend == "tensorrt"
            else "the ONNX fixes its precision at export"
        )
        if precision is not None:
            raise UsageError(
                f"--precision applies to --backend torch only: {fixed}; drop --precision, or "
                "export/build a model of that precision"
            )
        if compile:
            raise UsageError(f"--compile applies to --backend torch only (torch.compile); drop it for {backend}")
        if arch is not None:
            raise UsageError(
                f"--model names the architecture of a checkpoint for --backend torch; {backend} reads "
                "it from the artifact: drop --model"
            )
        if allow_unsafe and accuracy_opts.get("--checkpoint") is None:
            raise UsageError(
                f"--allow-unsafe-pickle applies to checkpoints (MODEL with --backend torch, or "
                f"--checkpoint); {backend} reads no pickle: drop it"
            )
    elif precision is not None and precision not in ("fp32", "fp16"):
        raise UsageError(
            f"--precision {precision}: the torch backend runs fp32 or fp16 (INT8 runs from a Q/DQ "
            "ONNX on onnxruntime or TensorRT)"
        )
    device = device or ("cuda" if backend == "tensorrt" else "cpu")
    if device not in DEVICES:
        raise UsageError(f"unknown --device '{device}'; use one of {', '.join(DEVICES)}")
    if backend == "tensorrt" and device != "cuda":
        raise UsageError(
            f"--device {device}: TensorRT engines run on the GPU only; use --device cuda "
            "(or validate the .onnx on the CPU with --backend onnxruntime)"
        )
    if latency is not None:
        if latency.cuda_graph and device != "cuda":
            raise UsageError("--cuda-graph needs --device cuda (the CPU has no CUDA graphs): drop --cuda-graph")
        if latency.cuda_graph and backend == "onnxruntime":
            raise UsageError(
                "--cuda-graph: the onnxruntime backend is timed without CUDA graphs; use "
                "--no-cuda-graph, or --backend tensorrt/torch"
            )
        if latency.warmup is not None and latency.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {latency.warmup}")
        if latency.iters is not None and latency.iters < 1:
            raise UsageError(f"--iters must be >= 1, got {latency.iters}")
        if latency.batches is not None and (not latency.batches or min(latency.batches) < 1):
            raise UsageError(f"--latency-batch must list batch sizes >= 1, got {latency.batches}")
    if backend == "torch" and device == "cuda":
        check_device(device)  # BackendMissing (exit 8) with the fix before a checkpoint is read
    if model is not None and not Path(model).exists():
        raise CheckpointError(f"model not found: {model}")
    if model is not None and backend != "torch" and not Path(model).is_file():
        raise CheckpointError(f"model not found: {model} is not a file")
    return backend, device


def _open_model(
    model: Path | None,
    backend: str,
    device: str,
    *,
    precision: str | None,
    compile: bool,
    arch: str | None,
    img_size: int | None,
    allow_unsafe: bool,
    threads: int | None,
    notes: list[str],
) -> tuple[Runner, str, str | None]:
    """The model's runner, its display name and its sha256 (None for random weights)."""
    if backend == "torch":
        if model is not None and backend_for(model) != "torch":
            raise UsageError(
                f"--backend torch cannot run {model}: give a checkpoint, or use --backend {backend_for(model)}"
            )
        from edgeconvnext.models.checkpoint import load_model

        loaded = load_model(arch, model, img_size=img_size, allow_unsafe=allow_unsafe)
        notes.extend(loaded.notes)
        runner = open_runner(loaded, "torch", device, precision or "fp32", compile=compile)
        name = str(model) if model is not None else f"{loaded.arch.name} (random weights)"
        return runner, name, loaded.source_sha256
    assert model is not None  # _check_options refused a missing MODEL for other backends
    runner = open_runner(Path(model), backend, device, threads=threads)
    if img_size is not None and runner.input_size is not None and img_size != runner.input_size:
        runner.close()
        raise UsageError(
            f"--img-size {img_size}: {Path(model).name} takes {runner.input_size} px inputs (fixed "
            "at export); drop --img-size"
        )
    return runner, str(model), sha256_file(model)


def _measure(
    runner: Runner,
    opts: LatencyOptions,
    device: str,
    img_size: int | None,
    notes: list[str],
    on_batch: Callable[[int], None] | None,
) -> list[dict[str, Any]]:
    """Latency at every requested batch (defaults filled in from the device)."""
    cuda = device == "cuda"
    batches = opts.batches or _default_batches(runner, device, notes)
    warmup = opts.warmup if opts.warmup is not None else (CUDA_WARMUP if cuda else CPU_WARMUP)
    iters = opts.iters if opts.iters is not None else (CUDA_ITERS if cuda else CPU_ITERS)
    graph = opts.cuda_graph if opts.cuda_graph is not None else cuda_graph_capable(runner)
    if graph and not cuda_graph_capable(runner):
        raise UsageError(f"--cuda-graph: {runner.name} cannot be replayed as a CUDA graph; use --no-cuda-graph")
    size = img_size if runner.input_size is None else None
    if runner.input_size is None and size is None:
        size = 224
        notes.append(f"{runner.name} has a dynamic input size: timed at 224 px (give --img-size to choose)")
    out = []
    for b in batches:
        if on_batch is not None:
            on_batch(b)
        res = runner_latency(runner, b, warmup=warmup, iters=iters, cuda_graph=graph, img_size=size)
        out.append(res.to_dict())
        log.info("latency batch %d: p50 %.3f ms, %.1f images/s", b, res.stats.p50_ms, res.stats.images_per_s)
    return out


def validate(
    model: Path | None,
    data: Path | None = None,
    *,
    baseline: Path | None = None,
    checkpoint: Path | None = None,
    batch: int = 32,
    max_drop: float | None = None,
    labels: Path | None = None,
    limit: int | None = None,
    report: Path | None = None,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile: bool = False,
    arch: str | None = None,
    img_size: int | None = None,
    allow_unsafe: bool = False,
    latency: LatencyOptions | None = None,
    markdown: Path | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_latency_batch: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Evaluate ``model`` (and the baseline) on ``data`` and/or time it; see the module docstring.

    ``model`` is an .onnx, an .engine or a checkpoint (file or HuggingFace folder); None with ``arch``
    builds a random-weights torch model (latency only). ``backend`` None picks it from the artifact;
    ``device`` None is cuda for TensorRT, else cpu; ``precision``/``compile`` apply to torch only.
    ``latency`` turns on the latency mode (accuracy runs first when ``data`` is given too).
    ``report`` (JSON) and ``markdown`` are written atomically before an AccuracyError for ``max_drop`` is
    raised; the error carries the report as ``.report``. ``progress(done, total)`` is called after every
    accuracy batch, ``on_latency_batch(batch)`` before each latency batch size. The baseline runs on CPU.
    """
    t0 = time.perf_counter()
    if baseline is not None and checkpoint is not None:
        raise UsageError("give either --baseline FP32.onnx or --checkpoint PATH as the baseline, not both")
    backend, device = _check_options(
        Path(model) if model is not None else None,
        data,
        backend=backend,
        device=device,
        precision=precision,
        compile=compile,
        arch=arch,
        allow_unsafe=allow_unsafe,
        latency=latency,
        accuracy_opts={
            "--baseline": baseline,
            "--checkpoint": checkpoint,
            "--max-drop": max_drop,
            "--labels": labels,
            "--limit": limit,
        },
    )
    if max_drop is not None and baseline is None and checkpoint is None:
        raise UsageError("--max-drop needs a baseline: add --baseline FP32.onnx or --checkpoint PATH")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop must be >= 0 points, got {max_drop}")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    for p, opt in ((baseline, "--baseline"), (checkpoint, "--checkpoint")):
        if p is not None and not Path(p).is_file():
            raise CheckpointError(f"{opt} file not found: {p}")
    inputs = {"MODEL": model, "--baseline": baseline, "--checkpoint": checkpoint, "--labels": labels}
    if report is not None:
        check_output(report, "--report", inputs)
    if markdown is not None:
        check_output(markdown, "--markdown", {**inputs, "--report": report})
    model = Path(model) if model is not None else None
    notes: list[str] = []

    runners: list[Runner] = []
    acc: dict[str, Any] = {}
    lat: list[dict[str, Any]] = []
    try:
        runner, model_name, model_sha = _open_model(
            model,
            backend,
            device,
            precision=precision,
            compile=compile,
            arch=arch,
            img_size=img_size,
            allow_unsafe=allow_unsafe,
            threads=threads,
            notes=notes,
        )
        runners.append(runner)
        if data is not None:
            acc = _accuracy(
                runner,
                runners,
                Path(data),
                display=Path(model_name).name,
                baseline=baseline,
                checkpoint=checkpoint,
                batch=batch,
                labels=labels,
                limit=limit,
                threads=threads,
                allow_unsafe=allow_unsafe,
                notes=notes,
                progress=progress,
            )
        if latency is not None:
            lat = _measure(runner, latency, device, img_size, notes, on_latency_batch)
    finally:
        for r in runners:
            r.close()

    meta = _model_info(runner)
    fields: dict[str, Any] = dict(
        model=model_name,
        model_sha256=model_sha,
        model_runner=runner.name,
        precision=runner.precision,
        num_classes=getattr(runner, "num_classes", None) or meta.get("num_classes"),
        preprocess=meta.get("preprocess") or {},
        max_drop=max_drop,
        limit=limit,
        notes=notes,
        environment=environment(),
        backend=backend,
        device=device,
        device_name=device_name(device),
        compile=compile,
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        latency=lat,
    )
    fields.update(acc)  # the accuracy pass's num_classes/preprocess are the checked ones
    rep = ValidationReport(**fields)
    if rep.drop is not None and max_drop is not None:
        rep.passed = rep.drop <= max_drop
    rep.seconds = time.perf_counter() - t0
    rep.markdown = markdown_table([rep])
    if report is not None:
        write_json_atomic(report, rep.to_dict())
    if markdown is not None:
        with atomic_output(Path(markdown)) as tmp:
            Path(tmp).write_text(rep.markdown)
    if rep.passed is False:
        where = f"; report: {report}" if report is not None else ""
        base_path = baseline if baseline is not None else checkpoint
        err = AccuracyError(
            f"{Path(model_name).name} loses {rep.drop:.2f} top-1 points against "
            f"{Path(base_path).name} ({rep.baseline_top1:.2f}% -> {rep.top1:.2f}%), more than "
            f"--max-drop {max_drop}{where}"
        )
        err.report = rep  # type: ignore[attr-defined]
        raise err
    return rep


def _accuracy(
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
    meta = _model_info(runner)
    num_classes = _num_classes(runner, meta, display)
    class_names = meta.get("class_names")
    pp = _preprocess(runner, meta, display, notes)
    ds = _limit(_dataset(data, labels, class_names, num_classes, display, notes), limit)

    base: Runner | None = None
    base_sha: str | None = None
    base_path = baseline if baseline is not None else checkpoint
    if baseline is not None:
        base = open_runner(Path(baseline), "onnxruntime", "cpu", threads=threads)
        base_sha = sha256_file(baseline)
    elif checkpoint is not None:
        from edgeconvnext.models.checkpoint import load_model

        loaded = load_model(None, Path(checkpoint), allow_unsafe=allow_unsafe)  # hashes the file once
        base = open_runner(loaded, "torch", "cpu", "fp32")
        base_sha = loaded.source_sha256
    if base is not None:
        runners.append(base)
        _check_baseline(base, _model_info(base), num_classes, class_names, pp, Path(base_path).name, notes)

    active = [runner] + ([base] if base is not None else [])
    scores = [Scores(num_classes) for _ in active]
    agree = Agreement()
    done = 0
    for x, y in ds.batches(pp, batch):
        outs = [r.infer(x) for r in active]
        preds = [s.update(o, y) for s, o in zip(scores, outs, strict=False)]
        if base is not None:
            agree.update(preds[0], preds[1], outs[0], outs[1])
        done += len(y)
        if progress is not None:
            progress(done + len(ds.skipped), len(ds))
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
    per_model = ms.per_class_top1()
    per_base = scores[1].per_class_top1() if base is not None else None
    rows = []
    for i in np.flatnonzero(ms.count):
        row: dict[str, Any] = {
            "index": int(i),
            "class": ds.class_names[i],
            "count": int(ms.count[i]),
            "top1": float(per_model[i]),
        }
        if per_base is not None:
            row["baseline_top1"] = float(per_base[i])
        rows.append(row)
    out["per_class"] = rows
    return out


# ---- Markdown -----------------------------------------------------------------------------------------

MARKDOWN_COLUMNS = (
    "artifact",
    "backend",
    "device",
    "precision",
    "batch",
    "top-1 %",
    "drop (pts)",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "memory",
)


def _artifact_label(rep: ValidationReport) -> str:
    return rep.model if rep.model.endswith("(random weights)") else Path(rep.model).name


def table_rows(rep: ValidationReport) -> list[list[str]]:
    """The Markdown rows of one report: one per latency batch, or one accuracy-only row."""
    top1 = f"{rep.top1:.2f}" if rep.top1 is not None else "-"
    drop = f"{rep.drop:+.2f}" if rep.drop is not None else "-"
    head = [_artifact_label(rep)]
    mods = ["compile"] if rep.compile else []
    if not rep.latency:
        return [
            head
            + [
                rep.backend + (f" ({', '.join(mods)})" if mods else ""),
                rep.device,
                rep.precision,
                "-",
                top1,
                drop,
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        ]
    rows = []
    for e in rep.latency:
        m = mods + (["CUDA graph"] if e.get("cuda_graph") else [])
        mem = e.get("memory_bytes")
        rows.append(
            head
            + [
                rep.backend + (f" ({', '.join(m)})" if m else ""),
                rep.device,
                rep.precision,
                str(e["batch"]),
                top1,
                drop,
                f"{e['p50_ms']:.3f}",
                f"{e['p90_ms']:.3f}",
                f"{e['p99_ms']:.3f}",
                f"{e['images_per_s']:.1f}",
                f"{mem / 2**20:.1f} MiB" if mem is not None else "n/a",
            ]
        )
    return rows


def _caption(reports: Sequence[ValidationReport]) -> str:
    devices = list(dict.fromkeys(f"{r.device_name} ({r.device})" for r in reports))
    parts = [f"Device: {'; '.join(devices)}."]
    entries = [e for r in reports for e in r.latency]
    if entries:
        timers = list(dict.fromkeys(e["timer"] for e in entries))
        how = []
        if "cuda_events" in timers:
            how.append("CUDA events, inputs prepared on the device once (no host transfers)")
        if "perf_counter" in timers:
            how.append("perf_counter around one inference call on a prepared array (preprocessing excluded)")
        counts = sorted({(e["warmup"], e["iters"]) for e in entries})
        parts.append(
            f"Timing: {'; '.join(how)}; "
            f"{', '.join(f'{w} warm-up + {n} timed iterations' for w, n in counts)} per batch."
        )
        kinds = list(dict.fromkeys(e["memory_kind"] for e in entries))
        parts.append(f"Memory: {', '.join(kinds)}.")
    if any(r.drop is not None for r in reports):
        bases = list(dict.fromkeys(Path(r.baseline).name for r in reports if r.baseline))
        parts.append(f"Drop: baseline top-1 minus top-1 ({', '.join(bases)}).")
    dates = sorted({r.date[:10] for r in reports if r.date})
    parts.append(f"{', '.join(dates)}, edgeconvnext {__version__}.")
    return " ".join(parts)


def markdown_table(reports: Sequence[ValidationReport]) -> str:
    """A Markdown table (MARKDOWN_COLUMNS) of one or more reports, with a caption naming the device,
    how it was timed and the date. Columns empty ("-") in every row are left out (a latency-only table
    has no top-1/drop columns, an accuracy-only one no latency columns)."""
    rows = [row for rep in reports for row in table_rows(rep)]
    keep = [i for i, _ in enumerate(MARKDOWN_COLUMNS) if any(row[i] != "-" for row in rows)]
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(row[i].replace("|", "\\|") for i in keep) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + _caption(reports) + "\n"


def summary_line(rep: ValidationReport, report: Path | None = None, markdown: Path | None = None) -> str:
    """The one line validate ends with."""
    parts = []
    if rep.top1 is not None:
        acc = f"top-1 {rep.top1:.2f}%, top-5 {rep.top5:.2f}% on {rep.images} images"
        if rep.baseline_top1 is not None:
            acc += f" (baseline {rep.baseline_top1:.2f}%, drop {rep.drop:.2f} pts, agreement {rep.top1_agreement:.1f}%)"
        if rep.skipped:
            acc += f", {rep.skipped} unreadable skipped"
        parts.append(acc)
    if rep.latency:
        lat = ", ".join(
            f"{e['p50_ms']:.2f} ms at batch {e['batch']} ({e['images_per_s']:.0f} images/s)" for e in rep.latency
        )
        parts.append(f"p50 {lat} on {rep.device_name}")
    line = f"{_artifact_label(rep)}: " + "; ".join(parts)
    outs = [str(p) for p in (report, markdown) if p is not None]
    if outs:
        line += f" -> {', '.join(outs)}"
    return line + f", {rep.seconds:.1f} s"


__all__ = [
    "ValidationReport",
    "LatencyOptions",
    "validate",
    "summary_line",
    "markdown_table",
    "table_rows",
    "parse_batches",
    "Scores",
    "Agreement",
]
