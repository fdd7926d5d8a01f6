"""Reproducers of issue 8 (trying to break every command as a new user would): each asserts the exit code,
the one ``error:`` line and which files are left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconvnext.cli import main
from edgeconvnext.models.checkpoint import load_model, save_checkpoint

NAMES = ["c0", "c1", "c2", "c3"]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(err: str, *needles: str) -> str:
    """The single 'error:' line of a failed command (no traceback, no second error), containing ``needles``."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 4-class convnextv2_test checkpoint at 32 px and a labelled folder of 5 images per class."""
    root = tmp_path_factory.mktemp("hard")
    torch.manual_seed(0)
    loaded = load_model("convnextv2_test", num_classes=len(NAMES), img_size=32)
    ckpt = save_checkpoint(root / "m.pt", loaded.model, loaded.arch, class_names=NAMES, preprocess=loaded.preprocess)
    rng = np.random.default_rng(0)
    for c in NAMES:
        (root / "val" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "val" / c / f"{i}.png")
    return {"root": root, "ckpt": ckpt, "val": root / "val", "loaded": loaded}


# --- 3: a small file whose *resized* size exhausts memory ------------------------------------------------------


def test_resize_bomb_is_refused_before_allocating(tmp_path):
    from edgeconvnext.data.preprocess import preprocess_image
    from edgeconvnext.errors import DataError
    from edgeconvnext.models.registry import Preprocess

    p = tmp_path / "long.png"
    Image.new("L", (1, 20000)).save(p, optimize=True)
    assert p.stat().st_size < 200  # a ~120-byte file...
    # ... that a resize to 256 on the short side turns into 256 x 5,120,000 pixels (~4 GB): refused, not allocated
    with pytest.raises(DataError, match=r"long.png: resizing its 1x20000 pixels to 256x5120000 .* 1311 M pixels"):
        preprocess_image(p, Preprocess(img_size=224))


def test_resize_bomb_is_skipped_and_counted_by_validate(world, tmp_path, capsys, monkeypatch):
    import shutil

    val = tmp_path / "val"
    shutil.copytree(world["val"], val)
    Image.new("L", (1, 20000)).save(val / "c0" / "long.png")
    # at 32 px the resize needs 36 x 720,000 pixels: lower the limit so the test stays small and fast
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    report = tmp_path / "r.json"
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", val, "--report", report)
    assert rc == 0, err
    import json

    rep = json.loads(report.read_text())
    assert rep["images"] == 20 and rep["skipped"] == 1
    (skip,) = rep["skipped_files"]
    assert skip["file"].endswith("long.png") and "26 M pixels, over the decompression-bomb limit" in skip["reason"]


# --- 18: usability ---------------------------------------------------------------------------------------------


def test_models_command_imports_no_torch_and_counts_analytically():
    # the table was 9-13 s: a meta-device forward of every architecture; now counted from depths and dims
    import subprocess
    import sys

    code = (
        "import sys; from edgeconvnext.cli import main; rc = main(['models', '--json']); "
        "print(rc, 'torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "0 False"
    import json

    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["convnextv2_nano"]["params_m"] == 15.62 and rows["convnextv2_nano"]["gmacs"] == 2.446
    assert rows["convnext_tiny"]["params_m"] == 28.59 and rows["convnext_tiny"]["gmacs"] == 4.456


def test_quantize_help_keeps_option_names_whole_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = _cli(capsys, "quantize", "--help")
    assert rc == 0
    assert "…" not in out and "<bool>" not in out
    for opt in ("--allow-unsafe-pickle", "--fp32-baseline / --no-fp32-baseline", "--exclude PATTERN"):
        assert opt in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_placement_table_is_one_line_per_row_at_80_columns():
    from rich.console import Console

    from edgeconvnext.cli.quantize import placement_table
    from edgeconvnext.quantize.policy import _ROLES, SMOOTHED

    rows = [
        {
            "layer": layer,
            "op": op,
            "precision": "INT8" if _ROLES[role][0] else "FP",
            "count": n,
            "macs_share": share,
            "reason": _ROLES[role][1] + (f", {SMOOTHED}" if role in ("fc1", "downsample") else ""),
        }
        for layer, op, role, n, share in [
            ("stem.0", "Conv", "stem", 1, 0.012),
            ("stages.2.blocks.*.conv_dw", "Conv", "dwconv", 8, 0.021),
            ("stages.2.blocks.*.mlp.fc1", "MatMul", "fc1", 8, 0.25),
            ("stages.3.downsample.1", "Conv", "downsample", 1, 0.02),
            ("head.fc", "Gemm", "classifier", 1, 0.001),
        ]
    ]
    c = Console(width=80, record=True, file=open(__import__("os").devnull, "w"))
    c.print(placement_table(rows, "INT8 placement (convnext policy)"))
    lines = [ln for ln in c.export_text().splitlines() if ln.strip()]
    assert len(lines) == 4 + len(rows)  # title, header, rule, one line per row, the caption
    assert "stages.2.blocks.*.conv_dw (x8)" in lines[4] and "depthwise: slow in INT8" in lines[4]
    # the smoothing mark: ", input equalised" after "pointwise MLP" wrapped a fc1 row onto two lines
    assert "INT8*" in lines[5] and lines[5].rstrip().endswith("pointwise MLP")
    assert lines[-1].strip() == "* input equalised (LayerNorm smoothing)"


def test_quantize_without_calibration_data_fails_before_loading_the_model(world, tmp_path, capsys, monkeypatch):
    import edgeconvnext.models.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    rc, out, err = _cli(capsys, "quantize", "-c", world["ckpt"], "-o", tmp_path / "q.onnx")
    assert rc == 2
    assert err.startswith("error: ")  # no blank line (a progress bar's) before it
    _one_error(err, "give --calib-data DIR")
    assert out == "" and _files(tmp_path) == []


# --- 7: SIGTERM / SIGHUP take Ctrl-C's path; a killed run's temporaries go on the next run ----------------------


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_during_export_leaves_nothing(world, tmp_path, capsys, monkeypatch, signame, code):
    import os
    import signal

    import edgeconvnext.export.onnx_export as ex

    sig = getattr(signal, signame)

    def killed(*a, **k):  # the signal arrives while the ONNX is being checked (the .partial files exist)
        assert [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal did not interrupt")

    monkeypatch.setattr(ex, "_parity", killed)
    previous = signal.getsignal(sig)
    rc, out, err = _cli(capsys, "export", "-c", world["ckpt"], "-o", tmp_path / "m.onnx")
    assert rc == code
    _one_error(err, f"terminated by {signame}")
    assert _files(tmp_path) == []
    assert signal.getsignal(sig) == previous  # the CLI put the handler back


def test_sigterm_during_quantize_removes_its_temporary_folder(world, tmp_path, capsys, monkeypatch):
    import os
    import signal

    import edgeconvnext.quantize.ort_backend as ob

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen = []

    def killed(src, dst, *a, **k):  # calibrating: the temporary folder holds the FP32 ONNX
        seen.extend(_files(out_dir))
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ob, "quantize_ort", killed)
    args = ("quantize", "-c", world["ckpt"], "--calib-data", calib, "--calib-size", "8", "--min-calib-size", "8")
    rc, out, err = _cli(capsys, *args, "-o", out_dir / "q.onnx")
    assert rc == 143
    _one_error(err, "terminated by SIGTERM")
    assert any(p.endswith(".tmp/q.fp32.onnx") for p in seen), seen
    assert _files(out_dir) == []


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path):
    import os
    import subprocess
    import sys

    from edgeconvnext.artifacts import atomic_output, temp_dir_beside

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    dest = tmp_path / "run[2].onnx"
    (tmp_path / f".run[2].onnx.{dead_pid}.abc123.partial").write_bytes(b"half")
    (tmp_path / f".run[2].onnx.{dead_pid}.xyz.tmp").mkdir()
    (tmp_path / f".run[2].onnx.{dead_pid}.xyz.tmp" / "q.fp32.onnx").write_bytes(b"complete-looking")
    live = tmp_path / f".run[2].onnx.{os.getppid()}.live.partial"  # a concurrent writer that is still running
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.onnx.{dead_pid}.abc.partial"  # another output's: not ours to remove
    other.write_bytes(b"x")
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, live.name, other.name])
    (tmp_path / f".run[2].onnx.{dead_pid}.old.tmp").mkdir()
    with temp_dir_beside(dest) as d:
        assert d.is_dir() and d.name.startswith(f".run[2].onnx.{os.getpid()}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, live.name, other.name])


# --- 6: named errors instead of 'internal error' ---------------------------------------------------------------


def test_labels_file_with_a_negative_label_is_a_data_error(world, tmp_path, capsys):
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        shutil.copy(world["val"] / "c0" / f"{i}.png", flat / f"{i}.png")
    (flat / "labels.txt").write_text("0.png 0\n1.png -1\n2.png 1\n")
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", flat, "--report", tmp_path / "r.json")
    assert rc == 4
    _one_error(err, "labels.txt gives 1.png the label -1: class indices start at 0")
    assert not (tmp_path / "r.json").exists()


def _manifest(root: Path, images: list[str], **extra) -> Path:
    import json

    from edgeconvnext.artifacts import sha256_file
    from edgeconvnext.data.calibration import MANIFEST_FORMAT, MANIFEST_VERSION

    data = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "root": str(root),
        "images": [{"path": p, "sha256": sha256_file(root / p)} for p in images],
        **extra,
    }
    path = root.parent / "m.calib.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"requested_size": "abc"}, "requested_size is 'abc', not a whole number"),
        ({"candidates": -3}, "candidates is -3, not a whole number"),
    ],
)
def test_manifest_with_a_non_number_is_a_data_error(world, tmp_path, capsys, extra, needle):
    images = world["val"] / "c0"
    m = _manifest(images, [f"{i}.png" for i in range(5)], **extra)
    out_dir = tmp_path / "out"
    args = ("quantize", "-c", world["ckpt"], "--calib-manifest", m, "--min-calib-size", "1")
    rc, out, err = _cli(capsys, *args, "-o", out_dir / "q.onnx")
    assert rc == 4
    _one_error(err, needle)
    assert not out_dir.exists()


