"""Engine building without TensorRT: profiles, trtexec command lines (10.x vs 11.x), DLA refusal, FP16
ONNX conversion (onnxruntime parity, FP32 islands), sidecar and engine compatibility checks, CLI errors.

TensorRT and a GPU are not available on the CPU test machine: the trtexec path is exercised with a
stand-in script that prints trtexec's version banner, records the argv it was given and writes a file
with a plan header; real builds are the tests marked ``trt``/``gpu`` at the end (skipped here).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeconvnext.engine import build as engine
from edgeconvnext.env.probes import parse_version
from edgeconvnext.errors import BackendMissing, CheckpointError, UsageError
from edgeconvnext.onnx import fp16
from edgeconvnext.runtime import tensorrt as trt_runtime

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _has_tensorrt() -> bool:
    trt, _ = engine.import_tensorrt()
    return trt is not None


def _has_trtexec() -> bool:
    from edgeconvnext.env.doctor import find_trtexec

    return find_trtexec() is not None


NO_TRT = not _has_tensorrt() and not _has_trtexec()


# ---------------------------------------------------------------------------------------------------
# fixtures: small real ONNX models


def _export(name: str, path: Path, batch: int | None = None) -> Path:
    from edgeconvnext.export.onnx_export import export_onnx
    from edgeconvnext.models.checkpoint import load_model

    export_onnx(load_model(name, num_classes=10, img_size=32), path, batch=batch, verify=False)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """FP32 V2/V1 test models (dynamic batch), a fixed-batch one, and an INT8 Q/DQ one (TensorRT options)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tmp_path_factory.mktemp("onnx")
    out = {
        "v2": _export("convnextv2_test", d / "v2.onnx"),
        "v1": _export("convnext_test", d / "v1.onnx"),
        "fixed": _export("convnextv2_test", d / "v2_b2.onnx", batch=2),
    }

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    out["qdq"] = d / "v2_int8.onnx"
    quantize_static(
        str(out["v2"]),
        str(out["qdq"]),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": True, "QuantizeBias": False},
    )
    return out


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes())
    return dst


# ---------------------------------------------------------------------------------------------------
# batch profile


@pytest.mark.parametrize(
    "spec,expected", [(None, None), (4, (4, 4, 4)), ("1", (1, 1, 1)), ("1,8,32", (1, 8, 32)), (" 2, 2 ,2 ", (2, 2, 2))]
)
def test_parse_batch(spec, expected):
    prof = engine.parse_batch(spec)
    assert (None if prof is None else (prof.min, prof.opt, prof.max)) == expected


@pytest.mark.parametrize("spec", ["4,2,8", "8,8,4", "0", "1,2", "a", "-1", "1,2,3,4", "1.5"])
def test_parse_batch_rejects(spec):
    with pytest.raises(UsageError, match="--batch"):
        engine.parse_batch(spec)


def test_resolve_profile_fixed_and_dynamic():
    assert str(engine.resolve_profile(None, None)) == "1,1,1"
    assert str(engine.resolve_profile("1,4,8", None)) == "1,4,8"
    assert str(engine.resolve_profile(None, 2)) == "2,2,2"
    assert str(engine.resolve_profile("2", 2)) == "2,2,2"
    with pytest.raises(UsageError, match="fixed batch of 2"):
        engine.resolve_profile("1,4,8", 2)
    assert engine.BatchProfile(1, 4, 8).shapes((3, 224, 224)) == {
        "min": [1, 3, 224, 224],
        "opt": [4, 3, 224, 224],
        "max": [8, 3, 224, 224],
    }


# ---------------------------------------------------------------------------------------------------
# ONNX summary and plan


def test_summarize_onnx(models):
    s = engine.summarize_onnx(models["v2"])
    assert (s.input_name, s.chw, s.batch, s.precision, s.has_qdq) == ("input", (3, 32, 32), None, "fp32", False)
    assert s.metadata["arch"] == "convnextv2_test" and s.outputs == ["logits"]
    assert engine.summarize_onnx(models["fixed"]).batch == 2
    q = engine.summarize_onnx(models["qdq"])
    assert q.has_qdq and q.precision == "int8"


