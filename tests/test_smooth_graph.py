"""Smoothing from the calibration pass (quantize/smooth_graph.py): one onnxruntime pass over the unsmoothed export
gives the same Q/DQ graph as smoothing in torch with the same s, exporting and calibrating again.

The models are the tiny ConvNeXts with 2 LayerNorm output channels per pair made 200x larger (smooth.inject_outliers,
FP32 function unchanged), as in tests/test_outliers.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_outliers import _validate, make_outlier_data, tiny

from edgeconvnext.cli import main
from edgeconvnext.data.calibration import CalibrationSet
from edgeconvnext.export.onnx_export import export_onnx
from edgeconvnext.onnx.graph import GraphIndex
from edgeconvnext.onnx.trt_rules import check_model
from edgeconvnext.quantize import ort_backend, smooth_graph
from edgeconvnext.quantize.policy import plan
from edgeconvnext.quantize.smooth import channel_absmax, fold_all, inject_outliers

pytest.importorskip("onnxruntime")

IMG = 32


def _outlier_export(tmp_path: Path, arch: str):
    loaded = tiny(arch)
    inject_outliers(loaded.model, 200.0)
    export_onnx(loaded, tmp_path / "fp32.onnx", verify=True)
    return loaded, onnx.load(str(tmp_path / "fp32.onnx"))


def _images(n: int = 40) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, IMG, IMG)).astype(np.float32)


def _qdq(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every Q/DQ scale and INT8 weight, by name."""
    g = GraphIndex(model)
    out = {}
    for n in g.nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out[n.input[1]] = g.const(n.input[1])
            if g.is_const(n.input[0]):
                out[n.input[0]] = g.const(n.input[0])
    return out


@pytest.mark.parametrize("arch,policy", [("convnextv2_test", "convnext"), ("convnext_test", "all")])
def test_one_pass_equals_smoothing_in_torch_then_calibrating(tmp_path, arch, policy):
    loaded, fp32 = _outlier_export(tmp_path, arch)
    x = _images()
    cs = CalibrationSet(tmp_path, [], [], x, loaded.preprocess, len(x), 0)
    nodes = [p.node for p in plan(fp32, policy) if p.int8]
    fold = smooth_graph.match(fp32, loaded.model)
    assert fold is not None and len(fold.pairs) == 9  # 5 fc1, 3 downsample, the head
    one = tmp_path / "one.onnx"
    logits: list[np.ndarray] = []
    settings = ort_backend.quantize_ort(tmp_path / "fp32.onnx", one, cs, nodes, "minmax", logits=logits, fold=fold)
    assert "per_channel_statistics" in settings
    assert fold.report is not None and fold.report.statistics == "calibration images (40), from the calibration session"
    assert fold.report.worst_before > 100 and fold.report.worst_after < 20, fold.report.summary()

    # two passes: the torch model smoothed with the same s, exported and calibrated
    smoothed = copy.deepcopy(loaded)
    fold_all(smoothed.model, fold.report.scales)
    export_onnx(smoothed, tmp_path / "smoothed.onnx", verify=True)
    two = tmp_path / "two.onnx"
    ort_backend.quantize_ort(tmp_path / "smoothed.onnx", two, cs, nodes, "minmax")

    # the folded graph is the smoothed export, value for value
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in fold.folded.graph.initializer}
    exported = {
        t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "smoothed.onnx")).graph.initializer
    }
    assert folded.keys() == exported.keys()
    for k, v in exported.items():
        np.testing.assert_array_equal(folded[k], v, err_msg=k)
    a, b = _qdq(onnx.load(str(one))), _qdq(onnx.load(str(two)))
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        if a[k].dtype == np.int8:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    report = check_model(onnx.load(str(one)))
    assert report.ok, report.violations

    # the pass's FP32 logits are the unsmoothed model's (the function the folded graph computes too)
    import onnxruntime as ort

    ref = ort.InferenceSession(fold.folded.SerializeToString(), providers=["CPUExecutionProvider"])
    y = np.concatenate(logits)
    np.testing.assert_allclose(ref.run(None, {"input": x})[0], y, rtol=1e-4, atol=1e-4 * float(np.abs(y).max()))


def test_per_channel_statistics_are_the_torch_channel_absmax(tmp_path):
    loaded, fp32 = _outlier_export(tmp_path, "convnextv2_test")
    x = _images(20)
    fold = smooth_graph.match(fp32, loaded.model)
    assert fold is not None
    stats = ort_backend.collect_minmax(fp32, [], [x[:8], x[8:]], channels=fold.channels)
    want = channel_absmax(loaded.model, x)
    for p in fold.pairs:
        lo, hi = stats[p.stats]
        assert lo.shape == hi.shape == (p.channels,) and np.all(lo <= hi)
        got = np.maximum(np.abs(lo), np.abs(hi))
        np.testing.assert_allclose(got, want[p.norm].numpy(), rtol=1e-4, atol=1e-6, err_msg=p.norm)


