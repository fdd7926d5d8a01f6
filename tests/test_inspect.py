"""onnx_info.describe and ``edgeconvnext inspect``: real exported graphs and a hand-built Q/DQ graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeconvnext.cli import main
from edgeconvnext.errors import CheckpointError
from edgeconvnext.export import onnx_export as ex
from edgeconvnext.models import registry as zoo
from edgeconvnext.onnx.info import describe

DESCRIBE_KEYS = {
    "path",
    "file_bytes",
    "ir_version",
    "opset",
    "producer",
    "graph_name",
    "inputs",
    "outputs",
    "nodes",
    "ops",
    "initializers",
    "params",
    "initializer_bytes",
    "external_data",
    "qdq",
    "metadata",
    "metadata_props",
    "norm_input_dtypes",
    "onnx_version",
    "sidecar",
}


@pytest.fixture(scope="module")
def fp16_onnx(tmp_path_factory) -> tuple[Path, object]:
    from edgeconvnext.models.checkpoint import load_model

    torch.manual_seed(0)
    loaded = load_model("convnextv2_test", num_classes=4, img_size=32)
    from dataclasses import replace

    loaded = replace(loaded, class_names=["cat", "dog", "[bold]fox", "owl"])
    path = tmp_path_factory.mktemp("inspect") / "v2.onnx"
    ex.export_onnx(loaded, path, precision="fp16")
    return path, loaded


def _qdq_model(path: Path, zero_point_dtype: int = TensorProto.INT8) -> Path:
    """x (n, 8) -> Q -> DQ -> MatMul(DQ(int8 W)) -> y: the smallest TensorRT-style Q/DQ graph."""
    w = np.random.default_rng(0).integers(-127, 127, size=(8, 4), dtype=np.int8)
    zp_np = np.int8 if zero_point_dtype == TensorProto.INT8 else np.uint8
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, zp_np), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=1),
        helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hand")
    model.ir_version = 8
    helper.set_model_props(model, {"author": "someone else"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_describe_exported(fp16_onnx):
    path, loaded = fp16_onnx
    d = describe(path)
    assert set(d) == DESCRIBE_KEYS
    assert d["opset"] == {"ai.onnx": 17} and d["ir_version"] >= 8 and d["producer"].startswith("pytorch")
    assert d["file_bytes"] == path.stat().st_size
    assert d["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert d["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 4]}]
    assert d["params"] == sum(p.numel() for p in loaded.model.parameters())
    assert d["nodes"] == sum(d["ops"].values())
    assert d["ops"]["LayerNormalization"] == 10 and d["ops"]["ReduceL2"] == 5
    assert list(d["ops"].values()) == sorted(d["ops"].values(), reverse=True)
    assert d["qdq"] == {"QuantizeLinear": 0, "DequantizeLinear": 0, "total": 0}
    assert d["norm_input_dtypes"] == {"LayerNormalization": {"float32": 10}, "ReduceL2": {"float32": 5}}
    m = d["metadata"]
    assert m["arch"] == "convnextv2_test" and m["precision"] == "fp16" and m["num_classes"] == 4
    assert m["class_names"] == ["cat", "dog", "[bold]fox", "owl"] and m["preprocess"]["img_size"] == 32
    assert "source_sha256" not in m  # random weights: no source file
    assert d["metadata_props"]["edgeconvnext.num_classes"] == "4"


def test_describe_foreign_qdq_graph(tmp_path):
    d = describe(_qdq_model(tmp_path / "q.onnx"))
    assert d["qdq"] == {"QuantizeLinear": 1, "DequantizeLinear": 2, "total": 3}
    assert d["inputs"][0]["shape"] == ["n", 8] and d["outputs"][0]["shape"] == ["n", 4]
    assert d["metadata"] == {} and d["metadata_props"] == {"author": "someone else"}
    assert d["initializers"] == 5 and d["params"] == 8 * 4 + 4 + 4 + 1 + 1
    assert d["ops"] == {"DequantizeLinear": 2, "QuantizeLinear": 1, "MatMul": 1}


def test_describe_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        describe(tmp_path / "missing.onnx")
    with pytest.raises(CheckpointError, match="is a folder"):
        describe(tmp_path)
    (tmp_path / "text.onnx").write_text("definitely not a protobuf")
    with pytest.raises(CheckpointError, match="is not an ONNX model"):
        describe(tmp_path / "text.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not an ONNX model"):
        describe(tmp_path / "empty.onnx")
    sidecar = tmp_path / "x.onnx.json"  # onnx would pick its JSON parser from the extension
    sidecar.write_text(json.dumps({"stage": "export"}))
    with pytest.raises(CheckpointError, match="is not an ONNX model"):
        describe(sidecar)
    with pytest.raises(CheckpointError, match="no such file"):
        ex.read_metadata(tmp_path / "missing.onnx")


def test_cli_inspect_table(fp16_onnx, capsys):
    path, _ = fp16_onnx
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "input  float32  (batch, 3, 32, 32)" in out and "logits  float32  (batch, 4)" in out
    assert "opset ai.onnx 17" in out and "LayerNormalization" in out and "Q/DQ    0" in out
    assert "convnextv2_test" in out and "[bold]fox" in out  # metadata shown literally, not as markup
    assert "LayerNormalization 10x float32; ReduceL2 5x float32" in out


def test_cli_inspect_json(fp16_onnx, capsys):
    path, _ = fp16_onnx
    assert main(["inspect", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) == DESCRIBE_KEYS
    assert d["metadata"]["precision"] == "fp16" and d["inputs"][0]["shape"][0] == "batch"


def test_cli_inspect_trt(fp16_onnx, tmp_path, capsys):
    path, _ = fp16_onnx
    assert main(["inspect", str(path), "--trt"]) == 0
    out = capsys.readouterr().out
    assert "OK for TensorRT" in out and "stages.0.blocks.*.mlp.fc1" in out
    assert main(["inspect", str(path), "--trt", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["trt"]["ok"] is True and d["trt"]["opset"] == 17
    # a uint8 activation zero point breaks TensorRT's rules: report shown, then exit code 6
    bad = _qdq_model(tmp_path / "bad.onnx", zero_point_dtype=TensorProto.UINT8)
    assert main(["inspect", str(bad), "--trt"]) == 6
    cap = capsys.readouterr()
    assert "violation" in cap.out and cap.err.startswith("error: ") and "TensorRT rule violation" in cap.err


def test_cli_inspect_shows_the_sidecar_and_whether_it_describes_the_file(fp16_onnx, tmp_path, capsys):
    import shutil

    src, _ = fp16_onnx
    path = tmp_path / "v2.onnx"
    shutil.copy(src, path)
    shutil.copy(src.with_name(src.name + ".json"), tmp_path / "v2.onnx.json")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sidecar v2.onnx.json (export, " in out and "): describes this file" in out
    assert "export parity vs torch" in out and "checkpoint: " not in out  # a checkpoint-less export: no input
    side = json.loads((tmp_path / "v2.onnx.json").read_text())
    side["outputs"][0]["sha256"] = "0" * 64  # the sidecar of another file (the ONNX was replaced after)
    (tmp_path / "v2.onnx.json").write_text(json.dumps(side))
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sidecar"]["status"] == "changed"
    assert main(["inspect", str(path)]) == 0
    assert "the file changed after it was written" in capsys.readouterr().out
    (tmp_path / "v2.onnx.json").write_text("{not json")
    assert main(["inspect", str(path)]) == 0  # a broken sidecar is reported, never a failure of inspect
    assert "unreadable (not an edgeconvnext sidecar)" in capsys.readouterr().out
    (tmp_path / "v2.onnx.json").unlink()
    assert main(["inspect", str(path)]) == 0
    assert "sidecar: none beside it" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["missing", "text"])
def test_cli_inspect_bad_file(tmp_path, capsys, make):
    path = tmp_path / "model.onnx"
    if make == "text":
        path.write_text("hello")
    assert main(["inspect", str(path)]) == 3  # missing or corrupt model file: exit 3 in every command
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(path) in err


def test_param_count_matches_for_v1_fp32(tmp_path):
    from edgeconvnext.models.checkpoint import load_model

    loaded = load_model("convnext_test", num_classes=3, img_size=32)
    res = ex.export_onnx(loaded, tmp_path / "v1.onnx")
    d = describe(res.path)
    assert d["params"] == sum(p.numel() for p in zoo.create_model("convnext_test", 3).parameters())
    assert d["initializer_bytes"] == 4 * d["params"]
    assert "ReduceL2" not in d["ops"] and d["norm_input_dtypes"] == {"LayerNormalization": {"float32": 10}}