def test_dla_is_refused_with_reason(models):
    with pytest.raises(UsageError) as e:
        engine.plan_build(engine.BuildRequest(onnx=models["v2"], dla_core=0))
    msg = str(e.value)
    assert "--dla-core 0" in msg and "LayerNormalization" in msg and "Orin Nano has no DLA" in msg


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"opt_level": 6}, "--opt-level"),
        ({"workspace_mib": 0}, "--workspace"),
        ({"output": Path("x.onnx")}, "--output"),
        ({"batch": "1,4,8"}, None),
    ],
)
def test_plan_validates_options(models, kwargs, match):
    if match is None:
        plan = engine.plan_build(engine.BuildRequest(onnx=models["v2"], **kwargs))
        assert str(plan.profile) == "1,4,8" and plan.dynamic
        return
    with pytest.raises(UsageError, match=match):
        engine.plan_build(engine.BuildRequest(onnx=models["v2"], **kwargs))


def test_fixed_batch_onnx_refuses_other_range(models):
    with pytest.raises(UsageError, match="fixed batch of 2"):
        engine.plan_build(engine.BuildRequest(onnx=models["fixed"], batch="1,2,4"))
    plan = engine.plan_build(engine.BuildRequest(onnx=models["fixed"]))
    assert str(plan.profile) == "2,2,2" and not plan.dynamic


def test_plan_precision_and_paths(models):
    p = engine.plan_build(engine.BuildRequest(onnx=models["v2"]))
    assert (p.precision, p.convert_fp16, p.output.name, p.build_onnx) == ("fp32", False, "v2.engine", models["v2"])
    p = engine.plan_build(engine.BuildRequest(onnx=models["v2"], fp16=True))
    assert (p.precision, p.convert_fp16, p.output.name, p.build_onnx.name) == (
        "fp16",
        True,
        "v2.fp16.engine",
        "v2.fp16.onnx",
    )
    p = engine.plan_build(engine.BuildRequest(onnx=models["qdq"], fp16=True))
    assert (p.precision, p.convert_fp16) == ("int8+fp16", True)
    p = engine.plan_build(engine.BuildRequest(onnx=models["qdq"]))
    assert p.precision == "int8" and any("--fp16" in n for n in p.notes)
    # --output with the source's stem: the FP16 ONNX gets its own name, never the source's
    p = engine.plan_build(engine.BuildRequest(onnx=models["v2"], fp16=True, output=models["v2"].with_suffix(".engine")))
    assert p.build_onnx != models["v2"] and p.build_onnx.name == "v2.fp16.onnx"


def test_fp16_onnx_never_overwrites_another_file(models, tmp_path):
    src = _copy(models["v2"], tmp_path)
    other = tmp_path / "v2.fp16.onnx"
    other.write_bytes(models["v1"].read_bytes())  # someone's file, not our conversion of v2
    with pytest.raises(UsageError, match="is not an FP16 conversion"):
        engine.plan_build(engine.BuildRequest(onnx=src, fp16=True))
    fp16.convert_file(src, other)  # an earlier conversion of the same source may be replaced
    assert engine.plan_build(engine.BuildRequest(onnx=src, fp16=True)).build_onnx == other


# ---------------------------------------------------------------------------------------------------
# trtexec command lines


def _plan(models, **kw) -> engine.BuildPlan:
    return engine.plan_build(engine.BuildRequest(onnx=models["v2"], **kw))


def test_trtexec_command_trt10(models):
    plan = _plan(models, batch="1,4,8", workspace_mib=512, opt_level=5, timing_cache=Path("tc.cache"))
    cmd = engine.trtexec_command(plan, (10, 3, 0), trtexec="/usr/src/tensorrt/bin/trtexec")
    assert cmd == [
        "/usr/src/tensorrt/bin/trtexec",
        f"--onnx={models['v2']}",
        f"--saveEngine={plan.output}",
        "--stronglyTyped",
        "--minShapes=input:1x3x32x32",
        "--optShapes=input:4x3x32x32",
        "--maxShapes=input:8x3x32x32",
        "--memPoolSize=workspace:512M",
        "--timingCacheFile=tc.cache",
        "--builderOptimizationLevel=5",
        "--skipInference",
    ]


