"""The checkpoint options through the CLI (``edgeconvnext export``): exit codes and one-line errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from edgeconvnext.cli import _common, main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
export = pytest.importorskip("edgeconvnext.export.onnx_export")
if not any(row[0] == "export" for row in _common.COMMANDS):
    pytest.skip("the export command is not registered", allow_module_level=True)

from test_checkpoint import make_model, plain_sd, to_hf, to_official  # noqa: E402


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_from_huggingface_folder_carries_names_and_hash(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    save_file(to_hf(plain_sd(make_model("convnextv2_test", num_classes=3)), v2=True), d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"id2label": {"0": "cat", "1": "dog", "2": "bird"}}))
    out = tmp_path / "m.onnx"
    code, _, err = _run(capsys, "-c", str(d), "-o", str(out), "--img-size", "32")
    assert code == 0, err
    meta = export.read_metadata(out)
    assert meta["arch"] == "convnextv2_test" and meta["class_names"] == ["cat", "dog", "bird"]
    assert meta["num_classes"] == 3 and meta["preprocess"]["img_size"] == 32
    from edgeconvnext.artifacts import sha256_file

    assert meta["source_sha256"] == sha256_file(d / "model.safetensors")


def test_unsafe_pickle_refused_then_allowed(tmp_path, capsys):
    f = tmp_path / "checkpoint-best.pth"
    torch.save({"model": to_official(plain_sd(make_model("convnext_test"))), "args": argparse.Namespace(lr=1)}, f)
    out = tmp_path / "m.onnx"
    code, _, err = _run(capsys, "-c", str(f), "-o", str(out), "--img-size", "32")
    assert code == 3 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--allow-unsafe-pickle only if you trust" in lines[0]
    code, _, err = _run(capsys, "-c", str(f), "-o", str(out), "--img-size", "32", "--allow-unsafe-pickle")
    assert code == 0, err
    assert out.exists()


@pytest.mark.parametrize(
    "args,code,msg",
    [
        (["-c", "{tmp}/missing.pth"], 3, "checkpoint not found"),
        (["-c", "{ck}", "-m", "convnextv2_test"], 3, "is convnext_test, not convnextv2_test"),
        (["-c", "{ck}", "--ema"], 3, "holds no EMA weights"),
        (["-m", "convnextv2_nanoo"], 2, "did you mean 'convnextv2_nano'"),
    ],
)
def test_checkpoint_errors_exit_codes(tmp_path, capsys, args, code, msg):
    ck = tmp_path / "v1.pth"
    torch.save({"model": to_official(plain_sd(make_model("convnext_test")))}, ck)
    args = [a.format(tmp=tmp_path, ck=ck) for a in args]
    got, _, err = _run(capsys, *args, "-o", str(tmp_path / "m.onnx"))
    assert got == code
    assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_num_classes_note_reaches_the_user(tmp_path, capsys):
    f = tmp_path / "ck.safetensors"
    save_file(plain_sd(make_model("convnext_test", num_classes=1000)), f)
    code, out, err = _run(
        capsys, "-c", str(f), "--num-classes", "10", "-o", str(tmp_path / "m.onnx"), "--img-size", "32"
    )
    assert code == 0, err
    assert "replaced the 1000-class classifier with a new 10-class one (train it)" in out
    assert export.read_metadata(tmp_path / "m.onnx")["num_classes"] == 10
