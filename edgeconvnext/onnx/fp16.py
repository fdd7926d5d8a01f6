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

from edgeconvnext.errors import BackendMissing, ExportError, UsageError
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


def _onnx():
    try:
        import onnx
    except ImportError:
        raise BackendMissing("FP16 conversion needs the onnx package: pip install 'edgeconvnext[onnx]'") from None
    return onnx


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
    from onnx import TensorProto, helper, numpy_helper

    report = Fp16Report(opset_before=default_opset(proto))
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
    report.opset_after = default_opset(model)

    g = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - a foreign graph shape inference rejects
        raise ExportError(f"ONNX shape inference failed, cannot type the graph for FP16 ({e})") from None
    types: dict[str, int] = {}
    for v in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    gi = GraphIndex(model)  # holds the node objects themselves: in-place edits below show through it
    inits = gi.initializers
    for name in list(inits) + [n.output[0] for n in g.node if n.op_type == "Constant"]:
        dt = gi.const_dtype(name)
        if dt is not None:
            types[name] = dt

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    # 1. float32 -> float32 Casts are no-ops: make them Identity (they are where x.float() was).
    for n in g.node:
        if n.op_type == "Cast" and types.get(n.input[0]) == FLOAT:
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if to == FLOAT:
                n.op_type = "Identity"
                del n.attribute[:]
                report.noop_casts_removed += 1

    # 2. Constant tensors: initializers, Constant outputs, and Identity chains over them.
    const: set[str] = set(inits)
    for n in g.node:
        if n.op_type == "Constant":
            const.add(n.output[0])
        elif n.op_type == "Identity" and n.input[0] in const:
            const.add(n.output[0])

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == FLOAT

    # 3. FP32 islands.
    keep32: set[int] = set()
    fp32_tensors: set[str] = set()
    for i, n in enumerate(g.node):
        if n.op_type in ("Constant",) or (n.op_type == "Identity" and n.input[0] in const):
            continue
        float_in = [x for x in n.input if is_float(x)]
        join = False
        if n.op_type in FP32_OPS or n.op_type in SEED_OPS:
            join = True
        elif n.op_type in ISLAND_OPS and float_in:
            join = any(x in fp32_tensors for x in float_in) and all(x in fp32_tensors or x in const for x in float_in)
        if join:
            keep32.add(i)
            fp32_tensors.update(o for o in n.output if o)
    report.fp32_nodes = dict(Counter(g.node[i].op_type for i in sorted(keep32)))

    # 4. The float type each tensor will have: island outputs float32, every other float tensor float16.
    def new_type(name: str) -> int:
        if not is_float(name):
            return types.get(name, 0)
        if name in fp32_tensors:
            return FLOAT
        if name in gi.graph_inputs and keep_io_types:
            return FLOAT
        return HALF

    # 5. Rebuild the node list: convert constants per consumer type, insert Casts at island borders.
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    casts: dict[tuple[str, int], str] = {}
    const_variant: dict[tuple[str, int], str] = {}
    used_names: set[str] = set(types) | {o for n in g.node for o in n.output} | set(inits)

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in used_names:
            k += 1
            name = f"{base}_{k}"
        used_names.add(name)
        return name

    def const_as(name: str, want: int) -> str:
        """The name of constant ``name`` in type ``want`` (float16 copies made on demand)."""
        if want == FLOAT:
            return name
        key = (name, want)
        if key in const_variant:
            return const_variant[key]
        src, src_node = gi.trace_back(name, through=("Identity",))  # Identity chain over a constant
        vname = fresh(f"{name}_fp16")
        if src in inits:
            new_inits.append(_tensor_to_fp16(inits[src], vname, report))
            report.initializers_converted += 1
        else:
            t = next(a.t for a in src_node.attribute if a.name == "value")
            new_nodes.append(helper.make_node("Constant", [], [vname], value=_tensor_to_fp16(t, vname, report)))
            report.constants_converted += 1
        const_variant[key] = vname
        return vname

    def cast_as(name: str, want: int) -> str:
        key = (name, want)
        if key not in casts:
            out = fresh(f"{name}_to_{'fp16' if want == HALF else 'fp32'}")
            new_nodes.append(
                helper.make_node(
                    "Cast", [name], [out], to=want, name=fresh(f"{name}_Cast_{'fp16' if want == HALF else 'fp32'}")
                )
            )
            casts[key] = out
            report.casts_inserted += 1
        return casts[key]

    # Float constants are materialised per consumer; the originals are dropped when unused.
    for i, n in enumerate(g.node):
        if n.op_type == "Constant" and is_float(n.output[0]):
            continue  # emitted on demand by const_as (float32 originals re-added below if used)
        if n.op_type == "Identity" and n.input[0] in const and is_float(n.output[0]):
            continue
        if n.op_type in TYPE_AGNOSTIC_OPS:
            new_nodes.append(n)
            continue
        want = FLOAT if i in keep32 else HALF
        if n.op_type == "Cast":
            # A remaining Cast converts from a non-float type (or float16): its float output follows the region.
            for a in n.attribute:
                if a.name == "to" and a.i == FLOAT and want == HALF:
                    a.i = HALF
            new_nodes.append(n)
            continue
        for k, x in enumerate(n.input):
            if not is_float(x):
                continue
            if x in const:
                n.input[k] = const_as(x, want)
                if n.op_type in QDQ_OPS and k == 1 and want == HALF:
                    report.qdq_scales_converted += 1
            elif new_type(x) != want:
                n.input[k] = cast_as(x, want)
        new_nodes.append(n)

    # float32 constants still referenced (by islands) must exist under their original names.
    referenced = {x for n in new_nodes for x in n.input}
    f32_const_nodes = []
    for name in sorted(referenced & const):
        if name in inits:
            continue
        src = name
        chain = []
        while not gi.is_const(src):
            chain.append(gi.producer[src])
            src = gi.producer[src].input[0]
        if src not in inits and is_float(src):
            f32_const_nodes.append(gi.producer[src])
        f32_const_nodes.extend(reversed(chain))
    seen_ids: set[int] = set()
    f32_const_nodes = [n for n in f32_const_nodes if not (id(n) in seen_ids or seen_ids.add(id(n)))]
    referenced |= {x for n in f32_const_nodes for x in n.input}
    keep_inits = [t for t in g.initializer if t.data_type != FLOAT or t.name in referenced]

    # 6. Graph outputs: a float output computed in float16 gets a Cast back to float32 when keep_io_types.
    if keep_io_types:
        for v in g.output:
            if is_float(v.name) and new_type(v.name) == HALF:
                inner = fresh(f"{v.name}_fp16")
                for n in new_nodes:
                    for k, o in enumerate(n.output):
                        if o == v.name:
                            n.output[k] = inner
                    for k, x in enumerate(n.input):
                        if x == v.name:
                            n.input[k] = inner
                new_nodes.append(
                    helper.make_node("Cast", [inner], [v.name], to=FLOAT, name=fresh(f"{v.name}_Cast_fp32"))
                )
                report.casts_inserted += 1
    else:
        for v in list(g.input) + list(g.output):
            if is_float(v.name) and v.name not in inits:
                v.type.tensor_type.elem_type = HALF

    del g.node[:]
    g.node.extend(f32_const_nodes + new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    del g.value_info[:]

    # Q/DQ scale range check: float16 subnormal scales quantize coarsely.
    by_name = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type in QDQ_OPS and len(n.input) > 1:
            t = by_name.get(n.input[1])
            if t is not None and t.data_type == HALF:
                arr = numpy_helper.to_array(t)
                if (arr == 0).any():
                    raise ExportError(
                        f"Q/DQ scale '{n.input[1]}' of {n.name or n.op_type} underflows to 0 in float16; "
                        "keep this model's non-INT8 layers in FP32 (build without --fp16)"
                    )
                report.subnormal_scales += int((abs(arr) < FP16_MIN_NORMAL).sum())
    if report.subnormal_scales:
        report.notes.append(f"{report.subnormal_scales} Q/DQ scale values are float16 subnormals (< 6.1e-5)")
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

    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendMissing("comparing FP16 with FP32 needs onnxruntime: pip install 'edgeconvnext[onnx]'") from None

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
