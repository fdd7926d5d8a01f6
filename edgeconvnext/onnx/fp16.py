"""ONNX-level FP32 -> FP16 conversion for strongly typed TensorRT builds, reductions kept in FP32.

TensorRT 11 has no FP16 builder flag (10.x deprecates it): a strongly typed network runs each layer in
the type the ONNX gives it. ``build-engine --fp16`` on an FP32 ONNX therefore converts the graph first.
We convert at the ONNX level (onnx only, no checkpoint needed), because an ONNX may come from anywhere
(a quantizer, another exporter) and re-exporting would need the source model: an FP16 export from
``edgeconvnext export --precision fp16`` is equivalent and is used as-is when given.

What the conversion does:

* every float32 weight and activation becomes float16, except the FP32 islands: each
  ``LayerNormalization`` (its input is cast to float32, scale/bias stay float32, its output is cast back)
  and each sum-of-squares reduction (``ReduceL2``, ``ReduceSumSquare``, ``ReduceLogSumExp``, ``Pow``) with
  the ops that only combine its result with constants or other island values (GRN's mean over channels,
  ``+ eps`` and division: gx / (mean(gx) + eps)). Their sums overflow FP16 (ConvNeXt-V2 issue #66).
* ``Cast`` nodes that cast float32 to float32 (what an FP32 export of ``x.float()`` leaves) become Identity.
* graph input and output stay float32 by default (``keep_io_types``), with a Cast at the entry and exit,
  like the FP16 export, so runners feed the same float32 images.
* Q/DQ graphs: the scales of QuantizeLinear/DequantizeLinear become float16, so the Q input and DQ output
  are float16 (in a strongly typed network the DQ scale's type is the type of the dequantized tensor).
  Float16 scales need opset >= 19; an older opset is converted with onnx.version_converter first.

Input: an ``onnx.ModelProto`` (FP32, optionally Q/DQ). Output: a new ModelProto and a :class:`Fp16Report`.

Usage::

    proto16, report = convert_to_fp16(onnx.load("model.onnx"))
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.errors import ExportError, UsageError, require
from edgeconvnext.onnx.graph import QDQ_OPS, GraphIndex

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)

#: ops whose result is a sum of squares (or of exponentials): always computed in float32
SEED_OPS = frozenset({"ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "Pow"})
#: ops that join an FP32 island when all their float inputs are island values or constants
ISLAND_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Sqrt",
        "Reciprocal",
        "Max",
        "Min",
        "Clip",
        "Abs",
        "Neg",
        "Identity",
        "Exp",
        "Log",
    }
)
#: always float32 (TensorRT's normalization layer in FP16 loses the statistics)
FP32_OPS = frozenset({"LayerNormalization"})
#: ops whose float inputs do not set a compute type (shape queries)
TYPE_AGNOSTIC_OPS = frozenset({"Shape", "Size"})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
#: smallest positive normal float16; smaller Q/DQ scales lose precision as subnormals
FP16_MIN_NORMAL = 6.103515625e-05
FP16_MAX = 65504.0
MIN_QDQ_FP16_OPSET = 19


@dataclass
class Fp16Report:
    """What :func:`convert_to_fp16` changed."""

    initializers_converted: int = 0
    constants_converted: int = 0
    casts_inserted: int = 0
    noop_casts_removed: int = 0
    fp32_nodes: dict[str, int] = field(default_factory=dict)
    qdq_scales_converted: int = 0
    opset_before: int = 0
    opset_after: int = 0
    clamped_values: int = 0
    subnormal_scales: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _onnx() -> Any:
    return require("onnx", "FP16 conversion")


def default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def float_weight_dtype(proto: onnx.ModelProto) -> str | None:
    """'float32' or 'float16': the float type holding most weight elements (initializers and Constants)."""
    onnx = _onnx()
    counts: Counter[int] = Counter()
    tensors = list(proto.graph.initializer)
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    tensors.append(a.t)
    for t in tensors:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            size = 1
            for d in t.dims:
                size *= int(d)
            counts[t.data_type] += size
    if not counts:
        return None
    top = counts.most_common(1)[0][0]
    return "float16" if top == onnx.TensorProto.FLOAT16 else "float32"


def _to_fp16_array(arr: Any, report: Fp16Report) -> Any:
    import numpy as np

    a = np.asarray(arr, dtype=np.float32)
    over = np.abs(a) > FP16_MAX
    if over.any():
        report.clamped_values += int(over.sum())
        a = np.clip(a, -FP16_MAX, FP16_MAX)
    return a.astype(np.float16)


def _tensor_to_fp16(t: onnx.TensorProto, name: str, report: Fp16Report) -> onnx.TensorProto:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    return numpy_helper.from_array(_to_fp16_array(arr, report), name)


def convert_to_fp16(proto: onnx.ModelProto, *, keep_io_types: bool = True) -> tuple[onnx.ModelProto, Fp16Report]:
    """Return an FP16 copy of ``proto`` (see the module docstring for what stays FP32) and a report."""
    onnx = _onnx()
    report = Fp16Report(opset_before=default_opset(proto))
    _check_convertible(proto)
    model = _upgrade_for_qdq(proto, report)
    report.opset_after = default_opset(model)

    conv = _Conversion(model, report, keep_io_types)
    conv.remove_noop_casts()
    conv.find_fp32_islands()
    new_nodes = conv.rewrite_nodes()
    f32_const_nodes, keep_inits = conv.fp32_constants_still_used(new_nodes)
    g = model.graph
    del g.node[:]
    g.node.extend(f32_const_nodes + new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep_inits + conv.new_inits)
    del g.value_info[:]
    conv.set_io_types()

    _check_qdq_scales(g, report)
    if report.clamped_values:
        report.notes.append(f"{report.clamped_values} weight values beyond +-65504 were clamped to the FP16 range")
    _topo_sort(g)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - checker raises ValidationError/InferenceError
        raise ExportError(f"the FP16 graph does not pass onnx.checker ({e}): please report this model") from None
    log.info(
        "fp16: %d weights converted, %d casts inserted, fp32 islands %s",
        report.initializers_converted,
        report.casts_inserted,
        report.fp32_nodes,
    )
    return model, report


def _check_convertible(proto: onnx.ModelProto) -> None:
    """Refuse what the converter cannot handle, with the way out."""
    from onnx import TensorProto

    g0 = proto.graph
    if any(n.op_type in CONTROL_FLOW_OPS for n in g0.node):
        raise UsageError(
            "the FP16 converter does not handle control flow (If/Loop/Scan); "
            "export the model in FP16 instead (edgeconvnext export --precision fp16)"
        )
    if float_weight_dtype(proto) == "float16":
        raise UsageError("the ONNX is already FP16 (its weights are float16): build it without conversion")
    if any(t.data_location == TensorProto.EXTERNAL for t in g0.initializer):
        raise UsageError(
            "the ONNX's weights are external data that was not loaded: load it with "
            "onnx.load(path, load_external_data=True) before converting"
        )


def _upgrade_for_qdq(proto: onnx.ModelProto, report: Fp16Report) -> onnx.ModelProto:
    """A copy of ``proto``; a Q/DQ graph below opset 19 converted to 19 (float16 scales need it)."""
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    if has_qdq and report.opset_before < MIN_QDQ_FP16_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, MIN_QDQ_FP16_OPSET)
        except Exception as e:  # the converter raises plain RuntimeError/ValueError with its reason
            raise ExportError(
                f"FP16 Q/DQ scales need opset >= {MIN_QDQ_FP16_OPSET}; converting opset "
                f"{report.opset_before} failed ({e}); export/quantize at opset "
                f"{MIN_QDQ_FP16_OPSET} instead"
            ) from None
        report.notes.append(f"opset {report.opset_before} -> {MIN_QDQ_FP16_OPSET} (float16 Q/DQ scales)")
    return model


class _Conversion:
    """The state of one conversion: tensor types, constants, FP32 islands, names in use, new tensors.

    The steps, in order: :meth:`remove_noop_casts`, :meth:`find_fp32_islands`, :meth:`rewrite_nodes`,
    :meth:`fp32_constants_still_used`, then :meth:`set_io_types` on the rebuilt graph.
    """

    def __init__(self, model: onnx.ModelProto, report: Fp16Report, keep_io_types: bool) -> None:
        onnx = _onnx()
        from onnx import TensorProto

        self.FLOAT, self.HALF = TensorProto.FLOAT, TensorProto.FLOAT16
        self.model, self.g, self.report, self.keep_io_types = model, model.graph, report, keep_io_types
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception as e:  # noqa: BLE001 - a foreign graph shape inference rejects
            raise ExportError(f"ONNX shape inference failed, cannot type the graph for FP16 ({e})") from None
        self.types: dict[str, int] = {}
        for v in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
            self.types[v.name] = v.type.tensor_type.elem_type
        self.gi = GraphIndex(model)  # holds the node objects themselves: in-place edits show through it
        self.inits = self.gi.initializers
        for name in list(self.inits) + [n.output[0] for n in self.g.node if n.op_type == "Constant"]:
            dt = self.gi.const_dtype(name)
            if dt is not None:
                self.types[name] = dt
        self.const: set[str] = set()
        self.keep32: set[int] = set()
        self.fp32_tensors: set[str] = set()
        self.new_nodes: list[Any] = []
        self.new_inits: list[Any] = []
        self.casts: dict[tuple[str, int], str] = {}
        self.const_variant: dict[tuple[str, int], str] = {}
        self.used_names: set[str] = set(self.types) | {o for n in self.g.node for o in n.output} | set(self.inits)

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == self.FLOAT

    def new_type(self, name: str) -> int:
        """The float type ``name`` will have: island outputs float32, every other float tensor float16."""
        if not self.is_float(name):
            return self.types.get(name, 0)
        if name in self.fp32_tensors:
            return self.FLOAT
        if name in self.gi.graph_inputs and self.keep_io_types:
            return self.FLOAT
        return self.HALF

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def remove_noop_casts(self) -> None:
        """float32 -> float32 Casts (where x.float() was) become Identity."""
        for n in self.g.node:
            if n.op_type == "Cast" and self.types.get(n.input[0]) == self.FLOAT:
                to = next((a.i for a in n.attribute if a.name == "to"), None)
                if to == self.FLOAT:
                    n.op_type = "Identity"
                    del n.attribute[:]
                    self.report.noop_casts_removed += 1

    def find_fp32_islands(self) -> None:
        """Constant tensors (initializers, Constant outputs, Identity chains over them), then the FP32
        islands: FP32_OPS and SEED_OPS nodes, and ISLAND_OPS nodes all of whose float inputs are island
        values or constants (with at least one island value)."""
        const = set(self.inits)
        for n in self.g.node:
            if n.op_type == "Constant":
                const.add(n.output[0])
            elif n.op_type == "Identity" and n.input[0] in const:
                const.add(n.output[0])
        self.const = const
        for i, n in enumerate(self.g.node):
            if n.op_type in ("Constant",) or (n.op_type == "Identity" and n.input[0] in const):
                continue
            float_in = [x for x in n.input if self.is_float(x)]
            join = False
            if n.op_type in FP32_OPS or n.op_type in SEED_OPS:
                join = True
            elif n.op_type in ISLAND_OPS and float_in:
                join = any(x in self.fp32_tensors for x in float_in) and all(
                    x in self.fp32_tensors or x in const for x in float_in
                )
            if join:
                self.keep32.add(i)
                self.fp32_tensors.update(o for o in n.output if o)
        self.report.fp32_nodes = dict(Counter(self.g.node[i].op_type for i in sorted(self.keep32)))

    def const_as(self, name: str, want: int) -> str:
        """The name of constant ``name`` in type ``want`` (float16 copies made on demand)."""
        from onnx import helper

        if want == self.FLOAT:
            return name
        key = (name, want)
        if key in self.const_variant:
            return self.const_variant[key]
        src, src_node = self.gi.trace_back(name, through=("Identity",))  # Identity chain over a constant
        vname = self.fresh(f"{name}_fp16")
        if src in self.inits:
            self.new_inits.append(_tensor_to_fp16(self.inits[src], vname, self.report))
            self.report.initializers_converted += 1
        else:
            assert src_node is not None  # a constant that is no initializer has a Constant producer
            t = next(a.t for a in src_node.attribute if a.name == "value")
            self.new_nodes.append(
                helper.make_node("Constant", [], [vname], value=_tensor_to_fp16(t, vname, self.report))
            )
            self.report.constants_converted += 1
        self.const_variant[key] = vname
        return vname

    def cast_as(self, name: str, want: int) -> str:
        """``name`` cast to ``want`` (one Cast per tensor and type, shared by its consumers)."""
        from onnx import helper

        key = (name, want)
        if key not in self.casts:
            tag = "fp16" if want == self.HALF else "fp32"
            out = self.fresh(f"{name}_to_{tag}")
            self.new_nodes.append(
                helper.make_node("Cast", [name], [out], to=want, name=self.fresh(f"{name}_Cast_{tag}"))
            )
            self.casts[key] = out
            self.report.casts_inserted += 1
        return self.casts[key]

    def rewrite_nodes(self) -> list[Any]:
        """The new node list: each node's float constants in its compute type, Casts at island borders.
        Float constants are materialised per consumer; the float32 originals are re-added by
        :meth:`fp32_constants_still_used` where an island still reads them."""
        for i, n in enumerate(self.g.node):
            if n.op_type == "Constant" and self.is_float(n.output[0]):
                continue  # emitted on demand by const_as
            if n.op_type == "Identity" and n.input[0] in self.const and self.is_float(n.output[0]):
                continue
            if n.op_type in TYPE_AGNOSTIC_OPS:
                self.new_nodes.append(n)
                continue
            want = self.FLOAT if i in self.keep32 else self.HALF
            if n.op_type == "Cast":
                # A remaining Cast converts from a non-float type (or float16): its float output follows the region.
                for a in n.attribute:
                    if a.name == "to" and a.i == self.FLOAT and want == self.HALF:
                        a.i = self.HALF
                self.new_nodes.append(n)
                continue
            for k, x in enumerate(n.input):
                if not self.is_float(x):
                    continue
                if x in self.const:
                    n.input[k] = self.const_as(x, want)
                    if n.op_type in QDQ_OPS and k == 1 and want == self.HALF:
                        self.report.qdq_scales_converted += 1
                elif self.new_type(x) != want:
                    n.input[k] = self.cast_as(x, want)
            self.new_nodes.append(n)
        return self.new_nodes

    def fp32_constants_still_used(self, new_nodes: list[Any]) -> tuple[list[Any], list[Any]]:
        """The Constant/Identity nodes of float32 constants that islands still reference (under their
        original names), and the initializers to keep (non-float, or float32 and referenced)."""
        gi = self.gi
        referenced = {x for n in new_nodes for x in n.input}
        f32_const_nodes = []
        for name in sorted(referenced & self.const):
            if name in self.inits:
                continue
            src = name
            chain = []
            while not gi.is_const(src):
                chain.append(gi.producer[src])
                src = gi.producer[src].input[0]
            if src not in self.inits and self.is_float(src):
                f32_const_nodes.append(gi.producer[src])
            f32_const_nodes.extend(reversed(chain))
        first: dict[int, Any] = {}  # each node once, in first-seen order
        for n in f32_const_nodes:
            first.setdefault(id(n), n)
        f32_const_nodes = list(first.values())
        referenced |= {x for n in f32_const_nodes for x in n.input}
        keep_inits = [t for t in self.g.initializer if t.data_type != self.FLOAT or t.name in referenced]
        return f32_const_nodes, keep_inits

    def set_io_types(self) -> None:
        """Graph outputs computed in float16 are declared float16; with keep_io_types they get a Cast back
        to float32 (:func:`keep_fp32_io`). Without it, every float input and output becomes float16."""
        g = self.g
        if self.keep_io_types:
            for v in g.output:
                if self.is_float(v.name) and self.new_type(v.name) == self.HALF:
                    v.type.tensor_type.elem_type = self.HALF
            self.report.casts_inserted += keep_fp32_io(self.model, inputs=False)
        else:
            for v in list(g.input) + list(g.output):
                if self.is_float(v.name) and v.name not in self.inits:
                    v.type.tensor_type.elem_type = self.HALF


def _check_qdq_scales(g: Any, report: Fp16Report) -> None:
    """Q/DQ scales in float16: one that underflows to 0 is refused; subnormal ones (coarse) are counted."""
    from onnx import TensorProto, numpy_helper

    by_name = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type in QDQ_OPS and len(n.input) > 1:
            t = by_name.get(n.input[1])
            if t is not None and t.data_type == TensorProto.FLOAT16:
                arr = numpy_helper.to_array(t)
                if (arr == 0).any():
                    raise ExportError(
                        f"Q/DQ scale '{n.input[1]}' of {n.name or n.op_type} underflows to 0 in float16; "
                        "keep this model's non-INT8 layers in FP32 (build without --fp16)"
                    )
                report.subnormal_scales += int((abs(arr) < FP16_MIN_NORMAL).sum())
    if report.subnormal_scales:
        report.notes.append(f"{report.subnormal_scales} Q/DQ scale values are float16 subnormals (< 6.1e-5)")


def keep_fp32_io(proto: onnx.ModelProto, *, inputs: bool = True, outputs: bool = True) -> int:
    """Make the float16 graph inputs and outputs float32: a Cast after each such input (``/NAME_to_fp16``)
    and before each such output (``/NAME_to_fp32``); the graph's own node names stay as they are.

    The FP16 export calls it on the whole float16 graph torch writes (so node names stay those of the
    FP32 export, which per-layer tools compare); :func:`convert_to_fp16` on its outputs (its inputs stay
    float32 during the conversion, so every float16 consumer already reads them through a Cast).
    Returns the number of Casts inserted.
    """
    from onnx import TensorProto, helper

    g = proto.graph
    inits = {t.name for t in g.initializer}
    used = inits | {v.name for v in [*g.input, *g.output, *g.value_info]} | {o for n in g.node for o in n.output}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name

    def rename(old: str, new: str) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new

    entry, exit_ = [], []
    half = TensorProto.FLOAT16
    for v in g.input if inputs else []:
        if v.name not in inits and v.type.tensor_type.elem_type == half:
            inner = fresh(f"{v.name}_fp16")
            rename(v.name, inner)
            v.type.tensor_type.elem_type = TensorProto.FLOAT
            entry.append(helper.make_node("Cast", [v.name], [inner], name=fresh(f"/{v.name}_to_fp16"), to=half))
    for v in g.output if outputs else []:
        if v.type.tensor_type.elem_type == half:
            inner = fresh(f"{v.name}_fp16")
            rename(v.name, inner)
            v.type.tensor_type.elem_type = TensorProto.FLOAT
            exit_.append(
                helper.make_node("Cast", [inner], [v.name], name=fresh(f"/{v.name}_to_fp32"), to=TensorProto.FLOAT)
            )
    if entry or exit_:
        nodes = [*entry, *g.node, *exit_]
        del g.node[:]
        g.node.extend(nodes)
    return len(entry) + len(exit_)


def _topo_sort(g: Any) -> None:
    """Order ``g.node`` so every node follows the producers of its inputs (casts were appended early)."""
    available = {t.name for t in g.initializer} | {v.name for v in g.input} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(x in available for x in n.input):
                ordered.append(n)
                available.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            missing = sorted({x for n in rest for x in n.input if x not in available})[:5]
            raise ExportError(f"FP16 conversion left a dangling input ({', '.join(missing)}): please report this model")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def convert_file(
    src: str | Path, dst: str | Path, *, keep_io_types: bool = True, source_sha256: str | None = None
) -> Fp16Report:
    """Convert the ONNX file ``src`` to FP16 and write ``dst`` atomically (metadata precision updated).

    ``source_sha256``: the sha256 of ``src`` when the caller has it already (else it is computed).
    """
    onnx = _onnx()
    from edgeconvnext.artifacts import atomic_output, sha256_file
    from edgeconvnext.onnx.info import load_proto
    from edgeconvnext.onnx.metadata import set_metadata

    proto = load_proto(src, external_data=True)
    out, report = convert_to_fp16(proto, keep_io_types=keep_io_types)
    has_qdq = any(n.op_type in QDQ_OPS for n in out.graph.node)
    set_metadata(
        out,
        {
            "edgeconvnext.precision": "int8" if has_qdq else "fp16",
            "edgeconvnext.compute_dtype": "float16",
            "edgeconvnext.io_dtype": "float32" if keep_io_types else "float16",
            "edgeconvnext.fp16_converted_from": source_sha256 or sha256_file(src),
        },
    )
    if out.ByteSize() > 2**31 - 64 * 2**20:
        raise ExportError(
            f"the FP16 model of {src} is larger than protobuf's 2 GiB limit; export it in FP16 "
            "with external data instead (edgeconvnext export --precision fp16)"
        )
    with atomic_output(dst) as tmp:
        onnx.save(out, str(tmp))
    return report


def compare_outputs(
    src: str | Path | onnx.ModelProto, dst: str | Path | onnx.ModelProto, *, batch: int = 2, seed: int = 0
) -> dict[str, float]:
    """Run both models in onnxruntime (CPU) on the same seeded normal input; max abs/rel logit difference."""
    import numpy as np

    ort = require("onnxruntime", "comparing FP16 with FP32")

    def session(m: Any) -> Any:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        data = str(m) if isinstance(m, (str, Path)) else m.SerializeToString()
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])

    a, b = session(src), session(dst)
    inp = a.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    feed_b = x.astype(np.float16) if b.get_inputs()[0].type == "tensor(float16)" else x
    ya = a.run(None, {inp.name: x})[0].astype(np.float32)
    yb = b.run(None, {b.get_inputs()[0].name: feed_b})[0].astype(np.float32)
    diff = float(np.abs(ya - yb).max())
    scale = float(np.abs(ya).max()) or 1.0
    agree = float((ya.argmax(-1) == yb.argmax(-1)).mean()) if ya.ndim == 2 else float("nan")
    return {
        "max_abs_diff": diff,
        "rel_diff": diff / scale,
        "top1_agreement": agree,
        "finite": bool(np.isfinite(yb).all()),
    }