def test_trtexec_command_trt11_has_no_strongly_typed_flag(models):
    plan = _plan(models)
    cmd10 = engine.trtexec_command(plan, (10, 3, 0))
    cmd11 = engine.trtexec_command(plan, (11, 1, 0))
    assert "--stronglyTyped" in cmd10 and "--stronglyTyped" not in cmd11
    assert [c for c in cmd10 if c != "--stronglyTyped"] == cmd11
    # unknown version: the 10.x form, which 11.x accepts (a deprecated no-op there)
    assert engine.trtexec_command(plan, None) == cmd10
    for cmd in (cmd10, cmd11):
        assert not any(c in ("--fp16", "--int8", "--best", "--bf16") or c.startswith("--calib") for c in cmd)


def test_trtexec_command_fp16_uses_converted_onnx_and_fixed_batch_has_no_shapes(models):
    plan = _plan(models, fp16=True)
    assert f"--onnx={plan.build_onnx}" in engine.trtexec_command(plan, (10, 3, 0))
    fixed = engine.plan_build(engine.BuildRequest(onnx=models["fixed"]))
    assert not any("Shapes=" in c for c in engine.trtexec_command(fixed, (10, 3, 0)))


def test_trtexec_command_quotes_names_with_colons(models):
    plan = _plan(models)
    plan.onnx.input_name = "input:0"
    assert "--minShapes='input:0':1x3x32x32" in engine.trtexec_command(plan, (10, 3, 0))
    plan.onnx.input_name = "pixel values"  # one argv element: trtexec splits only at ',' and ':'
    assert "--optShapes=pixel values:1x3x32x32" in engine.trtexec_command(plan, (11, 1, 0))


@pytest.mark.parametrize("name", ["a,b", "it's", "'x':0"])
def test_trtexec_command_refuses_names_trtexec_cannot_parse(models, name):
    # trtexec splits the shape list at ',' before reading quotes, and a quote in the name breaks its
    # 'name':value form: such an input cannot be given a profile through trtexec
    plan = _plan(models)
    plan.onnx.input_name = name
    with pytest.raises(UsageError, match="cannot express"):
        engine.trtexec_command(plan, (10, 3, 0))


def test_trtexec_command_refuses_trt8(models):
    with pytest.raises(BackendMissing, match="older than 10.0"):
        engine.trtexec_command(_plan(models), (8, 6, 1))


def test_dry_run_needs_no_tensorrt_and_writes_nothing(models, tmp_path):
    src = _copy(models["qdq"], tmp_path)
    before = sorted(os.listdir(tmp_path))
    res = engine.dry_run(engine.BuildRequest(onnx=src, fp16=True, batch="1,2,4"))
    assert sorted(os.listdir(tmp_path)) == before
    assert res["settings"]["precision"] == "int8+fp16" and res["settings"]["strongly_typed"] is True
    assert res["trtexec_command"][1] == f"--onnx={tmp_path / 'v2_int8.fp16.onnx'}"
    assert res["steps"][0].startswith("FP16 conversion") and "trtexec" in res["steps"][-1]
    json.loads(engine.settings_json(res))


# ---------------------------------------------------------------------------------------------------
# FP16 conversion


@pytest.mark.parametrize("name", ["v2", "v1"])
def test_fp16_conversion_close_to_fp32_and_reductions_fp32(models, name):
    from edgeconvnext.onnx.info import input_dtypes

    proto = onnx.load(str(models[name]))
    out, rep = fp16.convert_to_fp16(proto)
    assert fp16.float_weight_dtype(out) == "float16"
    dtypes = input_dtypes(out, ("LayerNormalization", "ReduceL2", "MatMul", "Conv", "Gemm"))
    assert set(dtypes["LayerNormalization"]) == {"float32"} and len(dtypes["LayerNormalization"]) == 10
    assert set(dtypes["MatMul"]) == {"float16"} and set(dtypes["Conv"]) == {"float16"}
    assert set(dtypes["Gemm"]) == {"float16"}
    if name == "v2":  # GRN: ||x|| and its mean over channels, + eps, division: all float32
        assert set(dtypes["ReduceL2"]) == {"float32"} and len(dtypes["ReduceL2"]) == 5
        assert rep.fp32_nodes["ReduceL2"] == 5 and rep.fp32_nodes["ReduceMean"] == 5
        assert rep.fp32_nodes["Div"] == 5
    else:
        assert "ReduceL2" not in dtypes
    # graph I/O stays float32, like the FP16 export
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    cmp = fp16.compare_outputs(proto, out, batch=4)
    assert cmp["finite"] and cmp["rel_diff"] < 1e-2 and cmp["top1_agreement"] == 1.0


