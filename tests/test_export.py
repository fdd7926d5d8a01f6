"""ONNX export: parity with torch, graph structure (one LayerNormalization per LayerNorm, FP32 statistics in
FP16), dynamic/fixed batch, metadata and sidecar, atomic failure, CLI exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeconvnext.artifacts import sha256_file, sidecar_path
from edgeconvnext.cli import main
from edgeconvnext.errors import ExportError, UsageError
from edgeconvnext.export import onnx_export as ex
from edgeconvnext.models.checkpoint import load_model, save_checkpoint
from edgeconvnext.onnx.info import input_dtypes, op_histogram

ARCHS = ("convnextv2_test", "convnext_test")
SIZE = 64


def _loaded(name: str, num_classes: int = 10, img_size: int = SIZE, seed: int = 0):
    torch.manual_seed(seed)
    return load_model(name, num_classes=num_classes, img_size=img_size)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _session_bytes(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _torch_logits(loaded, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One dynamic-batch export per (arch, precision) at 64 px, shared by the structure tests."""
    out = {}
    root = tmp_path_factory.mktemp("export")
    for name in ARCHS:
        loaded = _loaded(name)
        for prec in ("fp32", "fp16"):
            res = ex.export_onnx(loaded, root / f"{name}_{prec}.onnx", precision=prec)
            out[name, prec] = (loaded, res)
    return out


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_parity_and_dynamic_batch(exported, name, prec):
    loaded, res = exported[name, prec]
    assert res.path.is_file() and res.sidecar.is_file()
    tol = 1e-4 if prec == "fp32" else 5e-3
    assert res.rel_diff is not None and res.rel_diff <= tol
    assert res.top1_agreement == 1.0
    # independent check, at two batch sizes the export never saw
    sess = _session(res.path)
    rng = np.random.default_rng(123)
    for b in (1, 5):
        x = rng.standard_normal((b, 3, SIZE, SIZE), dtype=np.float32)
        y = sess.run(["logits"], {"input": x})[0]
        ref = _torch_logits(loaded, x)
        assert y.shape == (b, 10) and y.dtype == np.float32
        assert np.abs(y - ref).max() / np.abs(ref).max() <= tol


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_graph_io_opset_and_checker(exported, name, prec):
    _, res = exported[name, prec]
    proto = onnx.load(str(res.path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and outp.name == "logits"
    # fp32 I/O in both precisions (the fp16 graph casts inside)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]
    assert [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim] == ["batch", 10]


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_layernorm_is_one_op(exported, name, prec):
    loaded, res = exported[name, prec]
    hist = op_histogram(onnx.load(str(res.path)))
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in loaded.model.modules())
    n_blocks = sum(loaded.arch.depths)
    assert hist["LayerNormalization"] == n_ln == 1 + 3 + n_blocks + 1  # stem, 3 downsamples, blocks, head
    # no hand-written LayerNorm pieces; ReduceMean only for GRN's channel mean and the head's pooling
    assert "Pow" not in hist and "Sqrt" not in hist
    grn = n_blocks if loaded.arch.use_grn else 0
    assert hist.get("ReduceL2", 0) == grn
    assert hist["ReduceMean"] == grn + 1
    # weights feed their ops directly (no Identity(initializer) left from constant folding)
    assert "Identity" not in hist


@pytest.mark.parametrize("name", ARCHS)
def test_fp16_statistics_run_in_fp32(exported, name):
    loaded, res = exported[name, "fp16"]
    proto = onnx.load(str(res.path))
    dtypes = input_dtypes(proto, ("LayerNormalization", "ReduceL2", "MatMul", "Conv"))
    assert set(dtypes["LayerNormalization"]) == {"float32"}
    if loaded.arch.use_grn:
        assert set(dtypes["ReduceL2"]) == {"float32"}
    else:
        assert "ReduceL2" not in dtypes
    # the heavy ops really are fp16
    assert set(dtypes["MatMul"]) == {"float16"} and set(dtypes["Conv"]) == {"float16"}
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    conv_w = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"]
    assert set(conv_w) == {onnx.TensorProto.FLOAT16}
    # LayerNorm scale/bias stay fp32 (they feed an fp32 LayerNormalization)
    ln_w = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "LayerNormalization"]
    assert set(ln_w) == {onnx.TensorProto.FLOAT}
    # fp32 input is cast to fp16 on entry, logits cast back to fp32 on exit
    first = [n for n in proto.graph.node if "input" in n.input]
    assert [n.op_type for n in first] == ["Cast"] and first[0].attribute[0].i == onnx.TensorProto.FLOAT16
    last = [n for n in proto.graph.node if "logits" in n.output]
    assert last[0].op_type == "Cast" and last[0].attribute[0].i == onnx.TensorProto.FLOAT
    # fp16 halves the file
    assert res.size_bytes < 0.6 * exported[name, "fp32"][1].size_bytes


