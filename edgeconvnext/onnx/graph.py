"""ONNX graph helpers shared by the quantizers and the TensorRT rules checker.

Input: an ``onnx.ModelProto`` (FP32 export or a Q/DQ model). Output: lookups the other modules need:
our module name for an ONNX node (``/stages/stages.0/blocks/blocks.0/mlp/fc1/MatMul`` ->
``stages.0.blocks.0.mlp.fc1``), producers/consumers of tensors, constant values, the output-channel axis
of a weight and the MACs of each Conv/MatMul/Gemm.

Usage::

    g = GraphIndex(model)
    macs = compute_macs(model)          # {node name: MACs at batch 1}
    layer_name(g.nodes[0])              # 'stem.0'
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # onnx is imported lazily: this module is imported by the CLI
    import onnx

# Ops that carry weights TensorRT can run in INT8 (explicit quantization): the "layers" of our reports.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Ops that only move data: TensorRT propagates Q/DQ through them, so a DQ before a Transpose still feeds
# the Conv after it (NNCF puts the downsample conv's Q/DQ before the NHWC->NCHW Transpose).
TRANSPARENT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _scopes_from_metadata(node: onnx.NodeProto) -> str | None:
    """Module path recorded by the dynamo exporter (``pkg.torch.onnx.name_scopes``), if present."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            # ['', 'stages', 'stages.2', ..., 'stages.2.blocks.0.mlp.fc1', 'linear_4']: the last is the aten op
            if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2])
    return None


def layer_name(node: onnx.NodeProto) -> str:
    """Our module name (timm state-dict prefix) for an exported node, else the node's own name.

    TorchScript names a node by its module scopes: ``/stages/stages.0/blocks/blocks.0/mlp/fc1/MatMul``;
    each child scope repeats its parent's name plus ``.index``, so collapsing those gives
    ``stages.0.blocks.0.mlp.fc1``. The dynamo exporter records the scopes in node metadata instead.
    """
    from_meta = _scopes_from_metadata(node)
    if from_meta:
        return from_meta
    name = node.name
    if not name.startswith("/"):
        return name
    parts = [p for p in name.split("/") if p][:-1]  # drop the op ("MatMul", "Conv_1")
    out: list[str] = []
    for p in parts:
        if out and p.startswith(out[-1] + "."):
            out[-1] = p  # "stages" then "stages.0" -> "stages.0"
        else:
            out.append(p)
    return ".".join(out) if out else name


class GraphIndex:
    """Producers, consumers and constant values of one graph (the main graph; no subgraphs)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self._numpy_helper = numpy_helper
        self._cache: dict[str, np.ndarray] = {}
        self.graph_inputs = {i.name for i in model.graph.input} - set(self.initializers)
        self.graph_outputs = {o.name for o in model.graph.output}

    def is_const(self, name: str) -> bool:
        if name in self.initializers:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def const(self, name: str, cache: bool = True) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None; kept for the next call unless ``cache``
        is False (a large weight read once)."""
        if name in self._cache:
            return self._cache[name]
        arr: np.ndarray | None = None
        if name in self.initializers:
            arr = self._numpy_helper.to_array(self.initializers[name])
        else:
            p = self.producer.get(name)
            if p is not None and p.op_type == "Constant":
                for a in p.attribute:
                    if a.name == "value":
                        arr = self._numpy_helper.to_array(a.t)
        if arr is not None and cache:
            self._cache[name] = arr
        return arr

    def const_dtype(self, name: str) -> int | None:
        """ONNX TensorProto data type of a constant, without reading its data."""
        if name in self.initializers:
            return self.initializers[name].data_type
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return a.t.data_type
        return None

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        v = self.const(name)
        return None if v is None else tuple(v.shape)

    def trace_back(self, name: str, through: Iterable[str] = TRANSPARENT_OPS) -> tuple[str, onnx.NodeProto | None]:
        """Follow ``name`` up through data-movement ops; returns (tensor, its producer or None)."""
        through = set(through)
        seen = set()
        while name not in seen:
            seen.add(name)
            p = self.producer.get(name)
            if p is None or p.op_type not in through or not p.input:
                return name, p
            name = p.input[0]
        return name, self.producer.get(name)


