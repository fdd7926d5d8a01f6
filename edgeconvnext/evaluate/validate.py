"""Accuracy of a model on labelled images next to its FP32 baseline, and its latency, in one report.

Input: a model (``.onnx`` on onnxruntime, ``.engine`` on TensorRT, a checkpoint on torch, or an
architecture name with random weights for timing only), optionally a labelled image folder (ImageFolder,
or flat + labels file) and a baseline: an FP32 ONNX (onnxruntime CPU) or a checkpoint (torch FP32 CPU).
Class names and preprocessing come from the model's metadata.
Output: a :class:`ValidationReport`: top-1/top-5 of both, the drop in points, top-1 agreement, cosine
similarity of the logits, skipped images, per-class top-1; with the latency mode, p50/p90/p99/mean
latency, images/s and memory at each batch size on the device it ran on; a Markdown table of it all;
optionally written as JSON and Markdown.

This module checks the options and runs the passes; the accuracy pass is
:mod:`edgeconvnext.evaluate.accuracy`, the report record and its Markdown :mod:`edgeconvnext.evaluate.report`.
Evaluation and timing go through runners (:mod:`edgeconvnext.runtime.runners`), so every backend and device
plugs in through ``open_runner`` and ``runner_latency``.

Usage::

    report = validate(Path("int8.onnx"), Path("val/"), baseline=Path("fp32.onnx"), max_drop=0.5,
                      latency=LatencyOptions(batches=[1, 8]))
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeconvnext.artifacts import (
    Sidecar,
    Skipped,
    atomic_output,
    check_output,
    environment,
    input_ref,
    output_ref,
    reuse_if_current,
    sha256_file,
    sidecar_path,
    write_json_atomic,
)
from edgeconvnext.errors import AccuracyError, CheckpointError, UsageError
from edgeconvnext.evaluate.accuracy import Agreement, Scores, accuracy_pass, model_info
from edgeconvnext.evaluate.latency import device_name
from edgeconvnext.evaluate.report import MARKDOWN_COLUMNS, ValidationReport, markdown_table, summary_line, table_rows
from edgeconvnext.runtime.cuda import check_tensorrt_device
from edgeconvnext.runtime.runners import (
    BACKENDS,
    DEVICES,
    TORCH_BACKENDS,
    Runner,
    backend_for,
    check_device,
    cuda_graph_capable,
    open_runner,
    runner_latency,
)

log = logging.getLogger(__name__)


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
    int8_math: str = "auto",
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
        if backend not in (None, *TORCH_BACKENDS):
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
    if backend not in TORCH_BACKENDS:
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
    from edgeconvnext.onnx.session import check_int8_math

    check_int8_math(int8_math, backend)
    device = device or ("cuda" if backend in ("tensorrt", "torch-tensorrt") else "cpu")
    if device not in DEVICES:
        raise UsageError(f"unknown --device '{device}'; use one of {', '.join(DEVICES)}")
    if backend in ("tensorrt", "torch-tensorrt"):
        check_tensorrt_device(device)
    if backend == "torch-tensorrt":
        if compile:
            raise UsageError("--compile: Torch-TensorRT compiles the model itself; drop --compile")
        from edgeconvnext.runtime.torch_tensorrt import import_torch_tensorrt

        import_torch_tensorrt()  # BackendMissing (exit 8) naming the extra, before a checkpoint is read
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
    if backend in TORCH_BACKENDS and device == "cuda":
        check_device(device)  # BackendMissing (exit 8) with the fix before a checkpoint is read
    if model is not None and not Path(model).exists():
        raise CheckpointError(f"model not found: {model}")
    if model is not None and backend not in TORCH_BACKENDS and not Path(model).is_file():
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
    int8_math: str = "auto",
    asked_int8_math: str | None = None,
) -> tuple[Runner, str, str | None]:
    """The model's runner, its display name and its sha256 (None for random weights)."""
    if backend in TORCH_BACKENDS:
        if model is not None and backend_for(model) != "torch":
            raise UsageError(
                f"--backend {backend} cannot run {model}: give a checkpoint, or use --backend {backend_for(model)}"
            )
        from edgeconvnext.models.checkpoint import load_model

        loaded = load_model(arch, model, img_size=img_size, allow_unsafe=allow_unsafe)
        notes.extend(loaded.notes)
        runner = open_runner(loaded, backend, device, precision or "fp32", compile=compile)
        name = str(model) if model is not None else f"{loaded.arch.name} (random weights)"
        return runner, name, loaded.source_sha256
    assert model is not None  # _check_options refused a missing MODEL for other backends
    runner = open_runner(Path(model), backend, device, threads=threads, int8=int8_math)
    _int8_math_note(runner, backend, device, int8_math, notes, asked_int8_math or int8_math)
    if img_size is not None and runner.input_size is not None and img_size != runner.input_size:
        runner.close()
        raise UsageError(
            f"--img-size {img_size}: {Path(model).name} takes {runner.input_size} px inputs (fixed "
            "at export); drop --img-size"
        )
    return runner, str(model), sha256_file(model)


