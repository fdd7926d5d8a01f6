"""Static check of a Q/DQ ONNX against TensorRT's explicit-quantization rules and the ONNX-TensorRT
parser's operator set, without TensorRT.

Input: an ONNX file or ``onnx.ModelProto``. Output: a :class:`TrtReport` with one row per
Conv/ConvTranspose/MatMul/Gemm (the precision TensorRT will compute it in: INT8 when both its activation
and its weight come from DequantizeLinear of int8, else the float type of the graph) and the violations.

Rules (TensorRT "explicit quantization" and onnx-tensorrt docs/operators.md, TensorRT 10.x):
- Q/DQ are signed INT8 with zero point 0 (``y_zero_point must be 0``); no uint8 (a QuantizeLinear without
  a zero-point input outputs uint8 by the ONNX spec); no blocked (``block_size``) INT8 quantization;
- scales are constants, positive and finite; a Q and the DQ after it use the same scale, zero point, axis;
- activations per tensor; weights per output channel on the right axis (Conv 0, ConvTranspose 1,
  MatMul with a (K, N) weight 1, Gemm 0 with transB=1 else 1), one scale per channel;
- every QuantizeLinear is followed only by DequantizeLinear (TensorRT fuses Q->DQ pairs);
- a DequantizeLinear of a constant (a weight) feeds Conv/ConvTranspose/MatMul/Gemm weight inputs only;
- ai.onnx opset >= 17 (LayerNormalization is one op there), no custom domains, only operators the
  ONNX-TensorRT parser supports (:data:`SUPPORTED_OPS`).

Usage::

    report = check_file("model.int8.onnx")
    print(format_report(report)); report.raise_for_violations()
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconvnext.errors import CheckpointError, RuleViolation
from edgeconvnext.onnx.fp16 import default_opset
from edgeconvnext.onnx.graph import (
    COMPUTE_OPS,
    TRANSPARENT_OPS,
    GraphIndex,
    attr,
    compress_rows,
    compute_macs,
    layer_name,
    output_channel_axis,
    weight_tensor,
)
from edgeconvnext.onnx.info import dtype_name

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

MIN_OPSET = 17

# Operators ConvNeXt graphs (FP32/FP16 exports, Q/DQ models from onnxruntime or NNCF) can contain, each
# marked supported ("Y") in onnx-tensorrt's docs/operators.md for TensorRT 10.x, plus the common
# neighbours of the same table. An op outside this set is reported: it is either unsupported by the
# parser (QLinearConv, ConvInteger, MatMulInteger, DynamicQuantizeLinear ...) or not expected here.
SUPPORTED_OPS = frozenset(
    {
        # compute
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Einsum",
        # normalisation / activation (GELU is Erf-based at opset 17, Gelu from opset 20)
        "LayerNormalization",
        "BatchNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "Erf",
        "Gelu",
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "HardSigmoid",
        "HardSwish",
        "Softmax",
        "Clip",
        # elementwise
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Log",
        "Abs",
        "Neg",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Floor",
        "Ceil",
        "Round",
        "Where",
        "Equal",
        "Greater",
        "Less",
        "Not",
        "And",
        "Or",
        # reductions / pooling (GRN's ||x||_2 is ReduceL2 or ReduceSumSquare+Sqrt)
        "ReduceMean",
        "ReduceL2",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "AveragePool",
        "MaxPool",
        # layout / shape
        "Transpose",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Constant",
        "ConstantOfShape",
        "Shape",
        "Size",
        "Gather",
        "Slice",
        "Concat",
        "Split",
        "Expand",
        "Tile",
        "Range",
        "Pad",
        "Resize",
        "Cast",
        "CastLike",
        "Dropout",
        # explicit quantization
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
# Marked "N" in the same table: named in the message so the fix is obvious.
UNSUPPORTED_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearAdd",
        "QLinearMul",
    }
)

_INT8, _UINT8 = 3, 2  # onnx.TensorProto.INT8 / UINT8
_FLOAT16, _BFLOAT16 = 10, 16


@dataclass
class Violation:
    """One broken rule: ``rule`` is a short id (zero-point, uint8, weight-axis ...), ``node`` the ONNX node."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass
