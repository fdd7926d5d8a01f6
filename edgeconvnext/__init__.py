"""edgeconvnext: ConvNeXt V1/V2 from a checkpoint to a validated INT8 TensorRT deployment.

One sub-package per pipeline stage, imports following the data flow: models (architectures, checkpoints),
data, train -> export -> quantize -> engine -> runtime -> evaluate, over onnx (graph index, metadata, FP16,
TensorRT rules) and env (machine probes); pipeline and cli on top; errors, config, artifacts, signals and
recipes are shared by all. onnx, engine and runtime never import models, train or export; engine never imports torch.
Importing the package is cheap: heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