def _int8_math_note(
    runner: Runner, backend: str, device: str, int8_math: str, notes: list[str], asked: str | None = None
) -> None:
    """Say when the accuracy onnxruntime gives an INT8 model may not be TensorRT's, how ``auto`` (``asked``)
    computed it, or that --int8-math did nothing."""
    if backend != "onnxruntime":
        return
    int8 = runner.precision == "int8"
    if asked == "auto":
        if int8 and int8_math == "emulated":
            notes.append(
                "INT8 emulated in float (--int8-math auto): onnxruntime's int8 CPU kernels saturate on this CPU "
                "(x86 without VNNI), so the Q/DQ are computed as written, as TensorRT does (its latency rows time "
                "that emulation; --int8-math kernels for onnxruntime's own kernels)"
            )
        return
    if int8_math != "kernels" and not int8:
        notes.append(f"--int8-math {int8_math}: {runner.name} is not an INT8 model; nothing to compute differently")
    elif int8 and int8_math == "kernels" and device == "cpu":
        from edgeconvnext.onnx.session import kernels_may_saturate

        if kernels_may_saturate():
            notes.append(
                "onnxruntime's int8 CPU kernels saturate on this CPU (x86 without VNNI): its top-1 can read "
                "lower than TensorRT computes (0.7 point on a Fashion-MNIST V1 atto on an AVX2 EPYC); "
                "--int8-math emulated computes the Q/DQ as written, as TensorRT does"
            )