def test_metadata_decoded(exported):
    loaded, res = exported["convnextv2_test", "fp16"]
    meta = ex.read_metadata(res.path)
    assert meta["arch"] == "convnextv2_test"
    assert meta["precision"] == "fp16"
    assert meta["num_classes"] == 10
    assert meta["preprocess"] == loaded.preprocess.to_dict() and meta["preprocess"]["img_size"] == SIZE
    assert meta["class_names"] is None and meta["source_sha256"] is None
    assert meta["io_dtype"] == "float32"
    from edgeconvnext import __version__

    assert meta["version"] == __version__
    raw = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    for key in ("arch", "preprocess", "num_classes", "class_names", "precision", "version"):
        assert f"edgeconvnext.{key}" in raw
    assert json.loads(raw["edgeconvnext.preprocess"])["mean"] == [0.485, 0.456, 0.406]


def test_metadata_class_names_and_source_sha(tmp_path):
    from dataclasses import replace

    loaded = _loaded("convnext_test", num_classes=3, img_size=32)
    loaded = replace(
        loaded,
        class_names=["cat", "dog", "ünïcode bird"],
        source=tmp_path / "x.pt",
        source_sha256="ab" * 32,
        source_format="timm",
    )
    res = ex.export_onnx(loaded, tmp_path / "m.onnx")
    meta = ex.read_metadata(res.path)
    assert meta["class_names"] == ["cat", "dog", "ünïcode bird"]
    assert meta["source_sha256"] == "ab" * 32 and meta["source_format"] == "timm"
    assert meta["num_classes"] == 3 and meta["preprocess"]["img_size"] == 32