class LayerPrecision:
    """How TensorRT will compute one Conv/MatMul/Gemm of the graph."""

    node: str
    layer: str
    op: str
    precision: str  # "INT8", "FP32", "FP16"
    activation_int8: bool
    weight_int8: bool
    weight_axis: int | None  # per-channel axis of the weight DQ, None when per tensor or not quantized
    macs: int | None = None


@dataclass
class TrtReport:
    """Result of :func:`check_model`: per-layer precision and every rule broken."""

    opset: int
    layers: list[LayerPrecision]
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_quantize: int = 0
    n_dequantize: int = 0
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def int8_layers(self) -> list[LayerPrecision]:
        return [r for r in self.layers if r.precision == "INT8"]

    def int8_macs_share(self) -> float | None:
        total = sum(r.macs or 0 for r in self.layers)
        if not total or any(r.macs is None for r in self.layers):
            return None
        return sum(r.macs or 0 for r in self.int8_layers) / total

    def rows(self, compress: bool = True) -> list[dict[str, Any]]:
        """Table rows (layer, op, precision, count, macs, macs_share); repeated blocks merged."""
        rows: list[dict[str, Any]] = [
            {"layer": r.layer, "op": r.op, "precision": r.precision, "macs": r.macs} for r in self.layers
        ]
        if compress:
            rows = compress_rows(rows)
        else:
            rows = [{**r, "count": 1} for r in rows]
        total = sum(r.macs or 0 for r in self.layers)
        for r in rows:
            r["macs_share"] = (r["macs"] / total) if (total and r["macs"] is not None) else None
        return rows

    def summary(self) -> str:
        n8 = len(self.int8_layers)
        share = self.int8_macs_share()
        if n8 == 0 and self.n_quantize == 0 and self.n_dequantize == 0:
            s = f"no INT8 layers (a float model without Q/DQ: {len(self.layers)} layers in its own precision)"
        else:
            s = f"{n8}/{len(self.layers)} layers INT8"
            if share is not None:
                s += f" ({share:.1%} of MACs)"
        s += f", opset {self.opset}, {self.n_quantize} Q / {self.n_dequantize} DQ"
        s += ": OK for TensorRT" if self.ok else f": {len(self.violations)} TensorRT rule violation(s)"
        return s

    def check_details(self) -> dict[str, Any]:
        """The sidecars' ``trt_check`` section: verdict, opset, Q/DQ counts and warnings."""
        return {
            "ok": self.ok,
            "opset": self.opset,
            "n_quantize": self.n_quantize,
            "n_dequantize": self.n_dequantize,
            "warnings": self.warnings,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "ok": self.ok,
            "opset": self.opset,
            "n_quantize": self.n_quantize,
            "n_dequantize": self.n_dequantize,
            "int8_macs_share": self.int8_macs_share(),
            "layers": [asdict(r) for r in self.layers],
            "violations": [asdict(v) for v in self.violations],
            "warnings": list(self.warnings),
        }

    def raise_for_violations(self) -> None:
        """RuleViolation naming the first violations (and how many there are) when the graph breaks a rule."""
        if self.ok:
            return
        where = f" in {self.path}" if self.path else ""
        head = "; ".join(str(v) for v in self.violations[:3])
        more = (
            f" (+{len(self.violations) - 3} more; run 'edgeconvnext inspect --trt' for all)"
            if len(self.violations) > 3
            else ""
        )
        raise RuleViolation(f"{len(self.violations)} TensorRT rule violation(s){where}: {head}{more}")


