"""INT8 post-training quantization of ConvNeXt to TensorRT-ready Q/DQ ONNX (one module per concern).

- :mod:`.config`: :class:`QuantizeConfig`, its Enums and ``resolve`` (defaults < recipe < options);
- :mod:`.policy`: which Conv/MatMul/Gemm run in INT8 (``convnext`` / ``all`` / ``--exclude``);
- :mod:`.smooth`: per-channel equalisation folded into LayerNorm + the next layer (outlier channels; torch);
- :mod:`.ort_backend` / :mod:`.nncf_backend`: calibration + Q/DQ insertion by each library;
- :mod:`.sensitivity` / :mod:`.budget` / :mod:`.valset`: per-layer-group scores on validation images and the
  ``--max-drop`` search that drops Q/DQ of the most harmful groups (one calibration);
- :mod:`.ptq`: the stage: checkpoint -> FP32 ONNX -> calibrated Q/DQ ONNX, checked and written.

The ONNX helpers it uses (node -> module names, MACs, weight axes; the TensorRT rules checker) are in
:mod:`edgeconvnext.onnx.graph` and :mod:`edgeconvnext.onnx.trt_rules`.

Heavy libraries (onnx, onnxruntime, nncf, torch) are imported inside functions.
"""

from edgeconvnext.quantize.ptq import BACKENDS, DEFAULT_BACKEND, QuantizeConfig, QuantizeResult, output_paths, quantize

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "QuantizeConfig", "QuantizeResult", "output_paths", "quantize"]