def test_sidecar_content(exported):
    _, res = exported["convnext_test", "fp32"]
    assert res.sidecar == sidecar_path(res.path)
    sc = json.loads(res.sidecar.read_text())
    assert sc["stage"] == "export"
    assert sc["outputs"][0]["sha256"] == sha256_file(res.path) == res.sha256
    assert sc["outputs"][0]["bytes"] == res.path.stat().st_size == res.size_bytes
    assert sc["details"]["metadata"] == ex.read_metadata(res.path)
    cfg = sc["config"]
    assert cfg["opset"] == 17 and cfg["batch"] == "dynamic" and cfg["img_size"] == SIZE
    graph = sc["details"]["graph"]
    assert graph["io_dtype"] == "float32" and graph["compute_dtype"] == "float32"
    assert graph["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    par = sc["details"]["parity"]
    assert par["max_abs_diff"] == res.max_abs_diff and par["rel_diff"] == res.rel_diff
    assert par["tolerance_rel"] == 1e-4 and par["finite"] is True
    assert [b["batch"] for b in par["per_batch"]] == [2] * ex.PARITY_BATCHES + [ex.PARITY_SECOND_BATCH]
    assert "trace's forward" in par["reference"]  # FP32: the first batch's torch logits come from the trace
    assert {"torch", "onnx", "onnxruntime", "edgeconvnext", "python"} <= set(sc["environment"])
    assert set(sc["timings"]) == {"export_s", "check_s", "parity_s", "total_s"}
    assert sc["details"]["arch"]["depths"] == [1, 1, 2, 1] and sc["details"]["source"]["format"] == "random"
    fp16 = json.loads(exported["convnext_test", "fp16"][1].sidecar.read_text())
    assert fp16["details"]["graph"]["compute_dtype"] == "float16" and fp16["details"]["graph"]["io_dtype"] == "float32"
    assert "trace" not in fp16["details"]["parity"]["reference"]  # the fp16 copy is traced, not the fp32 reference


@pytest.mark.parametrize("name", ARCHS)
def test_traced_logits_are_the_eager_forward(name):
    """The FP32 parity takes its first batch's torch logits from the trace: they must be the eager model's, and
    taking them must leave the exported graph as it was (the hook records no op)."""
    loaded = _loaded(name, img_size=32)
    (x,) = ex.parity_inputs(32, 4)
    data, traced = ex._trace(loaded.model, torch.from_numpy(x), 17, dynamic=True)
    np.testing.assert_array_equal(traced, _torch_logits(loaded, x))
    buf = io.BytesIO()  # the same export without the hook
    with torch.no_grad():
        torch.onnx.export(
            loaded.model,
            (torch.from_numpy(x),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    got, plain = onnx.load_from_string(data).graph, onnx.load_from_string(buf.getvalue()).graph
    assert [n.op_type for n in got.node] == [n.op_type for n in plain.node]
    assert not loaded.model._forward_hooks  # the hook is removed
    y = _session_bytes(data).run(["logits"], {"input": x})[0]
    assert np.abs(y - traced).max() / np.abs(traced).max() <= 1e-4


def test_fixed_batch(tmp_path):
    loaded = _loaded("convnextv2_test", img_size=32)
    res = ex.export_onnx(loaded, tmp_path / "b3.onnx", batch="3", opset=18)
    proto = onnx.load(str(res.path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [3, 3, 32, 32]
    sc = json.loads(res.sidecar.read_text())
    assert sc["config"]["batch"] == 3
    assert [b["batch"] for b in sc["details"]["parity"]["per_batch"]] == [3] * ex.PARITY_BATCHES
    sess = _session(res.path)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    assert sess.run(None, {"input": x})[0].shape == (3, 10)
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    with pytest.raises(InvalidArgument):  # onnxruntime refuses another batch size for a fixed-batch graph
        sess.run(None, {"input": x[:2]})


@pytest.mark.parametrize("opset", [11, 16])
def test_old_opset_refused(tmp_path, opset):
    with pytest.raises(UsageError, match="--opset"):
        ex.export_onnx(_loaded("convnext_test", img_size=32), tmp_path / "m.onnx", opset=opset)
    assert not list(tmp_path.iterdir())


def test_option_refusals():
    with pytest.raises(UsageError, match="edgeconvnext quantize"):
        ex.check_precision("int8")
    with pytest.raises(UsageError, match="did you mean 'fp16'"):
        ex.check_precision("fp61")
    with pytest.raises(UsageError, match="--opset 21"):
        ex.check_opset(21)
    assert ex.parse_batch("dynamic") is None and ex.parse_batch("8") == 8 and ex.parse_batch(None) is None
    for bad in ("eight", "0", -2):
        with pytest.raises(UsageError, match="--batch"):
            ex.parse_batch(bad)
    with pytest.raises(UsageError, match="MIN,OPT,MAX engine profile"):  # one grammar, build-engine's form named
        ex.parse_batch("1,8,32")
    with pytest.raises(UsageError, match="--img-size"):
        ex.check_img_size(16)


def _assert_untouched(folder: Path, expected: dict[str, str]) -> None:
    files = {p.name: p.read_text() for p in folder.iterdir()}
    assert files == expected, f"left behind: {sorted(set(files) - set(expected))}"


def test_parity_failure_leaves_nothing(tmp_path, monkeypatch):
    loaded = _loaded("convnextv2_test", img_size=32)
    monkeypatch.setitem(ex.PARITY_REL_TOL, "fp32", 0.0)  # any real difference now fails
    with pytest.raises(ExportError, match="disagrees with the torch model.*nothing was written"):
        ex.export_onnx(loaded, tmp_path / "m.onnx")
    _assert_untouched(tmp_path, {})
    # an earlier good export at the same path is left as it was, sidecar included
    (tmp_path / "m.onnx").write_text("old")
    (tmp_path / "m.onnx.json").write_text("old sidecar")
    with pytest.raises(ExportError):
        ex.export_onnx(loaded, tmp_path / "m.onnx")
    _assert_untouched(tmp_path, {"m.onnx": "old", "m.onnx.json": "old sidecar"})


def test_non_finite_output_fails_fp16(tmp_path):
    loaded = _loaded("convnext_test", img_size=32)
    with torch.no_grad():
        loaded.model.head.fc.bias.fill_(float("inf"))
    with pytest.raises(ExportError, match="non-finite"):
        ex.export_onnx(loaded, tmp_path / "m.onnx", precision="fp16")
    _assert_untouched(tmp_path, {})


def test_exporter_failure_is_export_error(tmp_path):
    loaded = _loaded("convnext_test", img_size=32)

    class Broken(torch.nn.Module):  # an op the TorchScript exporter cannot translate
        def forward(self, x):
            return torch.linalg.svd(x.flatten(1)[:, :4].reshape(-1, 2, 2)).S.flatten(1)

    loaded.model.head.fc = torch.nn.Sequential(loaded.model.head.fc, Broken())
    with pytest.raises(ExportError, match="torch.onnx.export"):
        ex.export_onnx(loaded, tmp_path / "m.onnx")
    _assert_untouched(tmp_path, {})


def test_export_does_not_modify_the_loaded_model(tmp_path):
    loaded = _loaded("convnextv2_test", img_size=32)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ex.export_onnx(loaded, tmp_path / "m.onnx", precision="fp16")
    after = loaded.model.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    assert not loaded.model.training


def test_fp16_node_names_match_fp32(exported):
    """fp32 I/O is added on the graph, so per-layer names are the same in both precisions."""
    names = {}
    for prec in ("fp32", "fp16"):
        proto = onnx.load(str(exported["convnextv2_test", prec][1].path))
        names[prec] = [
            n.name for n in proto.graph.node if n.op_type in ("Conv", "MatMul", "Gemm", "LayerNormalization")
        ]
    assert names["fp32"] == names["fp16"] and "/stages/stages.0/blocks/blocks.0/mlp/fc1/MatMul" in names["fp32"]


# ---------------------------------------------------------------------------------------------------
# CLI: main() maps EdgeError to "error: <msg>" on stderr and the error's exit code


def test_cli_export_checkpoint(tmp_path, capsys):
    torch.manual_seed(1)
    net = load_model("convnextv2_test", num_classes=3).model
    ckpt = save_checkpoint(tmp_path / "ft.pt", net, "convnextv2_test", class_names=["a", "b", "c"])
    out = tmp_path / "out" / "m.onnx"
    rc = main(
        [
            "export",
            "--checkpoint",
            str(ckpt),
            "--img-size",
            "32",
            "--precision",
            "fp16",
            "--batch",
            "2",
            "--output",
            str(out),
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert lines[-2].startswith("parity vs fp32 torch (fp16 graph): max abs diff ")
    assert lines[-1].startswith(f"{out}  ") and "convnextv2_test fp16 opset 17 input (2, 3, 32, 32)" in lines[-1]
    assert lines[-1].endswith(" s")
    meta = ex.read_metadata(out)
    assert meta["class_names"] == ["a", "b", "c"] and meta["source_format"] == "edgeconvnext"
    assert meta["source_sha256"] == sha256_file(ckpt)
    sc = json.loads(sidecar_path(out).read_text())
    assert sc["details"]["source"]["path"] == str(ckpt) and sc["config"]["batch"] == 2


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--precision", "int8"], 2, "edgeconvnext quantize"),
        (["--precision", "fp8"], 2, "--precision"),
        (["--opset", "16"], 2, "--opset 17"),
        (["--batch", "many"], 2, "--batch"),
        (["--img-size", "16"], 2, "--img-size"),
        (["--model", "convnextv2_tset"], 2, "did you mean 'convnextv2_test'"),
    ],
)
def test_cli_export_refusals(tmp_path, capsys, args, code, message):
    argv = ["export", "--model", "convnext_test", "--img-size", "32", "--output", str(tmp_path / "m.onnx")] + args
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli_export_missing_checkpoint(tmp_path, capsys):
    rc = main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "m.onnx")])
    assert rc == 3 and "nope.pt" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_export_parity_failure_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(ex.PARITY_REL_TOL, "fp32", 0.0)
    rc = main(["export", "--model", "convnext_test", "--img-size", "32", "--output", str(tmp_path / "m.onnx")])
    assert rc == 5 and "nothing was written" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_modules_import_no_heavy_libraries():
    import subprocess
    import sys

    code = (
        "import sys, edgeconvnext.cli.export, edgeconvnext.cli.inspect; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