def test_fp16_conversion_of_qdq_graph(models):
    from edgeconvnext.onnx.info import input_dtypes

    proto = onnx.load(str(models["qdq"]))
    out, rep = fp16.convert_to_fp16(proto)
    assert (rep.opset_before, rep.opset_after) == (17, 19)
    inits = {t.name: t for t in out.graph.initializer}
    qdq = [n for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and rep.qdq_scales_converted == len(qdq)
    for n in qdq:  # every scale float16, every zero point int8 and 0 (TensorRT rules unchanged)
        assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16
        zp = onnx.numpy_helper.to_array(inits[n.input[2]])
        assert zp.dtype == np.int8 and not zp.any()
    d = input_dtypes(out, ("QuantizeLinear", "LayerNormalization", "MatMul"))
    assert set(d["QuantizeLinear"]) == {"float16"} and set(d["MatMul"]) == {"float16"}
    assert set(d["LayerNormalization"]) == {"float32"}
    cmp = fp16.compare_outputs(proto, out, batch=4)
    assert cmp["finite"] and cmp["rel_diff"] < 0.1
    from edgeconvnext.onnx.trt_rules import check_model

    rules = check_model(out)  # still a valid TensorRT explicit-quantization graph, every layer INT8
    assert rules.ok and rules.opset == 19 and {layer.precision for layer in rules.layers} == {"INT8"}


def test_fp16_refuses_fp16_input_and_control_flow(models):
    out, _ = fp16.convert_to_fp16(onnx.load(str(models["v2"])))
    with pytest.raises(UsageError, match="already FP16"):
        fp16.convert_to_fp16(out)
    g = onnx.helper.make_graph(
        [
            onnx.helper.make_node(
                "If",
                ["c"],
                ["y"],
                then_branch=onnx.helper.make_graph([], "t", [], []),
                else_branch=onnx.helper.make_graph([], "e", [], []),
            )
        ],
        "g",
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(UsageError, match="control flow"):
        fp16.convert_to_fp16(onnx.helper.make_model(g))


def test_convert_file_writes_metadata(models, tmp_path):
    dst = tmp_path / "v2.fp16.onnx"
    rep = fp16.convert_file(models["v2"], dst)
    assert rep.initializers_converted > 0
    s = engine.summarize_onnx(dst)
    assert s.precision == "fp16" and s.metadata["precision"] == "fp16" and s.metadata["arch"] == "convnextv2_test"
    # an FP16 ONNX with --fp16 is built as it is
    plan = engine.plan_build(engine.BuildRequest(onnx=dst, fp16=True))
    assert not plan.convert_fp16 and plan.precision == "fp16" and "already FP16" in plan.notes[0]


# ---------------------------------------------------------------------------------------------------
# plan header, compatibility


def _fake_plan(version: tuple[int, int, int, int] = (10, 3, 0, 26), size: int = 64) -> bytes:
    head = bytearray(size)
    head[0:4] = engine.PLAN_TAG
    head[24:28] = bytes(version)
    return bytes(head)


def test_plan_header(tmp_path):
    assert engine.read_plan_header(_fake_plan((11, 1, 0, 106))) == (11, 1, 0, 106)
    assert engine.read_plan_header(b"xx" + _fake_plan()) is None
    bad = tmp_path / "prepended.engine"
    bad.write_bytes(b'{"meta": 1}' + _fake_plan())
    with pytest.raises(engine.BuildError, match="not a TensorRT plan"):
        engine.check_plan_file(bad)


def _sidecar(trt="10.3.0", cc="8.7", name="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"):
    return {
        "tensorrt": {"version": trt},
        "gpu": {"name": name, "compute_capability": cc},
        "source_onnx": {"path": "nano_int8.onnx"},
    }


def test_compatibility_same_machine_ok():
    c = trt_runtime.check_compatibility(
        _sidecar(),
        trt_version="10.3.0.30",
        compute_capability="8.7",
        gpu_name="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
    )
    assert c.ok and not c.warnings


def test_compatibility_other_tensorrt_refused():
    c = trt_runtime.check_compatibility(_sidecar(), trt_version="10.7.0", compute_capability="8.7")
    assert not c.ok
    assert "TensorRT 10.3.0" in c.problems[0] and "10.7.0" in c.problems[0]
    assert "edgeconvnext build-engine nano_int8.onnx" in c.problems[0]


def test_compatibility_other_gpu_refused_same_cc_warns():
    c = trt_runtime.check_compatibility(
        _sidecar(), trt_version="10.3.0", compute_capability="9.0", gpu_name="NVIDIA H100 80GB HBM3"
    )
    assert not c.ok and "compute capability 8.7" in c.problems[0] and "9.0" in c.problems[0]
    c = trt_runtime.check_compatibility(
        _sidecar(cc="8.9", name="NVIDIA L4"),
        trt_version="10.3.0",
        compute_capability="8.9",
        gpu_name="NVIDIA GeForce RTX 4090",
    )
    assert c.ok and "NVIDIA L4" in c.warnings[0]


def test_compatibility_without_sidecar_uses_plan_header():
    c = trt_runtime.check_compatibility(
        None, trt_version="11.1.0", compute_capability="9.0", header_version=(10, 3, 0, 26)
    )
    assert not c.ok and "10.3.0" in c.problems[0]
    c = trt_runtime.check_compatibility(
        None, trt_version="10.3.0", compute_capability="9.0", header_version=(10, 3, 0, 26)
    )
    assert c.ok and "no sidecar" in c.warnings[0]


def test_compatibility_plan_header_wins_and_build_numbers():
    # the header is read from the engine file itself: a stale sidecar does not hide a rebuilt engine
    c = trt_runtime.check_compatibility(
        _sidecar(trt="10.3.0"), trt_version="10.7.0", compute_capability="8.7", header_version=(10, 7, 0, 23)
    )
    assert c.ok, c.problems
    c = trt_runtime.check_compatibility(
        _sidecar(trt="10.7.0"), trt_version="10.7.0", compute_capability="8.7", header_version=(10, 3, 0, 30)
    )
    assert not c.ok and "TensorRT 10.3.0.30" in c.problems[0]
    # same release, other build: TensorRT itself decides (it wants the exact build), we warn
    c = trt_runtime.check_compatibility(
        _sidecar(), trt_version="10.3.0.30", compute_capability="8.7", header_version=(10, 3, 0, 26)
    )
    assert c.ok and "another build" in c.warnings[0]
    # build unknown here (pip's tensorrt.__version__ is major.minor.patch): no build comparison
    c = trt_runtime.check_compatibility(
        _sidecar(), trt_version="10.3.0", compute_capability="8.7", header_version=(10, 3, 0, 26)
    )
    assert c.ok and not c.warnings
    assert parse_version("10.3.0.30") == (10, 3, 0, 30) and parse_version("11.1.0") == (11, 1, 0)


def test_batch_chunks_and_dtypes():
    assert trt_runtime.batch_chunks(10, 1, 4) == [(0, 4, 4), (4, 4, 4), (8, 2, 2)]
    assert trt_runtime.batch_chunks(3, 2, 8) == [(0, 3, 3)]
    assert trt_runtime.batch_chunks(1, 2, 8) == [(0, 1, 2)]  # padded to the profile minimum
    assert trt_runtime.torch_dtype_name("DataType.HALF") == "float16"
    assert trt_runtime.torch_dtype_name("FLOAT") == "float32"
    import enum  # TensorRT's DataType is an enum whose .name is the member name

    data_type = enum.Enum("DataType", ["FLOAT", "HALF", "INT8"])
    assert [trt_runtime.torch_dtype_name(d) for d in data_type] == ["float32", "float16", "int8"]
    with pytest.raises(UsageError):
        trt_runtime.torch_dtype_name("DataType.FP4")


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: the missing-backend path cannot be exercised")
def test_runner_without_tensorrt_is_backend_missing(tmp_path):
    from edgeconvnext.runtime.runners import open_runner

    plan = tmp_path / "m.engine"
    plan.write_bytes(_fake_plan())
    with pytest.raises(BackendMissing, match="TensorRT"):
        open_runner(plan, device="cuda")
    with pytest.raises(UsageError, match="--device cuda"):
        trt_runtime.TensorRTRunner(plan, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        trt_runtime.TensorRTRunner(tmp_path / "missing.engine")


# ---------------------------------------------------------------------------------------------------
# builds through trtexec (a stand-in script: TensorRT cannot run here)

_FAKE_TRTEXEC = r"""#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
print("&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] # trtexec " + " ".join(args))
if args == ["--help"]:
    print("=== Build Options ===")
    sys.exit(0)
Path({record!r}).write_text("\n".join(args))
print("[I] TensorRT version: {version}")
if {fail}:
    print({fail_msg!r})
    sys.exit(1)
save = next(a.split("=", 1)[1] for a in args if a.startswith("--saveEngine="))
head = bytearray(128); head[0:4] = b"ftrt"; head[24:28] = bytes([{major}, {minor}, 0, 7])
Path(save).write_bytes(bytes(head))
print("&&&& PASSED TensorRT.trtexec")
"""


def _fake_trtexec(
    tmp_path: Path,
    major: int = 10,
    minor: int = 3,
    fail: bool = False,
    fail_msg: str = "[E] Error[4]: fake parser failure",
) -> tuple[Path, Path]:
    record = tmp_path / "argv.txt"
    script = tmp_path / f"trtexec{major}"
    script.write_text(
        _FAKE_TRTEXEC.format(
            python=sys.executable,
            banner=major * 10000 + minor * 100,
            version=f"{major}.{minor}.0",
            record=str(record),
            fail=fail,
            fail_msg=fail_msg,
            major=major,
            minor=minor,
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def test_build_through_trtexec_writes_plain_plan_and_sidecar(models, tmp_path):
    src = _copy(models["v2"], tmp_path)
    exe, record = _fake_trtexec(tmp_path)
    res = engine.build_engine(engine.BuildRequest(onnx=src, batch="1,2,4", trtexec=exe))
    assert res.engine == tmp_path / "v2.engine" and res.backend == "trtexec" and res.tensorrt_version == "10.3.0"
    assert res.engine.read_bytes()[:4] == b"ftrt"  # nothing prepended
    argv = record.read_text().splitlines()
    assert "--stronglyTyped" in argv and "--minShapes=input:1x3x32x32" in argv and "--maxShapes=input:4x3x32x32" in argv
    assert argv[1].startswith("--saveEngine=") and argv[1] != f"--saveEngine={res.engine}"  # atomic: temp file
    side = json.loads(res.sidecar.read_text())
    assert side["details"]["precision"] == "fp32" and side["details"]["strongly_typed"] is True
    assert side["details"]["profile"]["batch"] == [1, 2, 4] and side["details"]["profile"]["max"] == [4, 3, 32, 32]
    assert side["details"]["source_onnx"]["sha256"] == engine.sha256_file(src)
    assert side["outputs"][0]["sha256"] == engine.sha256_file(res.engine) and side["outputs"][0]["bytes"] == 128
    assert (
        side["details"]["tensorrt"]["plan_header_version"] == "10.3.0.7"
        and side["details"]["metadata"]["arch"] == "convnextv2_test"
    )
    assert (tmp_path / "v2.engine.trtexec.log").read_text().startswith("$ ")
    # the runtime check accepts it on the same TensorRT and refuses it on 11.1
    assert trt_runtime.check_compatibility(side, trt_version="10.3.0", compute_capability=None).ok
    assert not trt_runtime.check_compatibility(side, trt_version="11.1.0", compute_capability=None).ok


def test_build_through_trtexec11_with_fp16_conversion(models, tmp_path):
    src = _copy(models["qdq"], tmp_path)
    exe, record = _fake_trtexec(tmp_path, major=11, minor=1)
    res = engine.build_engine(engine.BuildRequest(onnx=src, fp16=True, trtexec=exe))
    argv = record.read_text().splitlines()
    assert "--stronglyTyped" not in argv and f"--onnx={tmp_path / 'v2_int8.fp16.onnx'}" in argv
    side = json.loads(res.sidecar.read_text())
    assert side["details"]["precision"] == "int8+fp16" and side["details"]["tensorrt"]["version"] == "11.1.0"
    conv = side["details"]["fp16_conversion"]
    assert conv["report"]["opset_after"] == 19 and conv["parity_vs_fp32"]["finite"]
    assert side["details"]["qdq_rules_check"]["violations"] == 0
    assert engine.summarize_onnx(res.fp16_onnx).precision == "int8+fp16"


def test_engine_build_never_imports_torch(models, tmp_path):
    # style: engine code never imports torch (a Jetson build should not pay for torch and a CUDA context);
    # a fresh interpreter builds through the stand-in trtexec and reports what it imported
    import subprocess

    src = _copy(models["v2"], tmp_path)
    exe, _ = _fake_trtexec(tmp_path)
    code = (
        "import sys; from pathlib import Path; from edgeconvnext.engine import build as engine; "
        f"engine.build_engine(engine.BuildRequest(onnx=Path({str(src)!r}), trtexec=Path({str(exe)!r}))); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert json.loads((tmp_path / "v2.engine.json").read_text())["outputs"][0]["bytes"] == 128


def test_failed_trtexec_build_leaves_nothing(models, tmp_path):
    src = _copy(models["v2"], tmp_path)
    exe, _ = _fake_trtexec(tmp_path, fail=True)
    with pytest.raises(engine.BuildError, match="fake parser failure"):
        engine.build_engine(engine.BuildRequest(onnx=src, trtexec=exe))
    names = sorted(os.listdir(tmp_path))
    assert "v2.engine" not in names and "v2.engine.json" not in names
    assert not [n for n in names if n.endswith(".partial")]
    assert "v2.engine.trtexec.log" in names  # the log stays for the user


def test_trtexec_without_gpu_is_backend_missing(models, tmp_path):
    src = _copy(models["v2"], tmp_path)
    exe, _ = _fake_trtexec(tmp_path, fail=True, fail_msg="[E] CUDA initialization failure with error: 100")
    with pytest.raises(BackendMissing, match="no usable NVIDIA GPU"):
        engine.build_engine(engine.BuildRequest(onnx=src, trtexec=exe))
    assert not (tmp_path / "v2.engine").exists()


def test_qdq_graph_breaking_tensorrt_rules_is_refused_before_building(models, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeconvnext.errors import RuleViolation

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": np.ones((1, 3, 32, 32), np.float32)}])

        def get_next(self):
            return next(self.it, None)

    bad = tmp_path / "uint8.onnx"  # onnxruntime's defaults: uint8 asymmetric activations, not TensorRT's
    quantize_static(
        str(models["v2"]),
        str(bad),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    exe, record = _fake_trtexec(tmp_path)
    with pytest.raises(RuleViolation, match="TensorRT rule violation"):
        engine.build_engine(engine.BuildRequest(onnx=bad, trtexec=exe))
    assert not record.exists() and not (tmp_path / "uint8.engine").exists()


def test_explicit_missing_trtexec_is_usage_error(models, tmp_path):
    with pytest.raises(UsageError, match="--trtexec"):
        engine.build_engine(engine.BuildRequest(onnx=models["v2"], trtexec=tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------
# CLI


def _cli(args: list[str]) -> int:
    from edgeconvnext.cli import main

    return main(args)


def test_cli_dry_run(models, capsys):
    assert _cli(["build-engine", str(models["v2"]), "--batch", "1,4,8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--stronglyTyped" in out and "--optShapes=input:4x3x32x32" in out and "fp32" in out
    assert _cli(["build-engine", str(models["v2"]), "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["profile"]["batch"] == [1, 1, 1] and data["config_sources"]["batch"] == "default"


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--dla-core", "0"], 2, "ConvNeXt cannot run on DLA"),
        (["--batch", "4,2,8"], 2, "MIN <= OPT <= MAX"),
        (["--opt-level", "9"], 2, "--opt-level: 9 is above the maximum 5"),
        (["--workspace", "0"], 2, "--workspace: 0 is below the minimum 1"),
    ],
)
def test_cli_refusals(models, capsys, args, code, text):
    assert _cli(["build-engine", str(models["v2"]), *args]) == code
    assert text in capsys.readouterr().err


@pytest.mark.skipif(not NO_TRT, reason="TensorRT or trtexec is installed: the missing-backend path cannot be exercised")
def test_cli_without_tensorrt_exits_8_with_install_hint(models, tmp_path, capsys):
    src = _copy(models["v2"], tmp_path)
    assert _cli(["build-engine", str(src)]) == 8
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not available") and "install" in err and "--dry-run" in err
    assert err.count("\n") == 1  # one line
    assert sorted(os.listdir(tmp_path)) == ["v2.onnx"]


# ---------------------------------------------------------------------------------------------------
# real TensorRT (skipped without it)


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorRT's Python bindings and an NVIDIA GPU")
def test_real_build_and_run_matches_onnxruntime(models, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch and a GPU")
    src = _copy(models["v2"], tmp_path)
    res = engine.build_engine(engine.BuildRequest(onnx=src, batch="1,2,4", timing_cache=tmp_path / "tc.cache"))
    assert (tmp_path / "tc.cache").is_file()
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    with trt_runtime.TensorRTRunner(res.engine) as r:
        y = r.infer(x)
        stats, how = r.benchmark(batch=2, warmup=5, iters=20)
    assert np.abs(y - ref).max() <= 1e-2 * max(1.0, float(np.abs(ref).max()))
    assert stats.iters == 20 and how in ("cuda_graph", "enqueue")


def test_a_timing_cache_that_is_the_onnx_or_any_onnx_is_refused(models):
    # TensorRT writes its timing cache back to --timing-cache: the input ONNX (or any .onnx) there would be lost
    from edgeconvnext.errors import UsageError

    for cache in (models["v2"], models["v2"].parent / "other.onnx"):
        with pytest.raises(UsageError, match="--timing-cache .* is an ONNX file"):
            _plan(models, timing_cache=cache)
    assert _plan(models, timing_cache=Path("tc.cache")).timing_cache == Path("tc.cache")


def test_compatibility_gpu_names_and_jetson_boards():
    # an older sidecar recorded the board model as the name (nvidia-smi lists no GPU on a Jetson); CUDA at run time
    # says "Orin", the device tree the board
    nano = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    c = trt_runtime.check_compatibility(
        _sidecar(), trt_version="10.3.0", compute_capability="8.7", gpu_name="Orin", board=nano
    )
    assert c.ok and not c.warnings, c.warnings
    c = trt_runtime.check_compatibility(
        _sidecar(name="Orin (nvgpu)"), trt_version="10.3.0", compute_capability="8.7", gpu_name="Orin"
    )
    assert c.ok and not c.warnings, c.warnings
    # with the board recorded on both sides, an AGX Orin is not an Orin Nano although CUDA calls both "Orin"
    sc = _sidecar(name="Orin (nvgpu)")
    sc["gpu"]["board"] = nano
    c = trt_runtime.check_compatibility(sc, trt_version="10.3.0", compute_capability="8.7", gpu_name="Orin", board=nano)
    assert c.ok and not c.warnings, c.warnings
    agx = "NVIDIA Jetson AGX Orin Developer Kit"
    c = trt_runtime.check_compatibility(sc, trt_version="10.3.0", compute_capability="8.7", gpu_name="Orin", board=agx)
    assert c.ok and nano in c.warnings[0] and agx in c.warnings[0]
    # dGPUs of one compute capability warn unless the names are the same words
    for built, here in (
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"),
        ("NVIDIA GeForce RTX 3060", "NVIDIA GeForce RTX 3060 Ti"),
    ):
        c = trt_runtime.check_compatibility(
            _sidecar(cc="8.6", name=built), trt_version="10.3.0", compute_capability="8.6", gpu_name=here
        )
        assert c.ok and built in c.warnings[0] and here in c.warnings[0]
    c = trt_runtime.check_compatibility(
        _sidecar(cc="8.6", name="NVIDIA GeForce RTX 3060"),
        trt_version="10.3.0",
        compute_capability="8.6",
        gpu_name="nvidia geforce rtx 3060",
    )
    assert c.ok and not c.warnings
