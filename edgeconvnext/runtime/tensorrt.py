"""TensorRT runtime: load a plain ``.engine`` plan, refuse one built for another TensorRT or GPU, run it.

Input: an engine file and its sidecar ``.engine.json`` (written by build-engine). Output: a runner with
``.infer(np.ndarray (N, 3, S, S) float32) -> np.ndarray (N, classes) float32`` like the other runners, and
:meth:`TensorRTRunner.benchmark` (device buffers only, CUDA-graph replay, CUDA-event timing).

The compatibility check (:mod:`edgeconvnext.engine.compat`, plain Python over the sidecar and the plan
header) refuses an engine built by another TensorRT version or for another compute capability.

Device memory, the stream, CUDA-event timing and graph capture come from :mod:`edgeconvnext.runtime.cuda`:
cuda-python (``pip install 'edgeconvnext[cuda]'``; no torch needed, as on a JetPack-only Jetson), else torch
CUDA tensors. TensorRT 10/11 name-based I/O: ``num_io_tensors``, ``get_tensor_name/mode/dtype``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.

Usage::

    with TensorRTRunner(Path("nano_int8.engine")) as r:
        logits = r.infer(batch)
        print(r.benchmark(batch=1).p50_ms)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeconvnext.artifacts import Sidecar
from edgeconvnext.engine.compat import check_compatibility, check_plan_file
from edgeconvnext.env.probes import jetson_board
from edgeconvnext.errors import BackendMissing, CheckpointError, UsageError
from edgeconvnext.evaluate.latency import LatencyStats, summarize
from edgeconvnext.runtime.cuda import check_tensorrt_device, open_cuda_device
from edgeconvnext.runtime.runners import Runner

log = logging.getLogger(__name__)

#: TensorRT DataType names -> torch dtype names (the runner allocates torch CUDA buffers)
TRT_TO_TORCH_DTYPE = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def torch_dtype_name(trt_dtype: Any) -> str:
    """trt.DataType.HALF (or 'DataType.HALF', 'HALF') -> 'float16'.

    TensorRT's DataType is a pybind11 enum (FLOAT, HALF, BF16, INT8, INT32, INT64, BOOL, UINT8, FP8, INT4;
    11.x adds FP4, E8M0): its ``.name`` is the member name.
    """
    name = getattr(trt_dtype, "name", None)
    name = (name if isinstance(name, str) else str(trt_dtype).rsplit(".", 1)[-1]).upper()
    if name not in TRT_TO_TORCH_DTYPE:
        raise UsageError(f"engine tensor type {trt_dtype} is not supported by the TensorRT runner")
    return TRT_TO_TORCH_DTYPE[name]


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """trt.DataType.HALF -> numpy float16 (the host arrays copied to and from the engine's buffers)."""
    name = torch_dtype_name(trt_dtype)
    if name == "bfloat16":
        raise UsageError("engine tensor type BF16 has no numpy type: export the model with float32 I/O")
    return np.dtype(name)


def batch_chunks(n: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Split ``n`` images into (start, count, run_batch) chunks within the profile [lo, hi]; a chunk
    smaller than ``lo`` runs padded to ``lo`` (the padded rows are dropped)."""
    if n < 1:
        return []
    out = []
    start = 0
    while start < n:
        count = min(hi, n - start)
        out.append((start, count, max(count, lo)))
        start += count
    return out


def _require_tensorrt() -> Any:
    from edgeconvnext.engine.backend import import_tensorrt
    from edgeconvnext.env.probes import install_hint, probe_jetson

    trt, why = import_tensorrt()
    if trt is None:
        raise BackendMissing(
            f"running a TensorRT engine needs TensorRT's Python bindings ({why}); "
            f"{install_hint(probe_jetson() is not None)}"
        )
    return trt


class TensorRTRunner(Runner):
    """A deserialized TensorRT engine with one execution context on its own CUDA stream.

    Device memory, the stream, event timing and graph capture come from :func:`open_cuda_device`:
    cuda-python where it is installed (no torch needed, as on a JetPack-only Jetson), else torch CUDA tensors.
    """

    def __init__(self, path: str | Path, device: str = "cuda", *, check: bool = True) -> None:
        super().__init__()
        check_tensorrt_device(device)
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"engine not found: {self.path}")
        try:
            header = check_plan_file(self.path)
        except Exception as e:  # BuildError: not a plan
            raise CheckpointError(str(e)) from None
        trt = _require_tensorrt()
        self.trt = trt
        self.cuda = open_cuda_device(device)
        self.device = device
        sc = Sidecar.read(self.path)
        self.sidecar = sc.details if sc is not None else None  # what build-engine recorded about the build
        compat = check_compatibility(
            self.sidecar,
            trt_version=str(trt.__version__),
            compute_capability=self.cuda.compute_capability,
            gpu_name=self.cuda.name,
            header_version=header,
            engine=str(self.path),
            board=jetson_board(),
        )
        for w in compat.warnings:
            log.warning("%s", w)
        if check and not compat.ok:
            self.cuda.close()
            raise CheckpointError("; ".join(compat.problems))

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CheckpointError(
                f"TensorRT could not deserialize {self.path} (see the TensorRT messages above); "
                "rebuild it with this TensorRT version"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:  # TensorRT returns null when it cannot allocate the context's device memory
            raise CheckpointError(
                f"TensorRT could not create an execution context for {self.path} (see the "
                "TensorRT messages above; usually too little free GPU memory)"
            )
        inputs: list[str] = []
        outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(name)
            (inputs if mode == trt.TensorIOMode.INPUT else outputs).append(name)
        if len(inputs) != 1 or not outputs:
            raise CheckpointError(f"{self.path} has inputs {inputs} and outputs {outputs}; expected one image input")
        self.input_name = inputs[0]
        self.output_names = outputs
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.dtypes = {n: numpy_dtype(self.engine.get_tensor_dtype(n)) for n in inputs + outputs}
        shape = list(self.engine.get_tensor_shape(self.input_name))
        if len(shape) != 4:
            raise CheckpointError(f"{self.path}: input {self.input_name} has shape {shape}, expected (N, C, H, W)")
        if shape[0] == -1:
            lo, _, hi = (list(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
            self.batch_range = (int(lo[0]), int(hi[0]))
        else:
            self.batch_range = (int(shape[0]), int(shape[0]))
        self.batch = None  # chunking is done here against the profile range
        self.input_size = int(shape[2]) if shape[2] == shape[3] and shape[2] > 0 else None
        self.chw = tuple(int(d) for d in shape[1:])
        self.precision = str((self.sidecar or {}).get("precision", "unknown"))
        self.metadata = (self.sidecar or {}).get("metadata") or {}
        self.num_classes = None
        self._buffers: dict[int, dict[str, tuple[int, tuple[int, ...]]]] = {}  # batch -> name -> (ptr, shape)
        self.name = f"tensorrt:{self.path.name}"

    # -- buffers ------------------------------------------------------------------------------------

    def _prepare(self, batch: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Device buffers for ``batch`` and the context's shapes/addresses set for them (cached per batch)."""
        self._set_shape(batch)
        bufs = self._buffers.get(batch)
        if bufs is None:
            shapes = {self.input_name: (batch, *self.chw)}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise CheckpointError(f"{self.path}: output {name} has unresolved shape {shape}")
                shapes[name] = shape
            bufs = {
                n: (self.cuda.alloc(int(np.prod(s)) * self.dtypes[n].itemsize), tuple(int(d) for d in s))
                for n, s in shapes.items()
            }
            self._buffers[batch] = bufs
        for name, (ptr, _) in bufs.items():
            # set_tensor_address returns False (and TensorRT logs why) for a bad name or alignment
            if not self.context.set_tensor_address(name, ptr):
                raise CheckpointError(
                    f"TensorRT refused the device address of tensor {name} of {self.path} "
                    "(see the TensorRT messages above)"
                )
        return bufs

    def _set_shape(self, batch: int) -> None:
        # set_input_shape returns False when the shape is outside the optimisation profile
        if not self.context.set_input_shape(self.input_name, (batch, *self.chw)):
            lo, hi = self.batch_range
            raise UsageError(
                f"TensorRT refused input shape {(batch, *self.chw)} for {self.path} (profile batch "
                f"{lo}..{hi}); rebuild with --batch MIN,OPT,MAX covering {batch}"
            )

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise CheckpointError(f"TensorRT execution of {self.path} failed (see the TensorRT messages above)")

    # -- inference ----------------------------------------------------------------------------------

    def _infer_batched(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.batch_range
        outs = []
        for start, count, run_b in batch_chunks(x.shape[0], lo, hi):
            chunk = x[start : start + count]
            if run_b > count:
                chunk = np.concatenate([chunk, np.zeros((run_b - count,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self._infer(chunk)[:count])
        return np.concatenate(outs)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if tuple(x.shape[1:]) != self.chw:
            raise UsageError(f"{self.name}: the engine takes (N, {', '.join(map(str, self.chw))}) input, got {x.shape}")
        bufs = self._prepare(x.shape[0])
        ptr_in, _ = bufs[self.input_name]
        self.cuda.upload(ptr_in, np.ascontiguousarray(x, dtype=self.dtypes[self.input_name]))
        self._enqueue()
        ptr_out, shape = bufs[self.output_name]
        out = np.empty(shape, dtype=self.dtypes[self.output_name])
        self.cuda.download(out, ptr_out)  # waits for the stream
        return out.astype(np.float32)

    # -- timing -------------------------------------------------------------------------------------

    def benchmark(
        self, batch: int = 1, *, warmup: int = 50, iters: int = 200, cuda_graph: bool = True
    ) -> tuple[LatencyStats, str]:
        """Latency of the engine alone: device buffers filled once, no host transfers, CUDA events on the
        runner's stream; replayed as a CUDA graph when ``cuda_graph`` and capture succeeds.

        Returns the statistics and the path taken ("cuda_graph" or "enqueue").
        """
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise UsageError(
                f"batch {batch} is outside the engine's profile {lo}..{hi}; "
                "rebuild with --batch MIN,OPT,MAX covering it"
            )
        if warmup < 0 or iters < 1:
            raise UsageError(f"warmup must be >= 0 and iters >= 1, got {warmup} and {iters}")
        bufs = self._prepare(batch)
        ptr_in, shape = bufs[self.input_name]
        x = np.random.default_rng(0).standard_normal(shape).astype(self.dtypes[self.input_name])
        self.cuda.upload(ptr_in, x)  # once: no host transfer is timed
        # One enqueue before capture, so that initialisation work is not captured (trtexec does the same,
        # samples/common/sampleInference.cpp), then wait.
        self._enqueue()
        self.cuda.synchronize()
        run_fn = self._enqueue
        how = "enqueue"
        if cuda_graph:
            try:
                run_fn = self.cuda.capture(self._enqueue)  # thread-local capture mode, as trtexec's --useCudaGraph
                how = "cuda_graph"
            except Exception as e:  # noqa: BLE001 - some engines cannot be captured; time plain enqueues
                log.warning("CUDA graph capture of %s failed (%s): timing plain enqueues", self.path, e)
                # set the context's shape and addresses again in case the failed capture left it half-configured
                self._prepare(batch)
        for _ in range(warmup):
            run_fn()
        self.cuda.synchronize()
        samples = self.cuda.time_ms(run_fn, iters)
        return summarize(samples, batch=batch, warmup=warmup, timer="cuda_events"), how

    def close(self) -> None:
        self._buffers = {}
        self.context = None
        self.engine = None
        self.runtime = None
        cuda = getattr(self, "cuda", None)
        if cuda is not None:
            cuda.close()
