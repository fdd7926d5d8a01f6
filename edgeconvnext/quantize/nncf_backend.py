"""NNCF backend: ``nncf.quantize`` on the ONNX model with the options TensorRT accepts.

Input: the FP32 ONNX file, the calibration images, the node names to keep in float and a calibration
method. Output: a QDQ ONNX file. Settings (measured with nncf 3.4, KNOWLEDGE.md): ONNX backend (its torch
backend is ~10x slower); ``model_type=TRANSFORMER`` (adds SmoothQuant scaling Muls in front of the
MatMuls: plain float Muls TensorRT folds); ``preset=PERFORMANCE`` (symmetric: zero point 0, signed INT8);
activations forced per tensor (``AdvancedQuantizationParameters(activations_quantization_params=
QuantizationParameters(per_channel=False))``). NNCF's defaults give uint8 / asymmetric activations,
which TensorRT rejects. Layers the policy keeps in float go to ``IgnoredScope(names=...)``.

Calibration methods: ``minmax`` -> RangeEstimatorParametersSet.MINMAX; ``mse`` ->
RangeEstimatorParametersSet.HISTOGRAM (NNCF's histogram observer picks the range that minimises the L2
quantization error). Activations only: weights stay per-channel min/max.

Usage::

    quantize_nncf(Path("fp32.onnx"), Path("int8.onnx"), calib_set, ["/stem/stem.0/Conv"], "minmax")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeconvnext.data.calibration import CalibrationSet

log = logging.getLogger(__name__)

#: our --calib-method -> nncf RangeEstimatorParametersSet member (activations)
CALIB_METHODS = {"minmax": "MINMAX", "mse": "HISTOGRAM"}


def quantize_nncf(
    fp32_path: Path,
    output: Path,
    calib: CalibrationSet,
    ignored_nodes: Sequence[str],
    calib_method: str,
    *,
    input_name: str = "input",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """Calibrate and insert Q/DQ with NNCF; returns the settings used (for the sidecar).

    NNCF draws its own progress bars (one per statistics pass); ``on_progress`` is told when it starts
    and ends.
    """
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = onnx.load(str(fp32_path))
    images = calib.images
    # One image per item: NNCF's subset_size counts items, and SmoothQuant/bias correction assume batch 1.
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))], lambda x: {input_name: x})
    est = getattr(RangeEstimatorParametersSet, CALIB_METHODS[calib_method])
    advanced = AdvancedQuantizationParameters(
        activations_quantization_params=QuantizationParameters(per_channel=False),
        activations_range_estimator_params=est,
    )
    if on_progress is not None:
        on_progress(0, len(images))
    # NNCF logs every ignored node at INFO on its own stdout handler; keep that for --debug only.
    nncf_log = logging.getLogger("nncf")
    old_level = nncf_log.level
    if not log.isEnabledFor(logging.DEBUG):
        nncf_log.setLevel(logging.WARNING)
    try:
        quantized = nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset.PERFORMANCE,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(images),
            ignored_scope=nncf.IgnoredScope(names=list(ignored_nodes)) if ignored_nodes else None,
            advanced_parameters=advanced,
        )
    finally:
        nncf_log.setLevel(old_level)
    if on_progress is not None:
        on_progress(len(images), len(images))
    onnx.save(quantized, str(output))
    return {
        "library": "nncf.quantize (ONNX backend)",
        "preset": "PERFORMANCE",
        "model_type": "TRANSFORMER",
        "subset_size": len(images),
        "activations": "per tensor, symmetric",
        "weights": "per channel, symmetric",
        "activations_range_estimator": f"RangeEstimatorParametersSet.{CALIB_METHODS[calib_method]}",
        "ignored_scope_names": len(ignored_nodes),
    }
