"""Torch-TensorRT, the other TensorRT route: a checkpoint compiled by ``torch_tensorrt.compile(ir="dynamo")``
and run as a torch module, so reports can show ONNX-TensorRT and Torch-TensorRT side by side.

Input: a LoadedModel (the caller loads the checkpoint: the runtime layer never imports models/), ``fp32`` or
``fp16``. Output: a runner like :class:`~edgeconvnext.runtime.runners.TorchRunner` (``infer``, CUDA-event
latency with CUDA-graph replay), whose module is the Torch-TensorRT compilation.

Written to the documented Torch-TensorRT 2.13/2.14 API and not run here (no GPU, and torch-tensorrt pins
a TensorRT that cannot be installed on this machine): strongly typed, so the precision is the model's
dtype (``enabled_precisions`` is gone from the dynamo path since 2.13; use_explicit_typing is the default
since 2.10); one dynamic-batch input ``torch_tensorrt.Input(min_shape, opt_shape, max_shape, dtype)``;
``min_block_size=1`` so the whole ConvNeXt is one TensorRT engine. Install: ``pip install
'edgeconvnext[torch-tensorrt]'``.

Usage::

    with TorchTensorRTRunner(load_model(None, ckpt), precision="fp16") as r:
        logits = r.infer(batch)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconvnext.errors import BackendMissing, UsageError
from edgeconvnext.runtime.runners import TorchRunner

if TYPE_CHECKING:
    from edgeconvnext.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

#: the compiled module's batch profile: 1..MAX_BATCH, optimised for batch 1 (latency); larger inputs are split
MAX_BATCH = 64
PRECISIONS = ("fp32", "fp16")


def import_torch_tensorrt() -> Any:
    """The torch_tensorrt module, or BackendMissing naming the extra."""
    try:
        import torch_tensorrt  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError from a TensorRT it cannot load
        raise BackendMissing(
            f"--backend torch-tensorrt needs Torch-TensorRT ({type(e).__name__}: {e}): "
            "pip install 'edgeconvnext[torch-tensorrt]' (it pins its torch and TensorRT versions; CUDA GPU only)"
        ) from None
    return torch_tensorrt


class TorchTensorRTRunner(TorchRunner):
    """A checkpoint compiled with Torch-TensorRT (dynamo), fp32 or fp16, on a CUDA device."""

    def __init__(self, loaded: LoadedModel, device: str = "cuda", precision: str = "fp32") -> None:
        from edgeconvnext.runtime.cuda import check_tensorrt_device, require_cuda_torch

        check_tensorrt_device(device)
        if precision not in PRECISIONS:
            raise UsageError(
                f"--precision {precision}: Torch-TensorRT runs the checkpoint in fp32 or fp16 (INT8 goes through "
                "the Q/DQ ONNX and build-engine)"
            )
        tt = import_torch_tensorrt()
        torch = require_cuda_torch("--backend torch-tensorrt")
        super().__init__(loaded, device=device, precision=precision, compile=False)
        s = int(loaded.preprocess.img_size)
        spec = tt.Input(
            min_shape=(1, 3, s, s), opt_shape=(1, 3, s, s), max_shape=(MAX_BATCH, 3, s, s), dtype=self.dtype
        )
        log.info(
            "compiling %s with Torch-TensorRT %s (%s, batch 1..%d)",
            loaded.arch.name,
            tt.__version__,
            precision,
            MAX_BATCH,
        )
        try:
            # no_grad, not inference_mode: Torch-TensorRT's examples compile under no_grad, and torch.export /
            # torch.compile have failed on inference tensors (pytorch/pytorch#101151)
            with torch.no_grad():
                # precision from the module's dtype (strongly typed): no enabled_precisions (removed in 2.13)
                self.model = tt.compile(self.model, ir="dynamo", arg_inputs=[spec], min_block_size=1)
        except Exception as e:  # noqa: BLE001 - the compiler raises many types; one message
            raise BackendMissing(
                f"Torch-TensorRT could not compile {loaded.arch.name} ({type(e).__name__}: {e})"
            ) from e
        self.batch_range = (1, MAX_BATCH)
        src = loaded.source.name if loaded.source is not None else loaded.arch.name
        self.name = f"torch-tensorrt-{precision}:{src}"
        self.version = str(tt.__version__)

    def _infer_batched(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] <= MAX_BATCH:
            return self._infer(x)
        return np.concatenate([self._infer(x[i : i + MAX_BATCH]) for i in range(0, x.shape[0], MAX_BATCH)])
