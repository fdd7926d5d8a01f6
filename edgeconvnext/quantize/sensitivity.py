"""Per-layer sensitivity of an INT8 Q/DQ model: which layer groups cost the accuracy, measured on labelled (or
unlabelled) validation images. Three small pieces, as ModelOpt's sensitivity/{score,picker,metrics} and NNCF's
accuracy_control/{evaluator,ranker}:

- :class:`Evaluator`: runs ONNX models on the validation images against FP32 logits computed **once**, and
  counts its own cost in FP32-forward-passes over the set (issue 11: sensitivity + budget search must cost at
  most groups x subset fraction + 3);
- :func:`revert`: an all-INT8 model with some layers' Q/DQ dropped (weights back to FP32, activations
  un-quantized): the calibration scales of every other layer are the all-INT8 model's, never recomputed;
- :func:`rank`: each group scored on a ranking subset (the images where FP32 and all-INT8 disagree most, by
  KL), sorted by harm. Two modes, both built from the one all-INT8 model by dropping Q/DQ:

  - ``isolate`` (default): the group alone in INT8 (every other group reverted); harm = the top-1 points
    (agreement points without labels) it loses on its own, then its KL;
  - ``revert``: the group alone reverted from all-INT8; harm = the points reverting it buys back, then the
    KL reduction.

Why ``isolate`` by default: errors of outlier layers compound. On the tiny 200x outlier model of the tests,
each downsample conv alone in INT8 drops top-1 from 100% to 20-28% and each fc2 alone costs nothing, but
with all of them INT8 reverting any single downsample conv buys back almost nothing (the other two still
break the model), so ``revert`` scores every group near 0 and the greedy budget search then keeps the
harmless fc2s in higher precision first. ``revert`` answers "what does this layer cost in the model we ship"
when errors are small and additive; choose it with ``--mode revert``.

Cost: the group variants are scored together, several to one onnxruntime session (:func:`combine`: the variants
side by side in one graph, their initializers shared, and every node they have in common there once, so the part
before each variant's first difference is computed once: in ``isolate`` the FP32 prefix up to the group's layer,
in ``revert`` the all-INT8 one up to the reverted layer). onnxruntime's own common-subexpression elimination did
the first (not the second: it merges no DequantizeLinear, nor anything below one) but only after parsing the whole
graph: built already merged, the 27-group benchmark case's ``isolate`` graph has 4,601 nodes instead of 9,666
and ranks in 4.1-4.5 s instead of 6.8-7.2 (41 groups, policy all: 6.8-7.2 instead of 17.9-18.8), logits equal bit
for bit. The variants are :class:`Reverter` calls on one index of the graphs (each weight compared once). Cutting
the graphs at their residual stream instead, so that a shared prefix (``revert``) or the variants' common FP32
suffix (``isolate``, batched over the variants) runs once per segment, gave the same scores at the same cost or
more: small sessions cost what one merged session of the same nodes does (RESULTS.md, thirteenth and fourteenth
passes), so it is not done.
How many variants share a session is bounded by an activation-memory estimate (:func:`variants_per_session`),
so large inputs fall back to fewer. Every session computes INT8 ``emulated`` (:data:`INT8_MATH`,
:mod:`edgeconvnext.onnx.session`): the Q/DQ arithmetic as written, TensorRT's up to float rounding, rather than
onnxruntime's fused int8 CPU kernels (they saturate without VNNI; on policy-all models at 32 px they cost 3.1-3.4x
an FP32 pass per image, on a VNNI Xeon and an AVX2 EPYC, the emulation 1.2x: ``revert`` on 41 groups 29.8 -> 12.5
CPU passes).

Top-1 and agreement are estimated on the whole set: images outside the ranking subset keep the prediction of
the reference (FP32 for ``isolate``, all-INT8 for ``revert``: those images agree with FP32 and have the
smallest KL); KL and cosine are on the subset.

Usage::

    ev = Evaluator(fp32_bytes, images, labels)
    groups = groups_of(placement)
    scores = rank(ev, q_model, fp32_model, groups, ev.subset(base_logits), base_logits)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgeconvnext import __version__

# images the ranking subset holds by default (NNCF's accuracy control ranks on 300)
from edgeconvnext.quantize.config import DEFAULT_SUBSET

if TYPE_CHECKING:
    import onnx

    from edgeconvnext.quantize.policy import Placement

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: how the Evaluator's sessions compute Q/DQ (edgeconvnext.onnx.session): as written, in float
INT8_MATH = "emulated"
#: what the reports name as their maker (artifacts.written_by_us recognises it)
TOOL = f"edgeconvnext {__version__}"
BATCH = 100


@dataclass
class Metrics:
    """One model vs FP32 on the whole set (``n`` images); ``top1`` None without labels."""

    n: int
    top1: float | None  # %
    agreement: float  # % top-1 agreement with FP32
    kl: float  # mean KL(FP32 || model) over the images it was measured on
    cos_min: float
    cos_mean: float
    measured_on: int  # images actually run (the subset for estimates)

    def drop(self, fp32: Metrics) -> float | None:
        return None if self.top1 is None or fp32.top1 is None else fp32.top1 - self.top1

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _softmax_log(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def kl_rows(fp: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(softmax(fp) || softmax(q)) per row."""
    lp, lq = _softmax_log(fp.astype(np.float64)), _softmax_log(q.astype(np.float64))
    return (np.exp(lp) * (lp - lq)).sum(1)


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _finite(logits: np.ndarray) -> np.ndarray:
    """``logits`` with NaN/inf replaced (a warning says so): a broken quantized variant scores as harmful, never
    crashes the ranking."""
    if np.isfinite(logits).all():
        return logits
    log.warning("non-finite logits from a quantized model")
    return np.nan_to_num(logits, nan=0.0, posinf=1e30, neginf=-1e30)


