"""What is inside an ONNX file: ops, opset, inputs/outputs, edgeconvnext metadata, weights, Q/DQ nodes.

Input: a path to an ``.onnx`` file (any producer; edgeconvnext metadata is decoded when present).
Output: :func:`describe` returns a JSON-ready dict; :func:`op_histogram` and :func:`input_dtypes` are
the graph queries export and the tests use.

Usage::

    info = describe(Path("nano.onnx")); info["ops"]["LayerNormalization"]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.errors import CheckpointError, require
from edgeconvnext.onnx.graph import QDQ_OPS, shape_skeleton

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: ops whose input dtype says whether normalisation statistics run in fp32
NORM_OPS = ("LayerNormalization", "ReduceL2", "ReduceSumSquare")


def _onnx() -> Any:
    return require("onnx", "reading ONNX files")


def load_proto(path: str | Path, *, external_data: bool = False) -> onnx.ModelProto:
    """Load an ONNX model; a missing file or a file that is not ONNX is a CheckpointError (exit 3, like every
    missing or unreadable model file: checkpoint, ONNX or engine, in every command) with one clear line.

    Weights stored as external data are not read unless ``external_data`` (shapes are enough here).
    """
    onnx = _onnx()
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not an ONNX file")
    try:
        # format="protobuf": onnx otherwise picks a text/JSON parser from the file extension
        proto = onnx.load(str(p), format="protobuf", load_external_data=external_data)
    except Exception as e:  # protobuf DecodeError, OSError, external data errors
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{p} is not an ONNX model ({type(e).__name__}: {why})") from None
    # protobuf happily parses some arbitrary bytes into an empty message: require a real graph
    if proto.ir_version == 0 or not proto.opset_import or len(proto.graph.node) == 0:
        raise CheckpointError(f"{p} is not an ONNX model (no IR version, opset or graph nodes)")
    return proto


def dtype_name(elem_type: int) -> str:
    """An ONNX element type by name: 5 -> 'int16', 10 -> 'float16', 16 -> 'bfloat16' (never 'ONNX type 5')."""
    onnx = _onnx()
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(v: Any) -> dict[str, Any]:
    t = v.type.tensor_type
    shape: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            shape.append(d.dim_param or "?")
    return {"name": v.name, "dtype": dtype_name(t.elem_type), "shape": shape}


def op_histogram(proto: onnx.ModelProto) -> dict[str, int]:
    """Op type -> count over the main graph, most frequent first."""
    return dict(Counter(n.op_type for n in proto.graph.node).most_common())


def input_dtypes(proto: onnx.ModelProto, op_types: Iterable[str] = NORM_OPS) -> dict[str, list[str]]:
    """For each op type present, the dtype of the first (data) input of every such node, by shape inference."""
    onnx = _onnx()
    op_types = tuple(op_types)
    inferred = onnx.shape_inference.infer_shapes(shape_skeleton(proto))  # types only: no weight values needed
    g = inferred.graph
    types: dict[str, int] = {t.name: t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    out: dict[str, list[str]] = {}
    for n in g.node:
        if n.op_type in op_types:
            elem = types.get(n.input[0], 0)
            out.setdefault(n.op_type, []).append(dtype_name(elem) if elem else "unknown")
    return out


def _params(proto: onnx.ModelProto) -> tuple[int, int, bool]:
    onnx = _onnx()
    count, nbytes, external = 0, 0, False
    for t in proto.graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        count += n
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 0
        nbytes += n * itemsize
        external = external or t.data_location == onnx.TensorProto.EXTERNAL
    return count, nbytes, external


def describe(path: str | Path) -> dict[str, Any]:
    """Everything ``edgeconvnext inspect`` shows, as a JSON-ready dict.

    Keys: path, file_bytes, ir_version, opset ({domain: version}), producer, graph_name, inputs, outputs
    (name, dtype, shape with symbolic dims by name), nodes, ops (histogram), initializers, params,
    initializer_bytes, external_data, qdq ({QuantizeLinear, DequantizeLinear, total}), metadata (decoded
    edgeconvnext keys that are present), metadata_props (every raw key/value), norm_input_dtypes
    ({op: {dtype: count}} for LayerNormalization/ReduceL2/ReduceSumSquare; None if shape inference fails),
    sidecar (:func:`sidecar_summary`: what the provenance file beside it records; None without one).
    """
    from edgeconvnext.onnx.metadata import decode_metadata

    p = Path(path)
    proto = load_proto(p)
    onnx = _onnx()
    init_names = {t.name for t in proto.graph.initializer}
    ops = op_histogram(proto)
    n_params, n_bytes, external = _params(proto)
    props = {m.key: m.value for m in proto.metadata_props}
    meta = {k: v for k, v in decode_metadata(props).items() if v is not None}
    try:
        norm = {op: dict(Counter(d)) for op, d in input_dtypes(proto).items()}
    except Exception:  # noqa: BLE001 - shape inference on a foreign graph: report, don't fail
        norm = None
    qdq = {op: ops.get(op, 0) for op in QDQ_OPS}
    qdq["total"] = sum(qdq.values())
    return {
        "path": str(p),
        "file_bytes": p.stat().st_size,
        "ir_version": int(proto.ir_version),
        "opset": {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "graph_name": proto.graph.name,
        "inputs": [_value_info(v) for v in proto.graph.input if v.name not in init_names],
        "outputs": [_value_info(v) for v in proto.graph.output],
        "nodes": len(proto.graph.node),
        "ops": ops,
        "initializers": len(proto.graph.initializer),
        "params": n_params,
        "initializer_bytes": n_bytes,
        "external_data": external,
        "qdq": qdq,
        "metadata": meta,
        "metadata_props": props,
        "norm_input_dtypes": norm,
        "onnx_version": onnx.__version__,
        "sidecar": sidecar_summary(p),
    }


# ---------------------------------------------------------------------------------------------------
# the provenance sidecar beside an ONNX (``x.onnx.json``, edgeconvnext.artifacts.Sidecar)


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "?"


def _quantize_lines(cfg: dict[str, Any], d: dict[str, Any]) -> list[str]:
    lines = []
    cal = d.get("calibration") or {}
    if d.get("method") == "qat":
        tr = d.get("training") or {}
        hist = tr.get("history") or []
        lines.append(
            f"QAT ({tr.get('mode', '?')}, {tr.get('scales', '?')} scales), {len(hist)} epoch(s) of "
            f"{tr.get('steps_per_epoch', '?')} steps, kept epoch {tr.get('best_epoch', '?')}; started from PTQ on "
            f"{cal.get('images', '?')} calibration images"
        )
        par = d.get("parity_onnx_vs_torch") or {}
        if par:
            lines.append(
                f"ONNX vs the torch fake-quant model on {par.get('images', '?')} images: top-1 agreement "
                f"{_pct(par.get('top1_agreement'))}, max logit diff {par.get('max_abs_diff', float('nan')):.3g}"
            )
    else:
        smooth = cfg.get("smooth")
        lines.append(
            f"PTQ ({cfg.get('backend', '?')}, {cfg.get('calib_method', '?')}, policy {cfg.get('policy', '?')}"
            + ("" if smooth is None else f", smoothing {'on' if smooth else 'off'}")
            + f"), {cal.get('images', '?')} calibration images"
        )
    pl = d.get("placement") or {}
    if pl:
        share = pl.get("int8_macs_share")
        lines.append(
            f"INT8 on {pl.get('int8_layers', '?')}/{pl.get('layers', '?')} layers"
            + (f" ({_pct(share)} of MACs)" if share is not None else "")
            + (f", excluded by the user: {', '.join(cfg['exclude'])}" if cfg.get("exclude") else "")
        )
    agr = d.get("agreement_vs_fp32") or {}
    if agr:
        lines.append(
            f"vs FP32 on {agr.get('images', '?')} calibration images: top-1 agreement "
            f"{_pct(agr.get('top1_agreement'))}, min cosine {agr.get('cosine_min', float('nan')):.4f}"
        )
    b = d.get("budget")
    if b:
        lines.append(
            f"accuracy budget ({b.get('metric')} <= {b.get('limit')}): {'met' if b.get('met') else 'NOT met'} at "
            f"{b.get('value')}, {len(b.get('reverted') or [])} layer group(s) kept in higher precision"
            + (f": {', '.join(b['reverted'])}" if b.get("reverted") else "")
        )
    sm = d.get("smoothing") or {}
    if sm.get("pairs"):
        ratio = (sm.get("outlier_ratio_before_max"), sm.get("outlier_ratio_after_max"))
        lines.append(
            f"smoothing: {sm['pairs']} LayerNorm -> layer pairs equalised (alpha {sm.get('alpha', '?')})"
            + (f", worst channel outlier ratio {ratio[0]:.1f} -> {ratio[1]:.1f}" if None not in ratio else "")
        )
    trt = d.get("trt_check") or {}
    if trt:
        lines.append("TensorRT rules when written: " + ("OK" if trt.get("ok") else "violations (run inspect --trt)"))
    return lines


def _export_lines(d: dict[str, Any]) -> list[str]:
    par, sm = d.get("parity") or {}, d.get("smoothing") or {}
    lines = []
    if par:
        lines.append(
            f"export parity vs {par.get('reference', 'torch')}: max |diff| {par.get('max_abs_diff', float('nan')):.2e}"
            f" (relative {par.get('rel_diff', float('nan')):.1e}), top-1 agreement {_pct(par.get('top1_agreement'))}"
        )
    if sm.get("folded"):
        lines.append(f"smoothing folded into the weights after the parity check ({sm.get('pairs', '?')} pairs)")
    return lines


def sidecar_summary(path: str | Path) -> dict[str, Any] | None:
    """What the sidecar beside ``path`` (``x.onnx.json``) says, for ``inspect``; None when there is none.

    Keys: file (the sidecar's name), stage, created, status ("matches": the file is the one the sidecar
    describes, by sha256; "changed": it was modified or replaced after; "unreadable": not a sidecar), inputs
    (role -> path), lines (what the stage measured, in words: method, calibration, placement, agreement,
    budget, parity). Never raises on a foreign or older sidecar: missing fields read "?".
    """
    import json

    from edgeconvnext.artifacts import sha256_file, sidecar_path

    p = Path(path)
    sc = sidecar_path(p)
    if not sc.is_file():
        return None
    out: dict[str, Any] = {"file": sc.name, "stage": None, "created": None, "status": "unreadable", "inputs": {}}
    try:
        data = json.loads(sc.read_text())
        outputs = data["outputs"]
        stage = data["stage"]
    except (OSError, ValueError, KeyError, TypeError):
        out["lines"] = []
        return out
    want = outputs[0].get("sha256") if outputs and isinstance(outputs[0], dict) else None  # the artifact first
    out.update(
        stage=stage,
        created=data.get("created"),
        status="matches" if want is not None and want == sha256_file(p) else "changed",
        inputs={i.get("role", "?"): i.get("path") for i in data.get("inputs") or [] if isinstance(i, dict)},
    )
    cfg, details = data.get("config") or {}, data.get("details") or {}
    try:
        out["lines"] = (
            _quantize_lines(cfg, details)
            if stage == "quantize"
            else _export_lines(details)
            if stage == "export"
            else []
        )
    except (TypeError, ValueError, AttributeError):  # a field of another shape (older or foreign sidecar)
        out["lines"] = []
    return out
