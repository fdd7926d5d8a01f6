"""edgeconvnext: ConvNeXt V1/V2 from a checkpoint to a validated INT8 TensorRT deployment.

Stages (one module each): zoo/model -> checkpoint -> export -> quantize -> engine -> validate.
Importing the package is cheap: heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