class Evaluator:
    """Validation images, their FP32 logits (computed once), and a cost meter.

    ``cost_passes``: seconds spent running models here (the FP32 pass, session creation and building the
    variants' graphs included: :meth:`run_variants`, :meth:`build`) divided by
    the seconds of the one FP32 pass over the whole set; ``cpu_passes``: the same in process CPU seconds (steadier
    than wall time on a shared machine); ``image_passes``: images run / set size.
    """

    def __init__(self, fp32: bytes, images: np.ndarray, labels: np.ndarray | None, batch: int = BATCH) -> None:
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.batch = batch
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.images_run = 0
        t0, c0 = time.perf_counter(), time.process_time()
        self.fp32_logits = self.run(fp32)
        self.fp32_pass_s = time.perf_counter() - t0
        self.fp32_pass_cpu_s = time.process_time() - c0
        pred = self.fp32_logits.argmax(1)
        self.fp32_correct = None if self.labels is None else pred == self.labels
        self.fp32 = Metrics(
            len(images),
            None if self.fp32_correct is None else 100.0 * float(self.fp32_correct.mean()),
            100.0,
            0.0,
            1.0,
            1.0,
            len(images),
        )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def build(self, make: Callable[..., _T], *args: Any) -> _T:
        """``make(*args)`` (a graph to run, e.g. a :class:`Reverter` call), its time counted in the cost."""
        t0, c0 = time.perf_counter(), time.process_time()
        m = make(*args)
        self._count(t0, c0, 0)
        return m

    def session(self, model: bytes | onnx.ModelProto) -> Any:
        """An onnxruntime CPU session for ``model`` (its creation counted in the cost), to run more than once.
        INT8 is ``emulated`` (:mod:`edgeconvnext.onnx.session`): the graph's arithmetic as TensorRT computes it,
        not the CPU kernels' (which saturate on CPUs without VNNI), and at 32 px 2.5x cheaper."""
        from edgeconvnext.onnx.session import cpu_session

        t0, c0 = time.perf_counter(), time.process_time()
        sess = cpu_session(model, int8=INT8_MATH)
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        return sess

    def run_variants(
        self,
        models: Iterable[onnx.ModelProto],
        count: int,
        idx: np.ndarray,
        batch: int | None = None,
    ) -> list[np.ndarray]:
        """Logits of each of the ``count`` ``models`` (variants of one graph) on ``idx``, from one session over
        :func:`combine` of them; counted as ``count`` runs of ``idx`` in the image-passes."""
        combined = self.build(combine, models)  # building the variants (a generator) and their graph: counted
        if len(combined.graph.output) != count:
            raise ValueError(f"{len(combined.graph.output)} variants combined, {count} expected")
        name = combined.graph.input[0].name
        sess = self.session(combined)
        del combined
        t0, c0 = time.perf_counter(), time.process_time()
        x = self.images[np.asarray(idx)]
        b = batch or self.batch
        outs = [sess.run(None, {name: np.ascontiguousarray(x[i : i + b])}) for i in range(0, len(x), b)]
        logits = [np.concatenate([o[k] for o in outs]) for k in range(count)]
        self._count(t0, c0, len(x) * count)
        return [_finite(z) for z in logits]

    def _count(self, t0: float, c0: float, images: int) -> None:
        """Add a run that started at ``t0`` / ``c0`` (perf_counter / process_time) over ``images`` to the meter."""
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        self.images_run += images

    def run(
        self, model: Any, idx: np.ndarray | None = None, known: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """Logits of ``model`` (ONNX bytes, a ModelProto, or a :meth:`session`) on all images, or on ``idx``.
        ``known`` = (indices, their logits from this same model) are not run again."""
        import onnxruntime as ort

        sess = model if isinstance(model, ort.InferenceSession) else self.session(model)
        t0, c0 = time.perf_counter(), time.process_time()
        run_idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        if known is not None:
            run_idx = np.setdiff1d(run_idx, known[0])
        x = self.images[run_idx] if (idx is not None or known is not None) else self.images
        out = [
            sess.run(None, {"input": np.ascontiguousarray(x[i : i + self.batch])})[0]
            for i in range(0, len(x), self.batch)
        ]
        logits = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
        if known is not None:
            full = np.empty((len(self), logits.shape[1] if len(logits) else known[1].shape[1]), np.float32)
            full[run_idx] = logits
            full[known[0]] = known[1]
            logits = full if idx is None else full[np.asarray(idx)]
        self._count(t0, c0, len(x))
        return _finite(logits)

    def metrics(self, logits: np.ndarray, idx: np.ndarray | None = None, base: np.ndarray | None = None) -> Metrics:
        """Metrics of ``logits`` measured on ``idx`` (all images when None). With ``idx``, ``base`` (the
        all-INT8 model's logits on every image) stands in for the images outside ``idx``."""
        fp = self.fp32_logits if idx is None else self.fp32_logits[idx]
        pred = logits.argmax(1)
        if idx is None:
            full_pred = pred
        else:
            if base is None:
                raise ValueError("an estimate on a subset needs the base model's logits on every image")
            full_pred = base.argmax(1).copy()
            full_pred[idx] = pred
        agree = 100.0 * float((full_pred == self.fp32_logits.argmax(1)).mean())
        top1 = None if self.labels is None else 100.0 * float((full_pred == self.labels).mean())
        cos = cos_rows(fp, logits)
        return Metrics(
            len(self), top1, agree, float(kl_rows(fp, logits).mean()), float(cos.min()), float(cos.mean()), len(fp)
        )

    def lost(self, pred: np.ndarray, idx: np.ndarray | None = None, agreement: bool = False) -> int:
        """Images (of ``idx``) a model with predictions ``pred`` gets wrong where FP32 gets them right, minus the
        reverse (top-1 with labels: the drop in images); without labels, the images disagreeing with FP32."""
        ref = self.fp32_logits.argmax(1) if idx is None else self.fp32_logits[idx].argmax(1)
        if self.labels is None or agreement:
            return int((pred != ref).sum())
        y = self.labels if idx is None else self.labels[idx]
        return int((ref == y).sum()) - int((pred == y).sum())

    def lost_within(
        self, sess: Any, order: np.ndarray, over: Callable[[int], bool], agreement: bool = False, batch: int = 50
    ) -> tuple[np.ndarray | None, int, int]:
        """Run ``sess`` on the images ``order`` (see :meth:`estimate_order`) batch by batch, and stop as soon as
        ``over`` (nondecreasing: a loss of that many images is over budget) holds for the fewest images it can
        lose on ``order`` (:meth:`lost`) whatever the rest give: an image can lower the count only where FP32 is
        wrong (top-1), never without labels. Returns (the logits on ``order``, or None when stopped; the images
        lost, or that lower bound when stopped; images run)."""
        import onnxruntime as ort

        sess = sess if isinstance(sess, ort.InferenceSession) else self.session(sess)
        order = np.asarray(order)
        ref = self.fp32_logits[order].argmax(1)
        top1 = self.labels is not None and not agreement
        can_gain = (ref != self.labels[order]) if (top1 and self.labels is not None) else np.zeros(len(order), bool)
        gain_left = np.cumsum(can_gain[::-1])[::-1]  # images from position i on that could lower the count
        outs: list[np.ndarray] = []
        done, lost = 0, 0
        while done < len(order):
            idx = order[done : done + batch]
            z = self.run(sess, idx)
            outs.append(z)
            lost += self.lost(z.argmax(1), idx, agreement)
            done += len(idx)
            bound = lost - (int(gain_left[done]) if done < len(order) else 0)
            if done < len(order) and over(bound):
                return None, bound, done
        return (np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)), lost, done

    def estimate_order(self, idx: np.ndarray, base_logits: np.ndarray, agreement: bool = False) -> np.ndarray:
        """``idx`` ordered for :meth:`lost_within`: with labels, the images FP32 gets wrong first (only they can
        lower the count, so after them it can only grow), then by KL(FP32 || base) down (the likeliest losses)."""
        idx = np.asarray(idx)
        kl = kl_rows(self.fp32_logits[idx], base_logits[idx])
        wrong = (
            (self.fp32_logits[idx].argmax(1) != self.labels[idx])
            if (self.labels is not None and not agreement)
            else np.zeros(len(idx), bool)
        )
        return idx[np.lexsort((-kl, ~wrong))]

    def subset(self, base_logits: np.ndarray, size: int = DEFAULT_SUBSET) -> np.ndarray:
        """The ``size`` images where ``base_logits`` differ most from FP32 (KL), sorted by index."""
        size = max(1, min(size, len(self)))
        kl = kl_rows(self.fp32_logits, base_logits)
        return np.sort(np.argsort(-kl, kind="stable")[:size])

    @property
    def cost_passes(self) -> float:
        return self.seconds / self.fp32_pass_s if self.fp32_pass_s > 0 else float("nan")

    @property
    def cpu_passes(self) -> float:
        return self.cpu_seconds / self.fp32_pass_cpu_s if self.fp32_pass_cpu_s > 0 else float("nan")

    @property
    def image_passes(self) -> float:
        return self.images_run / max(1, len(self))

    def cost(self) -> dict[str, float]:
        return {
            "fp32_pass_s": round(self.fp32_pass_s, 3),
            "seconds": round(self.seconds, 3),
            "fp32_passes": round(self.cost_passes, 2),
            "fp32_pass_cpu_s": round(self.fp32_pass_cpu_s, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_fp32_passes": round(self.cpu_passes, 2),
            "image_passes": round(self.image_passes, 2),
        }


# --- reverting layers in a Q/DQ graph ------------------------------------------------------------------


def _dq_source(g: Any, tensor: str) -> tuple[Any, Any]:
    """(DequantizeLinear, QuantizeLinear or None) feeding ``tensor``, or (None, None)."""
    dq = g.producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None, None
    q = g.producer.get(dq.input[0])
    return dq, (q if q is not None and q.op_type == "QuantizeLinear" else None)


def revert(q_model: onnx.ModelProto, fp32_model: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``q_model`` with the Q/DQ feeding ``nodes`` (Conv/MatMul/Gemm names) removed.

    Activations: the node reads the QuantizeLinear's float input again. Weights: the FP32 model's initializer
    when the INT8 weight is a quantization of it, else the dequantized value (a backend that rescaled the
    weight, e.g. NNCF's SmoothQuant, keeps its rescaling and the matching Mul); a float weight behind a
    QuantizeLinear is used as it is. Dangling Q/DQ nodes and initializers are pruned. To revert many sets of
    the same model, use one :class:`Reverter` (it indexes the graphs and checks each weight once).
    """
    return Reverter(q_model, fp32_model)(nodes)


class Reverter:
    """:func:`revert` for many node sets of one ``q_model``: the two graphs are indexed once and each node's
    edits (the float input it reads again, the weight it gets back) are worked out once, on first use."""

    def __init__(self, q_model: onnx.ModelProto, fp32_model: onnx.ModelProto) -> None:
        import onnx

        from edgeconvnext.onnx.graph import GraphIndex

        self.q_model = q_model
        self.fp32_model = fp32_model
        self._g = GraphIndex(q_model)
        self._skeleton = onnx.ModelProto()  # q_model without its initializers: each variant adds those it reads
        self._skeleton.CopyFrom(q_model)
        del self._skeleton.graph.initializer[:]
        self._fg = GraphIndex(fp32_model)
        self._fp_nodes = {n.name: n for n in fp32_model.graph.node}
        self._at: dict[str, list[int]] = {}  # node name -> its positions in the graph
        for k, n in enumerate(self._g.nodes):
            self._at.setdefault(n.name, []).append(k)
        self._pos = {id(n): k for k, n in enumerate(self._g.nodes)}
        # node position -> (its input edits {input: tensor}, other nodes' edits {position: {old: new}}, the weights
        # it reads instead {name: tensor}: the FP32 model's own initializer, renamed when copied, where it can)
        self._plans: dict[int, tuple[dict[int, str], dict[int, dict[str, str]], dict[str, onnx.TensorProto]]] = {}

    def __call__(self, nodes: Sequence[str]) -> onnx.ModelProto:
        import onnx

        wanted = set(nodes)
        missing = wanted - self._at.keys()
        if missing:
            raise ValueError(f"no node {sorted(missing)[0]!r} in the quantized model")
        own: dict[int, dict[int, str]] = {}
        other: dict[int, dict[str, str]] = {}
        weights: dict[str, onnx.TensorProto] = {}
        for name in wanted:
            for k in self._at[name]:
                mine, theirs, new = self._plan(k)
                if mine:
                    own[k] = mine
                for c, edits in theirs.items():
                    other.setdefault(c, {}).update(edits)
                weights.update(new)
        m = onnx.ModelProto()
        m.CopyFrom(self._skeleton)
        for k, node in enumerate(m.graph.node):
            rewire = other.get(k)
            if rewire:
                node.input[:] = [rewire.get(x, x) for x in node.input]
            for i, x in own.get(k, {}).items():
                node.input[i] = x
        needed = _prune_nodes(m)
        m.graph.initializer.extend(t for t in self.q_model.graph.initializer if t.name in needed)
        for name in sorted(weights):
            if name in needed:
                t = m.graph.initializer.add()
                t.CopyFrom(weights[name])
                t.name = name
        return m

    def _plan(self, k: int) -> tuple[dict[int, str], dict[int, dict[str, str]], dict[str, onnx.TensorProto]]:
        plan = self._plans.get(k)
        if plan is not None:
            return plan
        import onnx
        from onnx import numpy_helper

        g = self._g
        node = g.nodes[k]
        name = node.name
        mine: dict[int, str] = {}
        theirs: dict[int, dict[str, str]] = {}
        new: dict[str, onnx.TensorProto] = {}
        for i, x in enumerate(node.input):
            dq, q = _dq_source(g, x)
            if dq is None and i == 0:
                # NNCF puts the downsample conv's activation Q/DQ before the NHWC -> NCHW Transpose
                traced, producer = g.trace_back(x)
                if producer is not None and producer.op_type == "DequantizeLinear":
                    dq, q = _dq_source(g, traced)
                    if q is not None and not g.is_const(q.input[0]):
                        for c in g.consumers.get(dq.output[0], []):
                            theirs.setdefault(self._pos[id(c)], {})[dq.output[0]] = q.input[0]
                    continue
            if dq is None:
                continue
            src = q.input[0] if q is not None else dq.input[0]
            if q is not None:  # an activation, un-quantized, or a float weight -> Q -> DQ: its float input
                mine[i] = src
                continue
            # int8 initializer -> DQ: the FP32 weight if this is a quantization of it, else its dequantized value
            deq = _dequantize(g, dq)
            fg = self._fg
            fp_node = self._fp_nodes.get(name)
            fp_name = fp_node.input[i] if fp_node is not None and i < len(fp_node.input) else ""
            fp_w = fg.const(fp_name, cache=False) if fp_name else None
            # element by element within half a quantization step of its own channel: NNCF's SmoothQuant
            # rescales weights by up to a few x, which a whole-tensor tolerance would not see
            is_fp32 = fp_w is not None and _is_quantization_of(g, dq, fp_w, deq)
            new_name = f"{name}_reverted_w{i}"
            own_t = fg.initializers.get(fp_name) if is_fp32 else None
            if own_t is not None and own_t.data_type == onnx.TensorProto.FLOAT:
                new[new_name] = own_t  # no copy held here: each variant copies it under new_name
            else:
                use = fp_w if is_fp32 and fp_w is not None else deq
                new[new_name] = numpy_helper.from_array(use.astype(np.float32), new_name)
            mine[i] = new_name
        plan = (mine, theirs, new)
        self._plans[k] = plan
        return plan


def _is_quantization_of(g: Any, dq: Any, w: np.ndarray, deq: np.ndarray) -> bool:
    if w.shape != deq.shape:
        return False
    step = np.abs(_dequantize(g, dq, ones=True))  # the scale broadcast onto the weight's shape
    return bool(np.all(np.abs(w - deq) <= 0.5 * step + 1e-7))


def _dequantize(g: Any, dq: Any, ones: bool = False) -> np.ndarray:
    from edgeconvnext.onnx.graph import attr

    w = g.const(dq.input[0]).astype(np.float32)
    scale = g.const(dq.input[1]).astype(np.float32)
    zp = g.const(dq.input[2]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    if ones:  # the scale itself, on the weight's shape
        w, zp = np.ones_like(w), np.zeros_like(zp)
    if scale.size == 1:
        return (w - zp.reshape(())) * scale.reshape(())
    axis = attr(dq, "axis", 1)
    axis = axis + w.ndim if axis < 0 else axis
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w - zp.reshape(shape)) * scale.reshape(shape)


def _prune_nodes(m: onnx.ModelProto) -> set[str]:
    """Drop the nodes no graph output depends on, in one pass from the outputs back (ONNX lists nodes in
    topological order); the tensors the graph still reads."""
    needed = {o.name for o in m.graph.output}
    keep: list[bool] = []
    for n in reversed(m.graph.node):
        live = any(o in needed for o in n.output)
        keep.append(live)
        if live:
            needed.update(x for x in n.input if x)
    keep.reverse()
    if not all(keep):
        kept = [n for n, k in zip(m.graph.node, keep, strict=True) if k]
        del m.graph.node[:]
        m.graph.node.extend(kept)
    return needed


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """An empty model with ``model``'s IR version, opsets, functions, producer and graph name."""
    import onnx

    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.producer_name = model.producer_name
    m.graph.name = model.graph.name
    return m


def combine(models: Iterable[onnx.ModelProto]) -> onnx.ModelProto:
    """One graph holding ``models`` (variants of one graph, e.g. :func:`revert`'s) side by side, to run in one
    session: variant k's first output is the graph's k-th; graph inputs and initializers are shared by name (a
    name must hold the same value in every variant, as :func:`revert`'s reverted weights and the quantized
    model's own initializers do). A node the same as one already added (same name, op, attributes, and inputs
    that are the same tensors) is not added again: its outputs are that node's, so the part before a variant's
    first difference is in the graph once (in ``isolate`` the FP32 prefix up to the group's layer, in
    ``revert`` the all-INT8 one up to the reverted layer); the other nodes and their tensors are prefixed
    ``v{k}/``. Consumed one variant at a time, so only the combined graph is held."""

    from onnx import helper

    out: onnx.ModelProto | None = None
    seen: dict[str, onnx.TensorProto] = {}
    added: dict[tuple[Any, ...], list[str]] = {}  # a node's key -> its outputs in the combined graph
    outputs: set[str] = set()
    k = 0
    for k, m in enumerate(models):
        g = m.graph
        if out is None:
            out = _shell(m)
            out.graph.input.extend(g.input)
        alias = {t.name: t.name for t in g.initializer} | {i.name: i.name for i in g.input}
        for t in g.initializer:
            if t.name not in seen:
                seen[t.name] = t
                out.graph.initializer.append(t)
            elif seen[t.name] != t:
                raise ValueError(f"initializer {t.name!r} differs between the variants combined")
        for n in g.node:
            ins = [alias.get(x, x) if x else x for x in n.input]
            key = (n.name, n.domain, n.op_type, tuple(ins), tuple(a.SerializeToString() for a in n.attribute))
            same = added.get(key)
            if same is not None and len(same) == len(n.output):
                alias.update((o, c) for o, c in zip(n.output, same, strict=True) if o)
                continue
            c = out.graph.node.add()
            c.CopyFrom(n)
            c.name = f"v{k}/{n.name}"
            c.input[:] = ins
            c.output[:] = [f"v{k}/{o}" if o else o for o in n.output]
            alias.update((o, f"v{k}/{o}") for o in n.output if o)
            added[key] = list(c.output)
        o = out.graph.output.add()
        o.CopyFrom(g.output[0])
        o.name = alias.get(g.output[0].name, g.output[0].name)
        if o.name in outputs:  # a variant the same as an earlier one: its own name for the same tensor
            o.name = f"v{k}/{g.output[0].name}"
            same_out = helper.make_node("Identity", [alias[g.output[0].name]], [o.name], name=f"{o.name}_same")
            out.graph.node.append(same_out)
        outputs.add(o.name)
    if out is None:
        raise ValueError("no model to combine")
    return out


#: activation memory (bytes) the variants sharing one session may hold, by :func:`variants_per_session`'s estimate
VARIANT_MEMORY = 1 << 30
#: the smallest batch :func:`variants_per_session` gives a session of several variants
MIN_VARIANT_BATCH = 16


def largest_activation(model: onnx.ModelProto) -> int | None:
    """Elements per image of ``model``'s largest intermediate tensor (ONNX shape inference; the batch and any
    other symbolic dimension left out), or None when no shape is known."""
    import onnx

    from edgeconvnext.onnx.graph import shape_skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model))
    except Exception as e:  # noqa: BLE001 - an estimate only: fall back to one variant per session
        log.debug("shape inference failed (%s): one variant per session", e)
        return None
    best = 0
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
        best = max(best, n)
    return best or None


def variants_per_session(model: onnx.ModelProto, n: int, batch: int = BATCH) -> tuple[int, int]:
    """(variants per session, batch) for scoring ``n`` variants of ``model``: each variant at each image is taken
    to hold about 4 tensors of the largest size (4 bytes per element) at once, and the whole session at most
    :data:`VARIANT_MEMORY`; the batch is cut (not below :data:`MIN_VARIANT_BATCH`) before the variants are. One
    variant per session keeps ``batch`` (what a session per variant always did)."""
    largest = largest_activation(model)
    if n <= 1 or largest is None:
        return 1, batch
    per = 16 * largest  # bytes per image and variant
    v = int(max(1, min(n, VARIANT_MEMORY // (per * min(batch, MIN_VARIANT_BATCH)))))
    if v == 1:
        return 1, batch
    return v, int(max(1, min(batch, VARIANT_MEMORY // (per * v))))


# --- groups and ranking ---------------------------------------------------------------------------------


@dataclass
class Group:
    """A layer group: the Q/DQ of one INT8 Conv/MatMul/Gemm (its activation and weight quantizers)."""

    layer: str
    nodes: tuple[str, ...]
    macs_share: float | None


def groups_of(placement: Sequence[Placement]) -> list[Group]:
    """One group per INT8 layer of ``placement`` (in graph order)."""
    total = sum(p.macs or 0 for p in placement)
    return [
        Group(p.layer, (p.node,), (p.macs / total) if (total and p.macs is not None) else None)
        for p in placement
        if p.int8
    ]


MODES = ("isolate", "revert")


@dataclass
class GroupScore:
    """One group's score (``mode``): estimates on the whole set, KL/cosine on the subset."""

    layer: str
    macs_share: float | None
    metrics: Metrics  # of the model evaluated (the group alone INT8, or the group alone reverted)
    drop: float | None  # top-1 points vs FP32 of that model (None without labels)
    harm: float  # isolate: points it loses alone; revert: points reverting it buys back
    kl_harm: float  # isolate: its KL; revert: the KL reduction

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "macs_share": None if self.macs_share is None else round(self.macs_share, 5),
            "drop": None if self.drop is None else round(self.drop, 4),
            "harm": round(self.harm, 4),
            "kl_harm": round(self.kl_harm, 6),
            **{f"model_{k}": v for k, v in self.metrics.to_dict().items()},
        }


def check_mode(mode: str) -> str:
    from edgeconvnext.errors import UsageError, nearest

    m = mode.strip().lower()
    if m not in MODES:
        hint = nearest(m, MODES)
        raise UsageError(
            f"unknown --mode '{mode}'"
            + (f"; did you mean '{hint}'?" if hint else "")
            + f" (choose from {', '.join(MODES)})"
        )
    return m


def rank(
    ev: Evaluator,
    q_model: onnx.ModelProto,
    fp32_model: onnx.ModelProto,
    groups: Sequence[Group],
    subset: np.ndarray,
    base_logits: np.ndarray,
    on_group: Callable[[int, int, GroupScore], None] | None = None,
    mode: str = "isolate",
    per_session: int | None = None,
    reverter: Reverter | None = None,
) -> list[GroupScore]:
    """Score each group on ``subset`` (see the module doc for ``mode``); sorted most harmful first.
    ``base_logits``: the all-INT8 model's logits on every image. ``per_session``: group variants run in one
    onnxruntime session (default: :func:`variants_per_session`'s; 1 = a session per variant). ``reverter``: a
    :class:`Reverter` of ``q_model`` to reuse (the budget search's)."""
    mode = check_mode(mode)
    rev = reverter if reverter is not None else Reverter(q_model, fp32_model)
    base = ev.metrics(base_logits)
    base_kl = float(kl_rows(ev.fp32_logits[subset], base_logits[subset]).mean())
    every = [n for g in groups for n in g.nodes]

    def lost(m: Metrics) -> float:  # points lost vs FP32: top-1 with labels, else agreement
        d = m.drop(ev.fp32)
        return d if d is not None else 100.0 - m.agreement

    def variant(grp: Group) -> onnx.ModelProto:
        if mode == "isolate":
            return rev([n for n in every if n not in grp.nodes])
        return rev(grp.nodes)

    per, batch = (per_session, ev.batch) if per_session else variants_per_session(fp32_model, len(groups), ev.batch)
    done: dict[int, GroupScore] = {}

    def score(todo: Sequence[int], logits: Sequence[np.ndarray]) -> None:
        for k, z in zip(todo, logits, strict=True):
            grp = groups[k]
            if mode == "isolate":
                met = ev.metrics(z, subset, ev.fp32_logits)
                harm, kl_harm = lost(met), met.kl
            else:
                met = ev.metrics(z, subset, base_logits)
                harm, kl_harm = lost(base) - lost(met), base_kl - met.kl
            done[k] = GroupScore(grp.layer, grp.macs_share, met, met.drop(ev.fp32), harm, kl_harm)
            if on_group is not None:
                on_group(len(done), len(groups), done[k])

    def whole(todo: Sequence[int]) -> None:
        for start in range(0, len(todo), per):
            part = todo[start : start + per]
            if len(part) == 1:
                score(part, [ev.run(ev.build(variant, groups[part[0]]), subset)])
            else:
                score(part, ev.run_variants((variant(groups[k]) for k in part), len(part), subset, batch))

    whole(range(len(groups)))
    scores = [done[k] for k in range(len(groups))]
    scores.sort(key=lambda s: (-round(s.harm, 6), -s.kl_harm))
    return scores


MODE_TEXT = {
    "isolate": "Each group alone in INT8 (every other group's Q/DQ dropped); harm = {what} it loses on its own.",
    "revert": "Each group reverted alone from all-INT8 (its Q/DQ dropped); harm = {what} reverting it buys back.",
}


# --- the whole analysis (``edgeconvnext sensitivity``) ----------------------------------------------------


@dataclass
class SensitivityResult:
    """All-INT8 vs FP32, and every layer group's score, sorted most harmful first."""

    arch: str
    config: dict[str, Any]
    fp32: Metrics
    int8: Metrics
    scores: list[GroupScore]
    subset: int
    cost: dict[str, float]
    int8_macs_share: float | None
    seconds: float
    calib_seconds: float
    labelled: bool
    notes: list[str]
    mode: str = "isolate"

    @property
    def bound_passes(self) -> float:
        return len(self.scores) * self.subset / max(1, self.fp32.n) + 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": TOOL,  # also what lets a later run write over this file
            "arch": self.arch,
            "mode": self.mode,
            "mode_text": MODE_TEXT[self.mode].format(what="points"),
            "config": self.config,
            "val_images": self.fp32.n,
            "labelled": self.labelled,
            "ranking_subset": self.subset,
            "fp32": self.fp32.to_dict(),
            "int8": self.int8.to_dict(),
            "int8_macs_share": self.int8_macs_share,
            "groups": [s.to_dict() for s in self.scores],
            "cost": {**self.cost, "bound_fp32_passes": round(self.bound_passes, 2)},
            "seconds": round(self.seconds, 2),
            "calibration_s": round(self.calib_seconds, 2),
            "notes": list(self.notes),
        }

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i, s in enumerate(self.scores):
            out.append(
                {
                    "rank": i + 1,
                    "layer": s.layer,
                    "macs": "-" if s.macs_share is None else f"{100 * s.macs_share:.1f}%",
                    "drop": "-" if s.drop is None else f"{s.drop:+.2f}",
                    "harm": f"{s.harm:+.2f}",
                    "agreement": f"{s.metrics.agreement:.1f}%",
                    "kl": f"{s.metrics.kl:.1e}",
                    "cos_min": f"{s.metrics.cos_min:.3f}",
                }
            )
        return out

    def headline(self) -> str:
        d = self.int8.drop(self.fp32)
        drop = (
            "" if d is None else f"top-1 FP32 {self.fp32.top1:.2f}% / all-INT8 {self.int8.top1:.2f}% (drop {d:+.2f}), "
        )
        return (
            f"{self.arch} on {self.fp32.n} validation images: {drop}agreement {self.int8.agreement:.2f}%, "
            f"{len(self.scores)} layer groups ranked ({self.mode}) on the {self.subset} hardest images"
        )

    def cost_line(self) -> str:
        c = self.cost
        return (
            f"cost {c.get('fp32_passes', 0):.1f} FP32-forward-passes over the validation set "
            f"({c.get('cpu_fp32_passes', 0):.1f} in CPU seconds, {c.get('image_passes', 0):.2f} image-passes; "
            f"target {self.bound_passes:.2f} = {len(self.scores)} groups x {self.subset}/{self.fp32.n} + 3); "
            f"FP32 pass {c.get('fp32_pass_s', 0):.1f} s"
        )

    def markdown(self) -> str:
        model = "alone in INT8" if self.mode == "isolate" else "reverted alone"
        cols = ["rank", "layer", "MACs", f"top-1 drop, {model}", "harm (pts)", "agreement", "KL", "min cosine"]
        what = "top-1 points" if self.labelled else "agreement points (no labels)"
        lines = [
            f"# INT8 sensitivity: {self.arch}",
            "",
            self.headline() + ".",
            "",
            MODE_TEXT[self.mode].format(what=what) + " Calibration is the all-INT8 model's (never recomputed); "
            "estimates on the whole set, KL and cosine on the ranking subset. Sorted most harmful first.",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for r in self.rows():
            lines.append(
                f"| {r['rank']} | {r['layer']} | {r['macs']} | {r['drop']} | {r['harm']} | {r['agreement']} "
                f"| {r['kl']} | {r['cos_min']} |"
            )
        lines += ["", self.cost_line() + ".", ""]
        lines += [f"note: {n}" for n in self.notes]
        lines += [""] if self.notes else []
        lines.append(f"{TOOL}.")
        return "\n".join(lines) + "\n"


def analyse(
    loaded: Any,
    val: Any,
    config: Any,
    *,
    calib_data: Any = None,
    calib_manifest: Any = None,
    subset_size: int = DEFAULT_SUBSET,
    mode: str = "isolate",
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SensitivityResult:
    """Quantize ``loaded`` all-INT8 once (in a temporary folder), then score every layer group on ``val``."""
    import tempfile
    from dataclasses import replace

    import onnx

    from edgeconvnext.quantize.ptq import QuantizeResult, quantize
    from edgeconvnext.quantize.valset import warn_if_calibration

    t0 = time.perf_counter()
    step = on_step or (lambda s: None)
    mode = check_mode(mode)
    if subset_size < 1:
        from edgeconvnext.errors import UsageError

        raise UsageError(f"--subset-size must be at least 1, got {subset_size}")
    with tempfile.TemporaryDirectory(prefix=".edgeconvnext-sensitivity-") as tmp:
        res = quantize(
            loaded,
            Path(tmp) / "all.int8.onnx",
            calib_data=calib_data,
            calib_manifest=calib_manifest,
            config=replace(config, keep_fp32=True),
            on_step=on_step,
            on_progress=on_progress,
        )
        assert isinstance(res, QuantizeResult)  # reuse=False: always quantized
        q = onnx.load(str(res.path))
        fp32 = onnx.load(str(res.fp32_path))
        manifest = json.loads(Path(res.manifest).read_text())
        calib_root = Path(manifest["root"])
        calib_paths = [calib_root / e["path"] for e in manifest["images"]]
    notes = list(res.notes)
    note = warn_if_calibration(val, calib_paths, calib_root)
    if note:
        notes.append(note)
    step(f"FP32 and all-INT8 on {len(val)} validation images")
    ev = Evaluator(fp32.SerializeToString(), val.images, val.labels)
    base_logits = ev.run(q)
    base = ev.metrics(base_logits)
    subset = ev.subset(base_logits, subset_size)
    groups = groups_of(res.placement)

    def progress(k: int, n: int, s: GroupScore) -> None:
        step(f"scoring {s.layer} ({k}/{n}, {mode}) on the {len(subset)} hardest images")
        if on_progress is not None:
            on_progress(k, n)

    scores = rank(ev, q, fp32, groups, subset, base_logits, on_group=progress, mode=mode)
    cfg = res.config
    return SensitivityResult(
        arch=loaded.arch.name,
        config={"backend": cfg.backend, "policy": cfg.policy, "calib_method": cfg.calib_method, "smooth": cfg.smooth,
                "calib_images": res.calib_images, "exclude": list(cfg.exclude), "int8_math": INT8_MATH},
        fp32=ev.fp32,
        int8=base,
        scores=scores,
        subset=len(subset),
        cost=ev.cost(),
        int8_macs_share=res.int8_macs_share,
        seconds=time.perf_counter() - t0,
        calib_seconds=res.calib_seconds,
        labelled=ev.labelled,
        notes=notes,
        mode=mode,
    )  # fmt: skip


def plot_png(result: SensitivityResult, path: Any) -> None:
    """A horizontal bar chart (PNG) of each group's harm, KL and MACs share, most harmful on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = result.scores
    names = [s.layer for s in scores][::-1]
    gains = [s.harm for s in scores][::-1]
    kls = [s.kl_harm for s in scores][::-1]
    macs = [100 * (s.macs_share or 0) for s in scores][::-1]
    h = max(3.0, 0.28 * len(scores) + 1.2)
    fig, axes = plt.subplots(1, 3, figsize=(13, h), sharey=True, gridspec_kw={"width_ratios": [3, 3, 2]})
    unit = "top-1" if result.labelled else "agreement"
    what = f"{unit} points lost alone in INT8" if result.mode == "isolate" else f"{unit} points bought back"
    axes[0].barh(names, gains, color="#c0392b")
    axes[0].set_xlabel(what)
    axes[1].barh(names, kls, color="#2c3e50")
    axes[1].set_xlabel("KL(FP32 || model) (subset)" if result.mode == "isolate" else "KL reduction (subset)")
    axes[2].barh(names, macs, color="#7f8c8d")
    axes[2].set_xlabel("share of MACs (%)")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[0].tick_params(axis="y", labelsize=7)
    d = result.int8.drop(result.fp32)
    fig.suptitle(
        f"{result.arch}: "
        + ("one layer group alone in INT8" if result.mode == "isolate" else "one layer group reverted from all-INT8")
        + ("" if d is None else f" (all-INT8 drop {d:+.2f} pts)")
        + f", {result.fp32.n} images",
        fontsize=10,
    )
    fig.tight_layout()
    # the PNG's Software text names us: a later run may write over this file, not over another program's
    fig.savefig(str(path), format="png", dpi=110, metadata={"Software": f"{TOOL} (matplotlib)"})
    plt.close(fig)
