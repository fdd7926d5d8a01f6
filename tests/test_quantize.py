"""Quantize tiny ConvNeXts on generated images with both backends and check the graph node by node.

What TensorRT needs (and what the policy asks) is asserted on the ONNX itself: every QuantizeLinear's
zero point is int8 0, weight DQs are per channel on axis 0 (Conv) / 1 (MatMul (K, N)), activation Qs per
tensor; under --policy convnext the stem conv, the classifier and the depthwise convs are not fed by a
DQ while fc1/fc2/downsample are; --policy all puts the stem in INT8; --exclude removes layers. Bad inputs
through main([...]) give one line and the right exit code, and leave nothing behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from edgeconvnext.cli import main
from edgeconvnext.onnx.graph import GraphIndex, layer_name, output_channel_axis
from edgeconvnext.onnx.trt_rules import check_file

pytest.importorskip("onnxruntime")

IMG = 32
N_IMAGES = 16
COMMON = ["--img-size", str(IMG), "--calib-size", str(N_IMAGES), "--min-calib-size", "8", "--num-classes", "10"]


def make_images(folder: Path, n: int, corrupt: int = 0) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth-ish images: random low-res noise upsampled, so the activations look like real ones
        small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((40, 40), Image.Resampling.BILINEAR).save(folder / f"im{i:02d}.png")
    for i in range(corrupt):
        (folder / f"bad{i}.jpg").write_bytes(b"\xff\xd8garbage")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("calib"), 20, corrupt=2)


def run_quantize(out: Path, images: Path, model: str, *extra: str) -> int:
    return main(["-q", "quantize", "-m", model, "--calib-data", str(images), "-o", str(out), *COMMON, *extra])


def fed_by_dq(g: GraphIndex, node: onnx.NodeProto, idx: int) -> onnx.NodeProto | None:
    _, p = g.trace_back(node.input[idx])
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def assert_trt_graph(model: onnx.ModelProto) -> None:
    """Every Q/DQ follows TensorRT's rules, checked here independently of trt_rules."""
    g = GraphIndex(model)
    assert any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import)
    assert all(n.domain in ("", "ai.onnx") for n in g.nodes)
    for n in g.nodes:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        assert len(n.input) == 3, f"{n.name}: no zero point (uint8 by default)"
        zp = g.const(n.input[2])
        assert zp is not None and zp.dtype == np.int8 and not zp.any(), n.name
        scale = g.const(n.input[1])
        assert scale is not None and np.all(scale > 0) and np.all(np.isfinite(scale))
        is_weight = g.is_const(n.input[0])
        if n.op_type == "QuantizeLinear":
            # both backends store weights as INT8 initializers read by a DequantizeLinear: a Q on a weight
            # would mean FP32 weights in the file, quantized only when TensorRT builds it
            assert not is_weight, f"{n.name} quantizes a weight in the graph instead of storing it as INT8"
            if not is_weight:
                assert scale.size == 1, f"activation Q {n.name} is per channel"
            assert all(c.op_type == "DequantizeLinear" for c in g.consumers[n.output[0]])
        elif is_weight:
            w = g.const(n.input[0])
            assert w.dtype == np.int8
            for c in g.consumers[n.output[0]]:
                assert c.op_type in ("Conv", "MatMul", "Gemm") and c.input[1] == n.output[0]
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                axis = axis + w.ndim if axis < 0 else axis
                want = output_channel_axis(c, w.ndim)
                assert want == {"Conv": 0, "MatMul": 1, "Gemm": 0}[c.op_type]
                assert scale.size == w.shape[want] and axis == want, (n.name, c.op_type, axis)


def int8_layers(model: onnx.ModelProto) -> dict[str, bool]:
    """layer name -> both activation and weight come from a DQ."""
    g = GraphIndex(model)
    out = {}
    for n in g.nodes:
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            out[layer_name(n)] = fed_by_dq(g, n, 0) is not None and fed_by_dq(g, n, 1) is not None
    return out


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


