"""onnxruntime backend: ``onnxruntime.quantization``'s calibration and quantize_static's Q/DQ graph, with the
options TensorRT accepts.

Input: the FP32 ONNX file, the calibration images, the node names to quantize and a calibration method.
Output: a QDQ ONNX file. Settings (measured, KNOWLEDGE.md): QuantFormat.QDQ; QInt8 weights and
activations; symmetric activations and weights (zero point 0); weights per output channel (Conv axis 0,
MatMul axis 1 for the (K, N) weight TorchScript exports from nn.Linear); activations per tensor; no
int32 bias DQ (``QuantizeBias=False``: TensorRT's DequantizeLinear is INT8 only); only the *inputs* of the
chosen Conv/MatMul/Gemm get Q/DQ (``OpTypesToExcludeOutputQuantization``): quantizing their outputs would
put the residual stream and the logits in INT8.

Calibration collects statistics only on the tensors the quantizer needs (the activation inputs of the
layers being quantized), where ``quantize_static`` would calibrate every input and output of every
Conv/MatMul/Gemm. ``minmax`` (the default) runs one onnxruntime session, with all graph optimizations
and intra-op threads = cores, over the FP32 graph plus a ReduceMin and a ReduceMax (to a scalar) per
calibrated tensor, in batches of :data:`MINMAX_BATCH`; the global min and max over all images are what
onnxruntime's MinMaxCalibrater computes (its session runs with graph optimizations off: ~1.4x slower on
nano at 224 px). The same pass gives the FP32 logits, which quantize reuses to compare INT8 with FP32, and,
for a :class:`ChannelFold` (smoothing, quantize/smooth_graph.py), the per-channel min and max of the LayerNorm
outputs it rescales: the fold is applied to the graph between the pass and the Q/DQ insertion.
The histogram methods (``percentile``, ``entropy``) use onnxruntime's calibrators, fed in chunks of at
most :data:`CHUNK_IMAGES` (their collectors keep each calibrated tensor of a chunk in memory; histograms
merge across chunks). The Q/DQ nodes are then inserted by :func:`~edgeconvnext.quantize.ort_qdq.insert_qdq`:
the graph ``quantize_static`` writes from the same ranges (tested node for node and value for value), with
the per-channel weight quantization on whole arrays instead of quantize_static's per-channel Python loop.

Usage::

    quantize_ort(Path("fp32.onnx"), Path("int8.onnx"), calib_set, ["/stages/.../fc1/MatMul"], "minmax")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgeconvnext.artifacts import native_path_ok
from edgeconvnext.data.calibration import CalibrationSet

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: our --calib-method -> onnxruntime CalibrationMethod member
CALIB_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
OP_TYPES = ["Conv", "MatMul", "Gemm"]
BATCH = 8  # histogram methods
CHUNK_IMAGES = 16  # histogram methods: images per collect_data call
#: minmax: images per session run (32-64 keeps the GEMMs large; at 224 px a batch of 32 is ~1 GiB of activations)
MINMAX_BATCH = 32


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


class _Reader:
    """CalibrationDataReader over preprocessed images, in batches, with the range API the strided
    calibration loop uses (``__len__`` in batches, ``set_range``)."""

    def __init__(
        self, images: np.ndarray, input_name: str, batch: int, on_progress: Callable[[int, int], None] | None
    ) -> None:
        self.images = images
        self.input_name = input_name
        self.batch = batch
        self.n_batches = (len(images) + batch - 1) // batch
        self.on_progress = on_progress
        self._it: Iterator[int] = iter(range(self.n_batches))
        self.done = 0

    def __len__(self) -> int:
        return self.n_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(range(start_index, min(end_index, self.n_batches)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._it, None)
        if i is None:
            return None
        x = self.images[i * self.batch : (i + 1) * self.batch]
        self.done += len(x)
        if self.on_progress is not None:
            self.on_progress(min(self.done, len(self.images)), len(self.images))
        return {self.input_name: x}


def _calibrator(fp32_path: Path, augmented: Path, calib_method: str, tensors: set[str]):
    """onnxruntime's histogram calibrator for ``calib_method`` (create_calibrator's defaults), restricted to
    ``tensors``."""
    from onnxruntime.quantization import calibrate as c

    def restricted(cls: Any) -> Any:
        class Restricted(cls):
            def select_tensors_to_calibrate(self, model):
                found, value_infos = super().select_tensors_to_calibrate(model)
                return found & tensors, value_infos

        return Restricted

    common = dict(op_types_to_calibrate=list(OP_TYPES), augmented_model_path=str(augmented))
    if calib_method == "entropy":
        cal = restricted(c.EntropyCalibrater)(
            str(fp32_path), symmetric=False, num_bins=128, num_quantized_bins=128, **common
        )
    else:
        cal = restricted(c.PercentileCalibrater)(
            str(fp32_path), symmetric=True, num_bins=2048, percentile=99.999, **common
        )
    cal.augment_graph()
    cal.create_inference_session()
    return cal


def _activation_inputs(model: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """The activation (first) input of each node to quantize, in graph order: the only tensors that need a range."""
    wanted = set(nodes)
    inits = {t.name for t in model.graph.initializer}
    found = [n.input[0] for n in model.graph.node if n.name in wanted and n.input and n.input[0] not in inits]
    return list(dict.fromkeys(found))


def session_threads() -> int:
    """Intra-op threads for calibration sessions: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _minmax_graph(
    model: onnx.ModelProto, tensors: Sequence[str], channels: Mapping[str, int] | None = None
) -> tuple[bytes, list[str]]:
    """``model`` plus, for each of ``tensors``, ReduceMin and ReduceMax over all axes (keepdims=0: a scalar) and,
    for each of ``channels`` (tensor -> channels of its last axis), a Reshape to (N, -1, C) and ReduceMin and
    ReduceMax over axis 1 (N x C values: reducing the leading axes of (-1, C) to C at once is ~5x slower in
    onnxruntime 1.31, 100 vs 20 ms for (32, 56, 56, 80) on 2 cores), as extra graph outputs. Returns the
    serialized graph and the names of the added outputs (min, max per tensor, in ``tensors`` then ``channels``
    order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    names: list[str] = []
    for i, t in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"edgeconvnext_calib_{i}_{op}"
            aug.graph.node.append(helper.make_node(op, [t], [out], keepdims=0, name=out))
            aug.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
            names.append(out)
    if channels:
        opset = next((o.version for o in aug.opset_import if o.domain in ("", "ai.onnx")), 17)
        axes_name = "edgeconvnext_calib_axes1"
        if opset >= 18:  # ReduceMin/Max take the axes as an input from opset 18
            aug.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.int64), axes_name))
        for i, (t, c) in enumerate(channels.items()):
            shape, flat = f"edgeconvnext_calib_c{i}_shape", f"edgeconvnext_calib_c{i}_flat"
            # (N, ..., C) -> (N, -1, C): 0 copies the batch dimension (Reshape's allowzero=0)
            aug.graph.initializer.append(numpy_helper.from_array(np.array([0, -1, c], np.int64), shape))
            aug.graph.node.append(helper.make_node("Reshape", [t, shape], [flat], name=flat))
            for op in ("ReduceMin", "ReduceMax"):
                out = f"edgeconvnext_calib_c{i}_{op}"
                if opset >= 18:
                    node = helper.make_node(op, [flat, axes_name], [out], keepdims=0, name=out)
                else:
                    node = helper.make_node(op, [flat], [out], axes=[1], keepdims=0, name=out)
                aug.graph.node.append(node)
                aug.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", c]))
                names.append(out)
    return aug.SerializeToString(), names


def collect_minmax(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[np.ndarray],
    *,
    channels: Mapping[str, int] | None = None,
    input_name: str = "input",
    output_name: str | None = None,
    logits: list[np.ndarray] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Global min and max of each of ``tensors`` over all ``batches`` (one session run per batch); the
    values MinMaxCalibrater(symmetric=False) gives, as arrays of shape (1,). With ``channels`` (tensor ->
    channels of its last axis), also the min and max of every channel of those tensors, shape (C,), in the same
    runs. The model's own output of every batch is appended to ``logits`` when given; ``on_batch(images)`` is
    called after each run."""
    import onnxruntime as ort

    tensors = list(tensors)
    channels = dict(channels or {})
    data, added = _minmax_graph(model, tensors, channels)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = session_threads()
    # Without memory patterns the 2*N reductions do not stretch the planned arena: measured on nano at 224 px,
    # batch 32, peak RSS 1.4 GB instead of 2.4 GB (a plain FP32 session: 1.65 GB), time unchanged.
    so.enable_mem_pattern = False
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    del data
    out_name = output_name or model.graph.output[0].name
    fetch = [out_name, *added] if logits is not None else added
    n = len(tensors)
    lo = np.full(n, np.nan, np.float32)
    hi = np.full(n, np.nan, np.float32)
    clo = [np.full(c, np.nan, np.float32) for c in channels.values()]
    chi = [np.full(c, np.nan, np.float32) for c in channels.values()]
    seen = 0
    for x in batches:
        res = sess.run(fetch, {input_name: x})
        if logits is not None:
            # a copy: onnxruntime's outputs can hold on to its arena, which then outlives the session (~1 GB)
            logits.append(np.array(res[0], copy=True))
            res = res[1:]
        # np.fmin/fmax ignore NaN as onnxruntime's nanmin/nanmax across batches do
        lo = np.fmin(lo, np.asarray(res[0 : 2 * n : 2], np.float32))
        hi = np.fmax(hi, np.asarray(res[1 : 2 * n : 2], np.float32))
        for j in range(len(clo)):
            clo[j] = np.fmin(clo[j], np.asarray(res[2 * n + 2 * j]).min(axis=0))  # (N, C) -> C
            chi[j] = np.fmax(chi[j], np.asarray(res[2 * n + 2 * j + 1]).max(axis=0))
        seen += len(x)
        if on_batch is not None:
            on_batch(len(x))
    if not seen:
        raise ValueError("no calibration data")
    out = {t: (lo[i : i + 1].copy(), hi[i : i + 1].copy()) for i, t in enumerate(tensors)}
    out.update({t: (clo[j], chi[j]) for j, t in enumerate(channels)})
    return out