def format_report(report: TrtReport, compress: bool = True) -> str:
    """Plain-text rendering: the per-layer precision table, then violations and warnings."""
    rows = report.rows(compress=compress)
    w = max([len("layer")] + [len(r["layer"]) + (5 if r["count"] > 1 else 0) for r in rows])
    lines = [f"{'layer':<{w}}  {'op':<13} {'precision':<9} {'MACs':>6}"]
    for r in rows:
        name = r["layer"] + (f" (x{r['count']})" if r["count"] > 1 else "")
        share = f"{r['macs_share']:.1%}" if r["macs_share"] is not None else "-"
        lines.append(f"{name:<{w}}  {r['op']:<13} {r['precision']:<9} {share:>6}")
    lines.append(report.summary())
    lines += [f"violation: {v}" for v in report.violations]
    lines += [f"warning: {m}" for m in report.warnings]
    return "\n".join(lines)


def check_file(path: str | Path) -> TrtReport:
    """Load ``path`` and :func:`check_model` it; a missing or unreadable file is a CheckpointError (exit 3)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"ONNX file not found: {p}")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError/OSError/ValueError
        raise CheckpointError(f"cannot read {p} as ONNX: {e}") from None
    report = check_model(model)
    report.path = p
    return report


def _is_per_tensor(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and int(np.prod(shape)) == 1


def _float_precision(g: GraphIndex, node: onnx.NodeProto) -> str:
    """FP16 when the layer's weight (or the graph input) is half precision, else FP32."""
    w, _ = weight_tensor(g, node)
    dt = g.const_dtype(w) if w else None
    if dt is None:
        for i in g.graph.input:
            if i.name in g.graph_inputs:
                dt = i.type.tensor_type.elem_type
                break
    return "FP16" if dt in (_FLOAT16, _BFLOAT16) else "FP32"


def check_model(model: onnx.ModelProto) -> TrtReport:
    """Check ``model`` against TensorRT's explicit-quantization rules; never raises for a rule (see report)."""
    g = GraphIndex(model)
    opset = default_opset(model)
    violations: list[Violation] = []
    warnings: list[str] = []
    v = violations.append

    if opset < MIN_OPSET:
        v(
            Violation(
                "opset",
                "<model>",
                f"ai.onnx opset {opset or 'missing'} < {MIN_OPSET}: re-export at "
                f"opset {MIN_OPSET} or newer (LayerNormalization is one op from 17)",
            )
        )

    n_q = n_dq = 0
    for n in g.nodes:
        label = n.name or f"<{n.op_type}>"
        if n.domain not in ("", "ai.onnx"):
            v(
                Violation(
                    "custom-domain",
                    label,
                    f"op {n.domain}::{n.op_type} is not a standard ONNX op: "
                    "TensorRT's ONNX parser needs a plugin for it (use ai.onnx QuantizeLinear/DequantizeLinear)",
                )
            )
            continue
        if n.op_type in UNSUPPORTED_OPS:
            v(
                Violation(
                    "unsupported-op",
                    label,
                    f"{n.op_type} is not supported by the ONNX-TensorRT parser: "
                    "use QuantizeLinear/DequantizeLinear (QDQ format) instead of integer operators",
                )
            )
        elif n.op_type not in SUPPORTED_OPS:
            v(
                Violation(
                    "unsupported-op",
                    label,
                    f"{n.op_type} is not in the ONNX-TensorRT operator set this checker knows for ConvNeXt graphs",
                )
            )
        if n.op_type == "QuantizeLinear":
            n_q += 1
            _check_quantize(g, n, v)
        elif n.op_type == "DequantizeLinear":
            n_dq += 1
            _check_dequantize(g, n, v)

    for o in g.graph_outputs:
        p = g.producer.get(o)
        if p is not None and p.op_type == "QuantizeLinear":
            v(
                Violation(
                    "unpaired-q",
                    p.name,
                    f"graph output '{o}' is int8 straight from a QuantizeLinear: "
                    "outputs must stay float (add the DequantizeLinear, or do not quantize the output)",
                )
            )

    layers = _layer_precisions(g, warnings)
    return TrtReport(
        opset=opset, layers=layers, violations=violations, warnings=warnings, n_quantize=n_q, n_dequantize=n_dq
    )


