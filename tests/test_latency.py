"""latency.py: statistics computed from the samples, the CPU timing loop with a real callable."""

import math
import statistics

import numpy as np
import pytest

from edgeconvnext.errors import BackendMissing, UsageError
from edgeconvnext.evaluate import latency
from edgeconvnext.runtime import cuda


def test_percentile_matches_numpy_linear():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.5]
    for q in (0, 10, 50, 90, 99, 100):
        assert latency.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_summarize_known_samples():
    samples = [float(i) for i in range(1, 101)]  # 1..100 ms
    s = latency.summarize(samples, batch=4, warmup=3)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(statistics.pstdev(samples))
    assert (s.min_ms, s.max_ms) == (1.0, 100.0)
    assert s.images_per_s == pytest.approx(4 * 1000 / 50.5)
    assert s.iters == 100 and s.warmup == 3 and s.batch == 4
    d = s.to_dict()
    assert "samples_ms" not in d and d["p50_ms"] == pytest.approx(50.5)
    assert len(s.to_dict(with_samples=True)["samples_ms"]) == 100


def test_measure_latency_cpu_counts_calls_and_stats_follow_samples():
    calls = {"run": 0, "sync": 0}
    a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)

    def run():
        calls["run"] += 1
        return a @ a

    def sync():
        calls["sync"] += 1

    s = latency.measure_latency(run, warmup=3, iters=20, sync=sync, batch=2)
    assert calls == {"run": 23, "sync": 23}
    assert s.timer == "perf_counter" and len(s.samples_ms) == 20
    assert all(x > 0 for x in s.samples_ms)
    # The summary is exactly the statistics of the recorded samples.
    assert s.p50_ms == pytest.approx(float(np.percentile(s.samples_ms, 50)))
    assert s.p99_ms == pytest.approx(float(np.percentile(s.samples_ms, 99)))
    assert s.mean_ms == pytest.approx(float(np.mean(s.samples_ms)))
    assert s.images_per_s == pytest.approx(2 * 1000 / s.mean_ms)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms


@pytest.mark.parametrize("kwargs", [{"iters": 0}, {"warmup": -1}])
def test_measure_latency_rejects_bad_counts(kwargs):
    with pytest.raises(UsageError):
        latency.measure_latency(lambda: None, **kwargs)


def test_summarize_rejects_empty_and_bad_batch():
    with pytest.raises(UsageError):
        latency.summarize([])
    with pytest.raises(UsageError):
        latency.summarize([1.0], batch=0)


def test_cuda_events_without_cuda_is_backend_missing():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the missing-CUDA path cannot be exercised")
    with pytest.raises(BackendMissing, match="CUDA"):
        latency.measure_latency(lambda: None, warmup=0, iters=1, use_cuda_events=True)


@pytest.mark.gpu
def test_cuda_events_and_graph_on_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.randn(8, 256, device="cuda")
    w = torch.randn(256, 256, device="cuda")
    g = cuda.capture_cuda_graph(lambda t: t @ w, x)
    x.copy_(torch.ones_like(x))
    out = g()
    torch.cuda.synchronize()
    assert torch.allclose(out, torch.ones_like(x) @ w)
    s = latency.measure_latency(g, warmup=2, iters=10, use_cuda_events=True, batch=8)
    assert s.timer == "cuda_events" and len(s.samples_ms) == 10 and math.isfinite(s.mean_ms)


def test_latency_result_dict_has_the_report_keys():
    res = latency.LatencyResult(
        latency.summarize([1.0, 3.0], batch=2),
        cuda_graph=True,
        memory_bytes=10,
        memory_kind="torch.cuda.max_memory_allocated",
    )
    d = res.to_dict()
    assert {
        "batch",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "images_per_s",
        "cuda_graph",
        "memory_bytes",
        "memory_kind",
        "timer",
        "iters",
        "warmup",
    } <= set(d)
    assert d["images_per_s"] == pytest.approx(1000.0) and "notes" not in d and "samples_ms" not in d


def test_device_names_and_peak_rss():
    import torch

    name = latency.cpu_name()
    assert name and latency.device_name("cpu") == name
    if not torch.cuda.is_available():
        assert "name unknown" in latency.device_name("cuda")
    rss = latency.peak_rss_bytes()
    assert rss is None or rss > 10 * 2**20  # a Python process with numpy loaded
