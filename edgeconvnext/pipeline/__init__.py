"""The whole job in one call: checkpoint -> FP32/FP16/INT8 ONNX -> TensorRT rules -> engines (or the trtexec
commands) -> validation of every artifact -> report (JSON, Markdown, HTML) -> a bundle for the device.

- :mod:`.run`: the stage runner (:func:`~.run.run_pipeline`), each stage through library calls;
- :mod:`.state`: stage records (skip when matching, ``--force``, resume after an interruption);
- :mod:`.report`: report.json / report.md / report.html; :mod:`.plots`: its PNG figures (matplotlib);
- :mod:`.bundle`: the device bundle (ONNX files, resolved recipe, manifest with sha256, README);
- :mod:`.device_check`: on the device, without torch: build, validate and time every engine of a bundle.
"""

#: the stages of ``edgeconvnext run``, in order (``--force STAGE`` takes these names)
STAGES = ("export", "quantize", "fp16", "rules", "engines", "validate", "report", "bundle")