def _check_zero_point_and_scale(g: GraphIndex, n: onnx.NodeProto, v, *, is_q: bool) -> None:
    label = n.name or n.op_type
    if len(n.input) < 2 or not n.input[1]:
        v(Violation("scale", label, "no scale input"))
        return
    scale_name = n.input[1]
    scale = g.const(scale_name)
    if scale is None:
        v(Violation("scale", label, f"scale '{scale_name}' is not a constant: TensorRT needs build-time scales"))
    else:
        s = scale.astype(np.float64)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            bad = s[~(np.isfinite(s) & (s > 0))].ravel()[:3].tolist()
            v(Violation("scale", label, f"scale '{scale_name}' has non-positive or non-finite values {bad}"))
    if (attr(n, "block_size", 0) or 0) > 0:
        v(
            Violation(
                "blocked", label, "blocked (block_size) quantization is INT4-only in TensorRT; use per-channel INT8"
            )
        )
    zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if zp_name is None:
        out_dtype = attr(n, "output_dtype", 0) or 0
        if is_q and out_dtype not in (_INT8,):
            v(
                Violation(
                    "uint8",
                    label,
                    "QuantizeLinear without a zero point outputs uint8 (ONNX default): "
                    "TensorRT needs int8 with an explicit int8 zero point of 0",
                )
            )
        if not is_q:
            src = n.input[0]
            dt = g.const_dtype(src)
            if dt is not None and dt != _INT8:
                v(
                    Violation(
                        "uint8" if dt == _UINT8 else "dtype",
                        label,
                        f"dequantizes '{src}' of type {dtype_name(dt)}, TensorRT needs int8",
                    )
                )
        return
    zp = g.const(zp_name)
    dt = g.const_dtype(zp_name)
    if zp is None:
        v(Violation("zero-point", label, f"zero point '{zp_name}' is not a constant"))
        return
    if dt == _UINT8:
        v(
            Violation(
                "uint8",
                label,
                f"zero point '{zp_name}' is uint8: TensorRT supports signed int8 only "
                "(quantize with QInt8 activations and weights)",
            )
        )
    elif dt != _INT8:
        v(
            Violation(
                "dtype",
                label,
                f"zero point '{zp_name}' is {dtype_name(dt or 0)}: TensorRT INT8 needs int8",
            )
        )
    if np.any(zp != 0):
        v(
            Violation(
                "zero-point",
                label,
                f"zero point '{zp_name}' is not 0 (values {np.unique(zp)[:4].tolist()}): "
                "TensorRT quantization is symmetric (use symmetric activations)",
            )
        )


def _check_quantize(g: GraphIndex, n: onnx.NodeProto, v) -> None:
    label = n.name or "QuantizeLinear"
    _check_zero_point_and_scale(g, n, v, is_q=True)
    src = n.input[0]
    scale_shape = g.const_shape(n.input[1]) if len(n.input) > 1 else None
    if not g.is_const(src) and scale_shape is not None and not _is_per_tensor(scale_shape):
        v(
            Violation(
                "activation-per-channel",
                label,
                f"activation '{src}' is quantized per channel "
                f"(scale shape {scale_shape}): TensorRT quantizes activations per tensor",
            )
        )
    consumers = g.consumers.get(n.output[0], [])
    if not consumers and n.output[0] not in g.graph_outputs:
        v(Violation("unpaired-q", label, "QuantizeLinear output is unused"))
    for c in consumers:
        if c.op_type != "DequantizeLinear":
            v(
                Violation(
                    "unpaired-q",
                    label,
                    f"QuantizeLinear feeds {c.op_type} '{c.name}' instead of a "
                    "DequantizeLinear: TensorRT only fuses Q->DQ pairs",
                )
            )
            continue
        _check_pair(g, n, c, v)


