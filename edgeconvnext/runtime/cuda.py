"""CUDA in one place: the device checks, device memory, CUDA-event timing, CUDA graphs; through torch, and
for the TensorRT runner through cuda-python too, so an engine runs on a Jetson that has no torch.

Input: torch with CUDA and/or cuda-python (``cuda-bindings``; extra ``cuda``), both imported lazily: nothing
here loads either at import time. Output: :func:`require_cuda_torch` (the torch module, or BackendMissing
saying what is missing), :func:`check_tensorrt_device` (TensorRT runs on CUDA devices only),
:func:`time_cuda_events` / :func:`capture_cuda_graph` (torch callables), and :class:`CudaDevice` (memory,
one stream, event timing, graph capture) from :func:`open_cuda_device`: :class:`CudaPythonDevice` when
cuda-python is importable, else :class:`TorchCudaDevice`.

Usage::

    torch = require_cuda_torch("CUDA event timing")
    samples_ms = time_cuda_events(run_fn, iters=200)
    dev = open_cuda_device("cuda"); ptr = dev.alloc(x.nbytes); dev.upload(ptr, x)
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


# ---- device memory, streams, events and graphs without torch --------------------------------------------
# The TensorRT runner needs device buffers, a stream, event timing and graph capture. On a Jetson with only
# JetPack (TensorRT, CUDA, Python) torch is absent: cuda-python's runtime bindings (the ``cuda-bindings``
# package; extra ``cuda``) provide all four. torch CUDA tensors remain the other way, for machines that have
# torch with CUDA and not cuda-python. Both sit behind one small interface, :class:`CudaDevice`.


def import_cudart() -> tuple[Any, str | None]:
    """(cuda-python's runtime module, None) or (None, why): ``cuda.bindings.runtime`` (cuda-bindings >= 12.6)
    or the older ``cuda.cudart`` layout."""
    errors = []
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            import importlib

            return importlib.import_module(name), None
        except Exception as e:  # noqa: BLE001 - ImportError, or OSError from a broken CUDA install
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return None, "; ".join(errors)


def _check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, value...) tuples: the value(s), or BackendMissing/UsageError naming the call."""
    if not isinstance(result, tuple):
        result = (result,)
    err, rest = result[0], result[1:]
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        try:
            text = cudart.cudaGetErrorString(err)[1].decode()
        except Exception:  # noqa: BLE001 - the message is informative only
            text = ""
        no_gpu = name in ("cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorInitializationError")
        cls = BackendMissing if no_gpu else UsageError
        raise cls(
            f"CUDA {what} failed: {name}"
            + (f" ({text})" if text else "")
            + (": the TensorRT runner needs an NVIDIA GPU with a working driver" if no_gpu else "")
        )
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class CudaDevice:
    """Device memory, one stream, event timing and graph capture for the TensorRT runner.

    ``alloc(nbytes) -> pointer``; ``upload(ptr, array)`` / ``download(array, ptr)`` copy on the stream and
    wait; ``stream_handle`` is what ``execute_async_v3`` takes; ``time_ms(fn, iters)`` times each call with
    an event pair on the stream; ``capture(fn)`` returns a replay callable or raises.
    """

    kind = "base"
    name = "unknown GPU"
    compute_capability: str | None = None

    def alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def upload(self, ptr: int, array: Any) -> None:
        raise NotImplementedError

    def download(self, array: Any, ptr: int) -> None:
        raise NotImplementedError

    @property
    def stream_handle(self) -> int:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    def time_ms(self, fn: Callable[[], Any], iters: int) -> list[float]:
        raise NotImplementedError

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what this object allocated (idempotent)."""


class CudaPythonDevice(CudaDevice):
    """:class:`CudaDevice` over cuda-python's runtime API (no torch)."""

    kind = "cuda-python"

    def __init__(self, cudart: Any, index: int = 0) -> None:
        self.cudart = cudart
        count = _check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count or index >= count:
            raise BackendMissing(
                f"CUDA device {index} not found ({count or 0} CUDA devices): the TensorRT runner needs an NVIDIA GPU"
            )
        _check(cudart, cudart.cudaSetDevice(index), "cudaSetDevice")
        prop = _check(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        raw = prop.name
        self.name = (raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)).strip()
        self.compute_capability = f"{prop.major}.{prop.minor}"
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._ptrs: list[Any] = []
        self._graphs: list[tuple[Any, Any]] = []

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def alloc(self, nbytes: int) -> int:
        ptr = _check(self.cudart, self.cudart.cudaMalloc(max(1, int(nbytes))), f"cudaMalloc({nbytes})")
        self._ptrs.append(ptr)
        return int(ptr)

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any, what: str) -> None:
        _check(self.cudart, self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream), what)
        self.synchronize()

    def upload(self, ptr: int, array: Any) -> None:
        k = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._copy(ptr, array.ctypes.data, array.nbytes, k, "cudaMemcpyAsync (host to device)")

    def download(self, array: Any, ptr: int) -> None:
        k = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._copy(array.ctypes.data, ptr, array.nbytes, k, "cudaMemcpyAsync (device to host)")

    def synchronize(self) -> None:
        _check(self.cudart, self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def time_ms(self, fn: Callable[[], Any], iters: int) -> list[float]:
        c = self.cudart
        start = _check(c, c.cudaEventCreate(), "cudaEventCreate")
        end = _check(c, c.cudaEventCreate(), "cudaEventCreate")
        samples = []
        try:
            for _ in range(iters):
                _check(c, c.cudaEventRecord(start, self._stream), "cudaEventRecord")
                fn()
                _check(c, c.cudaEventRecord(end, self._stream), "cudaEventRecord")
                # wait per iteration: each sample is one request's latency, not a queue's throughput
                _check(c, c.cudaEventSynchronize(end), "cudaEventSynchronize")
                samples.append(float(_check(c, c.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")))
        finally:
            c.cudaEventDestroy(start)
            c.cudaEventDestroy(end)
        return samples

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Capture ``fn``'s work on the stream (thread-local mode, as trtexec's --useCudaGraph) as a graph."""
        c = self.cudart
        mode = c.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(c, c.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            fn()
        finally:
            graph = _check(c, c.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        exe = _check(c, c.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self._graphs.append((graph, exe))
        stream = self._stream

        def replay() -> None:
            _check(c, c.cudaGraphLaunch(exe, stream), "cudaGraphLaunch")

        return replay

    def close(self) -> None:
        c = self.cudart
        for graph, exe in self._graphs:
            c.cudaGraphExecDestroy(exe)
            c.cudaGraphDestroy(graph)
        for p in self._ptrs:
            c.cudaFree(p)
        self._graphs, self._ptrs = [], []
        if getattr(self, "_stream", None) is not None:
            c.cudaStreamDestroy(self._stream)
            self._stream = None


class TorchCudaDevice(CudaDevice):
    """:class:`CudaDevice` over torch CUDA tensors (where torch with CUDA is installed and cuda-python is not)."""

    kind = "torch"

    def __init__(self, torch: Any, device: str = "cuda") -> None:
        self.torch = torch
        self.device = torch.device(device)
        if self.device.index is not None:
            # TensorRT's runtime, engine and context go to the current device: make it this one (as cuda-python's
            # cudaSetDevice does), else --device cuda:1 would put the buffers on 1 and the engine on 0
            torch.cuda.set_device(self.device)
        self.name = torch.cuda.get_device_name(self.device)
        self.compute_capability = "{}.{}".format(*torch.cuda.get_device_capability(self.device))
        self.stream = torch.cuda.Stream(device=self.device)
        self._tensors: list[Any] = []
        self._graphs: list[Any] = []

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def alloc(self, nbytes: int) -> int:
        t = self.torch.empty(max(1, int(nbytes)), dtype=self.torch.uint8, device=self.device)
        self._tensors.append(t)
        return int(t.data_ptr())

    def _view(self, ptr: int, nbytes: int) -> Any:
        for t in self._tensors:
            if t.data_ptr() == ptr:
                return t[:nbytes]
        raise UsageError("pointer not allocated by this device")

    def upload(self, ptr: int, array: Any) -> None:
        import numpy as np

        host = self.torch.from_numpy(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
        with self.torch.cuda.stream(self.stream):
            self._view(ptr, array.nbytes).copy_(host)
        self.synchronize()

    def download(self, array: Any, ptr: int) -> None:
        import numpy as np

        with self.torch.cuda.stream(self.stream):
            data = self._view(ptr, array.nbytes).cpu().numpy()
        self.synchronize()
        array.reshape(-1).view(np.uint8)[:] = data

    def synchronize(self) -> None:
        self.stream.synchronize()

    def time_ms(self, fn: Callable[[], Any], iters: int) -> list[float]:
        with self.torch.cuda.stream(self.stream):
            return time_cuda_events(fn, iters)

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            fn()
        self._graphs.append(graph)
        torch, stream = self.torch, self.stream

        def replay() -> None:
            # CUDAGraph.replay launches on the *current* stream: on this device's stream, so that synchronize()
            # waits for it and no replay overlaps another one (warm-up and timed ones alike)
            with torch.cuda.stream(stream):
                graph.replay()

        return replay

    def close(self) -> None:
        self._tensors, self._graphs = [], []


def cuda_buffers_missing() -> str | None:
    """Why neither cuda-python nor torch with CUDA can give the runner device memory (None: one can); no GPU
    is touched, only the imports are tried."""
    cudart, why = import_cudart()
    if cudart is not None:
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return None
        torch_why = f"torch {torch.__version__} sees no CUDA device"
    except ImportError:
        torch_why = "torch is not installed"
    return (
        f"the TensorRT runner needs CUDA device memory from cuda-python (not importable: {why}) or torch with "
        f"CUDA ({torch_why}): pip install 'edgeconvnext[cuda]' (cuda-python; no torch needed)"
    )


def open_cuda_device(device: str = "cuda") -> CudaDevice:
    """cuda-python's device when importable (no torch), else torch's; BackendMissing naming both."""
    index = int(device.split(":", 1)[1]) if ":" in str(device) else 0
    cudart, _ = import_cudart()
    if cudart is not None:
        return CudaPythonDevice(cudart, index)
    missing = cuda_buffers_missing()
    if missing is not None:
        raise BackendMissing(missing)
    import torch

    return TorchCudaDevice(torch, device)
