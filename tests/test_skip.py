"""The sidecar schema and the skip/--force contract of every stage: a second identical run is skipped with
one line saying so; a changed input, option or library version, or a missing or altered output, re-runs;
--force always re-runs."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeconvnext import artifacts
from edgeconvnext.artifacts import Sidecar, input_ref, sidecar_path, up_to_date
from edgeconvnext.cli import main


def _run(capsys, args: list[str]) -> str:
    """Run the CLI (exit 0 expected) and return what it printed."""
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return " ".join(out.split())  # rich wraps long lines at the terminal width


def _skipped(out: str, stage: str) -> bool:
    return f"skipped {stage}:" in out and "--force redoes it" in out


def _stale_reason(artifact: Path, stage: str) -> str:
    """Why the stage would run again with the inputs and options its sidecar recorded (the key the stage itself
    computed, as the skipped run just showed); "" when it would be skipped. Cheaper than running it again for
    what up_to_date decides from the sidecar alone: library versions and the outputs."""
    sc = Sidecar.read(artifact)
    assert sc is not None
    fresh = up_to_date(artifact, stage=stage, inputs=sc.inputs, config=sc.config)
    return "" if fresh.fresh else fresh.reason


def _bump_version(artifact: Path, lib: str = "onnx") -> None:
    """Pretend the artifact was made by another version of ``lib``."""
    sc = json.loads(sidecar_path(artifact).read_text())
    sc["environment"][lib] = "0.0.1"
    sidecar_path(artifact).write_text(json.dumps(sc))


def _images(root: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{seed}_{i}.png")
    return root


# ---- the rule itself ------------------------------------------------------------------------------


def test_up_to_date_rule(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"input")
    out = tmp_path / "out.bin"
    out.write_bytes(b"output")
    inputs = [input_ref("source", src)]
    config = {"a": 1, "choices": ("x", "y"), "path": Path("p")}  # tuples/paths compare as their JSON form
    sc = Sidecar(
        stage="s",
        inputs=inputs,
        outputs=[artifacts.output_ref(out)],
        config=config,
        environment=artifacts.environment(device="cpu"),
        details={"measured": 1.5},
    )
    artifacts.write_json_atomic(sidecar_path(out), sc.to_dict())
    assert Sidecar.read(out) == Sidecar.from_dict(sc.to_dict())
    assert Sidecar.read(out).output == {"path": "out.bin", "bytes": 6, "sha256": artifacts.sha256_file(out)}

    def check(**kw):
        args = {"stage": "s", "inputs": inputs, "config": config, **kw}
        return up_to_date(out, **args)

    assert check().fresh
    assert not check(stage="t").fresh
    assert "config changed (a)" in check(config={**config, "a": 2}).reason
    assert "an input changed" in check(inputs=[input_ref("source", src, "0" * 64)]).reason
    assert "library versions changed (tensorrt_builder)" in check(versions={"tensorrt_builder": "10.3"}).reason
    _bump_version(out)
    assert check().reason == "library versions changed (onnx)"
    artifacts.write_json_atomic(sidecar_path(out), sc.to_dict())
    assert check().fresh
    out.write_bytes(b"outpuT")  # same size, other bytes
    assert "differs from what its sidecar recorded" in check().reason
    out.unlink()
    assert "is missing" in check().reason
    sidecar_path(out).write_text('{"stage": "s"}')  # an older shape
    assert not check().fresh and Sidecar.read(out) is None
    assert artifacts.reuse_if_current(out, stage="s", inputs=inputs, config=config) is None


def test_folder_hash_is_the_one_records_were_written_with(tmp_path):
    # the scandir walk gives the hash of the os.walk + pathlib one it replaced (4x slower on 60k files): records
    # of earlier runs stay valid. Nested folders, a linked folder, hidden files and folders, a broken link.
    import hashlib
    import os

    def before(root: Path) -> str:
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(f for f in filenames if not f.startswith(".")):
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    root = tmp_path / "data"
    for rel in ("b/2.png", "b/1.png", "a/x/3.jpg", "a/y.png", "top.png", ".git/HEAD", "a/.cache/z.png", "é/n.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.png").write_bytes(b"o")
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / "broken.png").symlink_to(tmp_path / "nowhere")
    assert artifacts.folder_sha256(root) == before(root)
    with pytest.raises(NotADirectoryError):  # a file listed nothing: every file had the one same hash
        artifacts.folder_sha256(root / "top.png")


def test_folder_hash_follows_the_listing(tmp_path):
    d = _images(tmp_path / "imgs", 3)
    h = artifacts.folder_sha256(d)
    (d / ".hidden").write_text("x")  # hidden files are not data
    assert artifacts.folder_sha256(d) == h
    _images(d, 1, seed=5)
    assert artifacts.folder_sha256(d) != h


# ---- each stage through its command ---------------------------------------------------------------


def test_export_skip_and_force(tmp_path, capsys):
    import torch

    from edgeconvnext.models.checkpoint import load_model, save_checkpoint

    def ckpt(seed: int) -> Path:
        torch.manual_seed(seed)
        m = load_model("convnextv2_test", num_classes=3, img_size=32)
        return save_checkpoint(tmp_path / "m.pt", m.model, m.arch, preprocess=m.preprocess)

    ckpt(0)
    out = tmp_path / "m.onnx"
    args = ["export", "-c", str(tmp_path / "m.pt"), "-o", str(out)]
    assert not _skipped(_run(capsys, args), "export")
    first = out.stat().st_mtime_ns
    text = _run(capsys, args)
    assert _skipped(text, "export") and str(out) in text and out.stat().st_mtime_ns == first
    assert not _skipped(_run(capsys, [*args, "--force"]), "export")
    assert not _skipped(_run(capsys, [*args, "--opset", "18"]), "export")  # an option changed
    assert _skipped(_run(capsys, [*args, "--opset", "18"]), "export")
    ckpt(1)
    assert not _skipped(_run(capsys, [*args, "--opset", "18"]), "export")  # the checkpoint changed
    assert _skipped(_run(capsys, [*args, "--opset", "18"]), "export") and _stale_reason(out, "export") == ""
    recorded = sidecar_path(out).read_text()
    _bump_version(out)  # what the sidecar alone decides, checked on export's own key (no third export)
    assert _stale_reason(out, "export") == "library versions changed (onnx)"
    sidecar_path(out).write_text(recorded)
    with open(out, "ab") as f:
        f.write(b"\0")
    assert "differs from what its sidecar recorded" in _stale_reason(out, "export")  # the output was altered


def test_quantize_skip_and_force(tmp_path, capsys):
    calib = _images(tmp_path / "calib", 10)
    out = tmp_path / "q.onnx"
    args = ["quantize", "-m", "convnextv2_test", "--img-size", "32", "--calib-data", str(calib), "-o", str(out)]
    args += ["--calib-size", "8", "--min-calib-size", "8", "--no-fp32-baseline"]
    assert not _skipped(_run(capsys, args), "quantize")
    assert _skipped(_run(capsys, args), "quantize")
    side = json.loads(sidecar_path(out).read_text())
    assert [i["role"] for i in side["inputs"]] == ["calib_data"]  # random weights: no checkpoint input
    assert [o["path"] for o in side["outputs"]] == ["q.onnx", "q.calib.json"]
    assert side["config"]["calib_size"] == 8 and side["details"]["calibration"]["images"] == 8
    assert not _skipped(_run(capsys, [*args, "--force"]), "quantize")
    assert not _skipped(_run(capsys, [*args, "--seed", "1"]), "quantize")  # an option changed
    _images(calib, 2, seed=7)
    assert not _skipped(_run(capsys, [*args, "--seed", "1"]), "quantize")  # the calibration folder changed
    # --json says it too
    assert main([*args, "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True and _stale_reason(out, "quantize") == ""
    (tmp_path / "q.calib.json").unlink()
    assert "q.calib.json is missing" in _stale_reason(out, "quantize")  # an output went missing


_FAKE_TRTEXEC = r"""#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
print("&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] # trtexec " + " ".join(args))
if args == ["--help"]:
    sys.exit(0)
