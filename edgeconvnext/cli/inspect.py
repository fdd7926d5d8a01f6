"""``edgeconvnext inspect MODEL.onnx``: ops, opset, inputs/outputs, metadata, weights, Q/DQ count, and what the
provenance sidecar beside it (``MODEL.onnx.json``) records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeconvnext.cli._common import console, human_size
from edgeconvnext.cli._options import JsonOpt

TrtOpt = Annotated[
    bool,
    typer.Option(
        "--trt", help="Also check the graph against TensorRT's explicit-quantization rules (no TensorRT needed)."
    ),
]


def _shape(dims: list[Any]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="ONNX file to describe.", show_default=False)],
    json_out: JsonOpt = False,
    trt: TrtOpt = False,
) -> None:
    """Describe an ONNX file: ops, opset, inputs/outputs, edgeconvnext metadata, weights, Q/DQ nodes."""
    from edgeconvnext.onnx.info import describe

    info = describe(path)
    report = None
    if trt:
        from edgeconvnext.onnx.trt_rules import check_file

        report = check_file(path)
        info["trt"] = report.to_dict()
    if json_out:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print(info, report)
    if report is not None:
        report.raise_for_violations()  # exit code 6 after the full report was shown


def _print(info: dict[str, Any], report: Any = None) -> None:
    from rich.markup import escape  # names and metadata are data, not rich markup
    from rich.table import Table

    c = console()
    opsets = ", ".join(f"{d} {v}" for d, v in info["opset"].items())
    c.print(
        f"[bold]{escape(info['path'])}[/bold]  {human_size(info['file_bytes'])}  IR {info['ir_version']}  "
        f"opset {opsets}  producer {info['producer'] or '?'}"
    )
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            c.print(f"  {kind[:-1]:6} {escape(v['name'])}  {v['dtype']}  {escape(_shape(v['shape']))}")
    c.print(
        f"  weights {info['initializers']} initializers, {info['params'] / 1e6:.3f} M params, "
        f"{human_size(info['initializer_bytes'])}" + ("  (external data)" if info["external_data"] else "")
    )
    q = info["qdq"]
    c.print(f"  Q/DQ    {q['total']} ({q['QuantizeLinear']} QuantizeLinear, {q['DequantizeLinear']} DequantizeLinear)")
    if info["norm_input_dtypes"]:
        norm = "; ".join(
            f"{op} " + ", ".join(f"{n}x {dt}" for dt, n in d.items()) for op, d in info["norm_input_dtypes"].items()
        )
        c.print(f"  norm    {norm}")

    meta = info["metadata"]
    if meta or info["metadata_props"]:
        t = Table(title="metadata", show_header=False, title_justify="left")
        t.add_column("key", no_wrap=True)
        t.add_column("value")
        for k, v in meta.items():
            if k == "class_names" and isinstance(v, list) and len(v) > 12:
                v = ", ".join(map(str, v[:10])) + f", ... ({len(v)} names)"
            elif isinstance(v, (dict, list)):
                v = json.dumps(v)
            t.add_row(escape(k), escape(str(v)))
        for k, v in info["metadata_props"].items():
            if not k.startswith("edgeconvnext."):
                t.add_row(escape(k), escape(v))
        c.print(t)
    else:
        c.print("  metadata: none (not written by edgeconvnext)")

    sc = info.get("sidecar")
    if sc is None:
        c.print("  sidecar: none beside it (provenance unknown)")
    else:
        status = {
            "matches": "describes this file",
            "changed": "[bold red]the file changed after it was written: it describes another file[/]",
            "unreadable": "[bold red]unreadable (not an edgeconvnext sidecar)[/]",
        }[sc["status"]]
        when = f", {sc['created'][:19].replace('T', ' ')}" if sc.get("created") else ""
        c.print(f"  sidecar {escape(sc['file'])} ({escape(str(sc['stage']))}{escape(when)}): {status}")
        for role, src in sc["inputs"].items():
            c.print(f"          {escape(role)}: {escape(str(src))}")
        for line in sc["lines"]:
            c.print(f"          {escape(line)}")

    t = Table(title=f"ops ({info['nodes']} nodes)", title_justify="left")
    t.add_column("op", no_wrap=True)
    t.add_column("count", justify="right")
    for op, n in info["ops"].items():
        t.add_row(op, str(n))
    c.print(t)
    if report is not None:
        from edgeconvnext.onnx.trt_rules import format_report

        c.print("TensorRT explicit-quantization rules:")
        c.print(format_report(report), soft_wrap=True, markup=False, highlight=False)
