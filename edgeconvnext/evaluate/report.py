"""What validate reports: the :class:`ValidationReport` record, its Markdown table and its final line.

Input: one or more reports (accuracy fields, latency entries, where it ran). Output: JSON-ready dicts
(:meth:`ValidationReport.to_dict`), a Markdown table (:data:`MARKDOWN_COLUMNS`, columns empty in every
row left out) with a caption naming device, timing method and date, and the one-line summary.

Usage::

    print(markdown_table([rep_fp32, rep_int8]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext import __version__


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
    top5: float | None = None  # None for 5 classes or fewer (always 100%)
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
        top5 = f", top-5 {rep.top5:.2f}%" if rep.top5 is not None else ""
        acc = f"top-1 {rep.top1:.2f}%{top5} on {rep.images} images"
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