def _same_const(g: GraphIndex, a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    if not a or not b:
        # a missing zero point equals an explicit 0 only for the DQ side; treat as different otherwise
        given = a or b
        assert given is not None  # a == b returned for two missing ones
        other = g.const(given)
        return other is not None and not np.any(other != 0)
    va, vb = g.const(a), g.const(b)
    return va is not None and vb is not None and va.shape == vb.shape and np.array_equal(va, vb)


def _check_pair(g: GraphIndex, q: onnx.NodeProto, dq: onnx.NodeProto, v) -> None:
    def inp(node, i):
        return node.input[i] if len(node.input) > i and node.input[i] else None

    if not _same_const(g, inp(q, 1), inp(dq, 1)):
        v(
            Violation(
                "scale-mismatch",
                dq.name or "DequantizeLinear",
                f"scale differs from its QuantizeLinear "
                f"'{q.name}': TensorRT needs the same scale on both sides of a Q/DQ pair",
            )
        )
    if not _same_const(g, inp(q, 2), inp(dq, 2)):
        v(
            Violation(
                "scale-mismatch",
                dq.name or "DequantizeLinear",
                f"zero point differs from its QuantizeLinear '{q.name}'",
            )
        )
    scale_shape = g.const_shape(q.input[1]) if len(q.input) > 1 else None
    if scale_shape is not None and not _is_per_tensor(scale_shape) and attr(q, "axis", 1) != attr(dq, "axis", 1):
        v(
            Violation(
                "scale-mismatch",
                dq.name or "DequantizeLinear",
                f"axis {attr(dq, 'axis', 1)} differs from its QuantizeLinear's axis {attr(q, 'axis', 1)}",
            )
        )


def _dequantizes_weight(g: GraphIndex, dq: onnx.NodeProto) -> bool:
    """Whether ``dq`` dequantizes a constant: directly, or through a QuantizeLinear of the constant."""
    src = dq.input[0]
    p = g.producer.get(src)
    return g.is_const(src) or (p is not None and p.op_type == "QuantizeLinear" and g.is_const(p.input[0]))


def _check_dequantize(g: GraphIndex, n: onnx.NodeProto, v) -> None:
    label = n.name or "DequantizeLinear"
    _check_zero_point_and_scale(g, n, v, is_q=False)
    src = n.input[0]
    src_node = g.producer.get(src)
    if not _dequantizes_weight(g, n):
        if src_node is None or src_node.op_type != "QuantizeLinear":
            where = (
                "a graph input"
                if src in g.graph_inputs
                else (f"{src_node.op_type} '{src_node.name}'" if src_node else f"'{src}'")
            )
            v(
                Violation(
                    "unpaired-dq",
                    label,
                    f"DequantizeLinear input comes from {where}, not from a QuantizeLinear or an int8 weight",
                )
            )
        scale_shape = g.const_shape(n.input[1]) if len(n.input) > 1 else None
        if scale_shape is not None and not _is_per_tensor(scale_shape):
            v(
                Violation(
                    "activation-per-channel",
                    label,
                    f"activation dequantized per channel (scale shape "
                    f"{scale_shape}): TensorRT quantizes activations per tensor",
                )
            )
        return
    # A dequantized weight: only a conv/matmul/gemm weight input can take it, on the output-channel axis.
    if g.is_const(src):
        w_name = src
    else:
        assert src_node is not None  # _dequantizes_weight: a constant, or a Q of one
        w_name = src_node.input[0]
    w_shape = g.const_shape(w_name) or ()
    scale_shape = g.const_shape(n.input[1]) if len(n.input) > 1 else None
    for c in _consumers_through(g, n.output[0]):
        if c.op_type not in COMPUTE_OPS:
            v(
                Violation(
                    "dq-weight-consumer",
                    label,
                    f"dequantized weight '{w_name}' feeds {c.op_type} "
                    f"'{c.name}': TensorRT fuses weight Q/DQ into Conv/ConvTranspose/MatMul/Gemm only",
                )
            )
            continue
        if len(c.input) < 2 or g.trace_back(c.input[1])[0] != n.output[0]:
            v(
                Violation(
                    "dq-weight-consumer",
                    label,
                    f"dequantized weight '{w_name}' is the data input of {c.op_type} '{c.name}', not its weight input",
                )
            )
            continue
        if scale_shape is None or _is_per_tensor(scale_shape):
            continue  # per-tensor weights are legal; reported as a warning with the layer
        rank = len(w_shape)
        axis = attr(n, "axis", 1)
        axis_n = axis + rank if axis < 0 else axis
        want = output_channel_axis(c, rank)
        if axis_n != want:
            v(
                Violation(
                    "weight-axis",
                    label,
                    f"{c.op_type} '{c.name}' weight {tuple(w_shape)} is quantized "
                    f"per channel on axis {axis}, its output channels are axis {want}"
                    + (" (a MatMul weight exported from nn.Linear is (in, out))" if c.op_type == "MatMul" else ""),
                )
            )
        elif int(np.prod(scale_shape)) != w_shape[want]:
            v(
                Violation(
                    "weight-axis",
                    label,
                    f"{int(np.prod(scale_shape))} scales for {w_shape[want]} output channels of '{w_name}'",
                )
            )


def _consumers_through(g: GraphIndex, name: str) -> list[onnx.NodeProto]:
    """Consumers of ``name``, looking through data-movement ops (a weight DQ may be transposed first)."""
    out: list[onnx.NodeProto] = []
    stack = [name]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        for c in g.consumers.get(t, []):
            if c.op_type in TRANSPARENT_OPS:
                stack.extend(o for o in c.output if o)
            else:
                out.append(c)
    return out


def _from_int8_dq(g: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The DequantizeLinear producing ``tensor`` (through data-movement ops), if any."""
    _, p = g.trace_back(tensor)
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def _layer_precisions(g: GraphIndex, warnings: list[str]) -> list[LayerPrecision]:
    macs = compute_macs(g.model)
    rows: list[LayerPrecision] = []
    for n in g.nodes:
        if n.op_type not in COMPUTE_OPS or len(n.input) < 2:
            continue
        act_dq = _from_int8_dq(g, n.input[0])
        w_dq = _from_int8_dq(g, n.input[1])
        act_int8 = act_dq is not None and not g.is_const(act_dq.input[0])
        w_int8 = w_dq is not None and _dequantizes_weight(g, w_dq)
        axis = None
        if w_int8 and w_dq is not None:
            sshape = g.const_shape(w_dq.input[1])
            if sshape is not None and not _is_per_tensor(sshape):
                axis = attr(w_dq, "axis", 1)
        name = layer_name(n)
        if act_int8 and w_int8:
            precision = "INT8"
            if axis is None:
                warnings.append(
                    f"{name} ({n.op_type}): weight quantized per tensor; per output channel keeps more accuracy"
                )
        else:
            precision = _float_precision(g, n)
            if act_int8 != w_int8:
                which = "activation" if act_int8 else "weight"
                warnings.append(
                    f"{name} ({n.op_type}): only its {which} has Q/DQ, so TensorRT computes it in "
                    f"{precision}; the Q/DQ there costs time and buys nothing"
                )
        if n.op_type == "MatMul" and weight_tensor(g, n)[0] is None:
            warnings.append(f"{name}: MatMul of two activations (no weight)")
        rows.append(
            LayerPrecision(
                node=n.name,
                layer=name,
                op=n.op_type,
                precision=precision,
                activation_int8=act_int8,
                weight_int8=w_int8,
                weight_axis=axis,
                macs=macs.get(n.name),
            )
        )
    return rows
