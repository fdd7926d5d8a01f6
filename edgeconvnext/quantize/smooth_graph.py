"""The smoothing fold of quantize/smooth.py applied to the exported FP32 ONNX graph, with its statistics from the
calibration pass itself (issue 11: one onnxruntime pass instead of a torch forward, a smoothed export, then
calibration).

Why it is exact: smoothing divides a LayerNorm's scale and bias by ``s_c`` and multiplies the next layer's input
channel ``c`` by ``s_c``. The smoothed next-layer input is the unsmoothed LayerNorm output divided by ``s_c``
channel by channel, and no other calibrated tensor changes (the next layer computes the same function). So a
pass over the *unsmoothed* graph that collects the per-channel min and max of every pair's LayerNorm output
gives both the statistics ``s`` is computed from (``absmax_c = max(|lo_c|, |hi_c|)``, what
:func:`~edgeconvnext.quantize.smooth.channel_absmax` measures in torch) and, once ``s`` is known, the smoothed
input's range: ``lo = min_c(lo_c / s_c)``, ``hi = max_c(hi_c / s_c)`` (``s_c > 0``), the values a second pass
over the smoothed graph would collect (tests/test_smooth_graph.py).

Input: the FP32 graph the torch model was exported to (TorchScript node names, see onnx/graph.layer_name) and the
torch model (its fold pairs, and its weights for ``s`` through :func:`~edgeconvnext.quantize.smooth.plan_scales`).
Output of :meth:`GraphSmoothing.apply`: the folded graph (LayerNormalization scale and bias divided by ``s``; the
next layer's weight multiplied along its input-channel axis: MatMul (C_in, C_out) axis 0, Conv (C_out, C_in, kh,
kw) axis 1, Gemm axis 1 with transB else 0), the derived ranges and the
:class:`~edgeconvnext.quantize.smooth.SmoothReport`. The folded values are those of exporting the torch model
smoothed with the same ``s`` (the same float32 operations on the same numbers).

The graph pattern of a pair (anything else: :func:`match` returns None and quantize takes the torch route):
a ``LayerNormalization`` over the last axis named by the pair's norm, whose output only the pair's layer reads
(MatMul or Gemm, as its first input) or only a Transpose ``[0, 3, 1, 2]`` (NHWC -> NCHW) does whose output only
the pair's Conv (group 1) reads; float32 scale, bias and weight initializers (copied under a new name when
another node reads them too).

Usage::

    fold = match(fp32_model, loaded.model)          # None: not the graph pattern
    fold.channels                                     # {LayerNorm output: channels}: per-channel min/max wanted
    folded, ranges = fold.apply(stats, images=512)    # stats: collect_minmax's, per tensor and per channel
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconvnext.quantize.smooth import DEFAULT_ALPHA, SmoothReport, fold_pairs, plan_scales

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from edgeconvnext.onnx.graph import GraphIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphPair:
    """One fold pair located in the graph."""

    norm: str  # module names (smooth.FoldPair)
    layer: str
    ln_node: str
    layer_node: str
    stats: str  # the LayerNorm output: per-channel min/max collected on it (channels last)
    act: str  # the layer's activation input: ``stats`` itself, or the Transpose's output
    scale: str  # LayerNorm scale and bias initializers
    bias: str | None
    weight: str  # the layer's weight initializer and its input-channel axis
    axis: int
    channels: int


class GraphSmoothing:
    """The fold of every pair of a torch model into its exported graph, from per-channel ranges of one pass."""

    def __init__(self, model: onnx.ModelProto, torch_model: nn.Module, pairs: list[GraphPair], alpha: float) -> None:
        self.model = model
        self.torch_model = torch_model
        self.pairs = pairs
        self.alpha = alpha
        self.folded: onnx.ModelProto | None = None  # set by apply()
        self.report: SmoothReport | None = None

    @property
    def channels(self) -> dict[str, int]:
        """Tensors whose per-channel (last axis) min and max the calibration pass collects, and their channels."""
        return {p.stats: p.channels for p in self.pairs}

    @property
    def derived(self) -> set[str]:
        """Activation tensors whose range :meth:`apply` returns (the pass need not reduce them per tensor)."""
        return {p.act for p in self.pairs}

    def apply(
        self, stats: Mapping[str, tuple[np.ndarray, np.ndarray]], images: int
    ) -> tuple[onnx.ModelProto, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """The folded graph and the smoothed ranges of :attr:`derived`, from ``stats`` (per-channel (lo, hi) of
        every tensor in :attr:`channels`) over ``images`` calibration images; also kept as :attr:`folded`
        and :attr:`report`."""
        import torch

        absmax = {}
        for p in self.pairs:
            lo, hi = (np.asarray(v, np.float32) for v in stats[p.stats])
            absmax[p.norm] = torch.from_numpy(np.maximum(np.abs(lo), np.abs(hi)))
        scales, report = plan_scales(self.torch_model, absmax, self.alpha)
        report.statistics = f"calibration images ({images}), from the calibration session"
        s_np = {norm: s.numpy().astype(np.float32) for norm, s in scales.items()}
        ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for p in self.pairs:
            lo, hi = (np.asarray(v, np.float32) for v in stats[p.stats])
            s = s_np[p.norm]
            ranges[p.act] = (np.min(lo / s).reshape(1), np.max(hi / s).reshape(1))
        self.folded = fold_graph(self.model, self.pairs, s_np)
        self.report = report
        log.info("smoothing: %s", report.summary())
        return self.folded, ranges


def _float_init(inits: Mapping[str, onnx.TensorProto], name: str) -> onnx.TensorProto | None:
    from onnx import TensorProto

    t = inits.get(name)
    return t if t is not None and t.data_type == TensorProto.FLOAT else None


def _locate(
    g: GraphIndex, lns_by_name: Mapping[str, list[Any]], norm: str, layer: str, channels: int
) -> GraphPair | str:
    """The pair in the graph, or why it is not the expected pattern."""
    from edgeconvnext.onnx.graph import attr, layer_name

    lns = lns_by_name.get(norm, [])
    if len(lns) != 1:
        return f"{len(lns)} LayerNormalization nodes for {norm}"
    ln = lns[0]
    scale = _float_init(g.initializers, ln.input[1]) if len(ln.input) > 1 else None
    bias_name = ln.input[2] if len(ln.input) > 2 and ln.input[2] else None
    if scale is None or list(scale.dims) != [channels]:
        return f"{norm}: scale is not a float ({channels},) initializer"
    if bias_name is not None and (b := _float_init(g.initializers, bias_name)) is not None:
        if list(b.dims) != [channels]:
            return f"{norm}: bias is not a float ({channels},) initializer"
    elif bias_name is not None:
        return f"{norm}: bias is not a float initializer"
    if attr(ln, "axis", -1) != -1:
        return f"{norm}: normalises axis {attr(ln, 'axis', -1)}, not the last"
    out = ln.output[0]

    def only_reader(t: str) -> Any:
        readers = g.consumers.get(t, [])
        return readers[0] if len(readers) == 1 and t not in g.graph_outputs else None

    c = only_reader(out)
    act = out
    if c is not None and c.op_type == "Transpose":
        if list(attr(c, "perm", [])) != [0, 3, 1, 2]:
            return f"{norm}: Transpose {list(attr(c, 'perm', []))} after the LayerNorm"
        act = c.output[0]
        c = only_reader(act)
        if c is not None and (c.op_type != "Conv" or attr(c, "group", 1) != 1):
            return f"{norm}: the Transpose feeds {c.op_type}, not a group-1 Conv"
    elif c is not None and c.op_type not in ("MatMul", "Gemm"):
        return f"{norm}: its output feeds {c.op_type}"
    if c is None:
        return f"{norm}: its output is read by more than one node (or is a graph output)"
    if layer_name(c) != layer or c.input[0] != act:
        return f"{norm}: feeds {layer_name(c)}, not {layer}'s activation input"
    w = _float_init(g.initializers, c.input[1]) if len(c.input) > 1 else None
    if w is None:
        return f"{layer}: its weight is not a float initializer"
    if c.op_type == "Conv":
        axis = 1
    elif c.op_type == "Gemm":
        if attr(c, "transA", 0):
            return f"{layer}: Gemm with transA"
        axis = 1 if attr(c, "transB", 0) else 0
    else:
        axis = 0  # x (.., C_in) @ W (C_in, C_out)
    if len(w.dims) <= axis or w.dims[axis] != channels or (c.op_type == "MatMul" and len(w.dims) != 2):
        return f"{layer}: weight {list(w.dims)} has no {channels} input channels on axis {axis}"
    return GraphPair(norm, layer, ln.name, c.name, out, act, scale.name, bias_name, w.name, axis, channels)


def match(model: onnx.ModelProto, torch_model: nn.Module, alpha: float = DEFAULT_ALPHA) -> GraphSmoothing | None:
    """The fold of ``torch_model``'s pairs (smooth.fold_pairs) into ``model``, its export; None (logged) when a
    pair is not the graph pattern of the module doc."""
    from edgeconvnext.onnx.graph import GraphIndex, layer_name

    g = GraphIndex(model)
    lns: dict[str, list[Any]] = {}
    for n in g.nodes:
        if n.op_type == "LayerNormalization":
            lns.setdefault(layer_name(n), []).append(n)
    pairs: list[GraphPair] = []
    for fp in fold_pairs(torch_model):
        found = _locate(g, lns, fp.norm, fp.layer, int(fp.norm_module.weight.numel()))
        if isinstance(found, str):
            log.info("smoothing in the calibration pass is not possible (%s): statistics from a torch pass", found)
            return None
        pairs.append(found)
    return GraphSmoothing(model, torch_model, pairs, alpha)


def fold_graph(model: onnx.ModelProto, pairs: list[GraphPair], scales: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with every pair's ``scales[norm]`` (float32, per channel) folded in (module doc).
    An initializer another node reads too is copied under a new name first, so only this pair's node sees it."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes = {n.name: n for n in g.node}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1

    def rewrite(node: onnx.NodeProto, idx: int, fn: Any) -> None:
        name = node.input[idx]
        arr = fn(numpy_helper.to_array(inits[name]).astype(np.float32, copy=False))
        if readers[name] > 1:  # shared: this node gets its own copy
            new = f"{name}_smoothed_{node.name}"
            t = numpy_helper.from_array(arr.astype(np.float32), new)
            g.initializer.append(t)
            inits[new] = t
            readers[name] -= 1
            readers[new] = 1
            node.input[idx] = new
        else:
            inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))

    for p in pairs:
        s = np.asarray(scales[p.norm], np.float32)
        ln, layer = nodes[p.ln_node], nodes[p.layer_node]
        rewrite(ln, 1, lambda a, s=s: a / s)
        if p.bias is not None:
            rewrite(ln, 2, lambda a, s=s: a / s)
        shape = [1] * len(inits[layer.input[1]].dims)
        shape[p.axis] = -1
        rewrite(layer, 1, lambda a, s=s, shape=shape: a * s.reshape(shape))
    return m