def test_stdout_that_cannot_be_written_is_one_line(tmp_path):
    import subprocess
    import sys

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    for args in (["models"], ["models", "--json"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "edgeconvnext", *args], stdout=full, stderr=subprocess.PIPE, text=True
            )
        assert done.returncode == 2
        assert done.stderr.strip() == (
            "error: cannot write to standard output: No space left on device; redirect it where it can be written"
        )


def test_a_reader_that_closes_the_pipe_stops_the_command_with_141_and_no_line():
    """`models | head -1`: the write the closed pipe stopped ends the command like SIGPIPE ends a coreutils
    program (141 = 128 + 13, silent), not as an internal error (1) nor as a success it did not finish."""
    import os
    import subprocess
    import sys

    for args in (["models"], ["models", "--json"], ["--help"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first write
        try:
            done = subprocess.run(
                [sys.executable, "-m", "edgeconvnext", *args], stdout=write_end, stderr=subprocess.PIPE, text=True
            )
        finally:
            os.close(write_end)
        assert done.returncode == 141, (args, done.returncode, done.stderr)
        assert done.stderr == ""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:  # a command's own error code stands whatever happens to its output
        done = subprocess.run(
            [sys.executable, "-m", "edgeconvnext", "models", "--bogus"], stdout=write_end, stderr=subprocess.PIPE
        )
    finally:
        os.close(write_end)
    assert done.returncode == 2


# --- 12: repeated manifest entries --------------------------------------------------------------------------


def test_manifest_repeating_one_image_is_refused(world, tmp_path, capsys):
    images = world["val"] / "c1"
    m = _manifest(images, ["0.png"] * 40)
    out_dir = tmp_path / "out"
    rc, out, err = _cli(capsys, "quantize", "-c", world["ckpt"], "--calib-manifest", m, "-o", out_dir / "q.onnx")
    assert rc == 4
    _one_error(err, "lists 40 entries but 1 distinct images (0.png 40 times)", "list each image once")
    assert not out_dir.exists()


def test_manifest_skips_are_measured_not_copied(tmp_path):
    from edgeconvnext.data.calibration import load_manifest
    from edgeconvnext.models.registry import Preprocess

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    m = _manifest(root, [f"{i}.png" for i in range(4)], skipped=[{"path": "gone.png", "reason": "corrupt"}] * 7)
    cs = load_manifest(m, preprocess=Preprocess(img_size=32), min_images=4)
    assert len(cs) == 4 and cs.skipped == []


# --- 5: preprocessing read from a file is checked where it is read ---------------------------------------------


@pytest.mark.parametrize(
    "field,value,why",
    [
        ("crop_pct", 0.0, "must be a number in (0, 1]"),
        ("interpolation", "cubic-ish", "is not a known interpolation"),
        ("mean", [0.5], "must be 3 numbers"),
        ("std", [0.2, 0.0, 0.2], "must be 3 positive numbers"),
        ("img_size", 33, "is not a positive multiple of 32"),
        ("img_size", "abc", "is not a whole number of pixels"),  # item 6: was internal error (exit 1)
    ],
)
def test_checkpoint_with_bad_preprocessing_is_refused_at_load(world, tmp_path, capsys, field, value, why):
    from dataclasses import replace

    loaded = world["loaded"]
    bad = save_checkpoint(
        tmp_path / "bad.pt",
        loaded.model,
        loaded.arch,
        class_names=NAMES,
        preprocess=replace(loaded.preprocess, **{field: value}),
    )
    rc, out, err = _cli(capsys, "export", "-c", bad, "-o", tmp_path / "m.onnx")
    assert rc == 3
    _one_error(err, f"checkpoint {bad}: preprocess {field} {value!r} {why}")
    assert _files(tmp_path) == ["bad.pt"]


def test_onnx_with_bad_preprocessing_metadata_is_refused(world, tmp_path, capsys):
    import json

    import onnx

    from edgeconvnext.export.onnx_export import export_onnx

    path = export_onnx(world["loaded"], tmp_path / "m.onnx").path
    proto = onnx.load(str(path))
    for p in proto.metadata_props:
        if p.key == "edgeconvnext.preprocess":
            p.value = json.dumps({**json.loads(p.value), "std": [0.2, 0, 0.2]})
    onnx.save(proto, str(path))
    rc, out, err = _cli(capsys, "validate", path, "--data", world["val"], "--report", tmp_path / "r.json")
    assert rc == 3
    _one_error(err, "the metadata of m.onnx: preprocess std [0.2, 0, 0.2] must be 3 positive numbers")
    assert not (tmp_path / "r.json").exists()


def test_huggingface_config_with_a_zero_input_size_is_refused(world, tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    sd = {k: v.contiguous() for k, v in world["loaded"].model.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"pretrained_cfg": {"input_size": [3, 0, 0]}}))
    rc, out, err = _cli(capsys, "export", "-c", folder, "-o", tmp_path / "m.onnx")
    assert rc == 3
    _one_error(err, "config.json beside", "preprocess img_size 0 is not a positive multiple of 32")
    assert not (tmp_path / "m.onnx").exists()


# --- 8: doctor accepts only a trtexec that runs, and "yes" needs a GPU -----------------------------------------


def test_doctor_does_not_take_any_file_for_trtexec(tmp_path, capsys):
    import json
    import os

    # the report is printed whatever it found; a --trtexec asked for that does not work exits 8 (it exited 0)
    rc, out, err = _cli(capsys, "doctor", "--json", "--trtexec", "/etc/passwd")
    assert rc == 8
    te = json.loads(out)["trtexec"]
    assert te["ok"] is False and "does not run" in te["error"]  # not executable
    _one_error(err, "/etc/passwd does not run")
    fake = tmp_path / "trtexec"
    fake.write_text("#!/bin/sh\necho 'usage: something else'\n")
    os.chmod(fake, 0o755)
    rc, out, err = _cli(capsys, "doctor", "--json", "--trtexec", fake)
    te = json.loads(out)["trtexec"]
    assert rc == 8 and te["ok"] is False and "printed no TensorRT banner" in te["error"]
    rc, out, err = _cli(capsys, "doctor", "--trtexec", tmp_path / "nowhere" / "trtexec")
    assert rc == 8 and "can build engines here: no" in out
    _one_error(err, "no such file")
    rc, out, err = _cli(capsys, "doctor", "--json", "--trtexec", tmp_path / "nowhere" / "trtexec")
    data = json.loads(out)
    assert data["trtexec"] == {
        "explicit": str(tmp_path / "nowhere" / "trtexec"),
        "ok": False,
        "error": f"--trtexec {tmp_path / 'nowhere' / 'trtexec'}: no such file",
    }
    (check,) = [c for c in data["checks"] if c["name"] == "trtexec"]
    assert check["status"] == "missing" and "no such file" in check["value"]


def test_doctor_says_no_without_a_gpu_even_with_trtexec(tmp_path, capsys, monkeypatch):
    import os

    from edgeconvnext.env import doctor

    fake = tmp_path / "trtexec"  # prints trtexec's banner (TensorRT cannot be installed here)
    fake.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help'\n")
    os.chmod(fake, 0o755)
    assert doctor.probe_trtexec(fake) == {"explicit": str(fake), "path": str(fake), "ok": True, "version": "10.3.0"}
    monkeypatch.setattr(doctor, "probe_gpu_with_torch", lambda: {"gpus": [], "source": None})
    monkeypatch.setattr(doctor, "probe_jetson", lambda: None)
    rc, out, err = _cli(capsys, "doctor", "--trtexec", fake)
    assert rc == 0
    assert "can build engines here: no (no NVIDIA GPU; build-engine --dry-run works anyway)" in out
    rep = doctor.Report(sections={"gpu": {"gpus": [{"name": "NVIDIA L4"}]}, "trtexec": doctor.probe_trtexec(fake)})
    assert rep.can_build and rep.build_blockers() == []


# --- 9: file names onnxruntime's C++ side would misread ---------------------------------------------------------


def test_latin1_file_names_work_and_print_readably(world, tmp_path, capsys):
    import os
    import shutil

    from edgeconvnext.export.onnx_export import export_onnx

    folder = tmp_path / os.fsdecode(b"r\xe9sultats")  # a Latin-1 name: surrogate escapes in Python
    folder.mkdir()
    model = folder / os.fsdecode(b"mod\xe8le.onnx")
    shutil.copy(export_onnx(world["loaded"], tmp_path / "m.onnx").path, model)
    rc, out, err = _cli(capsys, "validate", model, "--data", world["val"])
    assert rc == 0, err  # was exit 3: pybind's "incompatible constructor arguments"
    calib = world["val"] / "c2"
    q = folder / os.fsdecode(b"q\xe9.onnx")
    args = ("quantize", "-c", world["ckpt"], "--calib-data", calib, "--calib-size", "5", "--min-calib-size", "5")
    rc, out, err = _cli(capsys, *args, "-o", q)
    assert rc == 0, err  # was exit 5: infer_shapes_path() TypeError
    assert q.is_file() and (folder / os.fsdecode(b"q\xe9.fp32.onnx")).is_file()
    rc, out, err = _cli(capsys, "validate", folder / os.fsdecode(b"absent\xe9.onnx"), "--data", world["val"])
    assert rc == 3
    line = _one_error(err, "absent\\xe9.onnx")
    assert "\\udc" not in line


# --- 10: NaN and late option checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_by_every_command(world, tmp_path, capsys, value):
    report = tmp_path / "r.json"
    args = ("validate", world["ckpt"], "--data", world["val"], "--checkpoint", world["ckpt"], "--report", report)
    rc, out, err = _cli(capsys, *args, f"--max-drop={value}")
    assert rc == 2
    _one_error(err, f"Invalid value for '--max-drop': --max-drop must be a finite number, got {value}")
    rc, out, err = _cli(
        capsys,
        "finetune",
        "--train-data",
        world["val"],
        "--val-data",
        world["val"],
        "-o",
        tmp_path / "f.pt",
        f"--lr={value}",
    )
    assert rc == 2
    _one_error(err, f"Invalid value for '--lr': --lr must be a finite number, got {value}")
    assert _files(tmp_path) == []


def test_demo_refuses_a_negative_budget_before_writing(tmp_path, capsys, monkeypatch):
    import edgeconvnext.models.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    out_dir = tmp_path / "edgeconvnext-demo"
    out_dir.mkdir()
    (out_dir / "report.json").write_text("{}")  # a previous demo's output must stay as it was
    rc, out, err = _cli(capsys, "demo", "--max-drop", "-1", "-o", out_dir)
    assert rc == 2
    _one_error(err, "--max-drop: -1.0 is below the minimum 0")
    assert _files(tmp_path) == ["edgeconvnext-demo", "edgeconvnext-demo/report.json"]


def test_a_recipe_value_that_is_nan_is_refused():
    from edgeconvnext.config import check_value, recipe_keys
    from edgeconvnext.errors import UsageError
    from edgeconvnext.evaluate.config import ValidateConfig

    with pytest.raises(UsageError, match=r"'validate.max_drop': nan is not a finite number"):
        check_value("r.yaml: 'validate.max_drop'", recipe_keys(ValidateConfig)["max_drop"], float("nan"))


# --- 11: repeated class names, files listed twice in a labels file ----------------------------------------------


def test_repeated_class_names_cannot_map_data(world, tmp_path, capsys):
    loaded = world["loaded"]
    same = save_checkpoint(tmp_path / "same.pt", loaded.model, loaded.arch, class_names=["a"] * 4)
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(data / "a" / "0.png")
    rc, out, err = _cli(capsys, "validate", same, "--data", data, "--report", tmp_path / "r.json")
    assert rc == 4  # was exit 0 with a meaningless 25%
    _one_error(err, "the model's 4 class names repeat 'a' (4 times)", "label the data by index")
    assert not (tmp_path / "r.json").exists()


def test_labels_file_listing_a_file_twice(world, tmp_path, capsys, caplog):
    import json
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        shutil.copy(world["val"] / "c0" / f"{i}.png", flat / f"{i}.png")
    (flat / "labels.txt").write_text("0.png c0\n1.png c1\n0.png c2\n0.png c3\n")
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", flat)
    assert rc == 4
    _one_error(err, "lists 0.png with the labels 'c0' and 'c2': give each file one label")
    (flat / "labels.txt").write_text("0.png c0\n1.png c1\n0.png c0\n2.png c2\n0.png c0\n")
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", flat, "--report", tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 3  # not 5
    assert "lists 2 file(s) more than once with the same label: each is counted once" in caplog.text


# --- 16: a pickle that calls a blocked global is named, never run -----------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("unsafe", [False, True])
def test_a_pickle_calling_os_system_is_named_and_not_run(world, tmp_path, capsys, unsafe):
    import argparse

    marker = tmp_path / "PWNED"
    sd = world["loaded"].model.state_dict()
    # argparse.Namespace first: torch's weights-only loader stops there, and the user's consent would then
    # allow full unpickling, which must still not reach os.system
    evil = tmp_path / "evil.pt"
    torch.save({"args": argparse.Namespace(lr=1.0), "model": sd, "x": _Evil(marker)}, evil)
    plain = tmp_path / "plain.pt"
    torch.save({"model": sd, "x": _Evil(marker)}, plain)
    for path in (evil, plain):
        args = ["export", "-c", path, "-o", tmp_path / "m.onnx"] + (["--allow-unsafe-pickle"] if unsafe else [])
        rc, out, err = _cli(capsys, *args)
        assert rc == 3
        _one_error(err, f"checkpoint {path} calls posix.system when unpickled", "not even with --allow-unsafe-pickle")
        assert not marker.exists()
    assert _files(tmp_path) == ["evil.pt", "plain.pt"]


def test_pickle_scan_reads_globals_without_running_them(tmp_path):
    import argparse
    import collections

    from edgeconvnext.models.pickle_scan import blocked_globals, pickle_globals

    p = tmp_path / "ok.pt"
    torch.save({"args": argparse.Namespace(a=1), "d": collections.OrderedDict(a=torch.zeros(2))}, p)
    assert blocked_globals(p) == []
    import pickle

    data = pickle.dumps({"e": _Evil(tmp_path / "x"), "f": eval}, protocol=4)
    assert "posix.system" in pickle_globals(data) and "builtins.eval" in pickle_globals(data)


# --- 2: integer and non-finite weights are refused at load --------------------------------------------------


@pytest.mark.parametrize("kind", ["int32", "nan", "inf"])
def test_integer_or_non_finite_weights_are_refused(world, tmp_path, capsys, kind):
    from safetensors.torch import save_file

    sd = {k: v.detach().clone().contiguous() for k, v in world["loaded"].model.state_dict().items()}
    key = "stages.1.blocks.0.mlp.fc1.weight"
    if kind == "int32":
        sd = {k: v.to(torch.int32) for k, v in sd.items()}  # every float weight stored as int32: zeros
        needle = "tensor head.fc.bias is stored as int32, not floating point"  # the first key of the file
    else:
        sd[key][0, 0] = float(kind)
        needle = f"tensor {key} holds 1 NaN/Inf value(s)"
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    rc, out, err = _cli(capsys, "export", "-c", path, "-o", tmp_path / "m.onnx")
    assert rc == 3  # int32 was exit 0 with "max abs diff 0" and all-zero logits
    _one_error(err, needle)
    assert _files(tmp_path) == ["w.safetensors"]


# --- 6 (continued): files that are not what a command takes ------------------------------------------------------


def test_safetensors_metadata_that_is_not_json(world, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from edgeconvnext.models.checkpoint import save_checkpoint as save

    good = save(tmp_path / "g.safetensors", world["loaded"].model, world["loaded"].arch, class_names=NAMES)
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta = dict(f.metadata())
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={**meta, "class_names": '["c0", "c1",'})
    rc, out, err = _cli(capsys, "export", "-c", bad, "-o", tmp_path / "m.onnx")
    assert rc == 3
    _one_error(err, f"checkpoint {bad}: its safetensors metadata 'class_names' is not valid JSON")
    assert _files(tmp_path) == ["bad.safetensors", "g.safetensors"]


def _graph(path: Path, inputs, outputs, nodes) -> Path:
    import onnx
    from onnx import helper

    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_onnx_that_is_not_an_image_classifier(world, tmp_path, capsys):
    from onnx import TensorProto, helper

    def vi(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    f32 = TensorProto.FLOAT
    cases = {
        "two_inputs.onnx": (
            [vi("input", f32, [1, 3, 32, 32]), vi("b", f32, [1, 3, 32, 32])],
            [vi("out", f32, [1, 3, 32, 32])],
            [helper.make_node("Add", ["input", "b"], ["out"])],
            "has 2 inputs ('input', 'b'); an image classifier has one",
        ),
        "rank4_output.onnx": (
            [vi("input", f32, [1, 3, 32, 32])],
            [vi("out", f32, [1, 3, 32, 32])],
            [helper.make_node("Identity", ["input"], ["out"])],
            "outputs 'out' [1, 3, 32, 32]; an image classifier has one output of shape (N, classes)",
        ),
        "int64_input.onnx": (
            [vi("input", TensorProto.INT64, [1, 3, 32, 32])],
            [vi("out", f32, [1, 3])],
            [
                helper.make_node("Cast", ["input"], ["c"], to=f32),
                helper.make_node("ReduceMean", ["c"], ["out"], keepdims=0, axes=[2, 3]),
            ],
            "input 'input' is int64; an image classifier takes float32 or float16 images",
        ),
    }
    for name, (ins, outs, nodes, needle) in cases.items():
        path = _graph(tmp_path / name, ins, outs, nodes)
        rc, out, err = _cli(capsys, "validate", path, "--data", world["val"], "--report", tmp_path / "r.json")
        assert rc == 3, (name, err)  # exit 1 (internal error) or a misleading class-count message before
        _one_error(err, f"{name}", needle)
    assert not (tmp_path / "r.json").exists()


# --- 4: requests the machine cannot hold are refused with the numbers --------------------------------------------


def test_memory_impossible_requests_are_refused_up_front(world, tmp_path, capsys, monkeypatch):
    import edgeconvnext.models.checkpoint as ck
    from edgeconvnext.env import probes

    monkeypatch.setattr(probes, "available_memory", lambda: 8 * 2**30)  # an 8 GiB machine, whatever this one has
    rc, out, err = _cli(capsys, "validate", "--model", "convnextv2_test", "--latency", "--latency-batch", "1,100000")
    assert rc == 2  # was OOM-killed after 57 s with no message
    _one_error(err, "--latency-batch 100000 at 224 px (convnextv2_test) needs about", "8.0 GiB available")
    real_load = ck.load_model
    monkeypatch.setattr(ck, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    rc, out, err = _cli(capsys, "export", "-c", world["ckpt"], "--img-size", "100000", "-o", tmp_path / "m.onnx")
    assert rc == 2  # tried a 240 GB allocation
    _one_error(err, "--img-size 100000 needs about 223.5 GiB of memory", "use a smaller --img-size")
    assert out == ""  # no progress line left before the error
    monkeypatch.setattr(ck, "load_model", real_load)
    rc, out, err = _cli(capsys, "export", "-c", world["ckpt"], "--batch", "100000", "-o", tmp_path / "m.onnx")
    assert rc == 2  # ran its trace and parity check on 100000 images for minutes
    _one_error(err, "--batch 100000 at", "needs about", "use a smaller --batch, or --batch dynamic")
    assert _files(tmp_path) == []
    calib = world["val"] / "c3"
    args = ("quantize", "-c", world["ckpt"], "--calib-data", calib, "--calib-size", "5", "--min-calib-size", "5")
    monkeypatch.setattr(probes, "available_memory", lambda: 3 * 2**20)  # 3 MiB: two images at 256 px fit...
    rc, out, err = _cli(capsys, *args, "--img-size", "256", "-o", tmp_path / "q.onnx")  # ... 5 do not (3.75 MiB)
    assert rc == 2
    _one_error(err, "5 calibration images at 256 px needs about 3.8 MiB", "use a smaller --calib-size or --img-size")
    assert _files(tmp_path) == []


def test_an_allocation_failure_is_one_line(capsys):
    from edgeconvnext.cli import app

    @app.command("_oom_test", hidden=True)
    def _oom() -> None:
        raise MemoryError

    try:
        rc, out, err = _cli(capsys, "_oom_test")
    finally:
        app.registered_commands.pop()
    assert rc == 8
    _one_error(err, "out of memory: the request needs more memory than this machine has")


# --- 1: build-engine checks TensorRT's rules first in every mode, keeps nothing of a failed build -----------------


@pytest.fixture(scope="module")
def onnx_pair(world, tmp_path_factory):
    """The 32 px test model as FP32 ONNX, and the same graph behind an input Q/DQ pair whose zero point is 3."""
    import onnx
    from onnx import helper, numpy_helper

    from edgeconvnext.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    good = export_onnx(world["loaded"], root / "fp32.onnx").path
    proto = onnx.load(str(good))
    for n in proto.graph.node:
        n.input[:] = ["input_dq" if i == "input" else i for i in n.input]
    proto.graph.initializer.extend(
        [numpy_helper.from_array(np.float32(0.05), "in_scale"), numpy_helper.from_array(np.int8(3), "in_zp")]
    )
    proto.graph.node.insert(0, helper.make_node("DequantizeLinear", ["input_q", "in_scale", "in_zp"], ["input_dq"]))
    proto.graph.node.insert(0, helper.make_node("QuantizeLinear", ["input", "in_scale", "in_zp"], ["input_q"]))
    bad = root / "bad.onnx"
    onnx.save(proto, str(bad))
    return good, bad


def _copy_to(src: Path, folder: Path) -> Path:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, folder / src.name))


@pytest.mark.parametrize("mode", [["--dry-run"], [], ["--fp16"]])
def test_rule_violation_is_exit_6_in_every_mode(onnx_pair, tmp_path, capsys, mode):
    bad = _copy_to(onnx_pair[1], tmp_path)
    rc, out, err = _cli(capsys, "build-engine", bad, "-o", tmp_path / "m.engine", *mode)
    assert rc == 6  # --dry-run printed a ready trtexec command (exit 0); without TensorRT it was exit 8
    _one_error(err, "zero")
    assert "trtexec --onnx" not in out
    assert _files(tmp_path) == ["bad.onnx"]  # --fp16 wrote a complete-looking bad.fp16.onnx before exiting 6


def test_a_failed_build_keeps_no_fp16_onnx(onnx_pair, tmp_path, capsys):
    import os

    good = _copy_to(onnx_pair[0], tmp_path / "m")
    fake = tmp_path / "trtexec"  # TensorRT cannot be installed here: a trtexec that builds nothing
    fake.write_text(
        "#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'\n"
        'case "$*" in *--help*) exit 0;; esac\necho "[E] out of memory"\nexit 0\n'
    )
    os.chmod(fake, 0o755)
    out_engine = tmp_path / "m" / "fp32.engine"
    rc, out, err = _cli(capsys, "build-engine", good, "--fp16", "--trtexec", fake, "-o", out_engine)
    assert rc == 5
    line = _one_error(err, "trtexec exited 0 but wrote no engine")  # was "failed (exit 0)"
    assert ".partial" not in line
    log = (tmp_path / "m" / "fp32.engine.trtexec.log").read_text()
    assert f"--saveEngine={out_engine}" in log and ".partial" not in log
    assert _files(tmp_path / "m") == ["fp32.engine.trtexec.log", "fp32.onnx"]  # no fp32.fp16.onnx


def test_trtexec_paths_are_checked_up_front(world, onnx_pair, tmp_path, capsys, monkeypatch):
    import os

    good = _copy_to(onnx_pair[0], tmp_path / "m")
    (tmp_path / "tools").mkdir()
    fake = tmp_path / "tools" / "trtexec"
    fake.write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'\n")
    os.chmod(fake, 0o755)
    monkeypatch.chdir(tmp_path / "tools")
    monkeypatch.setenv("PATH", "/nonexistent")  # ./trtexec must run this file, not a trtexec looked up on PATH
    rc, out, err = _cli(capsys, "build-engine", good, "--dry-run", "--json", "--trtexec", "./trtexec")
    assert rc == 0, err
    plan = json.loads(out)  # "trtexec" was looked up on PATH: the version unknown, and a build exited 8
    assert plan["tensorrt"] == "trtexec: 10.3.0" and plan["trtexec_command"][0] == str(fake)
    (tmp_path / "noexec").write_text("")
    cases = {
        str(tmp_path / "tools"): ("is a folder, not the trtexec binary", f"use --trtexec {fake}"),
        str(tmp_path / "noexec"): ("is not executable", "chmod +x"),
        str(tmp_path / "nowhere"): ("no such file",),
    }
    for bad, needles in cases.items():
        rc, out, err = _cli(capsys, "build-engine", good, "--dry-run", "--trtexec", bad)
        assert rc == 2, (bad, err)
        _one_error(err, f"--trtexec {bad}", *needles)
    run_out = tmp_path / "runs" / "x"
    args = ("run", "-c", world["ckpt"], "--calib-data", world["val"], "-o", run_out)
    rc, out, err = _cli(capsys, *args, "--trtexec", tmp_path / "nowhere")
    assert rc == 2  # was accepted: the pipeline ran and exited 0
    _one_error(err, "--trtexec", "no such file")
    assert not run_out.exists()


# --- 14: finetune writes .pt, and says when it replaced the classifier -------------------------------------------


def test_run_checks_its_data_before_the_first_stage(world, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "runs" / "x"
    base = ("run", "-c", world["ckpt"], "--calib-data", world["val"], "-o", out, "--no-latency")
    cases = {  # each failed after the export and quantize stages had run
        ("--val-data", tmp_path / "empty"): (4, "--val-data", "no images found"),
        ("--val-data", world["ckpt"]): (4, "is a file, not a folder of images"),
        ("--val-data", world["val"], "--labels", tmp_path / "nowhere.txt"): (4, "--labels", "not found"),
        ("--labels", tmp_path / "nowhere.txt"): (2, "labels a flat --val-data folder: add --val-data DIR"),
    }
    for extra, (code, *needles) in cases.items():
        rc, _, err = _cli(capsys, *base, *extra)
        assert rc == code, (extra, err)
        _one_error(err, *needles)
        assert not out.exists(), extra


def test_a_file_where_a_folder_belongs_and_back_says_so(world, tmp_path, capsys):
    ck, val = world["ckpt"], world["val"]
    onnx_file = tmp_path / "m.onnx"
    cases = {  # each said "not found" of a path that exists
        ("validate", ck, "--data", ck): (f"--data {ck} is a file, not a folder of images",),
        ("finetune", "-c", ck, "--train-data", ck, "--val-data", val, "-o", tmp_path / "f.pt"): (
            f"--train-data {ck} is a file",
        ),
        ("finetune", "-c", ck, "--train-data", val, "--val-data", ck, "-o", tmp_path / "f.pt"): (
            f"--val-data {ck} is a file",
        ),
        ("sensitivity", "-c", ck, "--calib-data", val, "--val-data", ck): (f"--val-data {ck} is a file",),
        ("quantize", "-c", ck, "--calib-manifest", val, "-o", onnx_file): (
            f"calibration manifest {val} is a folder",
            "give the manifest's JSON file, or the folder as --calib-data",
        ),
        ("quantize", "-c", ck, "--calib-data", val, "--recipe", val, "-o", onnx_file): (
            f"--recipe {val} is a folder; give a recipe YAML file or a recipe name",
        ),
    }
    for args, needles in cases.items():
        rc, _, err = _cli(capsys, *args)
        assert rc in (2, 4), (args, err)
        _one_error(err, *needles)
    assert _files(tmp_path) == []


def test_validate_report_names_say_their_format(world, tmp_path, capsys):
    base = ("validate", world["ckpt"], "--data", world["val"])
    rc, _, err = _cli(capsys, *base, "--report", tmp_path / "r.txt")
    assert rc == 2  # a JSON report named .txt was written (sensitivity's --report already insisted on .md)
    _one_error(err, "--report", "r.txt should end in .json")
    rc, _, err = _cli(capsys, *base, "--report", tmp_path / "r.json", "--markdown", tmp_path / "r.txt")
    assert rc == 2
    _one_error(err, "--markdown", "r.txt should end in .md")
    assert _files(tmp_path) == []


def test_finetune_output_must_be_a_pt_file(world, tmp_path, capsys):
    args = ("finetune", "--train-data", world["val"], "--val-data", world["val"], "-c", world["ckpt"])
    rc, out, err = _cli(capsys, *args, "-o", tmp_path / "x.onnx")
    assert rc == 2  # was a torch checkpoint named .onnx (validate then failed on protobuf)
    _one_error(err, "--output", "x.onnx: finetune writes a PyTorch checkpoint, name it .pt (e.g. x.pt)")
    assert _files(tmp_path) == []


def test_finetune_flat_val_error_names_no_missing_option(world, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(world["val"].rglob("*.png"))[:4]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    args = ("finetune", "--train-data", world["val"], "--val-data", flat, "-c", world["ckpt"])
    rc, out, err = _cli(capsys, *args, "-o", tmp_path / "x.pt")
    assert rc == 4, err
    line = _one_error(err, "holds images but no class folders and no labels file", "add one ('<file> <label>' lines)")
    assert "--labels" not in line  # finetune has no --labels option; the message suggested one
    assert not (tmp_path / "x.pt").exists()


def test_finetune_prints_the_classifier_replacement_note(world, tmp_path, capsys):
    import shutil

    data = tmp_path / "two"
    for c in ("c0", "c1"):
        shutil.copytree(world["val"] / c, data / c)
    args = ("finetune", "--train-data", data, "--val-data", data, "-c", world["ckpt"], "--epochs", "1")
    rc, out, err = _cli(capsys, *args, "--batch", "4", "--workers", "0", "-o", tmp_path / "f.pt")
    assert rc == 0, err
    assert "note: replaced the 4-class classifier with a new 2-class one (train it)" in out


# --- 13: a --checkpoint baseline without stored preprocessing runs at the model's size -------------------------


def test_checkpoint_baseline_runs_at_the_models_size(world, onnx_pair, tmp_path, capsys):
    import json

    plain = tmp_path / "plain.pt"  # bare weights: no stored preprocessing, so the arch's default 224 px
    torch.save(world["loaded"].model.state_dict(), plain)
    report = tmp_path / "r.json"
    rc, out, err = _cli(
        capsys, "validate", onnx_pair[0], "--data", world["val"], "--checkpoint", plain, "--report", report
    )
    assert rc == 0, err  # was exit 2: "the baseline takes 224 px inputs, the model 32 px"
    rep = json.loads(report.read_text())
    assert rep["top1_agreement"] == 100.0 and abs(rep["drop"]) < 1e-9
    assert any("ran at the model's 32 px (its preprocessing says 224 px)" in n for n in rep["notes"])


# --- 15: a recipe does not silently override the checkpoint's resolution -----------------------------------------


def test_recipe_size_against_a_checkpoint_trained_at_another_size(tmp_path, capsys, caplog):
    import logging

    from edgeconvnext.demo import assets

    a = assets()  # convnextv2_atto at 32 px; the recipe quantizes atto at 224 px
    args = ("quantize", "--recipe", "convnextv2_atto-orin_nano", "-c", a.checkpoint, "--calib-data", a.calib)
    rc, out, err = _cli(capsys, *args, "-o", tmp_path / "q.onnx")
    assert rc == 2  # was quantized at 224 px with the checkpoint's crop 1.0, logged as "from the checkpoint"
    _one_error(
        err, "--recipe convnextv2_atto-orin_nano quantizes at 224 px but", "is for 32 px inputs", "--img-size 224"
    )
    assert _files(tmp_path) == []
    from edgeconvnext.models.checkpoint import load_model

    with caplog.at_level(logging.INFO):
        load_model(None, a.checkpoint, img_size=64)
    assert "img_size 64 from the caller (--img-size or a recipe)" in caplog.text


# --- 17: smaller ones ----------------------------------------------------------------------------------------------


def test_export_batch_minus_one_is_refused(world, tmp_path, capsys):
    rc, out, err = _cli(capsys, "export", "-c", world["ckpt"], "--batch", "-1", "-o", tmp_path / "m.onnx")
    assert rc == 2  # was a dynamic-batch export, exit 0
    _one_error(err, "--batch '-1'", "for a dynamic batch use --batch dynamic")
    assert _files(tmp_path) == []


def test_validate_refuses_the_model_as_its_own_baseline(world, onnx_pair, tmp_path, capsys):
    import shutil

    model = _copy_to(onnx_pair[0], tmp_path)
    twin = Path(shutil.copy(model, tmp_path / "twin.onnx"))  # another name, the same bytes
    for base in (model, twin):
        rc, out, err = _cli(
            capsys, "validate", model, "--data", world["val"], "--baseline", base, "--report", tmp_path / "r.json"
        )
        assert rc == 2  # was exit 0 with 'drop 0.00', however bad the model
        _one_error(err, f"--baseline {base} is the model itself", "--baseline OUT.fp32.onnx")
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", world["val"], "--checkpoint", world["ckpt"])
    assert rc == 2
    _one_error(err, "--checkpoint", "is the model itself")
    assert _files(tmp_path) == ["fp32.onnx", "twin.onnx"]


def test_an_int8_baseline_is_one_clear_warning(world, onnx_pair, tmp_path, capsys, caplog):
    import json
    import logging

    report = tmp_path / "r.json"
    with caplog.at_level(logging.WARNING):
        rc, out, err = _cli(
            capsys, "validate", onnx_pair[0], "--data", world["val"], "--baseline", onnx_pair[1], "--report", report
        )
    assert rc == 0, err
    lines = [r.getMessage() for r in caplog.records if "baseline" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]  # was accepted without a word
    assert "bad.onnx is an INT8 model (2 Q/DQ nodes): the drop is measured against a quantized model" in lines[0]
    assert lines[0] in json.loads(report.read_text())["notes"]


def _quantize(capsys, ckpt: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    calib = ("--calib-size", "16", "--min-calib-size", "8")
    return _cli(
        capsys, "-q", "quantize", "-c", ckpt, "--calib-data", out.parent.parent / "val", *calib, "-o", out, *extra
    )


def test_no_fp32_baseline_leaves_no_stale_baseline_of_another_checkpoint(world, tmp_path, capsys, caplog):
    import logging
    import shutil

    root = tmp_path / "w"
    shutil.copytree(world["val"], root / "val")
    torch.manual_seed(1)
    other = load_model("convnextv2_test", num_classes=len(NAMES), img_size=32)
    ckpt_b = save_checkpoint(root / "b.pt", other.model, other.arch, class_names=NAMES, preprocess=other.preprocess)
    out = root / "q" / "q.onnx"
    out.parent.mkdir()
    assert _quantize(capsys, world["ckpt"], out)[0] == 0
    first = (out.parent / "q.fp32.onnx").read_bytes()
    # the same checkpoint again: the old file is exactly this model's FP32 export, so it stays its baseline
    assert _quantize(capsys, world["ckpt"], out, "--no-fp32-baseline")[0] == 0
    assert (out.parent / "q.fp32.onnx").read_bytes() == first
    # another checkpoint: the old baseline would pass for the new model's; it goes, with its sidecar
    with caplog.at_level(logging.WARNING):
        rc, _, err = _quantize(capsys, ckpt_b, out, "--no-fp32-baseline")
    assert rc == 0, err
    assert _files(out.parent) == ["q.calib.json", "q.onnx", "q.onnx.json"]  # q.fp32.onnx(.json) from A stayed
    assert "removed q.fp32.onnx: an earlier run's FP32 baseline, not this model's" in caplog.text


_FAILING_TRTEXEC = """#!/bin/sh
echo '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'
case "$*" in *--help*) exit 0;; esac
for a in "$@"; do case "$a" in --saveEngine=*) : > "${a#--saveEngine=}";; esac; done
echo "[I] parsing the ONNX"
echo "[E] Error[2]: [builder.cpp::buildSerializedNetwork] out of device memory" >&2
echo "[E] Engine could not be created from network" >&2
"""


@pytest.mark.parametrize(
    "ending,how", [("exit 3", "failed with exit status 3"), ("kill -9 $$", "was killed by SIGKILL")]
)
def test_a_failed_trtexec_says_how_it_ended_and_names_the_engine(onnx_pair, tmp_path, capsys, ending, how):
    import os

    good = _copy_to(onnx_pair[0], tmp_path / "m")
    fake = tmp_path / "trtexec"
    fake.write_text(_FAILING_TRTEXEC + ending + "\n")
    os.chmod(fake, 0o755)
    engine = tmp_path / "m" / "fp32.engine"
    rc, out, err = _cli(capsys, "build-engine", good, "--fp16", "--trtexec", fake, "-o", engine)
    assert rc == 5
    line = _one_error(err, f"trtexec {how} building {engine} from {good}")  # was "failed (exit 0)"
    assert ".partial" not in err and "fp32.fp16.onnx" not in line  # both deleted with the failed build
    tail = line.split("last lines of its stderr:")[1]  # the CLI joins the quoted lines onto the one error line
    assert "out of device memory" in tail and "could not be created" in tail
    assert "parsing the ONNX" not in tail  # stdout is in the log, stderr says what failed
    assert _files(tmp_path / "m") == ["fp32.engine.trtexec.log", "fp32.onnx"]


class _Unreadable:
    """A folder this process cannot list: chmod 000, and as root (which reads it anyway) the effective uid
    dropped to nobody while the scan runs (the data lies under a world-readable temp folder for that)."""

    def __init__(self) -> None:
        import os
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="edgeconvnext-unreadable-"))
        os.chmod(self.root, 0o755)
        self.as_root = os.geteuid() == 0

    def lock(self, folder: Path) -> None:
        import os

        os.chmod(folder, 0)

    def __enter__(self):
        import os

        if self.as_root:
            os.seteuid(65534)
        return self

    def __exit__(self, *exc) -> None:
        import os

        if self.as_root:
            os.seteuid(0)

    def cleanup(self) -> None:
        import os
        import shutil

        for d, _, _ in os.walk(self.root):
            os.chmod(d, 0o755)
        for p in self.root.rglob("*"):
            os.chmod(p, 0o755)
        shutil.rmtree(self.root)


@pytest.fixture
def unreadable():
    import os

    if os.geteuid() == 0 and not hasattr(os, "seteuid"):
        pytest.skip("needs a non-root user or seteuid: root reads a chmod-000 folder anyway")
    u = _Unreadable()
    try:
        yield u
    finally:
        u.cleanup()


def test_unreadable_sub_folders_are_counted_as_skipped(world, unreadable, caplog):
    import logging
    import os
    import shutil

    from edgeconvnext.data.calibration import select_images
    from edgeconvnext.data.folders import LabelledImages

    val = unreadable.root / "val"
    shutil.copytree(world["val"], val)
    (val / "c1" / "more").mkdir()
    shutil.copy(val / "c1" / "0.png", val / "c1" / "more" / "x.png")
    for d in (val, *val.rglob("*")):
        os.chmod(d, 0o755)
    unreadable.lock(val / "c1" / "more")
    unreadable.lock(val / "c2")  # a whole class folder
    with caplog.at_level(logging.WARNING), unreadable:
        ds = LabelledImages.discover(val)
        cs = select_images(val, 10, preprocess=world["loaded"].preprocess, min_images=8)
    assert len(ds) == 15 and sorted(p.name for p, _ in ds.skipped) == ["c2", "more"]  # were skipped uncounted
    assert all("cannot read the folder (Permission denied)" in why for _, why in ds.skipped)
    assert len(cs) == 10 and sorted(p.name for p, _ in cs.skipped) == ["c2", "more"]
    assert cs.manifest()["skipped"][0]["reason"].endswith(
        "cannot read the folder (Permission denied); its images are not counted"
    )
    assert "skipping " in caplog.text and "more: cannot read the folder" in caplog.text


def test_validate_counts_an_unreadable_class_folder(world, onnx_pair, unreadable, capsys):
    import json
    import os
    import shutil

    val = unreadable.root / "val"
    shutil.copytree(world["val"], val)
    model = Path(shutil.copy(onnx_pair[0], unreadable.root / "m.onnx"))
    out = unreadable.root / "out"
    out.mkdir()
    for d in (unreadable.root, *unreadable.root.rglob("*")):
        os.chmod(d, 0o777 if d.is_dir() else 0o644)
    rc, *_ = _cli(capsys, "validate", model, "--data", val)  # as root: every lazy import done before the uid drop
    assert rc == 0
    unreadable.lock(val / "c3")
    with unreadable:
        rc, o, err = _cli(capsys, "validate", model, "--data", val, "--report", out / "r.json")
    assert rc == 0, err
    rep = json.loads((out / "r.json").read_text())
    assert rep["images"] == 15 and rep["skipped"] == 1 and rep["skipped_files"][0]["file"] == str(val / "c3")
    assert "1 unreadable skipped" in o


def test_a_corrupt_onnx_is_exit_3_in_every_command(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 definitely not a protobuf graph")
    for args in (["inspect", bad], ["inspect", bad, "--trt"], ["validate", bad, "--latency"], ["build-engine", bad]):
        rc, out, err = _cli(capsys, *args)
        assert rc == 3, (args, err)  # inspect and build-engine said 2, validate 3
        _one_error(err, str(bad))


def test_dtypes_are_named_not_numbered(onnx_pair, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_pair[1]))
    zp = next(t for t in proto.graph.initializer if t.name == "in_zp")
    zp.CopyFrom(numpy_helper.from_array(np.int16(0), "in_zp"))  # ONNX type 5
    path = tmp_path / "int16.onnx"
    onnx.save(proto, str(path))
    rc, out, err = _cli(capsys, "inspect", path, "--trt")
    assert rc == 6
    assert "zero point 'in_zp' is int16: TensorRT INT8 needs int8" in out and "ONNX type" not in out


def test_top5_is_left_out_for_five_classes_or_fewer(world, onnx_pair, tmp_path, capsys):
    import json

    report, md = tmp_path / "r.json", tmp_path / "r.md"
    rc, out, err = _cli(capsys, "validate", onnx_pair[0], "--data", world["val"], "--report", report, "--markdown", md)
    assert rc == 0, err
    rep = json.loads(report.read_text())
    assert rep["num_classes"] == 4 and rep["top5"] is None  # was 100.00 for 4 classes
    assert "top-5" not in out and "top-5" not in md.read_text() and "top-1 " in out


def test_calibrating_on_few_images_is_said_once(world, tmp_path, caplog):
    import logging

    from edgeconvnext.quantize.config import resolve
    from edgeconvnext.quantize.qat import start_from_ptq

    cfg = resolve(None, {"calib_size": 16, "min_calib_size": 8})
    with caplog.at_level(logging.WARNING):  # QAT's start: PTQ, then the same set re-read from its manifest
        start_from_ptq(world["loaded"], cfg, "frozen", calib_data=world["val"], calib_manifest=None, workdir=tmp_path)
    said = [r for r in caplog.records if "calibrating on 16 images" in r.getMessage()]
    assert len(said) == 1  # was twice


def test_python_warnings_are_one_log_line(world, tmp_path, capsys, caplog, monkeypatch):
    import logging
    import shutil

    val = tmp_path / "val"
    shutil.copytree(world["val"], val)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(val / "c0" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 1600 pixels: Pillow warns (it refuses over 3000)
    with caplog.at_level(logging.WARNING):
        rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", val)
    assert rc == 0, err
    (rec,) = [r for r in caplog.records if r.name == "py.warnings"]
    assert rec.getMessage().startswith("DecompressionBombWarning: Image size (1600 pixels) exceeds limit")
    assert "\n" not in rec.getMessage() and ".py:" not in rec.getMessage()
    assert "warnings.warn" not in err and "DecompressionBombWarning" not in err  # Python's two lines with source


# --- run's options that its stages could not honour; messages naming run's own options -------------------------


def test_run_refuses_what_its_stages_would_ignore(world, tmp_path, capsys):
    m = tmp_path / "calib.json"
    m.write_text("{}")
    base = ("run", "-c", world["ckpt"], "--val-data", world["val"], "-o", tmp_path / "r")
    # a manifest fixes the images: --calib-size/--seed were ignored and still written into the bundle's recipe
    rc, out, err = _cli(capsys, *base, "--calib-manifest", m, "--calib-size", "20", "--seed", "5")
    assert rc == 2
    _one_error(err, "--calib-manifest fixes the calibration images", "drop --calib-size/--seed")
    # --no-latency and a latency setting: the setting was dropped without a word
    for extra in (["--latency-batch", "1,8"], ["--iters", "5"], ["--warmup", "2"]):
        rc, out, err = _cli(capsys, *base, "--calib-data", world["val"], "--no-latency", *extra)
        assert rc == 2
        _one_error(err, f"{extra[0]} sets up the latency measurement", "--no-latency")
    # the message names run's --val-batch, not validate's --batch (run has none)
    rc, out, err = _cli(capsys, *base, "--calib-data", world["val"], "--val-batch", "0")
    assert rc == 2
    _one_error(err, "--val-batch: 0 is below the minimum 1")
    assert not (tmp_path / "r").exists()


def test_a_recipe_for_another_model_names_the_recipe_not_model(world, tmp_path, capsys):
    # the recipe's model: convnextv2_nano; the checkpoint is convnextv2_test; no --model was given
    args = ("-c", world["ckpt"], "--calib-data", world["val"], "--recipe", "convnextv2_nano-orin_nano")
    rc, out, err = _cli(capsys, "quantize", *args, "--img-size", "32", "-o", tmp_path / "q.onnx")
    assert rc == 2
    line = _one_error(err, "--recipe convnextv2_nano-orin_nano is for convnextv2_nano", "holds a convnextv2_test")
    assert "--model" not in line  # it said 'drop --model', an option the user never gave
    rc, out, err = _cli(capsys, "quantize", *args, "-m", "convnextv2_atto", "-o", tmp_path / "q.onnx")
    assert rc == 2
    _one_error(err, "--model convnextv2_atto but --recipe convnextv2_nano-orin_nano is for convnextv2_nano")
    assert not list(tmp_path.iterdir())


def test_tensorrt_missing_names_the_command_that_has_dry_run(world, onnx_pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtexec on PATH
    rc, out, err = _cli(capsys, "build-engine", onnx_pair[0], "-o", tmp_path / "m.engine")
    if rc == 0:
        pytest.skip("TensorRT is installed here")
    assert rc == 8
    _one_error(err, "'edgeconvnext build-engine MODEL.onnx --dry-run' prints the trtexec command")


def test_reports_never_replace_a_file_edgeconvnext_did_not_write(world, tmp_path, capsys):
    notes, settings = tmp_path / "notes.md", tmp_path / "settings.json"
    notes.write_text("# my notes\n")
    settings.write_text('{"name": "my config"}\n')
    base = ("validate", world["ckpt"], "--data", world["val"])
    for opt, path in (("--markdown", notes), ("--report", settings)):
        rc, out, err = _cli(capsys, *base, opt, path)
        assert rc == 2
        _one_error(err, f"{opt} {path} exists and was not written by edgeconvnext", "delete the file first")
    assert notes.read_text() == "# my notes\n" and settings.read_text() == '{"name": "my config"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "settings.json"]  # no sidecar either
    # its own reports are written again (validate's JSON by its sidecar, the Markdown by its footer)
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    for _ in range(2):
        rc, out, err = _cli(capsys, *base, "--markdown", md, "--report", js, "--force")
        assert rc == 0, err
    empty = tmp_path / "empty.md"
    empty.write_text("")
    rc, out, err = _cli(capsys, *base, "--markdown", empty)
    assert rc == 0, err  # nothing to lose


def test_a_baseline_of_another_network_is_said(world, tmp_path, capsys, caplog):
    import logging

    from edgeconvnext.export.onnx_export import export_onnx
    from edgeconvnext.models.checkpoint import load_model

    own = export_onnx(load_model(None, world["ckpt"]), tmp_path / "own.fp32.onnx").path
    torch.manual_seed(1)
    rand = load_model("convnextv2_test", num_classes=len(NAMES), img_size=32)
    rand.class_names = list(NAMES)
    other = export_onnx(rand, tmp_path / "random.fp32.onnx").path
    base = ("validate", world["ckpt"], "--data", world["val"], "--baseline")
    with caplog.at_level(logging.WARNING):
        rc, out, err = _cli(capsys, *base, own)
    assert rc == 0, err
    assert not [r for r in caplog.records if "different networks" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc, out, err = _cli(capsys, *base, other, "--report", tmp_path / "r.json")
    assert rc == 0, err  # a warning, not a refusal: the numbers are still what they are
    (rec,) = [r for r in caplog.records if "different networks" in r.getMessage()]
    assert "random.fp32.onnx has random weights" in rec.getMessage()
    # another architecture, and another checkpoint of the same one: said as well
    v1 = load_model("convnext_test", num_classes=len(NAMES), img_size=32)
    v1.class_names = list(NAMES)
    v1_onnx = export_onnx(v1, tmp_path / "v1.fp32.onnx").path
    ck2 = save_checkpoint(tmp_path / "other.pt", rand.model, rand.arch, class_names=NAMES, preprocess=rand.preprocess)
    other_ck = export_onnx(load_model(None, ck2), tmp_path / "other.fp32.onnx").path
    for path, said in (
        (v1_onnx, "is a convnext_test and the model a convnextv2_test"),
        (other_ck, "another checkpoint"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rc, out, err = _cli(capsys, *base, path)
        assert rc == 0, err
        (rec,) = [r for r in caplog.records if "different networks" in r.getMessage()]
        assert said in rec.getMessage()
    import json

    assert any("different networks" in n for n in json.loads((tmp_path / "r.json").read_text())["notes"])


def test_flat_labelled_folder_says_what_it_read(world, tmp_path, capsys, caplog):
    import json
    import logging
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for i, c in enumerate(NAMES):
        shutil.copy(world["val"] / c / "0.png", flat / f"img {i}.png")
        rows.append(f"img {i}.png {c}")
    (flat / "labels.txt").write_text("\n".join(rows) + "\n")
    shutil.copy(world["val"] / NAMES[0] / "1.png", flat / "unlabelled.png")
    report = tmp_path / "r.json"
    with caplog.at_level(logging.WARNING):
        rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", flat, "--report", report)
    assert rc == 0, err
    (rec,) = [r for r in caplog.records if "have no label" in r.getMessage()]
    assert "1 image(s)" in rec.getMessage() and "unlabelled.png" in rec.getMessage()
    rep = json.loads(report.read_text())
    assert rep["images"] == len(NAMES)
    assert f"labels read from {flat / 'labels.txt'}" in rep["notes"]
    # two labels files may disagree: refused, naming both and --labels
    (flat / "val.txt").write_text("\n".join(rows[::-1]) + "\n")
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", flat)
    assert rc != 0
    _one_error(err, "holds 2 labels files (labels.txt, val.txt)", "pass --labels FILE")
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", flat, "--labels", flat / "val.txt")
    assert rc == 0, err


def test_json_mode_prints_the_error_as_json_too(world, tmp_path, capsys):
    import json

    cases = [
        (
            ("quantize", "--json", "-c", world["ckpt"], "--calib-data", world["val"], "--calib-size", "0"),
            2,
            "UsageError",
        ),
        (("inspect", "--json", world["val"] / NAMES[0] / "0.png"), 3, "CheckpointError"),
        (("quantize", "--json", "--calib-size", "abc"), 2, "UsageError"),  # option parsing (click)
    ]
    for args, code, kind in cases:
        rc, out, err = _cli(capsys, *args)
        assert rc == code, err
        line = _one_error(err)  # stderr keeps its one line
        data = json.loads(out)  # stdout: one JSON object, nothing else
        assert data == {"error": line.removeprefix("error: "), "kind": kind, "exit_code": code}
    rc, out, err = _cli(capsys, "quantize", "-c", world["ckpt"], "--calib-size", "0")
    assert rc == 2 and out == ""  # without --json stdout stays empty


def test_run_checks_bundle_images_before_any_stage(world, tmp_path, capsys):
    import shutil

    flat = tmp_path / "flat"  # images, no class folders, no labels file: latency-only validation data
    flat.mkdir()
    for i, c in enumerate(NAMES):
        shutil.copy(world["val"] / c / "0.png", flat / f"{i}.png")
    base = ("run", "-c", world["ckpt"], "--calib-data", world["val"], "-o", tmp_path / "r")
    rc, out, err = _cli(capsys, *base, "--val-data", flat, "--bundle-images", "2")
    assert rc == 4
    _one_error(err, "--bundle-images 2 copies labelled validation images", "no class folders and no labels file")
    rc, out, err = _cli(capsys, *base, "--val-data", world["val"], "--bundle-images", "999")
    assert rc == 2
    _one_error(err, "--bundle-images 999", "holds 20 images; give at most 20")
    assert not (tmp_path / "r").exists()  # refused before the export stage: no half-built run or bundle


def test_what_counts_as_written_by_edgeconvnext(world, tmp_path, capsys):
    import json
    import struct
    import zlib

    from edgeconvnext.artifacts import sidecar_path, written_by_us

    readme = tmp_path / "README.md"
    readme.write_text("# my project\n\nWe ship with edgeconvnext: `edgeconvnext run ...`\n")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"runs": "/home/me/edgeconvnext-runs"}))
    assert not written_by_us(readme) and not written_by_us(settings)  # naming the tool is not being ours
    # validate's JSON report whose sidecar is gone (a run killed between the two), over 64 KiB: still ours
    report = tmp_path / "r.json"
    rc, out, err = _cli(capsys, "validate", world["ckpt"], "--data", world["val"], "--report", report)
    assert rc == 0, err
    data = json.loads(report.read_text())
    data["padding"] = ["x" * 100] * 1000
    report.write_text(json.dumps(data))
    sidecar_path(report).unlink()
    assert report.stat().st_size > 1 << 16 and written_by_us(report)
    # sensitivity's outputs from before they carried the marker: the heading / the keys say whose
    old_md = tmp_path / "old.md"
    old_md.write_text("# INT8 sensitivity: convnextv2_atto\n\n| rank | layer |\n")
    old_js = tmp_path / "old.json"
    old_js.write_text(json.dumps({"arch": "convnextv2_atto", "mode_text": "...", "groups": []}))
    assert written_by_us(old_md) and written_by_us(old_js)

    def png(software: bytes) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"tEXt", b"Software\0" + software)
            + chunk(b"IDAT", zlib.compress(b"\0\0"))
            + chunk(b"IEND", b"")
        )

    theirs, ours = tmp_path / "theirs.png", tmp_path / "ours.png"
    theirs.write_bytes(png(b"Matplotlib version3.9"))
    ours.write_bytes(png(b"edgeconvnext 0.1.0 (matplotlib)"))
    assert not written_by_us(theirs) and written_by_us(ours)