print("[I] TensorRT version: {major}.{minor}.0")
save = next(a.split("=", 1)[1] for a in args if a.startswith("--saveEngine="))
head = bytearray(128); head[0:4] = b"ftrt"; head[24:28] = bytes([{major}, {minor}, 0, 7])
Path(save).write_bytes(bytes(head))
"""


def _trtexec(tmp_path: Path, major: int, minor: int) -> Path:
    exe = tmp_path / "trtexec"
    exe.write_text(
        _FAKE_TRTEXEC.format(python=sys.executable, banner=major * 10000 + minor * 100, major=major, minor=minor)
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_build_engine_skip_and_force(tmp_path, capsys):
    from edgeconvnext.export.onnx_export import export_onnx
    from edgeconvnext.models.checkpoint import load_model

    onnx_path = export_onnx(load_model("convnextv2_test", img_size=32), tmp_path / "m.onnx", verify=False).path
    exe = _trtexec(tmp_path, 10, 3)
    args = ["build-engine", str(onnx_path), "--trtexec", str(exe), "--batch", "1,2,4"]
    assert not _skipped(_run(capsys, args), "build-engine")
    text = _run(capsys, args)
    assert _skipped(text, "build-engine") and "m.engine" in text
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["stage"] == "build-engine" and side["inputs"][0]["sha256"] == artifacts.sha256_file(onnx_path)
    assert side["config"]["profile"] == [1, 2, 4] and side["timings"]["build_s"] >= 0
    assert not _skipped(_run(capsys, [*args, "--force"]), "build-engine")
    assert not _skipped(_run(capsys, [*args, "--opt-level", "2"]), "build-engine")  # an option changed
    assert _skipped(_run(capsys, [*args, "--opt-level", "2"]), "build-engine")
    _trtexec(tmp_path, 10, 7)  # another TensorRT builds
    assert not _skipped(_run(capsys, [*args, "--opt-level", "2"]), "build-engine")
    assert json.loads((tmp_path / "m.engine.json").read_text())["details"]["tensorrt"]["version"] == "10.7.0"


@pytest.fixture
def colours(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for name, rgb in {"red": (200, 30, 30), "blue": (30, 30, 200)}.items():
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(np.asarray(rgb)[None, None, :] + rng.normal(0, 30, (32, 32, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(d / f"{i}.png")
    return tmp_path / "train", tmp_path / "val"


def test_finetune_skip_and_force(colours, tmp_path, capsys):
    out = tmp_path / "f.pt"
    args = ["finetune", "--train-data", str(colours[0]), "--val-data", str(colours[1]), "-o", str(out)]
    args += ["-m", "convnextv2_test", "--img-size", "32", "--epochs", "1", "--batch", "4", "--workers", "0"]
    assert not _skipped(_run(capsys, args), "finetune")
    assert _skipped(_run(capsys, [*args, "--workers", "1"]), "finetune")  # how fast it runs is not its config
    side = json.loads(sidecar_path(out).read_text())
    assert [i["role"] for i in side["inputs"]] == ["train_data", "val_data"] and side["config"]["epochs"] == 1
    assert side["outputs"][0]["sha256"] == artifacts.sha256_file(out) and "result" in side["details"]
    assert not _skipped(_run(capsys, [*args, "--force"]), "finetune")
    assert not _skipped(_run(capsys, [*args, "--lr", "0.002"]), "finetune")  # an option changed
    assert _skipped(_run(capsys, [*args, "--lr", "0.002"]), "finetune") and _stale_reason(out, "finetune") == ""
    out.unlink()
    assert "is missing" in _stale_reason(out, "finetune")  # the output went missing


def test_validate_with_a_report_skip_and_force(tmp_path, capsys):
    from edgeconvnext.export.onnx_export import export_onnx
    from edgeconvnext.models.checkpoint import load_model

    loaded = load_model("convnextv2_test", num_classes=2, img_size=32)
    loaded.class_names = ["a", "b"]
    onnx_path = export_onnx(loaded, tmp_path / "m.onnx", verify=False).path
    for c in ("a", "b"):
        _images(tmp_path / "val" / c, 4, seed=ord(c))
    report = tmp_path / "r.json"
    args = ["validate", str(onnx_path), "--data", str(tmp_path / "val"), "--report", str(report)]
    assert not _skipped(_run(capsys, args), "validate")
    text = _run(capsys, args)
    assert _skipped(text, "validate") and "top-1" not in text  # one line, no table
    side = json.loads(sidecar_path(report).read_text())
    assert [i["role"] for i in side["inputs"]] == ["model", "data"] and side["outputs"][0]["path"] == "r.json"
    assert not _skipped(_run(capsys, [*args, "--force"]), "validate")
    assert not _skipped(_run(capsys, [*args, "--limit", "5"]), "validate")  # an option changed
    assert json.loads(report.read_text())["images"] == 5
    assert not _skipped(_run(capsys, args[:-2]), "validate")  # no --report: nothing to compare, always runs
