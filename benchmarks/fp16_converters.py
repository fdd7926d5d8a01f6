"""edgeconvnext.onnx.fp16 vs onnxruntime.transformers.float16.convert_float_to_float16, side by side.

Both convert the same FP32 ONNX graphs (ConvNeXt V1 and V2, FP32 and INT8 Q/DQ) to FP16 with float32 graph
I/O; each result is checked for what a strongly typed TensorRT build needs:

- onnx.checker (full check: topological order, types) passes;
- every LayerNormalization takes float32 input; GRN's L2 norm and what is computed from it (mean over
  channels, + eps, division) stay float32 with no float16 round trip in between;
- graph input and output are float32;
- Q/DQ graphs: every scale float16 (the DQ output type in a strongly typed network), opset >= 19, still a
  valid TensorRT explicit-quantization graph (edgeconvnext.onnx.trt_rules);
- parity with the FP32 graph in onnxruntime (max abs / relative logit difference, seeded normal input).

onnxruntime's converter gets its best configuration: keep_io_types=True, op_block_list = the sum-of-squares
ops and LayerNormalization, node_block_list = the nodes of the FP32 islands (as our converter finds them),
and Q/DQ graphs upgraded to opset 19 first (float16 scales need it; it does not do that itself).

Usage: python benchmarks/fp16_converters.py [--img-size 64] [--checkpoint DEMO.safetensors]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from edgeconvnext.export.onnx_export import export_onnx
from edgeconvnext.models.checkpoint import load_model
from edgeconvnext.onnx import fp16
from edgeconvnext.onnx.info import input_dtypes
from edgeconvnext.onnx.trt_rules import check_model

ISLAND_SEEDS = ("LayerNormalization", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "Pow")


def _qdq(src: Path, dst: Path, size: int) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> Any:
            return next(self.it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": True, "QuantizeBias": False},
    )
    return dst


def _island_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes our converter keeps in float32 (LayerNorms and the GRN islands)."""
    out, _ = fp16.convert_to_fp16(proto)
    types = _types(out)
    return [
        n.name
        for n in out.graph.node
        if n.op_type not in ("Cast", "Constant", "Identity", "Shape")
        and any(types.get(x) == TensorProto.FLOAT for x in n.input if x)
        and n.name
    ]


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    t = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.output]}
    t.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
    t.update({i.name: i.data_type for i in inferred.graph.initializer})
    return t


def _ort_convert(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        from onnx import version_converter

        model = version_converter.convert_version(model, fp16.MIN_QDQ_FP16_OPSET)
    return convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(ISLAND_SEEDS), node_block_list=_island_nodes(proto)
    )


def _grn_round_trips(proto: onnx.ModelProto) -> int:
    """Casts to float16 of a GRN island value (the ReduceL2 norm, its channel mean, mean + eps): each is a
    float16 round trip of what must stay float32."""
    producer = {o: n for n in proto.graph.node for o in n.output}

    def island(name: str, depth: int = 0) -> bool:
        p = producer.get(name)
        if p is None or depth > 3:
            return False
        if p.op_type in ("ReduceL2", "ReduceMean"):
            return True
        return p.op_type in ("Add", "Cast") and any(island(x, depth + 1) for x in p.input)

    to_half = [
        n
        for n in proto.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
    ]
    return sum(island(n.input[0]) for n in to_half)


def check(name: str, src: onnx.ModelProto, out: onnx.ModelProto) -> dict[str, Any]:
    row: dict[str, Any] = {"graph": name}
    try:
        onnx.checker.check_model(out, full_check=True)
        row["checker"] = "ok"
    except Exception as e:  # noqa: BLE001 - report, do not stop
        row["checker"] = str(e).splitlines()[0][:60]
    sorted_out = onnx.ModelProto()
    sorted_out.CopyFrom(out)
    fp16._topo_sort(sorted_out.graph)  # input_dtypes needs inferred types; a misordered graph is sorted first
    d = input_dtypes(sorted_out, ("LayerNormalization", "ReduceL2", "ReduceMean", "QuantizeLinear", "MatMul"))
    row["LN fp32"] = set(d.get("LayerNormalization", [])) == {"float32"}
    row["ReduceL2 fp32"] = set(d.get("ReduceL2", ["float32"])) == {"float32"}
    row["GRN fp16 round trips"] = _grn_round_trips(out)
    row["I/O fp32"] = (
        out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
        and out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    )
    row["MatMul fp16"] = set(d.get("MatMul", [])) == {"float16"}
    row["casts"] = sum(n.op_type == "Cast" for n in out.graph.node)
    qdq = [n for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if qdq:
        inits = {t.name: t for t in out.graph.initializer}
        row["Q/DQ scales fp16"] = all(
            inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in qdq if n.input[1] in inits
        )
        rules = check_model(sorted_out)
        row["TRT rules"] = "ok" if rules.ok else f"{len(rules.violations)} violations"
    try:
        cmp = fp16.compare_outputs(src, out, batch=4)
    except Exception as e:  # noqa: BLE001 - an invalid graph is a result here
        row["max abs diff"] = "onnxruntime refuses it: " + str(e).split("Error: ")[-1][:90]
        return row
    row["max abs diff"] = f"{cmp['max_abs_diff']:.2e}"
    row["rel diff"] = f"{cmp['rel_diff']:.2e}"
    row["top-1 agree"] = f"{cmp['top1_agreement']:.2f}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--checkpoint", type=Path, default=None, help="also convert this checkpoint's export")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        graphs: dict[str, Path] = {}
        for arch, tag in (("convnextv2_test", "v2"), ("convnext_test", "v1")):
            graphs[tag] = d / f"{tag}.onnx"
            export_onnx(load_model(arch, num_classes=10, img_size=args.img_size), graphs[tag], verify=False)
        graphs["v2 qdq"] = _qdq(graphs["v2"], d / "v2_qdq.onnx", args.img_size)
        graphs["v1 qdq"] = _qdq(graphs["v1"], d / "v1_qdq.onnx", args.img_size)
        if args.checkpoint is not None:
            loaded = load_model(None, args.checkpoint)
            graphs["checkpoint"] = d / "ckpt.onnx"
            export_onnx(loaded, graphs["checkpoint"], verify=False)
            graphs["checkpoint qdq"] = _qdq(graphs["checkpoint"], d / "ckpt_qdq.onnx", loaded.preprocess.img_size)
        rows = []
        for name, path in graphs.items():
            src = onnx.load(str(path))
            rows.append({"converter": "edgeconvnext", **check(name, src, fp16.convert_to_fp16(src)[0])})
            rows.append({"converter": "onnxruntime", **check(name, src, _ort_convert(src))})
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")


if __name__ == "__main__":
    main()