def attr(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's value (int, float, string, ints...) or ``default``."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def output_channel_axis(node: onnx.NodeProto, weight_rank: int) -> int:
    """Axis of a layer's weight that indexes its output channels (where per-channel scales belong).

    Conv (O, I/g, kh, kw): 0. ConvTranspose (I, O/g, kh, kw): 1. MatMul with a (K, N) weight, as
    TorchScript exports nn.Linear: the last axis (1). Gemm: 0 when transB=1 (PyTorch's (out, in)), else 1.
    """
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if op == "MatMul":
        return weight_rank - 1
    raise ValueError(f"{op} has no weight axis")


def weight_tensor(g: GraphIndex, node: onnx.NodeProto) -> tuple[str | None, tuple[int, ...] | None]:
    """(initializer name, shape) of a layer's weight, looking through DequantizeLinear/QuantizeLinear."""
    if len(node.input) < 2:
        return None, None
    name, _ = g.trace_back(node.input[1], through=set(TRANSPARENT_OPS) | set(QDQ_OPS))
    if g.is_const(name):
        return name, g.const_shape(name)
    return None, None


#: initializers above this many elements reach shape inference as graph inputs of their type and shape (their
#: values are never read for shapes; small ones, such as a Reshape's target shape, can be and stay)
_SHAPE_ONLY_ELEMENTS = 1024


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model for shape inference: ``model``'s graph with batch 1 where an input's batch is symbolic, and every
    large initializer replaced by a graph input of its type and shape. Shape inference serialises what it is
    given: with convnextv2_nano's 60 MB of weights that was 0.1-0.2 s a call, for values it does not read."""
    import onnx
    from onnx import helper

    g = model.graph
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    out = m.graph
    out.name = g.name
    out.node.extend(g.node)
    out.output.extend(g.output)
    out.value_info.extend(g.value_info)
    inits = {t.name for t in g.initializer}
    shape_only: set[str] = set()
    for t in g.initializer:
        if int(np.prod(t.dims)) > _SHAPE_ONLY_ELEMENTS:
            shape_only.add(t.name)
            out.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            out.initializer.append(t)
    for inp in g.input:
        if inp.name in shape_only:  # an initializer listed as an input too (IR < 4): added above
            continue
        c = out.input.add()
        c.CopyFrom(inp)
        if inp.name in inits or not c.type.HasField("tensor_type"):
            continue
        dims = c.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i == 0 and not d.HasField("dim_value"):
                d.ClearField("dim_param")
                d.dim_value = 1
    return m


def compute_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates of each Conv/ConvTranspose/MatMul/Gemm node at batch 1 (by node name).

    Nodes whose shapes cannot be inferred (dynamic spatial size) are left out.
    """
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model))
    except Exception:  # noqa: BLE001 - MACs are informative; a graph shape inference cannot handle has none
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    g = GraphIndex(model)
    macs: dict[str, int] = {}
    for n in g.nodes:
        if n.op_type not in COMPUTE_OPS:
            continue
        _, w = weight_tensor(g, n)
        out = shapes.get(n.output[0])
        if w is None or out is None:
            continue
        n_out = int(np.prod(out))
        if n.op_type == "Conv":
            macs[n.name] = n_out * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            x = shapes.get(n.input[0])
            if x is not None:
                macs[n.name] = int(np.prod(x)) * int(np.prod(w[1:]))
        elif n.op_type == "MatMul":
            macs[n.name] = n_out * (w[-2] if len(w) >= 2 else 1)
        else:  # Gemm
            macs[n.name] = n_out * (w[1] if attr(n, "transB", 0) else w[0])
    return macs


def block_pattern(layer: str) -> str:
    """``stages.2.blocks.5.mlp.fc1`` -> ``stages.2.blocks.*.mlp.fc1``: the key repeated blocks share."""
    parts = layer.split(".")
    for i in range(len(parts) - 1):
        if parts[i] == "blocks" and parts[i + 1].isdigit():
            parts[i + 1] = "*"
    return ".".join(parts)


def compress_rows(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("op", "precision")) -> list[dict[str, Any]]:
    """Merge rows of repeated blocks (same block pattern and same ``keys``) into one row with a count.

    Each row needs ``layer`` and may carry ``macs``; merged rows get ``layer`` = the pattern, ``count`` and
    the summed ``macs``. Order: first appearance in the graph.
    """
    merged: dict[tuple, dict] = {}
    for r in rows:
        pat = block_pattern(r["layer"])
        key = (pat,) + tuple(r.get(k) for k in keys)
        if key not in merged:
            merged[key] = {**r, "layer": pat, "count": 0, "macs": 0 if r.get("macs") is not None else None}
        m = merged[key]
        m["count"] += 1
        if m["macs"] is not None and r.get("macs") is not None:
            m["macs"] += r["macs"]
        elif r.get("macs") is None:
            m["macs"] = None
    return list(merged.values())
