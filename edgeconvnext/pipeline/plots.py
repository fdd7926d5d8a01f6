"""The run report's figures as PNG bytes (matplotlib, the ``plot`` extra, imported only here and lazily).

Input: the report dict (edgeconvnext.pipeline.report). Output: ``{name: png bytes}`` for

- ``accuracy_latency``: top-1 against p50 latency, one point per artifact x backend x batch;
- ``per_class``: per-class top-1 change of the INT8 model against FP32 (points);
- ``precision_map``: every Conv/MatMul/Gemm in graph order, its share of the MACs, coloured by precision;
- ``sensitivity``: what each layer group loses alone in INT8 (the accuracy-budget search's ranking), the
  groups it kept in higher precision marked.

A figure without data (no labels, so no accuracy) is left out; :func:`require_matplotlib` names the extra.

Usage::

    pngs = render_all(report)   # {"accuracy_latency": b"\\x89PNG...", ...}
"""

from __future__ import annotations

import io
from typing import Any

from edgeconvnext.errors import BackendMissing

COLORS = {"INT8": "#2a9d8f", "FP16": "#e9c46a", "FP32": "#e76f51"}
DPI = 110


def require_matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendMissing("the report's plots need matplotlib: pip install 'edgeconvnext[plot]'") from None
    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def accuracy_latency(report: dict[str, Any]) -> bytes | None:
    rows = [r for r in report["rows"] if r.get("top1") is not None and r.get("p50_ms") is not None]
    if not rows:
        return None
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    markers = {"onnxruntime": "o", "torch": "s", "tensorrt": "^", "torch-tensorrt": "D"}
    for r in rows:
        label = f"{r['precision']} {r['kind']} on {r['backend']} ({r['device']}), batch {r['batch']}"
        ax.scatter(r["p50_ms"], r["top1"], marker=markers.get(r["backend"], "o"), s=48, label=label)
    ax.set_xlabel(f"p50 latency, ms ({', '.join(sorted({r['device_name'] for r in rows}))})")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    # plain milliseconds (5, 20, 50), not 5x10^0 ticks
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in "25" else ""))
    ax.set_ylabel("top-1 %")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def per_class(report: dict[str, Any]) -> bytes | None:
    pc = report.get("per_class") or {}
    classes = pc.get("classes") or []
    if not classes:
        return None
    plt = require_matplotlib()
    names = [c["class"] for c in classes]
    change = [c["change"] for c in classes]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), change, color=["#e76f51" if c < 0 else "#2a9d8f" for c in change])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 change, points")
    if not any(change):
        ax.text(0.5, 0.75, "no class changed: INT8 top-1 equals FP32 on every class", transform=ax.transAxes,
                ha="center", fontsize=9, color="#555555")  # fmt: skip
    ax.set_title(f"Per-class top-1: {pc['model']} vs {pc['baseline']}")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def precision_map(report: dict[str, Any]) -> bytes | None:
    layers = (report.get("precision_map") or {}).get("layers") or []
    if not layers or any(r.get("macs") is None for r in layers):
        return None
    plt = require_matplotlib()
    total = sum(r["macs"] for r in layers) or 1
    fig, ax = plt.subplots(figsize=(max(7.0, 0.16 * len(layers) + 2), 3.6))
    colors = [COLORS.get(r["precision"], "#888888") for r in layers]
    ax.bar(range(len(layers)), [100.0 * r["macs"] / total for r in layers], color=colors, width=0.85)
    ax.set_xlabel("Conv / MatMul / Gemm in graph order (stem ... classifier)")
    ax.set_ylabel("share of MACs, %")
    int8 = sum(r["macs"] for r in layers if r["precision"] == "INT8") / total
    ax.set_title(
        f"Per-layer precision: {sum(r['precision'] == 'INT8' for r in layers)}/{len(layers)} layers INT8, "
        f"{int8:.1%} of MACs"
    )
    from matplotlib.patches import Patch

    seen = sorted({r["precision"] for r in layers})
    ax.legend(handles=[Patch(color=COLORS.get(p, "#888888"), label=p) for p in seen], fontsize=8, frameon=False)
    ax.set_xticks([])
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def sensitivity(report: dict[str, Any]) -> bytes | None:
    """The accuracy-budget search's ranking, most harmful first: what each layer group loses alone in INT8
    (left) and its KL divergence from FP32 (right: the tie-break when groups lose the same), the groups the
    search kept in higher precision in the FP16 colour."""
    sens = report.get("sensitivity") or {}
    groups = sens.get("groups") or []
    if not groups:
        return None
    plt = require_matplotlib()
    labels = [
        f"{g['group']} ({100 * g['macs_share']:.1f}% MACs)" if g.get("macs_share") is not None else g["group"]
        for g in groups
    ]
    colors = [COLORS["FP16"] if g["reverted"] else COLORS["INT8"] for g in groups]
    height = max(2.8, 0.24 * len(groups) + 1.4)
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(10.0, height), sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = range(len(groups))
    ax.barh(y, [g["harm"] for g in groups], color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    unit = "top-1 drop vs FP32, points" if sens.get("harm") == "top1_drop" else "disagreement with FP32, %"
    ax.set_xlabel(f"{unit}\n(measured on the {sens.get('subset')} hardest of {sens.get('images')} images)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax_kl.barh(y, [g.get("kl") or 0.0 for g in groups], color=colors)
    ax_kl.set_xlabel("KL(FP32 || model), same images", fontsize=9)
    ax_kl.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    for a in (ax, ax_kl):
        a.xaxis.set_major_locator(MaxNLocator(5))
    fig.suptitle("Sensitivity of layer groups: each alone in INT8 (accuracy-budget search)", fontsize=11)

    handles = [Patch(color=COLORS["FP16"], label="kept in higher precision"), Patch(color=COLORS["INT8"], label="INT8")]
    ax_kl.legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    return _png(fig)


FIGURES = {
    "accuracy_latency": accuracy_latency,
    "per_class": per_class,
    "precision_map": precision_map,
    "sensitivity": sensitivity,
}


def render_all(report: dict[str, Any]) -> dict[str, bytes]:
    require_matplotlib()
    out = {}
    for name, fn in FIGURES.items():
        png = fn(report)
        if png is not None:
            out[name] = png
    return out
