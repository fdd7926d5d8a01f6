"""INT8 post-training quantization of ConvNeXt to TensorRT-ready Q/DQ ONNX (one module per concern).

- :mod:`.config`: :class:`QuantizeConfig`, its Enums and ``resolve`` (defaults < recipe < options);
- :mod:`.graph`: ONNX helpers (node -> module names, MACs, weight axes) shared with ``trt_rules``;
- :mod:`.policy`: which Conv/MatMul/Gemm run in INT8 (``convnext`` / ``all`` / ``--exclude``);
- :mod:`.ort_backend` / :mod:`.nncf_backend`: calibration + Q/DQ insertion by each library;
- :mod:`.pipeline`: the stage: checkpoint -> FP32 ONNX -> calibrated Q/DQ ONNX, checked and written.

Heavy libraries (onnx, onnxruntime, nncf, torch) are imported inside functions.
"""

from edgeconvnext.quantize.ptq import BACKENDS, DEFAULT_BACKEND, QuantizeConfig, QuantizeResult, output_paths, quantize

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "QuantizeConfig", "QuantizeResult", "output_paths", "quantize"]
