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