class ChannelFold(Protocol):
    """A rewrite of the FP32 graph computed from per-channel ranges collected in the minmax pass (the smoothing
    fold, quantize/smooth_graph.py): it returns the rewritten graph and the ranges of the tensors it changed."""

    @property
    def channels(self) -> Mapping[str, int]: ...  # tensor -> channels (last axis) to collect min/max of

    @property
    def derived(self) -> Collection[str]: ...  # activation tensors whose range apply() gives

    def apply(
        self, stats: Mapping[str, tuple[np.ndarray, np.ndarray]], images: int
    ) -> tuple[onnx.ModelProto, dict[str, tuple[np.ndarray, np.ndarray]]]: ...


def quantize_ort(fp32_path: Path, output: Path, *args: Any, **kwargs: Any) -> dict[str, object]:
    """:func:`_quantize_ort` with its files where onnxruntime's C++ side can open them: a name it would misread
    (not UTF-8, or any non-ASCII name under LC_ALL=C; see artifacts.native_path_ok) is staged in the system's
    temporary folder and the result moved into place."""
    if native_path_ok(fp32_path) and native_path_ok(output):
        return _quantize_ort(fp32_path, output, *args, **kwargs)
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ort-stage-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "quantized.onnx"
        shutil.copyfile(fp32_path, src)
        settings = _quantize_ort(src, dst, *args, **kwargs)
        shutil.move(dst, output)
    return settings


