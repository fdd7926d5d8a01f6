"""Runners: one interface over onnxruntime, torch (and TensorRT, in runtime/tensorrt.py) for evaluation.

Input: an artifact (``.onnx``, ``.engine``) or a LoadedModel. Output: logits as a float32 numpy array.
A runner is a context manager with ``.infer(x: (N, 3, S, S) float32) -> (N, classes) float32``,
``.name``, ``.precision``, ``.input_size`` and the time spent in inference (``.infer_s``, ``.images``).
:func:`runner_latency` times one batch size on any runner: inputs prepared once (on the device for
CUDA, so no host transfers are timed), CUDA events and CUDA graphs where the backend allows.

Usage::

    with open_runner(Path("model.onnx")) as r:
        logits = r.infer(batch)
        print(runner_latency(r, 8, warmup=5, iters=30).stats.p50_ms)
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconvnext.artifacts import native_path_ok, readable_path
from edgeconvnext.errors import BackendMissing, CheckpointError, UsageError, require
from edgeconvnext.runtime.cuda import check_tensorrt_device

if TYPE_CHECKING:
    from edgeconvnext.evaluate.latency import LatencyResult
    from edgeconvnext.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "tensorrt", "torch-tensorrt")
#: backends that run a loaded checkpoint (the others run a file)
TORCH_BACKENDS = ("torch", "torch-tensorrt")
DEVICES = ("cpu", "cuda")


class Runner:
    """Common part: timing and the context-manager protocol. Subclasses implement ``_infer``."""

    name: str = "runner"
    precision: str = "fp32"
    input_size: int | None = None  # square input side, None when dynamic
    batch: int | None = None  # fixed batch size of the artifact, None when dynamic

    def __init__(self) -> None:
        self.infer_s = 0.0
        self.images = 0

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the session / model (idempotent)."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.infer_s if self.infer_s > 0 else 0.0

    def infer(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, classes) float32 logits; the call's time is added to ``infer_s``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise UsageError(f"{self.name}: expected a (N, 3, S, S) batch, got shape {tuple(x.shape)}")
        if self.input_size is not None and x.shape[2:] != (self.input_size, self.input_size):
            raise UsageError(
                f"{self.name}: the model takes {self.input_size}x{self.input_size} inputs, "
                f"got {x.shape[2]}x{x.shape[3]}: preprocess with the model's img_size"
            )
        t0 = time.perf_counter()
        out = self._infer_batched(x)
        self.infer_s += time.perf_counter() - t0
        self.images += x.shape[0]
        return out

    def _infer_batched(self, x: np.ndarray) -> np.ndarray:
        """Split/pad to the artifact's fixed batch when it has one."""
        b = self.batch
        if b is None or x.shape[0] == b:
            return self._infer(x)
        outs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start : start + b]
            n = chunk.shape[0]
            if n < b:  # pad with zeros; the padded rows' logits are dropped
                chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self._infer(chunk)[:n])
        return np.concatenate(outs)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- latency ------------------------------------------------------------------------------------

    def _latency_input(self, batch: int, img_size: int | None) -> tuple[int, int, int, int]:
        """The (N, 3, S, S) shape to time; refuses a batch the artifact cannot take as one call."""
        if batch < 1:
            raise UsageError(f"--latency-batch values must be >= 1, got {batch}")
        if self.batch is not None and batch != self.batch:
            raise UsageError(
                f"--latency-batch {batch}: {self.name} has a fixed batch of {self.batch} (other sizes "
                f"would be split or padded); use --latency-batch {self.batch}, or export with a "
                "dynamic batch"
            )
        size = self.input_size
        if size is None:
            if img_size is None:
                raise UsageError(f"{self.name} has a dynamic input size: give --img-size for the latency run")
            size = img_size
        elif img_size is not None and img_size != size:
            raise UsageError(f"--img-size {img_size}: {self.name} takes {size} px inputs; drop --img-size")
        return (batch, 3, size, size)

    def latency(
        self, batch: int, *, warmup: int, iters: int, cuda_graph: bool = False, img_size: int | None = None
    ) -> LatencyResult:
        """Host-timed ``infer`` on a batch prepared once (random normal data, as in the timed path of any
        deployment the preprocessing is not part of the model's latency). The accuracy counters
        (``infer_s``, ``images``) are left as they were."""
        from edgeconvnext.evaluate.latency import LatencyResult, measure_latency, peak_rss_bytes

        if cuda_graph:
            raise UsageError(
                f"--cuda-graph: {self.name} runs on the CPU, which has no CUDA graphs; "
                "drop --cuda-graph or use --device cuda"
            )
        x = np.random.default_rng(0).standard_normal(self._latency_input(batch, img_size)).astype(np.float32)
        saved = (self.infer_s, self.images)
        try:
            stats = measure_latency(lambda: self.infer(x), warmup=warmup, iters=iters, batch=batch)
        finally:
            self.infer_s, self.images = saved
        rss = peak_rss_bytes()
        return LatencyResult(
            stats, cuda_graph=False, memory_bytes=rss, memory_kind="process peak RSS" if rss is not None else "n/a"
        )