def test_an_unexpected_graph_is_not_folded(tmp_path):
    """A LayerNorm output read by a second node: no exact fold of the pair in the graph, so no single pass."""
    loaded, fp32 = _outlier_export(tmp_path, "convnextv2_test")
    assert smooth_graph.match(fp32, loaded.model) is not None
    ln = next(n for n in fp32.graph.node if n.op_type == "LayerNormalization" and "blocks.0/norm" in n.name)
    fp32.graph.node.append(onnx.helper.make_node("Identity", [ln.output[0]], ["extra_reader"], name="extra"))
    assert smooth_graph.match(fp32, loaded.model) is None


def test_a_shared_initializer_is_copied_before_the_fold(tmp_path):
    loaded, fp32 = _outlier_export(tmp_path, "convnextv2_test")
    fold = smooth_graph.match(fp32, loaded.model)
    assert fold is not None
    p0 = fold.pairs[0]
    p1 = next(p for p in fold.pairs[1:] if p.channels == p0.channels)
    ln1 = next(n for n in fp32.graph.node if n.name == p1.ln_node)
    ln1.input[1] = p0.scale  # two LayerNorms read one scale initializer
    fold = smooth_graph.match(fp32, loaded.model)
    assert fold is not None
    scales = {p.norm: np.full(p.channels, 2.0 if p.norm == p0.norm else 4.0, np.float32) for p in fold.pairs}
    out = smooth_graph.fold_graph(fp32, fold.pairs, scales)
    gi = GraphIndex(out)
    nodes = {n.name: n for n in out.graph.node}
    a = gi.const(nodes[p0.ln_node].input[1])
    b = gi.const(nodes[p1.ln_node].input[1])
    orig = GraphIndex(fp32).const(p0.scale)
    np.testing.assert_allclose(a, orig / 2.0)
    np.testing.assert_allclose(b, orig / 4.0)


@pytest.fixture(scope="module")
def outlier_data(tmp_path_factory) -> Path:
    return make_outlier_data(tmp_path_factory.mktemp("outliers_graph"))


def test_quantize_smooths_in_the_calibration_pass_and_keeps_the_torch_route(tmp_path, outlier_data):
    """The default (ort, minmax) takes its statistics from the calibration pass and writes the folded graph as the
    FP32 baseline; percentile keeps the torch statistics; both hold on the outlier model."""
    common = ["-c", str(outlier_data / "m.safetensors"), "--calib-data", str(outlier_data / "calib")]
    common += ["--calib-size", "32"]
    one, hist = tmp_path / "one.onnx", tmp_path / "hist.onnx"
    assert main(["-q", "quantize", *common, "-o", str(one)]) == 0
    assert main(["-q", "quantize", *common, "-o", str(hist), "--calib-method", "percentile"]) == 0
    side = json.loads((tmp_path / "one.onnx.json").read_text())
    sm = side["details"]["smoothing"]
    assert sm["statistics"] == "calibration images (32), from the calibration session" and sm["pairs"] == 9
    assert sm["outlier_ratio_before_max"] > 100 and sm["outlier_ratio_after_max"] < 20
    assert side["timings"]["smooth_s"] == 0
    assert "per_channel_statistics" in side["details"]["backend"]
    # the baseline written is the folded graph, and its own sidecar says so
    import hashlib

    base = tmp_path / "one.fp32.onnx"
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    assert side["details"]["fp32_baseline"]["sha256"] == digest
    base_side = json.loads((tmp_path / "one.fp32.onnx.json").read_text())
    assert base_side["outputs"][0]["sha256"] == digest and base_side["details"]["smoothing"]["pairs"] == 9
    check = base_side["details"]["smoothing"]["fold_check"]  # the folded graph run against the unfolded one
    assert check["images"] == 2 and check["rel_diff"] < 1e-5 and check["tolerance_rel"] == 1e-4
    hist_side = json.loads((tmp_path / "hist.onnx.json").read_text())
    assert hist_side["details"]["smoothing"]["statistics"] == "calibration images (32)"
    for out in (one, hist):
        r = _validate(out, outlier_data)
        assert r["baseline_top1"] == 100.0 and r["drop"] <= 2.0 and r["cosine_min"] > 0.99, (out.name, r)


def test_a_fold_that_changes_the_function_is_refused(tmp_path, outlier_data, monkeypatch, capsys):
    """The folded FP32 graph is run against the calibration pass's unfolded logits before anything is written:
    a fold that scaled the LayerNorm but not the next layer (a broken fold) exits with one line, no files."""
    import edgeconvnext.quantize.smooth_graph as sg

    real = sg.fold_graph

    def broken(model, pairs, scales):  # every pair's LayerNorm / s, the first pair's layer not x s
        out = real(model, pairs, scales)
        first = pairs[0]
        layer = next(n for n in out.graph.node if n.name == first.layer_node)
        init = next(t for t in out.graph.initializer if t.name == layer.input[1])
        from onnx import numpy_helper

        s = np.asarray(scales[first.norm], np.float32)
        shape = [1] * len(init.dims)
        shape[first.axis] = -1
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / s.reshape(shape), init.name))
        return out

    monkeypatch.setattr(sg, "fold_graph", broken)
    out = tmp_path / "bad.onnx"
    args = ["quantize", "-c", str(outlier_data / "m.safetensors"), "--calib-data", str(outlier_data / "calib")]
    code = main([*args, "--calib-size", "32", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error: the smoothing fold changed the FP32 model") and "--no-smooth" in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.iterdir())