@pytest.mark.parametrize("backend,model", [("ort", "convnextv2_test"), ("nncf", "convnext_test")])
def test_quantize_policy_convnext(tmp_path, images, backend, model):
    if backend == "nncf":
        pytest.importorskip("nncf")
    out = tmp_path / "m.int8.onnx"
    assert run_quantize(out, images, model, "--backend", backend) == 0
    q = onnx.load(str(out))
    assert_trt_graph(q)
    layers = int8_layers(q)
    for name, int8 in layers.items():
        expect = name.endswith(("mlp.fc1", "mlp.fc2")) or ".downsample." in name
        assert int8 == expect, (name, int8)
    assert layers["stem.0"] is False and layers["head.fc"] is False
    assert sum(layers.values()) == 5 * 2 + 3  # 5 blocks x (fc1, fc2) + 3 downsample convs
    # the checker agrees, and the residual stream / outputs of quantized layers carry no Q/DQ
    report = check_file(out)
    assert report.ok, report.violations
    assert {r.layer for r in report.int8_layers} == {k for k, v in layers.items() if v}
    g = GraphIndex(q)
    for n in g.nodes:
        if n.op_type == "QuantizeLinear":
            src = g.producer.get(n.input[0])
            assert src is not None and src.op_type not in ("Conv", "MatMul", "Gemm"), n.name  # no output Q/DQ
            assert not re.fullmatch(r"stages\.\d+\.blocks\.\d+", layer_name(src)), n.name  # residual stream

    # metadata copied from the FP32 export, precision int8
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["edgeconvnext.precision"] == "int8" and meta["edgeconvnext.arch"] == model
    assert json.loads(meta["edgeconvnext.preprocess"])["img_size"] == IMG
    assert json.loads(meta["edgeconvnext.quantization"])["backend"] == backend

    # files beside it: sidecar, manifest, FP32 baseline (+ its sidecar); nothing temporary left
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "m.int8.calib.json",
        "m.int8.fp32.onnx",
        "m.int8.fp32.onnx.json",
        "m.int8.onnx",
        "m.int8.onnx.json",
    ]
    side = json.loads((tmp_path / "m.int8.onnx.json").read_text())
    assert side["config"]["backend"] == backend and side["details"]["trt_check"]["ok"] is True
    assert side["details"]["calibration"]["images"] == N_IMAGES and side["details"]["calibration"]["skipped"] == 2
    assert side["details"]["calibration"]["wall_s"] > 0 and side["details"]["peak_rss_mb"] > 50
    from edgeconvnext.artifacts import sha256_file

    assert side["details"]["calibration"]["manifest_sha256"] == sha256_file(tmp_path / "m.int8.calib.json")
    assert side["outputs"][0]["sha256"] == sha256_file(out)
    table = side["details"]["placement"]["table"]
    assert {"layer": "stages.2.blocks.*.mlp.fc1", "count": 2, "precision": "INT8"}.items() <= next(
        r for r in table if r["layer"] == "stages.2.blocks.*.mlp.fc1"
    ).items()
    assert 0.3 < side["details"]["placement"]["int8_macs_share"] < 0.9

    # INT8 close to FP32 on the calibration inputs (random weights: logits are small, so compare cosine)
    manifest = json.loads((tmp_path / "m.int8.calib.json").read_text())
    from edgeconvnext.data.preprocess import preprocess_image
    from edgeconvnext.models.registry import Preprocess

    pp = Preprocess.from_dict(side["config"]["preprocess"])
    x = np.stack([preprocess_image(Path(manifest["root"]) / e["path"], pp) for e in manifest["images"]])
    a, b = ort_logits(tmp_path / "m.int8.fp32.onnx", x), ort_logits(out, x)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.98, cos
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.75
    assert side["details"]["agreement_vs_fp32"]["cosine_mean"] > 0.98


def test_policy_all_and_exclude(tmp_path, images):
    out = tmp_path / "all.onnx"
    assert (
        run_quantize(
            out,
            images,
            "convnextv2_test",
            "--policy",
            "all",
            "--exclude",
            "stages.2.blocks.*.mlp.fc2",
            "--exclude",
            "head.fc",
            "--calib-method",
            "entropy",
            "--no-fp32-baseline",
        )
        == 0
    )
    q = onnx.load(str(out))
    assert_trt_graph(q)
    layers = int8_layers(q)
    assert layers["stem.0"] and layers["stages.0.blocks.0.conv_dw"] and layers["stages.1.downsample.1"]
    assert not layers["stages.2.blocks.0.mlp.fc2"] and not layers["stages.2.blocks.1.mlp.fc2"]
    assert layers["stages.2.blocks.0.mlp.fc1"] and not layers["head.fc"]
    assert not (tmp_path / "all.fp32.onnx").exists()
    side = json.loads((tmp_path / "all.onnx.json").read_text())
    assert side["details"]["fp32_baseline"] is None and side["config"]["calib_method"] == "entropy"
    excluded = [r for r in side["details"]["placement"]["layers_detail"] if r["reason"].startswith("--exclude")]
    assert {r["layer"] for r in excluded} == {"stages.2.blocks.0.mlp.fc2", "stages.2.blocks.1.mlp.fc2", "head.fc"}
    # inspect reads the sidecar back: what was asked and what was measured, in words
    from edgeconvnext.onnx.info import sidecar_summary

    sc = sidecar_summary(out)
    assert sc is not None and sc["stage"] == "quantize" and sc["status"] == "matches"
    assert sc["inputs"]["calib_data"] == str(images)
    n_int8 = sum(layers.values())
    assert sc["lines"][0].startswith("PTQ (ort, entropy, policy all, smoothing on), ")
    assert any(f"INT8 on {n_int8}/{len(layers)} layers" in x and "excluded by the user: " in x for x in sc["lines"])
    assert any(x.startswith("vs FP32 on ") for x in sc["lines"]) and "TensorRT rules when written: OK" in sc["lines"]


