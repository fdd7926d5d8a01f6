"""Latency measurement shared by every backend: warm-up, timed iterations, percentiles.

Input: a zero-argument callable that runs one inference (``run_fn``), optionally a ``sync`` callable that
waits for the device. Output: :class:`LatencyStats` (p50/p90/p99/mean ms, images/s, the raw samples).

On CPU each iteration is timed with ``time.perf_counter``. On CUDA, ``use_cuda_events=True`` records a
``torch.cuda.Event`` pair around each iteration on the current stream and waits for the end event, so the
time is the device's, not the Python loop's (:func:`edgeconvnext.runtime.cuda.time_cuda_events`; CUDA graph
capture is :func:`edgeconvnext.runtime.cuda.capture_cuda_graph`).
:class:`LatencyResult` adds what a report needs beside the statistics (CUDA graph used, memory);
:func:`device_name` and :func:`peak_rss_bytes` describe where it ran.

Usage::

    stats = measure_latency(lambda: runner.infer(x), warmup=10, iters=100)
    print(stats.p50_ms, stats.images_per_s)
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.errors import UsageError
from edgeconvnext.runtime.cuda import time_cuda_events

log = logging.getLogger(__name__)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise UsageError("percentile of no samples: run at least one timed iteration (--iters >= 1)")
    if not 0.0 <= q <= 100.0:
        raise UsageError(f"percentile q={q} is outside 0..100")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class LatencyStats:
    """Summary of timed iterations; every time in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    batch: int
    iters: int
    warmup: int
    timer: str  # "perf_counter" | "cuda_events"
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_samples:
            d.pop("samples_ms")
        return d


@dataclass
class LatencyResult:
    """One batch size on one runner: the statistics, whether a CUDA graph was replayed, and memory.

    ``memory_kind`` says what ``memory_bytes`` measures ("torch.cuda.max_memory_allocated",
    "TensorRT engine device memory", "process peak RSS") or "n/a" when nothing could be measured.
    """

    stats: LatencyStats
    cuda_graph: bool
    memory_bytes: int | None = None
    memory_kind: str = "n/a"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.stats.to_dict()
        d.update(cuda_graph=self.cuda_graph, memory_bytes=self.memory_bytes, memory_kind=self.memory_kind)
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def cpu_name() -> str:
    """The CPU model ('model name' in /proc/cpuinfo on Linux), else platform.processor() or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            # x86: 'model name'; some ARM kernels (Jetson) give only 'Hardware' or 'Model'
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    """'cpu' -> the CPU model; 'cuda'/'cuda:N' -> the GPU's name as cuda-python (no torch needed) or torch
    reports it."""
    if not str(device).startswith("cuda"):
        return cpu_name()
    from edgeconvnext.runtime.cuda import import_cudart

    cudart, _ = import_cudart()
    if cudart is not None:
        index = int(str(device).split(":", 1)[1]) if ":" in str(device) else 0
        err, prop = cudart.cudaGetDeviceProperties(index)
        if int(err) == 0:
            raw = prop.name
            return (raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)).strip()
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception as e:  # noqa: BLE001 - a name is informative only; never fail a measurement on it
        log.debug("no CUDA device name from torch: %s", e)
    return "CUDA GPU (name unknown: torch has no CUDA)"


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size since it started (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; Linux: KiB


def summarize(
    samples_ms: Sequence[float], *, batch: int = 1, warmup: int = 0, timer: str = "perf_counter"
) -> LatencyStats:
    """Statistics of per-iteration times (ms). images/s is batch / mean latency."""
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    xs = [float(s) for s in samples_ms]
    if not xs:
        raise UsageError("no timed iterations: use --iters >= 1")
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
    return LatencyStats(
        p50_ms=percentile(xs, 50),
        p90_ms=percentile(xs, 90),
        p99_ms=percentile(xs, 99),
        mean_ms=mean,
        std_ms=std,
        min_ms=min(xs),
        max_ms=max(xs),
        images_per_s=batch * 1000.0 / mean if mean > 0 else float("inf"),
        batch=batch,
        iters=n,
        warmup=warmup,
        timer=timer,
        samples_ms=xs,
    )


def measure_latency(
    run_fn: Callable[[], Any],
    *,
    warmup: int = 10,
    iters: int = 100,
    sync: Callable[[], Any] | None = None,
    use_cuda_events: bool = False,
    batch: int = 1,
) -> LatencyStats:
    """Run ``run_fn`` ``warmup`` times untimed, then ``iters`` times timed; return the statistics.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called after each warm-up and timed iteration so a
    host-timed sample covers the device work. ``use_cuda_events`` times each iteration with a CUDA event
    pair on the current torch stream instead (needs torch with CUDA).
    """
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    if iters < 1:
        raise UsageError(f"iters must be >= 1, got {iters}")
    for _ in range(warmup):
        run_fn()
        if sync is not None:
            sync()
    if use_cuda_events:
        samples = time_cuda_events(run_fn, iters)
        timer = "cuda_events"
    else:
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run_fn()
            if sync is not None:
                sync()
            samples.append((time.perf_counter() - t0) * 1000.0)
        timer = "perf_counter"
    stats = summarize(samples, batch=batch, warmup=warmup, timer=timer)
    log.debug("latency over %d iters: p50 %.3f ms, p99 %.3f ms", iters, stats.p50_ms, stats.p99_ms)
    return stats