def _check_latency_memory(runner: Runner, batches: list[int], size: int) -> None:
    """Refuse a latency batch the machine cannot hold (estimated before any allocation)."""
    from edgeconvnext.env.probes import check_memory
    from edgeconvnext.models.registry import ARCHS, forward_bytes

    loaded = getattr(runner, "loaded", None)
    arch = loaded.arch if loaded is not None else ARCHS.get(str(model_info(runner).get("arch")))
    b = max(batches)
    check_memory(
        forward_bytes(arch, size, b),
        f"--latency-batch {b} at {size} px" + (f" ({arch.name})" if arch is not None else ""),
        "use a smaller --latency-batch",
    )


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
    if not cuda:  # the host's memory (a GPU's own is the runtime's to report)
        _check_latency_memory(runner, batches, runner.input_size or size or 224)
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
    reuse: bool = False,
    int8_math: str = "auto",
) -> ValidationReport | Skipped:
    """Evaluate ``model`` (and the baseline) on ``data`` and/or time it; see the module docstring.

    ``model`` is an .onnx, an .engine or a checkpoint (file or HuggingFace folder); None with ``arch``
    builds a random-weights torch model (latency only). ``backend`` None picks it from the artifact;
    ``device`` None is cuda for TensorRT, else cpu; ``precision``/``compile`` apply to torch only.
    ``latency`` turns on the latency mode (accuracy runs first when ``data`` is given too).
    ``report`` (JSON) and ``markdown`` are written atomically before an AccuracyError for ``max_drop`` is
    raised; the error carries the report as ``.report``. ``progress(done, total)`` is called after every
    accuracy batch, ``on_latency_batch(batch)`` before each latency batch size. The baseline runs on CPU.
    ``reuse``: with a ``report``, return :class:`~edgeconvnext.artifacts.Skipped` when the report's sidecar
    matches this run (same model, baseline, data, options and library versions; the files unchanged); a
    report over ``max_drop`` raises its AccuracyError again. ``int8_math`` (onnxruntime): how an INT8 model's
    Q/DQ are computed: ``auto`` (default: ``emulated`` on an x86 CPU without VNNI, where onnxruntime's
    int8 kernels saturate, else ``kernels``), ``kernels``, ``emulated`` or ``exact`` (:mod:`edgeconvnext.onnx.session`).
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
        int8_math=int8_math,
    )
    _check_accuracy_request(model, baseline, checkpoint, labels, max_drop, batch, report, markdown, data)
    from edgeconvnext.onnx.session import resolve_int8_math

    # auto: emulated where onnxruntime's int8 CPU kernels may saturate, else the kernels (kept in the key as
    # resolved: a report made on another CPU is not reused for this one's other arithmetic)
    asked_int8_math = int8_math
    if backend == "onnxruntime" and device == "cpu":
        int8_math = resolve_int8_math(int8_math)
    elif int8_math == "auto":
        int8_math = "kernels"
    key_inputs = [
        input_ref(role, path)
        for role, path in (
            ("model", model),
            ("baseline", baseline),
            ("checkpoint", checkpoint),
            ("data", data),
            ("labels", labels),
        )
        if path is not None
    ]
    key_config = {
        "batch": batch,
        "max_drop": max_drop,
        "limit": limit,
        "backend": backend,
        "device": device,
        "precision": precision,
        "compile": compile,
        "arch": arch,
        "img_size": img_size,
        "latency": asdict(latency) if latency is not None else None,
        "markdown": Path(markdown).name if markdown is not None else None,
        **({"int8_math": int8_math} if int8_math != "kernels" else {}),  # older reports' keys stay valid
    }
    if reuse and report is not None:
        reused = reuse_if_current(report, stage="validate", inputs=key_inputs, config=key_config)
        if reused is not None:
            # the report says what this run would: the same verdict on --max-drop (exit 7) as when written
            _judge(ValidationReport(**json.loads(Path(report).read_text())), report)
            return reused
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
            int8_math=int8_math,
            asked_int8_math=asked_int8_math,
        )
        runners.append(runner)
        if data is not None:
            acc = accuracy_pass(
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

    rep = _report(runner, model_name, model_sha, acc, lat, backend, device, compile, max_drop, limit, notes)
    rep.seconds = time.perf_counter() - t0
    rep.markdown = markdown_table([rep])
    _write_and_judge(rep, report, markdown, (key_inputs, key_config))
    return rep


def _report(
    runner: Runner,
    model_name: str,
    model_sha: str | None,
    acc: dict[str, Any],
    lat: list[dict[str, Any]],
    backend: str,
    device: str,
    compile: bool,
    max_drop: float | None,
    limit: int | None,
    notes: list[str],
) -> ValidationReport:
    """The report of the passes that ran (``acc``: accuracy fields, ``lat``: latency entries), judged
    against ``max_drop`` when a baseline gave a drop."""
    meta = model_info(runner)
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
    return rep


def _check_accuracy_request(
    model: Path | None,
    baseline: Path | None,
    checkpoint: Path | None,
    labels: Path | None,
    max_drop: float | None,
    batch: int,
    report: Path | None,
    markdown: Path | None,
    data: Path | None = None,
) -> None:
    """The accuracy options and output paths, checked before anything is loaded."""
    if max_drop is not None and baseline is None and checkpoint is None:
        raise UsageError("--max-drop needs a baseline: add --baseline FP32.onnx or --checkpoint PATH")
    if max_drop is not None and not max_drop >= 0:  # nan too
        raise UsageError(f"--max-drop must be >= 0 points, got {max_drop}")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    for p, opt in ((baseline, "--baseline"), (checkpoint, "--checkpoint")):
        if p is not None and not Path(p).is_file():
            raise CheckpointError(f"{opt} file not found: {p}")
        if p is not None and model is not None and _same_file(Path(model), Path(p)):
            raise UsageError(
                f"{opt} {p} is the model itself (the same file or the same bytes): a drop against itself is 0 by "
                "construction; give the FP32 model instead, e.g. --baseline OUT.fp32.onnx (written by quantize) "
                "or --checkpoint the checkpoint it came from"
            )
    inputs: dict[str, str | Path | None] = {
        "MODEL": model,
        "--baseline": baseline,
        "--checkpoint": checkpoint,
        "--labels": labels,
        "--data": data,
    }
    if report is not None:
        check_output(report, "--report", inputs, suffix=".json", report=True)  # JSON: r.txt was accepted
    if markdown is not None:
        check_output(markdown, "--markdown", {**inputs, "--report": report}, suffix=".md", report=True)


def _same_file(a: Path, b: Path) -> bool:
    """The same file (also through a link or another spelling), or a copy of it (same size and sha256)."""
    if not a.is_file():
        return False
    try:
        if a.samefile(b):
            return True
        return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def _write_and_judge(
    rep: ValidationReport,
    report: Path | None,
    markdown: Path | None,
    key: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    """Write the JSON and Markdown reports (and the report's sidecar), then raise AccuracyError (carrying
    the report) when the drop is over --max-drop: the files exist either way."""
    if report is not None:
        write_json_atomic(report, rep.to_dict())
    if markdown is not None:
        with atomic_output(Path(markdown)) as tmp:
            Path(tmp).write_text(rep.markdown)
    if report is not None:
        outputs = [output_ref(report)]
        if markdown is not None:
            outputs.append(output_ref(markdown, relative_to=Path(report).parent))
        sc = Sidecar(
            stage="validate",
            inputs=key[0],
            outputs=outputs,
            config=key[1],
            environment=environment(device=rep.device_name or rep.device),
            timings={"total_s": round(rep.seconds, 3)},
            details={"top1": rep.top1, "drop": rep.drop, "passed": rep.passed, "latency_batches": len(rep.latency)},
        )
        write_json_atomic(sidecar_path(report), sc.to_dict())
    _judge(rep, report)


def _judge(rep: ValidationReport, report: Path | None) -> None:
    """AccuracyError (carrying the report as ``.report``) when the drop is over --max-drop."""
    if rep.passed is False:
        where = f"; report: {report}" if report is not None else ""
        assert rep.drop is not None and rep.baseline is not None  # passed is set only with a baseline's drop
        err = AccuracyError(
            f"{Path(rep.model).name} loses {rep.drop:.2f} top-1 points against "
            f"{Path(rep.baseline).name} ({rep.baseline_top1:.2f}% -> {rep.top1:.2f}%), more than "
            f"--max-drop {rep.max_drop}{where}"
        )
        err.report = rep  # type: ignore[attr-defined]
        raise err


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
    "MARKDOWN_COLUMNS",
]
