"""Q/DQ insertion for the ort backend: the graph ``onnxruntime.quantization.quantize_static`` writes for our
settings, with the weight quantization done in whole arrays.

Input: the FP32 model, the names of the Conv/MatMul/Gemm nodes to quantize, a (min, max) range per activation
tensor (the calibration's). Output: a new model with explicit QuantizeLinear/DequantizeLinear.

Why not ``quantize_static`` itself: with calibration ranges given it only inserts the nodes, but it quantizes
each weight one output channel at a time in Python (22,720 calls for convnextv2_nano: 35 of its 336 s of
calibration at load 8, issue 11). The arithmetic here is onnxruntime's (``quant_utils.compute_scale_zp`` and
``quantize_nparray``) on whole arrays, so the scales and INT8 weights are the same values
(tests/test_quantize.py compares them with ``quantize_static``'s):

- activations, per tensor, symmetric INT8: ``absmax = max(|min(lo, 0)|, |max(hi, 0)|)``,
  ``scale = float32(2 * absmax / 254)`` (float64 arithmetic), zero point 0; a scale below float32's smallest
  normal becomes 1.0. Every reader of the tensor reads the DequantizeLinear output (quantize_static's
  ``replace_input_of_all_nodes``); a graph output keeps its name on the DequantizeLinear output;
- weights, per output channel (Conv axis 0, Gemm 0 with transB else 1, MatMul 1), the same formula on each
  channel's min and max, ``q = clip(round(w / scale), -128, 127)`` as int8 initializers ``W_quantized`` read by
  a DequantizeLinear; biases stay float (QuantizeBias off); the FP32 weight is dropped once nothing reads it;
- names as quantize_static's (``T_QuantizeLinear``, ``T_DequantizeLinear_Output``, ``W_scale`` ...).

Usage::

    q = insert_qdq(fp32_model, ["/stages/.../fc1/MatMul"], {"/stages/.../LayerNormalization_output_0": (lo, hi)})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

QMIN, QMAX = -127, 127  # onnxruntime's symmetric INT8 range (ONNX_INT_TYPE_SYMMETRIC_RANGE)
CLIP_MIN, CLIP_MAX = -128, 127  # quantize_nparray clips to the full INT8 range
_TINY = float(np.finfo(np.float32).tiny)


def symmetric_scale(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """onnxruntime's symmetric INT8 scale for ranges [lo, hi] (element-wise, float32)."""
    lo = np.minimum(np.asarray(lo, np.float32), np.float32(0))
    hi = np.maximum(np.asarray(hi, np.float32), np.float32(0))
    absmax = np.maximum(np.abs(lo), np.abs(hi))
    scale = (absmax.astype(np.float64) - (-absmax).astype(np.float64)) / np.float64(QMAX - QMIN)
    return np.where(scale < _TINY, np.float64(1.0), scale).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale per channel along ``axis``) as quantize_static computes them."""
    w = np.asarray(w, np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = symmetric_scale(w.min(axis=other), w.max(axis=other))
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.round(w / scale.reshape(shape))
    np.clip(q, CLIP_MIN, CLIP_MAX, out=q)
    return q.astype(np.int8), scale


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul with a (K, N) weight: per output column (QDQOpTypePerChannelSupportToAxis)


def insert_qdq(
    model: onnx.ModelProto,
    nodes: Sequence[str],
    ranges: Mapping[str, tuple[Any, Any]],
) -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ on the inputs of ``nodes`` (see the module doc). ``ranges`` maps each
    activation input to its calibrated (min, max); a missing one is a ValueError naming the tensor."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    wanted = set(nodes)
    acts: dict[str, None] = {}
    weights: dict[str, int] = {}
    for n in g.node:
        if n.name not in wanted or n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        if n.op_type == "MatMul":  # each input: an initializer is a weight, anything else an activation
            for name in n.input[:2]:
                if name in inits:
                    weights.setdefault(name, _weight_axis(n))
                else:
                    acts.setdefault(name, None)
            continue
        acts.setdefault(n.input[0], None)
        if n.input[1] not in inits:
            raise ValueError(f"{n.op_type} {n.name}: its weight {n.input[1]!r} is not an initializer")
        weights.setdefault(n.input[1], _weight_axis(n))
    missing = [t for t in acts if t not in ranges]
    if missing:
        raise ValueError(f"no calibration range for {missing[0]!r} (input of a node to quantize)")

    outputs = {o.name for o in g.output}
    new_inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}  # tensor -> what its readers read now
    first: list[onnx.NodeProto] = []  # weight DQs, and the Q/DQ of graph inputs: before every node
    after: dict[str, list[onnx.NodeProto]] = {}  # producer output -> the Q/DQ that follow it
    produced = {o for n in g.node for o in n.output}
    for w, axis in weights.items():
        q, scale = quantize_weight(numpy_helper.to_array(inits[w]), axis)
        new_inits += [
            numpy_helper.from_array(q, f"{w}_quantized"),
            numpy_helper.from_array(scale, f"{w}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{w}_zero_point"),
        ]
        out = f"{w}_DequantizeLinear_Output"
        first.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"],
                [out],
                f"{w}_DequantizeLinear",
                axis=axis,
            )
        )
        rename[w] = out
    for t in acts:
        lo, hi = ranges[t]
        scale = symmetric_scale(np.min(lo), np.max(hi))
        new_inits += [
            numpy_helper.from_array(np.asarray(scale, np.float32).reshape(()), f"{t}_scale"),
            numpy_helper.from_array(np.zeros((), np.int8), f"{t}_zero_point"),
        ]
        q_in, dq_out = t, f"{t}_DequantizeLinear_Output"
        if t in outputs:  # quantize_static keeps a graph output's name on the DequantizeLinear output
            q_in, dq_out = f"{t}_QuantizeLinear_Input", t
        pair = [
            helper.make_node(
                "QuantizeLinear",
                [q_in, f"{t}_scale", f"{t}_zero_point"],
                [f"{t}_QuantizeLinear_Output"],
                f"{t}_QuantizeLinear",
            ),
            helper.make_node(
                "DequantizeLinear",
                [f"{t}_QuantizeLinear_Output", f"{t}_scale", f"{t}_zero_point"],
                [dq_out],
                f"{t}_DequantizeLinear",
            ),
        ]
        if t in outputs:
            for n in g.node:
                n.output[:] = [q_in if o == t else o for o in n.output]
            after.setdefault(q_in, []).extend(pair)
        else:
            rename[t] = dq_out
            if t in produced:
                after.setdefault(t, []).extend(pair)
            else:  # a graph input
                first.extend(pair)
    order: list[onnx.NodeProto] = list(first)
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        order.append(n)
        for o in n.output:
            order.extend(after.get(o, []))
    del g.node[:]
    g.node.extend(order)
    read = {i for n in g.node for i in n.input} | outputs
    keep = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    return m