def test_manifest_reuse_gives_the_same_model(tmp_path, images):
    """Same checkpoint + the manifest's images -> the same scales: calibration is reproducible."""
    from edgeconvnext.models.checkpoint import save_checkpoint
    from edgeconvnext.models.registry import Preprocess, create_model

    ckpt = save_checkpoint(
        tmp_path / "m.safetensors",
        create_model("convnextv2_test", num_classes=10),
        "convnextv2_test",
        preprocess=Preprocess(img_size=IMG, crop_pct=1.0),
    )
    first = tmp_path / "a.onnx"
    assert (
        main(
            [
                "-q",
                "quantize",
                "-c",
                str(ckpt),
                "--calib-data",
                str(images),
                "-o",
                str(first),
                "--calib-size",
                str(N_IMAGES),
                "--min-calib-size",
                "8",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    second = tmp_path / "b.onnx"
    assert (
        main(
            [
                "-q",
                "quantize",
                "-c",
                str(ckpt),
                "--calib-manifest",
                str(tmp_path / "a.calib.json"),
                "-o",
                str(second),
                "--min-calib-size",
                "8",
            ]
        )
        == 0
    )
    ma = json.loads((tmp_path / "a.calib.json").read_text())
    mb = json.loads((tmp_path / "b.calib.json").read_text())
    assert ma["images"] == mb["images"] and mb["seed"] == 4 and ma["preprocess"]["crop_pct"] == 1.0
    assert json.loads((tmp_path / "b.onnx.json").read_text())["details"]["calibration"]["source"] == "manifest"

    def scales(path):
        g = GraphIndex(onnx.load(str(path)))
        return [g.const(n.input[1]).tolist() for n in g.nodes if n.op_type == "QuantizeLinear"]

    assert scales(first) == scales(second) and len(scales(first)) == 13


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["--backend", "ort", "--calib-method", "mse"], 2, "--calib-method mse is not available with --backend ort"),
        (
            ["--backend", "nncf", "--calib-method", "entropy"],
            2,
            "--calib-method entropy is not available with --backend nncf",
        ),
        (["--backend", "tensorrt"], 2, "unknown --backend 'tensorrt'"),
        (["--calib-method", "minmaxx"], 2, "did you mean 'minmax'"),
        (["--method", "qat"], 2, "--method qat needs --train-data"),
        (["--policy", "most"], 2, "unknown --policy 'most'"),
        (["--exclude", "stages.9.*"], 2, "--exclude 'stages.9.*' matches no"),
        (["--calib-size", "4", "--min-calib-size", "32"], 2, "below the minimum of 32"),
    ],
)
def test_bad_options(tmp_path, images, capsys, args, code, needle):
    out = tmp_path / "x.onnx"
    argv = [
        "quantize",
        "-m",
        "convnextv2_test",
        "--calib-data",
        str(images),
        "-o",
        str(out),
        "--img-size",
        "32",
        "--min-calib-size",
        "8",
        *args,
    ]
    assert main(argv) == code
    assert needle in _err(capsys)
    assert list(tmp_path.iterdir()) == []


