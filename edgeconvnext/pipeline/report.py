"""The run report: one table of artifact x backend x precision x batch, the figures, the notes.

Input: a finished :class:`~edgeconvnext.pipeline.run.Pipeline` (its validation reports in ``RUN/validate``,
the TensorRT rules result, the quantization placement). Output: ``report.json`` (everything, machine
readable), ``report.md`` (the table and the notes; figures linked from ``plots/``) and ``report.html``
(self-contained: the figures embedded as base64 PNG, inline CSS, no scripts or external links).

Every number in the table comes from an ``edgeconvnext.evaluate.validate`` report of that row, unchanged:
top-1 and drop (points, against the FP32 ONNX), top-1 agreement, p50/p99 ms and images/s of the latency
run at each batch, and the artifact's size. :func:`render_markdown` / :func:`render_html` also render a
report that ``device-check`` extended with a device section.

Usage::

    rep = build_report(pipeline); write_report(rep, Path("runs/nano"))
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext import __version__
from edgeconvnext.artifacts import atomic_output, write_json_atomic

if TYPE_CHECKING:
    from edgeconvnext.pipeline.run import Pipeline

REPORT_VERSION = 1
COLUMNS = (
    ("artifact", "artifact"),
    ("backend", "backend"),
    ("device", "device"),
    ("precision", "precision"),
    ("batch", "batch"),
    ("top1", "top-1 %"),
    ("drop", "drop (pts)"),
    ("agreement", "agreement %"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("images_per_s", "images/s"),
    ("size_mb", "size MB"),
)
FIGURE_TITLES = {
    "accuracy_latency": "Accuracy vs latency",
    "per_class": "Per-class top-1 change, INT8 vs FP32",
    "precision_map": "Per-layer precision map",
    "sensitivity": "Sensitivity of layer groups (accuracy-budget search)",
}


def rows_from_validation(
    v: dict[str, Any], *, artifact: str, kind: str, size_bytes: int | None, source: str
) -> list[dict[str, Any]]:
    """Table rows of one validate report: one per latency batch, or one accuracy-only row."""
    base = {
        "artifact": artifact,
        "kind": kind,
        "backend": v.get("backend"),
        "device": v.get("device"),
        "device_name": v.get("device_name"),
        "precision": v.get("precision"),
        "top1": v.get("top1"),
        "top5": v.get("top5"),
        "drop": v.get("drop"),
        "agreement": v.get("top1_agreement"),
        "images": v.get("images"),
        "size_mb": round(size_bytes / 2**20, 3) if size_bytes is not None else None,
        "source": source,
    }
    lat = v.get("latency") or []
    if not lat:
        return [{**base, "batch": None, "p50_ms": None, "p99_ms": None, "images_per_s": None, "cuda_graph": None}]
    return [
        {
            **base,
            "batch": e["batch"],
            "p50_ms": e["p50_ms"],
            "p90_ms": e["p90_ms"],
            "p99_ms": e["p99_ms"],
            "images_per_s": e["images_per_s"],
            "timer": e.get("timer"),
            "cuda_graph": e.get("cuda_graph"),
        }
        for e in lat
    ]


def _per_class(vals: dict[str, dict[str, Any]], deployed: str) -> dict[str, Any] | None:
    """Per-class top-1 of the deployed INT8 ONNX against its FP32 baseline (the run's own validation of it)."""
    for name in (f"{deployed}.onnxruntime", "int8.onnxruntime"):
        v = vals.get(name)
        if v and v.get("per_class") and v.get("baseline_top1") is not None:
            classes = [
                {
                    "class": c["class"],
                    "count": c["count"],
                    "top1": c["top1"],
                    "baseline_top1": c["baseline_top1"],
                    "change": c["top1"] - c["baseline_top1"],
                }
                for c in v["per_class"]
            ]
            return {"model": Path(v["model"]).name, "baseline": Path(v["baseline"]).name, "classes": classes}
    return None


def build_report(p: Pipeline) -> dict[str, Any]:
    from edgeconvnext.evaluate.latency import cpu_name

    vals: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    accuracy_why = None
    for key, res in p.results.items():
        if not key.startswith("validate."):
            continue
        v = json.loads((p.out / res["report"]).read_text())
        name = key[len("validate.") :]
        vals[name] = v
        row = res["row"]
        art = Path(row["artifact"])
        accuracy_why = accuracy_why or res.get("accuracy_why")
        v["precision"] = row["precision"]  # int8+fp16 where the ONNX metadata says int8
        rows += rows_from_validation(v, artifact=art.name, kind=row["kind"], size_bytes=_size(art), source="run")
    # the INT8 artifact the engine is built from: FP16 elsewhere when the recipe builds in FP16
    deployed = "int8_fp16" if p.cfg.build.get("fp16") else "int8"
    rules = p.results.get("rules") or {}
    layers = (rules.get(deployed) or {}).get("layers") or []
    quant = p.results.get("quantize") or {}
    search = quant.get("budget") or {}
    notes = [*p.notes, *(quant.get("notes") or []), *([search["note"]] if search.get("note") else [])]
    notes = list(dict.fromkeys(notes))
    if accuracy_why:
        notes.append(f"accuracy rows are empty: {accuracy_why}")
    if not any(r["device"] == "cuda" for r in rows):
        notes.append(
            "GPU latency was not measured: this run had no CUDA device (CPU numbers prove accuracy, not "
            "TensorRT speed); run 'edgeconvnext device-check' on the target"
        )
    budget = _budget(p, rows)
    eng = p.results.get("engines") or {}
    return {
        "kind": "edgeconvnext-run-report",
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "edgeconvnext": __version__,
        "model": (p.results.get("export") or {}).get("arch"),
        "img_size": (p.results.get("export") or {}).get("img_size"),
        "checkpoint": str(p.opts.checkpoint),
        "val_data": str(p.opts.val_data) if p.opts.val_data else None,
        "machine": {"cpu": cpu_name(), "device": p.opts.device},
        "config": p.cfg.to_dict(),
        "rows": rows,
        "per_class": _per_class(vals, deployed),
        "precision_map": {
            "model": p.paths[deployed].name,
            "int8_macs_share": (rules.get(deployed) or {}).get("int8_macs_share"),
            "summary": (rules.get(deployed) or {}).get("summary"),
            "layers": [
                {"layer": r["layer"], "op": r["op"], "precision": r["precision"], "macs": r["macs"]} for r in layers
            ],
        },
        "quantization": {
            k: quant.get(k)
            for k in ("int8_layers", "layers", "int8_macs_share", "calib_images", "agreement_vs_fp32", "config")
        },
        "engines": eng,
        "budget_search": _budget_search(quant),
        "sensitivity": _sensitivity(quant),
        "budget": budget,
        "notes": notes,
        "device_sections": [],
    }


def _budget_search(quant: dict[str, Any]) -> dict[str, Any] | None:
    """The accuracy-budget search of the quantize stage (``run --max-drop``): the limit, what it reached, the
    layer groups kept in higher precision (FP32 in NAME.int8.onnx, FP16 in NAME.int8.fp16.onnx) in the order
    they were reverted, and the INT8 share of MACs after each."""
    b = quant.get("budget")
    if not b:
        return None
    shares = {s["layer"]: s["macs_share"] for s in b.get("ranking") or []}
    after = {s["layer"]: s["int8_macs_share"] for s in b["steps"] if s["layer"] is not None}
    return {
        "metric": b["metric"],
        "limit": b["limit"],
        "met": b["met"],
        "value": b["value"],
        "val_images": b["final"]["n"],
        "fp32_top1": b["fp32"]["top1"],
        "int8_top1": b["final"]["top1"],
        "reverted": [
            {"rank": i + 1, "layer": layer, "macs_share": shares.get(layer), "int8_macs_share_after": after.get(layer)}
            for i, layer in enumerate(b["reverted"])
        ],
        "int8_layers": quant.get("int8_layers"),
        "layers": quant.get("layers"),
        "int8_macs_share": quant.get("int8_macs_share"),
        "all_int8_value": b["steps"][0]["value"],
        "all_int8_macs_share": b["steps"][0]["int8_macs_share"],
        "ranking_subset": b["ranking_subset"],
        "cost": b["cost"],
    }


def _sensitivity(quant: dict[str, Any]) -> dict[str, Any] | None:
    """The search's ranking of the layer groups (each alone in INT8 on the ranking subset), for the bars;
    None when the all-INT8 model met the budget (no ranking was needed)."""
    b = quant.get("budget")
    if not b or not b.get("ranking"):
        return None
    reverted = set(b["reverted"])
    ranking = b["ranking"]
    return {
        "metric": b["metric"],
        # the ranking's harm is top-1 points with labels (whatever the budget's metric), else disagreement
        "harm": "top1_drop" if all(s["drop"] is not None for s in ranking) else "disagreement",
        "subset": b["ranking_subset"],
        "images": b["final"]["n"],
        "groups": [
            {"group": s["layer"], "harm": s["harm"], "kl": s["kl_harm"], "drop": s["drop"],
             "macs_share": s["macs_share"], "reverted": s["layer"] in reverted}
            for s in ranking
        ],
    }  # fmt: skip


def _budget(p: Pipeline, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The recipe's validate.max_drop, checked on the INT8 rows (the search itself is another stage)."""
    max_drop = p.cfg.validate.get("max_drop")
    if max_drop is None:
        return None
    int8 = [r for r in rows if r["precision"] and "int8" in r["precision"] and r["drop"] is not None]
    if not int8:
        return {"max_drop": max_drop, "passed": None, "message": "no INT8 accuracy measured"}
    worst = max(int8, key=lambda r: r["drop"])
    passed = worst["drop"] <= max_drop
    return {
        "max_drop": max_drop,
        "worst_drop": worst["drop"],
        "worst": f"{worst['artifact']} ({worst['backend']})",
        "passed": passed,
        "message": (
            f"{worst['artifact']} ({worst['backend']}) loses {worst['drop']:.2f} top-1 points, "
            + ("within" if passed else "more than")
            + f" the recipe's validate.max_drop {max_drop}"
        ),
    }


def _size(p: Path) -> int | None:
    try:
        return p.stat().st_size
    except OSError:
        return None


# ---- rendering -----------------------------------------------------------------------------------------


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "drop":
        return f"{v:+.2f}"
    if key in ("top1", "agreement"):
        return f"{v:.2f}"
    if key in ("p50_ms", "p99_ms"):
        return f"{v:.3f}"
    if key == "images_per_s":
        return f"{v:.1f}"
    if key == "size_mb":
        return f"{v:.2f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = [title for _, title in COLUMNS]
    body = [[_fmt(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
    return head, body


def _md_table(rows: list[dict[str, Any]]) -> str:
    head, body = table(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(lines)


def _device_md(d: dict[str, Any]) -> list[str]:
    dev = d.get("device") or {}
    out = [f"## On the device: {dev.get('name') or 'unknown device'} ({d.get('date', '')})", ""]
    for k in ("gpu", "compute_capability", "jetson", "jetpack", "l4t", "tensorrt", "cuda", "power_mode", "clocks"):
        if dev.get(k) not in (None, "", {}):
            out.append(f"- {k.replace('_', ' ')}: {dev[k]}")
    out.append("")
    if d.get("rows"):
        out += [_md_table(d["rows"]), ""]
    out += [f"- {n}" for n in d.get("notes") or []]
    return out + [""]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def search_lines(rep: dict[str, Any]) -> tuple[str, str, list[str], list[list[str]]] | None:
    """The accuracy-budget search as (title, one-paragraph summary, table head, table rows), or None."""
    s = rep.get("budget_search")
    if not s:
        return None
    drop = s["metric"] == "top1_drop"
    what, unit = ("top-1 drop", " pts") if drop else ("top-1 disagreement with FP32", "%")
    option = "--max-drop" if drop else "--max-disagree"
    title = f"Accuracy-budget search ({option} {s['limit']:g})"
    start = f"All INT8: {what} {s['all_int8_value']:.2f}{unit} on {s['val_images']} validation images"
    start += f" ({_pct(s['all_int8_macs_share'])} of MACs in INT8). "
    model = rep.get("model") or "the model"
    if s["reverted"]:
        n = len(s["reverted"])
        text = (
            f"{start}The search kept {n} layer group{'s' if n > 1 else ''} of {model} in higher precision (FP32 in "
            f"the .int8.onnx, FP16 in the .int8.fp16.onnx): {what} {s['value']:.2f}{unit} <= {s['limit']:g}, "
            f"{s['int8_layers']}/{s['layers']} layers and {_pct(s['int8_macs_share'])} of MACs in INT8."
        )
    else:
        text = f"{start}That is within {s['limit']:g}{unit}: nothing was kept in higher precision."
    head = ["rank", "layer group kept in higher precision", "its MACs", "INT8 MACs after"]
    body = [
        [str(r["rank"]), r["layer"], _pct(r["macs_share"]), _pct(r["int8_macs_share_after"])] for r in s["reverted"]
    ]
    return title, text, head, body


def _verdict(passed: bool | None) -> str:
    return "PASS" if passed else "FAIL" if passed is False else "n/a"


def render_markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"# edgeconvnext run: {rep.get('model')} ({rep.get('img_size')} px)",
        "",
        f"Checkpoint `{rep.get('checkpoint')}`, validation images `{rep.get('val_data')}`; "
        f"{rep['machine']['cpu']} ({rep['machine']['device']}); {rep['created']}, edgeconvnext {rep['edgeconvnext']}.",
        "",
        _md_table(rep["rows"]),
        "",
        "Drop: top-1 of the FP32 ONNX minus top-1 of the row (points, same images); agreement: images where "
        "both predict the same class. Latency: warm-up, then timed iterations at each batch, preprocessing excluded.",
        "",
    ]
    b = rep.get("budget")
    if b:
        lines += [
            f"**Accuracy budget: {_verdict(b['passed'])}** - {b['message']}.",
            "",
        ]
    search = search_lines(rep)
    if search:
        title, text, head, body = search
        lines += [f"## {title}", "", text, ""]
        if body:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body] + [""]
    pm = rep.get("precision_map") or {}
    if pm.get("summary"):
        lines += [f"TensorRT rules ({pm.get('model')}): {pm['summary']}", ""]
    for name, title in FIGURE_TITLES.items():
        if name in rep.get("figures", []):
            lines += [f"![{title}](plots/{name}.png)", ""]
    if rep.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    for d in rep.get("device_sections") or []:
        lines += _device_md(d)
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px}
body{color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f3f3f3}
td:nth-child(-n+4),th:nth-child(-n+4){text-align:left}
.pass{color:#1b7f3b;font-weight:bold}.fail{color:#b00020;font-weight:bold}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}
.meta{color:#555;font-size:.92em}
"""


def _html_table(rows: list[dict[str, Any]]) -> str:
    head, body = table(rows)
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="results"><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>'


def render_html(rep: dict[str, Any], pngs: dict[str, bytes]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgeconvnext run: {e(str(rep.get('model')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>edgeconvnext run: {e(str(rep.get('model')))} ({e(str(rep.get('img_size')))} px)</h1>",
        f'<p class="meta">Checkpoint <code>{e(str(rep.get("checkpoint")))}</code>, validation images '
        f"<code>{e(str(rep.get('val_data')))}</code>; {e(rep['machine']['cpu'])} ({e(rep['machine']['device'])}); "
        f"{e(rep['created'])}, edgeconvnext {e(rep['edgeconvnext'])}.</p>",
        "<h2>Results</h2>",
        _html_table(rep["rows"]),
        '<p class="meta">Drop: top-1 of the FP32 ONNX minus top-1 of the row (points, same images); agreement: '
        "images where both predict the same class. Latency: warm-up, then timed iterations at each batch, "
        "preprocessing excluded.</p>",
    ]
    b = rep.get("budget")
    if b:
        cls, word = ("pass", "PASS") if b["passed"] else ("fail", "FAIL") if b["passed"] is False else ("", "n/a")
        parts.append(f'<p>Accuracy budget: <span class="{cls}">{word}</span> - {e(b["message"])}.</p>')
    search = search_lines(rep)
    if search:
        title, text, head, body = search
        parts += [f"<h2>{e(title)}</h2>", f"<p>{e(text)}</p>"]
        if body:
            h = "".join(f"<th>{e(c)}</th>" for c in head)
            b_rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body)
            parts.append(f'<table class="budget"><thead><tr>{h}</tr></thead><tbody>{b_rows}</tbody></table>')
    pm = rep.get("precision_map") or {}
    if pm.get("summary"):
        parts.append(f"<p>TensorRT rules ({e(str(pm.get('model')))}): {e(pm['summary'])}</p>")
    if pngs:
        parts.append("<h2>Figures</h2>")
    for name, title in FIGURE_TITLES.items():
        if name in pngs:
            data = base64.b64encode(pngs[name]).decode()
            parts.append(
                f'<figure id="{name}"><img alt="{e(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
    if rep.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in rep["notes"]) + "</ul>")
    for d in rep.get("device_sections") or []:
        dev = d.get("device") or {}
        parts.append(
            f"<h2>On the device: {e(str(dev.get('name') or 'unknown device'))} ({e(str(d.get('date', '')))})</h2><ul>"
        )
        for k, v in dev.items():
            if v not in (None, "", {}):
                parts.append(f"<li>{e(k.replace('_', ' '))}: {e(str(v))}</li>")
        parts.append("</ul>")
        if d.get("rows"):
            parts.append(_html_table(d["rows"]))
        if d.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in d["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(rep: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """report.json, report.md, report.html and plots/NAME.png under ``out``; returns the paths written.

    ``plots=False`` (or matplotlib missing, when ``plots`` is None) writes the report without figures."""
    pngs: dict[str, bytes] = {}
    if plots:
        from edgeconvnext.pipeline.plots import render_all

        pngs = render_all(rep)
    rep["figures"] = sorted(pngs)
    written = []
    for name, data in pngs.items():
        with atomic_output(out / "plots" / f"{name}.png") as tmp:
            tmp.write_bytes(data)
        written.append(out / "plots" / f"{name}.png")
    # rendered inside atomic_output, so a full disk is one clear error there; report.json comes last, so a
    # report that failed half-way has no report.json that looks complete
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(render_markdown(rep))
    with atomic_output(out / "report.html") as tmp:
        tmp.write_text(render_html(rep, pngs))
    write_json_atomic(out / "report.json", rep)
    return [out / "report.json", out / "report.md", out / "report.html"] + written
