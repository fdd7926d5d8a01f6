"""Runners: onnxruntime and torch agree with the model, fixed batches are split/padded, open_runner refuses clearly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeconvnext.errors import BackendMissing, CheckpointError, UsageError
from edgeconvnext.evaluate.latency import LatencyStats, summarize
from edgeconvnext.export.onnx_export import export_onnx
from edgeconvnext.models.checkpoint import load_model
from edgeconvnext.runtime.runners import (
    OnnxRuntimeRunner,
    Runner,
    TorchRunner,
    backend_for,
    cuda_graph_capable,
    open_runner,
    runner_latency,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("runners")
    torch.manual_seed(0)
    loaded = load_model("convnextv2_test", num_classes=5, img_size=32)
    loaded.class_names = list("abcde")
    return {
        "loaded": loaded,
        "fp32": export_onnx(loaded, root / "m.onnx").path,
        "fp16": export_onnx(loaded, root / "m16.onnx", precision="fp16").path,
        "b4": export_onnx(loaded, root / "m_b4.onnx", batch=4).path,
    }


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _torch_logits(loaded, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.model(torch.from_numpy(x)).numpy()


def test_onnxruntime_runner_reads_the_model(models):
    with OnnxRuntimeRunner(models["fp32"]) as r:
        assert r.input_name == "input" and r.input_size == 32 and r.batch is None and r.num_classes == 5
        assert r.precision == "fp32" and r.metadata["class_names"] == list("abcde")
        x = _x(3)
        y = r.infer(x)
        assert y.dtype == np.float32 and y.shape == (3, 5)
        np.testing.assert_allclose(y, _torch_logits(models["loaded"], x), rtol=1e-4, atol=1e-5)
        assert r.images == 3 and r.infer_s > 0 and r.images_per_s > 0


def test_fp16_onnx_reports_its_precision(models):
    with OnnxRuntimeRunner(models["fp16"]) as r:
        assert r.precision == "fp16"
        x = _x(2)
        ref = _torch_logits(models["loaded"], x)
        assert np.abs(r.infer(x) - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("n", [1, 4, 7, 9])
def test_fixed_batch_is_split_and_padded(models, n):
    x = _x(n, seed=n)
    with OnnxRuntimeRunner(models["b4"]) as fixed, OnnxRuntimeRunner(models["fp32"]) as dynamic:
        assert fixed.batch == 4
        np.testing.assert_allclose(fixed.infer(x), dynamic.infer(x), rtol=1e-5, atol=1e-6)


def test_wrong_input_size_is_refused(models):
    with OnnxRuntimeRunner(models["fp32"]) as r, pytest.raises(UsageError, match="32x32"):
        r.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_torch_runner_fp32_and_fp16(models):
    x = _x(2)
    ref = _torch_logits(models["loaded"], x)
    with TorchRunner(models["loaded"]) as r:
        assert r.name.startswith("torch-cpu-fp32") and r.input_size == 32
        np.testing.assert_allclose(r.infer(x), ref, rtol=1e-6, atol=1e-6)
    with TorchRunner(models["loaded"], precision="fp16") as r:
        y = r.infer(x)
        assert y.dtype == np.float32 and np.abs(y - ref).max() < 0.05 * np.abs(ref).max()
    assert next(models["loaded"].model.parameters()).dtype == torch.float32  # the runner works on a copy


def test_open_runner_picks_the_backend(models, tmp_path):
    assert backend_for(models["fp32"]) == "onnxruntime"
    assert backend_for(Path("x.engine")) == "tensorrt" and backend_for(models["loaded"]) == "torch"
    with open_runner(models["fp32"]) as r:
        assert isinstance(r, OnnxRuntimeRunner)
    with open_runner(models["loaded"], precision="fp16") as r:
        assert isinstance(r, TorchRunner) and r.precision == "fp16"


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"backend": "torch"}, UsageError, "--backend torch cannot run"),
        ({"backend": "tensorrt"}, UsageError, "expected a .engine file"),
        ({"backend": "openvino"}, UsageError, "unknown backend 'openvino'"),
        ({"precision": "fp16"}, UsageError, "is a fp32 model"),
        ({"device": "tpu"}, UsageError, "unknown device 'tpu'"),
    ],
)
def test_open_runner_refusals(models, kwargs, error, message):
    with pytest.raises(error, match=message):
        open_runner(models["fp32"], **kwargs)


def test_cuda_without_a_gpu_names_the_fix(models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    with pytest.raises(BackendMissing, match="onnxruntime-gpu"):
        OnnxRuntimeRunner(models["fp32"], device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(BackendMissing, match="--device cuda"):
            TorchRunner(models["loaded"], device="cuda")


def test_engine_when_the_tensorrt_module_is_absent(tmp_path, monkeypatch):
    import sys

    import edgeconvnext.runtime

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "edgeconvnext.runtime.tensorrt", None)  # as in an install without it
    # Once imported (tests/test_engine.py does), the module is also an attribute of the package, which
    # 'from . import tensorrt' would find whatever sys.modules says: hide it too.
    monkeypatch.delattr(edgeconvnext.runtime, "tensorrt", raising=False)
    with pytest.raises(BackendMissing, match=r"edgeconvnext\.runtime\.tensorrt"):
        open_runner(engine)


def test_engine_without_tensorrt_is_refused(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises((BackendMissing, CheckpointError)):  # no TensorRT, or not a plan file: never a crash
        open_runner(engine)


def test_missing_or_broken_onnx(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        OnnxRuntimeRunner(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load"):
        OnnxRuntimeRunner(bad)


# ---- latency ----------------------------------------------------------------------------------------


def test_runner_latency_on_cpu_leaves_the_accuracy_counters(models):
    with OnnxRuntimeRunner(models["fp32"]) as r:
        r.infer(_x(2))
        before = (r.infer_s, r.images)
        res = runner_latency(r, 3, warmup=2, iters=6)
        assert (r.infer_s, r.images) == before
    s = res.stats
    assert s.batch == 3 and s.iters == 6 and s.warmup == 2 and len(s.samples_ms) == 6
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.images_per_s == pytest.approx(3000.0 / s.mean_ms)
    assert res.cuda_graph is False and res.memory_kind == "process peak RSS" and res.memory_bytes > 0
    assert not cuda_graph_capable(r)


def test_torch_runner_latency_on_cpu(models):
    with TorchRunner(models["loaded"], precision="fp16") as r:
        res = runner_latency(r, 2, warmup=1, iters=3)
        assert res.stats.batch == 2 and res.stats.timer == "perf_counter" and not cuda_graph_capable(r)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch": 1, "model": "b4"}, "fixed batch of 4"),
        ({"batch": 2, "cuda_graph": True}, "no CUDA graphs"),
        ({"batch": 2, "img_size": 64}, "takes 32 px inputs"),
        ({"batch": 0}, ">= 1"),
    ],
)
def test_runner_latency_refusals(models, kwargs, message):
    with OnnxRuntimeRunner(models[kwargs.pop("model", "fp32")]) as r, pytest.raises(UsageError, match=message):
        runner_latency(r, warmup=0, iters=1, **kwargs)


class _Engine:
    device_memory_size_v2 = 12_345_678


class _BenchmarkRunner(Runner):
    """Stands in for TensorRTRunner (no TensorRT here): the same benchmark() contract."""

    name, device, input_size = "tensorrt:fake.engine", "cuda", 32
    engine = _Engine()

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.calls = how, []

    def benchmark(self, batch: int, *, warmup: int, iters: int, cuda_graph: bool) -> tuple[LatencyStats, str]:
        self.calls.append((batch, warmup, iters, cuda_graph))
        return summarize([1.0, 2.0, 3.0], batch=batch, warmup=warmup, timer="cuda_events"), self.how


def test_runner_latency_uses_the_tensorrt_benchmark():
    r = _BenchmarkRunner("cuda_graph")
    assert cuda_graph_capable(r)
    res = runner_latency(r, 8, warmup=4, iters=3, cuda_graph=True)
    assert r.calls == [(8, 4, 3, True)]
    assert res.cuda_graph is True and res.memory_bytes == 12_345_678
    assert res.memory_kind == "TensorRT execution-context device memory" and res.stats.p50_ms == 2.0
    fallback = runner_latency(_BenchmarkRunner("enqueue"), 1, warmup=0, iters=3, cuda_graph=True)
    assert fallback.cuda_graph is False and "capture failed" in fallback.notes[0]


def test_tensorrt_on_cpu_is_refused_before_loading(tmp_path):
    with pytest.raises(UsageError, match="--device cpu: TensorRT engines run on the GPU only"):
        open_runner(tmp_path / "absent.engine", device="cpu")


@pytest.mark.gpu
def test_torch_runner_cuda_latency_graph_and_memory(models):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch")
    with TorchRunner(models["loaded"], device="cuda", precision="fp16") as r:
        assert cuda_graph_capable(r)
        res = runner_latency(r, 4, warmup=2, iters=5, cuda_graph=True)
        assert res.cuda_graph and res.stats.timer == "cuda_events" and res.memory_bytes > 0
        np.testing.assert_allclose(r.infer(_x(2)), _torch_logits(models["loaded"], _x(2)), rtol=0.05, atol=0.05)