def test_bad_data(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out = out_dir / "x.onnx"
    base = ["quantize", "-m", "convnextv2_test", "-o", str(out), "--img-size", "32", "--min-calib-size", "8"]

    (tmp_path / "empty").mkdir()
    assert main(base + ["--calib-data", str(tmp_path / "empty"), "--calib-size", "8"]) == 4
    assert "no calibration images" in _err(capsys)

    corrupt = make_images(tmp_path / "corrupt", 0, corrupt=10)
    assert main(base + ["--calib-data", str(corrupt), "--calib-size", "8"]) == 4
    assert "none of the 10 image files" in _err(capsys)

    few = make_images(tmp_path / "few", 9)
    assert main(base + ["--calib-data", str(few), "--calib-size", "12"]) == 4
    msg = _err(capsys)
    assert "holds 9 image files, --calib-size asks for 12" in msg and "--calib-size 9" in msg

    assert main(base + ["--calib-data", str(tmp_path / "missing"), "--calib-size", "8"]) == 4
    assert "not found" in _err(capsys)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_manifest_hash_mismatch(tmp_path, capsys):
    imgs = make_images(tmp_path / "imgs", 10)
    out = tmp_path / "a.onnx"
    assert run_quantize(out, imgs, "convnextv2_test", "--calib-size", "8") == 0
    manifest = json.loads((tmp_path / "a.calib.json").read_text())
    victim = imgs / manifest["images"][0]["path"]
    Image.new("RGB", (40, 40), (1, 2, 3)).save(victim)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(
        [
            "quantize",
            "-m",
            "convnextv2_test",
            "--calib-manifest",
            str(tmp_path / "a.calib.json"),
            "-o",
            str(tmp_path / "b.onnx"),
            "--img-size",
            "32",
            "--min-calib-size",
            "8",
        ]
    )
    assert rc == 4
    msg = _err(capsys)
    assert victim.name in msg and "changed since" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no b.* files
    rc = main(
        [
            "quantize",
            "-m",
            "convnextv2_test",
            "--calib-manifest",
            str(tmp_path / "a.calib.json"),
            "--seed",
            "3",
            "-o",
            str(tmp_path / "b.onnx"),
            "--img-size",
            "32",
        ]
    )
    assert rc == 2 and "--calib-manifest fixes the calibration images" in _err(capsys)


def test_rule_violation_leaves_nothing(tmp_path, images, monkeypatch, capsys):
    """If the backend produced a graph TensorRT rejects, quantize refuses it (exit 6) and writes nothing."""
    from edgeconvnext.quantize import ort_backend

    real = ort_backend.quantize_ort

    def uint8_activations(fp32_path, output, calib, nodes, method, **kw):
        settings = real(fp32_path, output, calib, nodes, method, **kw)
        m = onnx.load(str(output))
        for t in m.graph.initializer:  # turn one activation zero point into uint8 128: asymmetric, unsigned
            if t.name.endswith("_zero_point") and not t.dims:
                t.CopyFrom(onnx.numpy_helper.from_array(np.array(128, np.uint8), t.name))
                break
        onnx.save(m, str(output))
        return settings

    monkeypatch.setattr(ort_backend, "quantize_ort", uint8_activations)
    out = tmp_path / "v.onnx"
    assert run_quantize(out, images, "convnextv2_test") == 6
    assert "TensorRT rule violation" in _err(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_ort_restricted_calibration_equals_quantize_static(tmp_path, method):
    """Calibrating only the tensors the quantizer needs gives exactly the scales quantize_static's own
    (all-tensors) calibration gives."""
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeconvnext.data.calibration import CalibrationSet
    from edgeconvnext.models.registry import Preprocess, create_model
    from edgeconvnext.quantize import ort_backend
    from edgeconvnext.quantize.policy import plan

    torch.manual_seed(0)
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(
        create_model("convnextv2_test", num_classes=10).eval(),
        (torch.zeros(1, 3, IMG, IMG),),
        str(fp32),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    nodes = [p.node for p in plan(onnx.load(str(fp32)), "convnext") if p.int8]
    x = np.random.default_rng(0).standard_normal((24, 3, IMG, IMG)).astype(np.float32)
    cs = CalibrationSet(tmp_path, [], [], x, Preprocess(img_size=IMG), 24, 0)
    ours = tmp_path / "ours.onnx"
    ort_backend.quantize_ort(fp32, ours, cs, nodes, method)

    reader = ort_backend._Reader(x, "input", ort_backend.BATCH, None)
    ref = tmp_path / "ref.onnx"
    quantize_static(
        str(fp32),
        str(ref),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ort_backend.OP_TYPES,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        calibrate_method=getattr(CalibrationMethod, ort_backend.CALIB_METHODS[method]),
        extra_options={
            "ActivationSymmetric": True,
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": ort_backend.OP_TYPES,
            "CalibStridedMinMax": 1,
        },
    )

    def scales(path):
        g = GraphIndex(onnx.load(str(path)))
        return {n.input[0]: float(g.const(n.input[1])) for n in g.nodes if n.op_type == "QuantizeLinear"}

    a, b = scales(ours), scales(ref)
    assert len(a) == 13 and a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6), k


def _tiny_fp32_onnx(tmp_path):
    """convnextv2_test (seeded) exported by torch's TorchScript exporter at opset 17, dynamic batch."""
    import torch

    from edgeconvnext.models.registry import create_model

    torch.manual_seed(0)
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(
        create_model("convnextv2_test", num_classes=10).eval(),
        (torch.zeros(1, 3, IMG, IMG),),
        str(fp32),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    return fp32


@pytest.mark.parametrize("policy", ["convnext", "all"])
def test_qdq_insertion_equals_quantize_static(tmp_path, policy):
    """With the same calibration ranges, quantize/ort_qdq.py writes what quantize_static writes: the same
    nodes (names, inputs, outputs, attributes), the same initializers value for value (INT8 weights, scales,
    zero points) and the same logits; under --policy all the stem conv reads the graph input and the
    depthwise convs' input is also the residual Add's."""
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from edgeconvnext.quantize import ort_backend
    from edgeconvnext.quantize.ort_qdq import insert_qdq
    from edgeconvnext.quantize.policy import plan

    fp32 = _tiny_fp32_onnx(tmp_path)
    model = onnx.load(str(fp32))
    nodes = [p.node for p in plan(model, policy) if p.int8]
    tensors = ort_backend._activation_inputs(model, nodes)
    x = np.random.default_rng(2).standard_normal((8, 3, IMG, IMG)).astype(np.float32)
    ranges = ort_backend.collect_minmax(model, tensors, iter([x]))
    cache = tmp_path / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
    ref_path = tmp_path / "ref.onnx"
    quantize_static(
        str(fp32),
        str(ref_path),
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ort_backend.OP_TYPES,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": ort_backend.OP_TYPES,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        },
        calibration_cache_path=cache,
    )
    ref = onnx.load(str(ref_path))
    ours = insert_qdq(model, nodes, ranges)

    def node_set(m):
        return sorted(onnx.helper.printable_node(n) + n.name for n in m.graph.node)

    assert node_set(ours) == node_set(ref)
    a = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1 for t in ours.graph.initializer) == (
        13 if policy == "convnext" else 20
    )

    def run(m):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"input": x})[0]

    np.testing.assert_array_equal(run(ours), run(ref))


