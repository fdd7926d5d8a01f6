"""Reproducers of issue 8 (trying to break every command as a new user would): each asserts the exit code,
the one ``error:`` line and which files are left behind."""

from __future__ import annotations

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
    from edgeconvnext.quantize.policy import _ROLES

    rows = [
        {
            "layer": layer,
            "op": op,
            "precision": "INT8" if _ROLES[role][0] else "FP",
            "count": n,
            "macs_share": share,
            "reason": _ROLES[role][1],
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
    assert len(lines) == 3 + len(rows)  # title, header, rule, one line per row
    assert "stages.2.blocks.*.conv_dw (x8)" in lines[4] and "depthwise: slow in INT8" in lines[4]


def test_quantize_without_calibration_data_fails_before_loading_the_model(world, tmp_path, capsys, monkeypatch):
    import edgeconvnext.models.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    rc, out, err = _cli(capsys, "quantize", "-c", world["ckpt"], "-o", tmp_path / "q.onnx")
    assert rc == 2
    assert err.startswith("error: ")  # no blank line (a progress bar's) before it
    _one_error(err, "give --calib-data DIR")
    assert out == "" and _files(tmp_path) == []