def _quantize_ort(
    fp32_path: Path,
    output: Path,
    calib: CalibrationSet,
    nodes_to_quantize: Sequence[str],
    calib_method: str,
    *,
    input_name: str = "input",
    on_progress: Callable[[int, int], None] | None = None,
    model: onnx.ModelProto | None = None,
    logits: list[np.ndarray] | None = None,
    fold: ChannelFold | None = None,
) -> dict[str, object]:
    """Calibrate and insert Q/DQ with onnxruntime; returns the settings used (for the sidecar).

    ``model`` is ``fp32_path`` already loaded (saves reading it again). With ``logits`` (a list) and
    ``calib_method`` minmax, the FP32 logits of every calibration batch are appended to it. ``fold`` (minmax
    only): its per-channel ranges are collected in the same pass, and the Q/DQ go into the graph it returns,
    with the ranges it derives for the tensors it changed (issue 11's single-pass smoothing).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    method = getattr(CalibrationMethod, CALIB_METHODS[calib_method])
    if model is None:
        model = onnx.load(str(fp32_path))
    tensors = _activation_inputs(model, nodes_to_quantize)
    if fold is not None and calib_method != "minmax":
        raise ValueError(f"a graph fold needs minmax calibration, not {calib_method}")
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(OP_TYPES),
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    feed: dict[str, object]
    if calib_method == "minmax":
        done = 0

        def batch_done(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, len(calib))

        derived = set(fold.derived) if fold is not None else set()
        stats = collect_minmax(
            model,
            [t for t in tensors if t not in derived],
            calib.batches(MINMAX_BATCH),
            channels=fold.channels if fold is not None else None,
            input_name=input_name,
            logits=logits,
            on_batch=batch_done,
        )
        feed = {
            "batch": MINMAX_BATCH,
            "session": "graph optimizations on, no memory pattern, intra-op threads = cores",
        }
        if fold is not None:
            model, changed = fold.apply(stats, len(calib.images))
            stats.update(changed)
            feed["per_channel_statistics"] = (
                f"min/max per channel of {len(fold.channels)} tensors in the same pass; the ranges of "
                f"{len(changed)} rescaled tensors derived from them"
            )
        wanted = set(tensors)
        ranges = TensorsData(method, {t: v for t, v in stats.items() if t in wanted})
    else:
        ranges, stride = _collect_histograms(fp32_path, calib, tensors, calib_method, input_name, on_progress)
        feed = {"batch": BATCH, "chunk_batches": stride}
    missing = set(tensors) - set(ranges)
    if missing:
        raise RuntimeError(f"calibration produced no range for {sorted(missing)[:3]}")
    from edgeconvnext.quantize.ort_qdq import insert_qdq

    q = insert_qdq(model, nodes_to_quantize, {t: tuple(ranges[t].range_value) for t in tensors})
    onnx.save(q, str(output))
    settings: dict[str, object] = {
        "library": "onnxruntime.quantization calibration, Q/DQ as quantize_static inserts them (quantize/ort_qdq.py)",
        "quant_format": "QDQ",
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "per_channel": True,
        "calibrate_method": f"CalibrationMethod.{CALIB_METHODS[calib_method]}",
        "calibrated_tensors": len(tensors),
        "op_types_to_quantize": list(OP_TYPES),
        **feed,
        "extra_options": dict(extra),
    }
    return settings


def _collect_histograms(
    fp32_path: Path,
    calib: CalibrationSet,
    tensors: Sequence[str],
    calib_method: str,
    input_name: str,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[Any, int]:
    """onnxruntime's histogram calibrator over ``calib`` in chunks; returns (TensorsData, batches per chunk)."""
    import tempfile

    reader = _Reader(calib.images, input_name, BATCH, on_progress)
    # onnxruntime's histogram collectors (entropy, percentile) stack the arrays of one collect_data call, so a
    # call must not mix batch sizes: the full batches go in strides, a smaller last batch in a call of its own.
    full = len(calib.images) // BATCH
    stride = _largest_divisor(full, max(1, CHUNK_IMAGES // BATCH)) if full else 1
    spans = [(s, s + stride) for s in range(0, full, stride)]
    if reader.n_batches > full:
        spans.append((full, reader.n_batches))
    with tempfile.TemporaryDirectory(prefix="ort-calib-") as tmp:
        cal = _calibrator(fp32_path, Path(tmp) / "augmented.onnx", calib_method, set(tensors))
        for start, end in spans:  # the loop quantize_static runs for CalibStridedMinMax
            reader.set_range(start_index=start, end_index=end)
            cal.collect_data(reader)
        ranges = cal.compute_data()
        del cal
    return ranges, stride