_IMAGE_TYPES = ("tensor(float)", "tensor(float16)")


def _check_interface(session: Any, what: str) -> None:
    """One float32/float16 image input (N, 3, S, S) and one (N, classes) output, as every edgeconvnext export
    has; anything else is a CheckpointError saying what the file has (a detector, a segmenter, a feature
    extractor or an int64-input graph is not an image classifier this tool can score)."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1:
        names = ", ".join(f"'{i.name}'" for i in ins)
        raise CheckpointError(f"{what} has {len(ins)} inputs ({names}); an image classifier has one: (N, 3, S, S)")
    inp = ins[0]
    if inp.type not in _IMAGE_TYPES:
        raise CheckpointError(
            f"{what}: input '{inp.name}' is {inp.type.replace('tensor(', '').rstrip(')')}; an image classifier "
            "takes float32 or float16 images (N, 3, S, S)"
        )
    if len(inp.shape) != 4 or (isinstance(inp.shape[1], int) and inp.shape[1] != 3):
        raise CheckpointError(f"{what}: input '{inp.name}' has shape {list(inp.shape)}; expected (N, 3, S, S)")
    if len(outs) != 1 or len(outs[0].shape) != 2:
        shapes = "; ".join(f"'{o.name}' {list(o.shape)}" for o in outs)
        raise CheckpointError(f"{what} outputs {shapes}; an image classifier has one output of shape (N, classes)")


class OnnxRuntimeRunner(Runner):
    """onnxruntime InferenceSession on CPU (or CUDA with onnxruntime-gpu); reads input name, size, batch."""

    def __init__(
        self, path: str | Path, device: str = "cpu", threads: int | None = None, int8: str = "kernels"
    ) -> None:
        """``int8``: how Q/DQ are computed (:mod:`edgeconvnext.onnx.session`): onnxruntime's int8 kernels
        (default), ``emulated`` in float as written (TensorRT's arithmetic), or ``exact`` (no optimisation)."""
        super().__init__()
        ort = require("onnxruntime", "the onnxruntime backend")
        from edgeconvnext.onnx.session import check_int8_math, session_options

        check_int8_math(int8)
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model not found: {self.path}")
        if device not in DEVICES:
            raise UsageError(f"unknown device '{device}' for onnxruntime; use one of {', '.join(DEVICES)}")
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendMissing(
                    "--device cuda: this onnxruntime has no CUDAExecutionProvider; "
                    "pip install onnxruntime-gpu, or use --device cpu"
                )
            providers = ["CUDAExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = session_options(int8, threads)
        try:
            # a path onnxruntime's C++ side would misread (see native_path_ok) goes in as the file's bytes
            model: str | bytes = str(self.path) if native_path_ok(self.path) else self.path.read_bytes()
            self.session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(f"onnxruntime cannot load {readable_path(self.path)}: {e}") from None
        self.device = device
        _check_interface(self.session, readable_path(self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = inp.shape
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.input_size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None
        out_shape = self.session.get_outputs()[0].shape
        self.num_classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        from edgeconvnext.onnx.metadata import decode_metadata

        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.precision = str(self.metadata.get("precision") or ("fp16" if self.input_dtype == np.float16 else "fp32"))
        self.int8 = int8
        math = f" int8 {int8}" if int8 != "kernels" else ""
        self.name = f"onnxruntime-{device}{math}:{self.path.name}"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        return self.session.run([self.output_name], feed)[0].astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None

    def latency(
        self, batch: int, *, warmup: int, iters: int, cuda_graph: bool = False, img_size: int | None = None
    ) -> LatencyResult:
        """On CUDA: input and output bound on the GPU with IOBinding (no host transfers), host-timed
        ``run_with_iobinding`` (onnxruntime synchronizes its stream at the end of a run); no CUDA graphs.
        On CPU: the base class's ``infer`` timing."""
        if self.device != "cuda":
            return super().latency(batch, warmup=warmup, iters=iters, cuda_graph=cuda_graph, img_size=img_size)
        import onnxruntime as ort

        from edgeconvnext.evaluate.latency import LatencyResult, measure_latency

        if cuda_graph:
            raise UsageError(
                f"--cuda-graph: the onnxruntime backend is timed without CUDA graphs ({self.name}); "
                "use --no-cuda-graph, or the tensorrt/torch backend for CUDA-graph timing"
            )
        x = np.random.default_rng(0).standard_normal(self._latency_input(batch, img_size)).astype(self.input_dtype)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(self.output_name, "cuda")
        session = self.session
        stats = measure_latency(lambda: session.run_with_iobinding(binding), warmup=warmup, iters=iters, batch=batch)
        return LatencyResult(stats, cuda_graph=False, notes=["inputs/outputs bound on the GPU (IOBinding)"])


def check_device(device: str) -> None:
    """Refuse an unknown device, or cuda where torch has no CUDA, with the fix in the message."""
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}'; use one of {', '.join(DEVICES)}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise BackendMissing(
                f"--device cuda: {why} (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch on a GPU machine"
            )


class TorchRunner(Runner):
    """A LoadedModel in torch eval mode, fp32 or fp16, optionally torch.compile'd."""

    def __init__(
        self, loaded: LoadedModel, device: str = "cpu", precision: str = "fp32", compile: bool = False
    ) -> None:
        super().__init__()
        import copy

        import torch

        check_device(device)
        if precision not in ("fp32", "fp16"):
            raise UsageError(
                f"torch runner precision '{precision}' is not supported; use fp32 or fp16 "
                "(INT8 runs from a Q/DQ ONNX on onnxruntime or TensorRT)"
            )
        self.device = device
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        model = copy.deepcopy(loaded.model).eval().to(device=device, dtype=self.dtype)
        # dynamic=False: one static graph per batch size, as a deployment at a fixed batch would compile it
        self.model = torch.compile(model, dynamic=False) if compile else model
        self.compiled = compile
        self.loaded = loaded
        self.input_size = loaded.preprocess.img_size
        self.num_classes = int(loaded.model.num_classes)
        src = loaded.source.name if loaded.source is not None else loaded.arch.name
        self.name = f"torch-{device}-{precision}{'-compile' if compile else ''}:{src}"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)
            y = self.model(t)
            return y.float().cpu().numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

    def latency(
        self, batch: int, *, warmup: int, iters: int, cuda_graph: bool = False, img_size: int | None = None
    ) -> LatencyResult:
        """On CUDA: a random input tensor on the GPU in the runner's dtype, the forward pass replayed as a
        CUDA graph (runtime.cuda.capture_cuda_graph) when ``cuda_graph``, timed with CUDA events; memory is
        torch.cuda.max_memory_allocated over setup and timing (weights included). On CPU: ``infer`` timing."""
        if self.device != "cuda":
            return super().latency(batch, warmup=warmup, iters=iters, cuda_graph=cuda_graph, img_size=img_size)
        import torch

        from edgeconvnext.evaluate.latency import LatencyResult, measure_latency
        from edgeconvnext.runtime.cuda import capture_cuda_graph

        shape = self._latency_input(batch, img_size)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        x = torch.randn(shape, device=self.device, dtype=self.dtype)
        model = self.model

        def forward(t: torch.Tensor) -> torch.Tensor:
            return model(t)

        def eager() -> torch.Tensor:
            with torch.inference_mode():
                return forward(x)

        notes: list[str] = []
        run_fn: Callable[[], Any] = eager
        if cuda_graph:
            try:
                run_fn = capture_cuda_graph(forward, x)
            except Exception as e:  # noqa: BLE001 - capture can fail (dynamic control flow); time plain launches
                notes.append(f"CUDA graph capture failed ({type(e).__name__}: {e}); timed plain launches")
                log.warning("%s: %s", self.name, notes[-1])
                torch.cuda.synchronize()
        used_graph = run_fn is not eager
        stats = measure_latency(run_fn, warmup=warmup, iters=iters, use_cuda_events=True, batch=batch)
        torch.cuda.synchronize()
        return LatencyResult(
            stats,
            cuda_graph=used_graph,
            memory_bytes=int(torch.cuda.max_memory_allocated()),
            memory_kind="torch.cuda.max_memory_allocated",
            notes=notes,
        )


def backend_for(artifact: Any) -> str:
    """The backend an artifact runs on: .onnx -> onnxruntime, .engine/.plan -> tensorrt, else torch."""
    if isinstance(artifact, (str, Path)):
        suffix = Path(artifact).suffix.lower()
        if suffix == ".onnx":
            return "onnxruntime"
        if suffix in (".engine", ".plan", ".trt"):
            return "tensorrt"
    return "torch"


def open_runner(
    artifact: str | Path | LoadedModel,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    *,
    threads: int | None = None,
    compile: bool = False,
    int8: str = "kernels",
) -> Runner:
    """A runner for ``artifact``: an ONNX file, a TensorRT engine, a checkpoint file or a LoadedModel.

    ``backend`` None picks it from the artifact (see :func:`backend_for`); an explicit backend that
    cannot run the artifact is refused. ``device`` None is cuda for TensorRT, else cpu; TensorRT on the
    CPU is refused. ``precision`` applies to torch (fp32/fp16); ONNX and engines carry their precision
    inside, so asking another one is refused. ``int8`` (onnxruntime only): see :class:`OnnxRuntimeRunner`.
    """
    backend = backend or backend_for(artifact)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    from edgeconvnext.onnx.session import check_int8_math

    check_int8_math(int8, backend)
    kind = backend_for(artifact)
    device = device or ("cuda" if backend in ("tensorrt", "torch-tensorrt") else "cpu")
    if backend in ("tensorrt", "torch-tensorrt"):
        check_tensorrt_device(device)
    if backend in TORCH_BACKENDS:
        if kind != "torch":
            raise UsageError(f"--backend {backend} cannot run {artifact}: give a checkpoint, or use --backend {kind}")
        if isinstance(artifact, (str, Path)):
            # the runtime layer does not read checkpoints (it never imports models/): the caller loads one
            raise UsageError(
                f"--backend {backend} runs a loaded model, not the path {artifact}: load it first "
                "(edgeconvnext.models.checkpoint.load_model)"
            )
        if backend == "torch-tensorrt":
            if compile:
                raise UsageError("--compile: Torch-TensorRT compiles the model itself; drop --compile")
            from edgeconvnext.runtime.torch_tensorrt import TorchTensorRTRunner

            return TorchTensorRTRunner(artifact, device=device, precision=precision or "fp32")
        return TorchRunner(artifact, device=device, precision=precision or "fp32", compile=compile)
    if kind != backend:
        raise UsageError(
            f"--backend {backend} cannot run {artifact}: expected a "
            f"{'.onnx file' if backend == 'onnxruntime' else '.engine file'}"
        )
    assert isinstance(artifact, (str, Path))  # backend_for: a LoadedModel is "torch", handled above
    if backend == "onnxruntime":
        runner: Runner = OnnxRuntimeRunner(artifact, device=device, threads=threads, int8=int8)
    else:
        try:
            trt_runtime = importlib.import_module("edgeconvnext.runtime.tensorrt")
        except ModuleNotFoundError as e:
            if e.name == "edgeconvnext.runtime.tensorrt":
                raise BackendMissing(
                    "the TensorRT backend is not part of this installation (edgeconvnext.runtime.tensorrt is missing)"
                ) from None
            raise BackendMissing(
                f"TensorRT backend needs '{e.name}': install TensorRT's Python bindings "
                "(JetPack ships them; on x86 see NVIDIA's TensorRT install guide)"
            ) from None
        runner = trt_runtime.TensorRTRunner(artifact, device=device)
    if precision is not None and precision != runner.precision:
        runner.close()
        raise UsageError(
            f"{artifact} is a {runner.precision} model: precision {precision} cannot be chosen "
            "at run time; export/build a model of that precision"
        )
    return runner


def cuda_graph_capable(runner: Runner) -> bool:
    """Whether :func:`runner_latency` can replay ``runner`` as a CUDA graph: torch and TensorRT on CUDA."""
    on_cuda = str(getattr(runner, "device", "cpu")).startswith("cuda")
    return on_cuda and (isinstance(runner, TorchRunner) or callable(getattr(runner, "benchmark", None)))


def runner_latency(
    runner: Runner, batch: int, *, warmup: int, iters: int, cuda_graph: bool = False, img_size: int | None = None
) -> LatencyResult:
    """Latency of ``runner`` at ``batch``: TensorRT through its own benchmark (device buffers, CUDA events,
    CUDA graph), every other runner through its ``latency`` method. ``cuda_graph`` asks for graph replay;
    a capture that fails falls back to plain launches and the result says so (``cuda_graph`` False)."""
    benchmark = getattr(runner, "benchmark", None)
    if not callable(benchmark):
        return runner.latency(batch, warmup=warmup, iters=iters, cuda_graph=cuda_graph, img_size=img_size)
    from edgeconvnext.evaluate.latency import LatencyResult

    if img_size is not None and runner.input_size is not None and img_size != runner.input_size:
        raise UsageError(f"--img-size {img_size}: {runner.name} takes {runner.input_size} px inputs; drop --img-size")
    stats, how = benchmark(batch, warmup=warmup, iters=iters, cuda_graph=cuda_graph)
    engine = getattr(runner, "engine", None)
    mem = getattr(engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
    if mem is None:
        mem = getattr(engine, "device_memory_size", None)
    notes = [] if how == "cuda_graph" or not cuda_graph else ["CUDA graph capture failed; timed plain enqueues"]
    return LatencyResult(
        stats,
        cuda_graph=how == "cuda_graph",
        memory_bytes=int(mem) if mem is not None else None,
        memory_kind="TensorRT execution-context device memory" if mem is not None else "n/a",
        notes=notes,
    )
