"""CUDA through torch, in one place: the device checks, device buffers, CUDA-event timing, CUDA graphs.

Input: torch with CUDA (imported lazily: nothing here loads torch at import time). Output:
:func:`require_cuda_torch` (the torch module, or BackendMissing saying what is missing),
:func:`check_tensorrt_device` (TensorRT runs on CUDA devices only), :class:`DeviceBuffers` (torch CUDA
tensors per batch size, the TensorRT runner's I/O), :func:`time_cuda_events` (per-iteration device time on
the current stream) and :func:`capture_cuda_graph` (a torch callable replayed as a CUDA graph).

Usage::

    torch = require_cuda_torch("CUDA event timing")
    samples_ms = time_cuda_events(run_fn, iters=200)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeconvnext.errors import BackendMissing, UsageError


def require_cuda_torch(purpose: str) -> Any:
    """The torch module when it has a usable CUDA device; else BackendMissing naming ``purpose``."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        raise BackendMissing(f"{purpose} needs torch with CUDA: install a CUDA build of torch") from None
    if not torch.cuda.is_available():
        raise BackendMissing(
            f"{purpose} needs a CUDA GPU and a CUDA build of torch (torch {torch.__version__} sees no CUDA device)"
        )
    return torch


def check_tensorrt_device(device: str) -> None:
    """TensorRT engines run on CUDA devices only: refuse any other ``--device`` with the way out."""
    if not str(device).startswith("cuda"):
        raise UsageError(
            f"--device {device}: TensorRT engines run on the GPU only; use --device cuda "
            "(or validate the .onnx on the CPU with --backend onnxruntime)"
        )


class DeviceBuffers:
    """Torch CUDA tensors for each batch size, allocated once and reused (their addresses stay valid for
    an execution context or a captured CUDA graph as long as this object holds them)."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.device = device
        self._by_batch: dict[int, dict[str, Any]] = {}

    def get(self, batch: int) -> dict[str, Any] | None:
        """The buffers allocated for ``batch``, or None."""
        return self._by_batch.get(batch)

    def allocate(self, batch: int, specs: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, Any]:
        """Allocate (uninitialised) ``{name: (shape, torch dtype)}`` for ``batch`` and keep them."""
        bufs = {
            name: self.torch.empty(shape, dtype=dtype, device=self.device) for name, (shape, dtype) in specs.items()
        }
        self._by_batch[batch] = bufs
        return bufs

    def clear(self) -> None:
        self._by_batch = {}


def time_cuda_events(run_fn: Callable[[], Any], iters: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``run_fn``, from a CUDA event pair on the current stream."""
    torch = require_cuda_torch("CUDA event timing (use the CPU timer: use_cuda_events=False)")
    samples = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run_fn()
        end.record()
        # Wait per iteration: each sample is one request's latency, not a queue's throughput.
        end.synchronize()
        samples.append(float(start.elapsed_time(end)))
    return samples


class CudaGraphCallable:
    """A captured CUDA graph: write the input into ``static_input``, call it, read ``static_output``."""

    def __init__(self, graph: Any, static_input: Any, static_output: Any) -> None:
        self.graph = graph
        self.static_input = static_input
        self.static_output = static_output

    def __call__(self) -> Any:
        self.graph.replay()
        return self.static_output


def capture_cuda_graph(fn: Callable[[Any], Any], static_input: Any, *, warmup: int = 3) -> CudaGraphCallable:
    """Capture ``fn(static_input)`` (a torch CUDA callable) into a CUDA graph.

    Warm-up runs on a side stream first (cuDNN/cuBLAS pick their algorithms and allocate outside the
    capture), as torch's CUDA graph documentation requires. The returned callable replays the graph;
    copy new data into ``static_input`` (same shape and dtype) before each call.
    """
    torch = require_cuda_torch("CUDA graph capture")
    if not getattr(static_input, "is_cuda", False):
        raise UsageError("capture_cuda_graph needs a CUDA tensor as static_input")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(max(1, warmup)):
            fn(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_output = fn(static_input)
    return CudaGraphCallable(graph, static_input, static_output)