def test_minmax_pass_gives_the_tensors_min_max_and_the_fp32_logits(tmp_path):
    """The minmax session (FP32 graph + one ReduceMin/ReduceMax per tensor, graph optimizations on) gives the
    min and max of each tensor over all batches, and logits equal to a plain FP32 session's."""
    import onnxruntime as ort
    from onnx import helper

    from edgeconvnext.quantize import ort_backend
    from edgeconvnext.quantize.policy import plan

    fp32 = _tiny_fp32_onnx(tmp_path)
    model = onnx.load(str(fp32))
    tensors = ort_backend._activation_inputs(model, [p.node for p in plan(model, "convnext") if p.int8])
    x = np.random.default_rng(1).standard_normal((11, 3, IMG, IMG)).astype(np.float32)
    batches = [x[:4], x[4:8], x[8:]]
    logits: list[np.ndarray] = []
    seen: list[int] = []
    ranges = ort_backend.collect_minmax(model, tensors, iter(batches), logits=logits, on_batch=seen.append)
    assert seen == [4, 4, 3] and list(ranges) == tensors and len(tensors) == 13

    exposed = onnx.load(str(fp32))  # the reference: the tensors themselves as outputs, no optimizations
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(exposed.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [ref.run(None, {"input": b}) for b in batches]
    np.testing.assert_allclose(np.concatenate(logits), np.concatenate([o[0] for o in outs]), rtol=1e-4, atol=1e-5)
    for i, t in enumerate(tensors):
        lo, hi = ranges[t]
        assert lo.shape == hi.shape == (1,) and lo.dtype == np.float32
        want = np.concatenate([o[1 + i].ravel() for o in outs])
        assert lo[0] == pytest.approx(want.min(), rel=1e-5) and hi[0] == pytest.approx(want.max(), rel=1e-5), t


def test_recipe_sets_defaults_and_the_command_line_overrides_them(tmp_path, images):
    recipe = tmp_path / "tiny-dgpu.yaml"
    recipe.write_text(
        "model: convnextv2_test\ntarget: dgpu\nimg_size: 32\n"
        "quantize: {policy: all, calib_method: entropy, calib_size: 12, min_calib_size: 8, "
        "keep_fp32: false}\n"
    )
    out = tmp_path / "r.onnx"
    assert main(["-q", "quantize", "--recipe", str(recipe), "--calib-data", str(images), "-o", str(out)]) == 0
    side = json.loads((tmp_path / "r.onnx.json").read_text())
    assert side["details"]["arch"] == "convnextv2_test" or side["details"]["arch"].get("name") == "convnextv2_test"
    assert side["config"]["policy"] == "all" and side["config"]["calib_method"] == "entropy"
    assert side["details"]["calibration"]["images"] == 12 and not (tmp_path / "r.fp32.onnx").exists()
    assert int8_layers(onnx.load(str(out)))["stem.0"]  # policy all from the recipe

    out2 = tmp_path / "r2.onnx"  # explicit options win over the recipe
    assert (
        main(
            [
                "-q",
                "quantize",
                "--recipe",
                str(recipe),
                "--calib-data",
                str(images),
                "-o",
                str(out2),
                "--policy",
                "convnext",
                "--calib-method",
                "minmax",
            ]
        )
        == 0
    )
    side2 = json.loads((tmp_path / "r2.onnx.json").read_text())
    assert side2["config"]["policy"] == "convnext" and side2["config"]["calib_method"] == "minmax"
    assert not int8_layers(onnx.load(str(out2)))["stem.0"]


def test_recipe_with_an_unknown_key_is_refused(tmp_path, images, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: convnextv2_test\nquantize: {polcy: all}\n")
    assert main(["quantize", "--recipe", str(recipe), "--calib-data", str(images), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "did you mean 'policy'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_with_a_partial_last_batch(tmp_path, images, method):
    # 13 images = one full batch of 8 and one of 5: onnxruntime's histogram collectors must not get both at once
    out = tmp_path / "p.onnx"
    assert (
        main(
            [
                "-q",
                "quantize",
                "-m",
                "convnextv2_test",
                "--calib-data",
                str(images),
                "-o",
                str(out),
                "--img-size",
                str(IMG),
                "--calib-size",
                "13",
                "--min-calib-size",
                "8",
                "--calib-method",
                method,
                "--no-fp32-baseline",
            ]
        )
        == 0
    )
    assert_trt_graph(onnx.load(str(out)))


@pytest.mark.parametrize("backend,method", [("ort", "entropy"), ("nncf", "minmax")])
def test_json_stdout_is_only_json(tmp_path, images, capsys, backend, method):
    # onnxruntime's histogram calibrators print() and NNCF draws progress bars on stdout: --json was not JSON
    rc = main(
        [
            "quantize",
            "-m",
            "convnextv2_test",
            "--calib-data",
            str(images),
            "-o",
            str(tmp_path / "j.onnx"),
            *COMMON,
            "--backend",
            backend,
            "--calib-method",
            method,
            "--no-fp32-baseline",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert json.loads(out)["output"] == str(tmp_path / "j.onnx")


def test_the_agreement_check_emulates_int8_where_the_kernels_may_saturate(tmp_path, images, monkeypatch, capsys):
    # onnxruntime's int8 kernels where they compute what TensorRT does (VNNI, Arm), the Q/DQ emulated in float
    # where they may saturate (x86 without VNNI): the sidecar and the printed line say which
    import json

    from edgeconvnext.onnx import session

    sidecars = {}
    for saturates in (False, True):
        monkeypatch.setattr(session, "kernels_may_saturate", lambda s=saturates: s)
        out = tmp_path / f"m{int(saturates)}.int8.onnx"
        assert main(["quantize", "-m", "convnextv2_test", "--calib-data", str(images), "-o", str(out), *COMMON]) == 0
        printed = capsys.readouterr().out
        assert ("INT8 emulated in float" in printed) is saturates
        sidecars[saturates] = json.loads(out.with_name(out.name + ".json").read_text())["details"]["agreement_vs_fp32"]
    assert sidecars[False]["int8_math"] == "kernels" and sidecars[True]["int8_math"] == "emulated"
    assert sidecars[True]["images"] == sidecars[False]["images"] > 0
    assert (
        abs(sidecars[True]["cosine_mean"] - sidecars[False]["cosine_mean"]) < 1e-3
    )  # the same model, near-same logits
