"""Activation outliers: the stress reparametrisation keeps FP32 logits, smoothing undoes any such scaling, and
the default quantize holds on an outlier model where plain minmax (--no-smooth) collapses.

The outlier model is a tiny ConvNeXt with random weights whose LayerNorm outputs get 2 channels 200x larger
(compensated in fc1 / the downsample conv): the same phenomenon benchmarks/outliers.py measures on
Fashion-MNIST checkpoints. Labels are the FP32 model's own predictions, so FP32 top-1 is 100% and the INT8
drop is what quantization loses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconvnext.cli import main
from edgeconvnext.models.checkpoint import load_model, save_checkpoint
from edgeconvnext.quantize.smooth import channel_absmax, fold_pairs, inject_outliers, smooth

pytest.importorskip("onnxruntime")

ARCHS = ("convnextv2_test", "convnext_test")
CLASSES = [f"c{i}" for i in range(10)]


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    loaded = load_model(arch, None, num_classes=10, img_size=32)
    with torch.no_grad():
        loaded.model.head.fc.weight.mul_(30)  # spread the random logits so top-1 is not a coin toss
    loaded.model.eval()
    return loaded


def make_outlier_data(root: Path, arch: str = "convnextv2_test", magnitude: float = 200.0, n_val: int = 128) -> Path:
    """root/{calib, val/<class>, plain}, root/m.safetensors (outliers x magnitude); labels = FP32 predictions."""
    from edgeconvnext.data.preprocess import eval_transform

    loaded = tiny(arch)
    rng = np.random.default_rng(0)
    imgs = [
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((40, 40), Image.Resampling.BILINEAR)
        for _ in range(32 + n_val)
    ]
    x = np.stack([eval_transform(im, loaded.preprocess) for im in imgs])
    with torch.no_grad():
        pred = loaded.model(torch.from_numpy(x)).argmax(1).numpy()
    for c in CLASSES:
        (root / "val" / c).mkdir(parents=True, exist_ok=True)
    (root / "calib").mkdir(parents=True, exist_ok=True)
    (root / "plain").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        if i < 32:
            im.save(root / "calib" / f"{i:03d}.png")
        else:
            im.save(root / "val" / CLASSES[pred[i]] / f"{i:03d}.png")
            im.save(root / "plain" / f"{i:03d}.png")
    inject_outliers(loaded.model, magnitude)
    save_checkpoint(
        root / "m.safetensors", loaded.model, loaded.arch, class_names=CLASSES, preprocess=loaded.preprocess
    )
    return root


@pytest.fixture(scope="module")
def outlier_data(tmp_path_factory) -> Path:
    return make_outlier_data(tmp_path_factory.mktemp("outliers"))


@pytest.mark.parametrize("arch", ARCHS)
def test_reparametrisation_keeps_fp32_logits_and_makes_outliers(arch):
    base = tiny(arch)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y0 = base.model(x)
    stats0 = channel_absmax(base.model, x.numpy())
    for m in (10.0, 200.0):
        model = copy.deepcopy(base.model)
        chosen = inject_outliers(model, m, channels=2)
        assert len(chosen) == len([p for p in fold_pairs(model) if p.layer != "head.fc"]) == 8  # 5 fc1 + 3 downsample
        with torch.no_grad():
            rel = float((model(x) - y0).abs().max() / y0.abs().max())
        assert rel < 1e-4, rel
        stats = channel_absmax(model, x.numpy())
        for norm, idx in chosen:
            ratio = stats[norm][idx] / stats0[norm][idx]
            assert torch.allclose(ratio, torch.full_like(ratio, m), rtol=1e-3), (norm, ratio)


@pytest.mark.parametrize("arch", ARCHS)
def test_smoothing_is_exact_and_independent_of_the_outlier_scaling(arch):
    """s_c = amax(y_c)^a / amax(W_c)^(1-a) makes the smoothed model the same whatever the checkpoint's scaling."""
    base = tiny(arch)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y0 = base.model(x)
    smoothed = []
    for m in (1.0, 50.0, 200.0):
        model = copy.deepcopy(base.model)
        inject_outliers(model, m)
        report = smooth(model, channel_absmax(model, x.numpy()))
        assert len(report.pairs) == 9  # + head.norm -> head.fc
        with torch.no_grad():
            assert float((model(x) - y0).abs().max() / y0.abs().max()) < 1e-4
        if m == 200.0:
            assert report.worst_before > 100 and report.worst_after < 20, report.summary()
        smoothed.append({k: v.clone() for k, v in model.state_dict().items()})
    for other in smoothed[1:]:
        for k, v in smoothed[0].items():
            assert torch.allclose(other[k], v, rtol=1e-3, atol=1e-6), k
    # data-free (LayerNorm affine) estimate: same invariance
    a, b = copy.deepcopy(base.model), copy.deepcopy(base.model)
    inject_outliers(b, 200.0)
    smooth(a)
    smooth(b)
    for k, v in a.state_dict().items():
        assert torch.allclose(b.state_dict()[k], v, rtol=1e-3, atol=1e-6), k


def _validate(out: Path, root: Path) -> dict:
    """validate OUT against the FP32 ONNX quantize kept beside it (OUT.fp32.onnx) on the labelled images."""
    report = out.with_suffix(".report.json")
    fp32 = out.with_name(out.name.removesuffix(".onnx") + ".fp32.onnx")
    args = ["-q", "validate", str(out), "--data", str(root / "val"), "--baseline", str(fp32), "--report", str(report)]
    assert main(args) == 0
    return json.loads(report.read_text())


def test_default_quantize_holds_on_outliers_where_minmax_collapses(tmp_path, outlier_data):
    common = ["-c", str(outlier_data / "m.safetensors"), "--calib-data", str(outlier_data / "calib")]
    common += ["--calib-size", "32"]
    default, plain = tmp_path / "default.onnx", tmp_path / "plain.onnx"
    assert main(["-q", "quantize", *common, "-o", str(default)]) == 0
    assert main(["-q", "quantize", *common, "-o", str(plain), "--no-smooth"]) == 0
    d, p = _validate(default, outlier_data), _validate(plain, outlier_data)
    assert d["baseline_top1"] == p["baseline_top1"] == 100.0
    assert d["drop"] <= 2.0, d["drop"]  # at most 2 of 128 images
    assert p["drop"] >= 30.0, p["drop"]  # plain minmax: per-tensor ranges swamped by the 200x channels
    assert d["cosine_min"] > 0.99 > p["cosine_min"]

    side = json.loads((tmp_path / "default.onnx.json").read_text())
    sm = side["details"]["smoothing"]
    assert sm["pairs"] == 9 and sm["outlier_ratio_before_max"] > 100 and sm["outlier_ratio_after_max"] < 20
    reasons = {r["layer"]: r["reason"] for r in side["details"]["placement"]["layers_detail"]}
    assert reasons["stages.0.blocks.0.mlp.fc1"].endswith("input equalised")
    assert reasons["stages.1.downsample.1"].endswith("input equalised")
    assert "equalised" not in reasons["stages.0.blocks.0.mlp.fc2"]  # fc2 reads GELU/GRN: nothing to fold
    assert side["details"]["trt_check"]["ok"] and side["details"]["placement"]["int8_macs_share"] == pytest.approx(
        json.loads((tmp_path / "plain.onnx.json").read_text())["details"]["placement"]["int8_macs_share"]
    )
    assert json.loads((tmp_path / "plain.onnx.json").read_text())["details"]["smoothing"] is None
