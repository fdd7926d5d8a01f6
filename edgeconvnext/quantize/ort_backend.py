"""onnxruntime backend: ``onnxruntime.quantization.quantize_static`` with the options TensorRT accepts.

Input: the FP32 ONNX file, the calibration images, the node names to quantize and a calibration method.
Output: a QDQ ONNX file. Settings (measured, KNOWLEDGE.md): QuantFormat.QDQ; QInt8 weights and
activations; symmetric activations and weights (zero point 0); weights per output channel (Conv axis 0,
MatMul axis 1 for the (K, N) weight TorchScript exports from nn.Linear); activations per tensor; no
int32 bias DQ (``QuantizeBias=False``: TensorRT's DequantizeLinear is INT8 only); only the *inputs* of the
chosen Conv/MatMul/Gemm get Q/DQ (``OpTypesToExcludeOutputQuantization``): quantizing their outputs would
put the residual stream and the logits in INT8.

Calibration uses onnxruntime's own calibrators (MinMaxCalibrater, EntropyCalibrater, PercentileCalibrater)
with two changes of scope, not of statistics: only the tensors the quantizer needs (the activation inputs
of the layers being quantized) are calibrated, where ``quantize_static`` would calibrate every input and
output of every Conv/MatMul/Gemm (on nano at 224 px that made calibration ~3.5x slower than FP32
inference, and the histogram methods keep each calibrated tensor of a chunk in memory); and images are
fed in chunks of at most :data:`CHUNK_IMAGES` (the strided loop ``quantize_static`` runs for
``CalibStridedMinMax``; histograms merge across chunks). The ranges go to ``quantize_static`` through its
calibration cache (``calibration_cache_path``), which then only inserts the Q/DQ nodes.

Usage::

    quantize_ort(Path("fp32.onnx"), Path("int8.onnx"), calib_set, ["/stages/.../fc1/MatMul"], "minmax")
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeconvnext.data.calibration import CalibrationSet

log = logging.getLogger(__name__)

#: our --calib-method -> onnxruntime CalibrationMethod member
CALIB_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
OP_TYPES = ["Conv", "MatMul", "Gemm"]
BATCH = 8
CHUNK_IMAGES = 16


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


class _DropPreprocessHint(logging.Filter):
    """onnxruntime logs 'Please consider to run pre-processing' on the root logger: its pre-processing
    renames and fuses nodes (our layer names would be lost), so we do not run it and drop the hint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


@contextlib.contextmanager
def _quiet_root_hint() -> Iterator[None]:
    f = _DropPreprocessHint()
    root = logging.getLogger()
    root.addFilter(f)
    handlers = list(root.handlers)
    for h in handlers:
        h.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)
        for h in handlers:
            h.removeFilter(f)


def _calibrator(fp32_path: Path, augmented: Path, calib_method: str, tensors: set[str]):
    """onnxruntime's calibrator for ``calib_method`` (create_calibrator's defaults), restricted to ``tensors``."""
    from onnxruntime.quantization import calibrate as c

    def restricted(cls: Any) -> Any:
        class Restricted(cls):
            def select_tensors_to_calibrate(self, model):
                found, value_infos = super().select_tensors_to_calibrate(model)
                return found & tensors, value_infos

        return Restricted

    common = dict(op_types_to_calibrate=list(OP_TYPES), augmented_model_path=str(augmented))
    if calib_method == "minmax":
        cal = restricted(c.MinMaxCalibrater)(str(fp32_path), symmetric=False, **common)
    elif calib_method == "entropy":
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


def _activation_inputs(fp32_path: Path, nodes: Sequence[str]) -> set[str]:
    """The activation (first) input of each node to quantize: the only tensors that need a range."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    wanted = set(nodes)
    inits = {t.name for t in model.graph.initializer}
    return {n.input[0] for n in model.graph.node if n.name in wanted and n.input and n.input[0] not in inits}


def quantize_ort(
    fp32_path: Path,
    output: Path,
    calib: CalibrationSet,
    nodes_to_quantize: Sequence[str],
    calib_method: str,
    *,
    input_name: str = "input",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """Calibrate and insert Q/DQ with onnxruntime; returns the settings used (for the sidecar)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    method = getattr(CalibrationMethod, CALIB_METHODS[calib_method])
    reader = _Reader(calib.images, input_name, BATCH, on_progress)
    # onnxruntime's histogram collectors (entropy, percentile) stack the arrays of one collect_data call, so a
    # call must not mix batch sizes: the full batches go in strides, a smaller last batch in a call of its own.
    full = len(calib.images) // BATCH
    stride = _largest_divisor(full, max(1, CHUNK_IMAGES // BATCH)) if full else 1
    spans = [(s, s + stride) for s in range(0, full, stride)]
    if reader.n_batches > full:
        spans.append((full, reader.n_batches))
    tensors = _activation_inputs(fp32_path, nodes_to_quantize)
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(OP_TYPES),
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    with tempfile.TemporaryDirectory(prefix="ort-calib-") as tmp:
        cal = _calibrator(fp32_path, Path(tmp) / "augmented.onnx", calib_method, tensors)
        for start, end in spans:  # the loop quantize_static runs for CalibStridedMinMax
            reader.set_range(start_index=start, end_index=end)
            cal.collect_data(reader)
        ranges = cal.compute_data()
        del cal
        missing = tensors - set(ranges)
        if missing:
            raise RuntimeError(f"calibration produced no range for {sorted(missing)[:3]}")
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        with _quiet_root_hint():
            quantize_static(
                str(fp32_path),
                str(output),
                None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES),
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=list(nodes_to_quantize),
                calibrate_method=method,
                extra_options=extra,
                calibration_cache_path=cache,
            )
    settings: dict[str, object] = {
        "library": "onnxruntime.quantization (calibrator + quantize_static)",
        "quant_format": "QDQ",
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "per_channel": True,
        "calibrate_method": f"CalibrationMethod.{CALIB_METHODS[calib_method]}",
        "calibrated_tensors": len(tensors),
        "op_types_to_quantize": list(OP_TYPES),
        "batch": BATCH,
        "chunk_batches": stride,
        "extra_options": dict(extra),
    }
    return settings
