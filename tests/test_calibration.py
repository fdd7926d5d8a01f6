"""Calibration sets: deterministic selection, corrupt files skipped and counted, size rules, manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeconvnext.data import calibration
from edgeconvnext.data.calibration import (
    MANIFEST_FORMAT,
    load_manifest,
    read_manifest,
    select_images,
    write_manifest,
)
from edgeconvnext.data.preprocess import preprocess_image
from edgeconvnext.errors import DataError, UsageError
from edgeconvnext.models.registry import Preprocess

PP = Preprocess(img_size=32, crop_pct=1.0)


def make_images(folder: Path, n: int, *, corrupt: int = 0, seed: int = 0) -> list[Path]:
    """``n`` small random images (PNG/JPEG/WebP/BMP, some in a sub-folder) and ``corrupt`` broken files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    exts = (".png", ".jpg", ".webp", ".bmp")
    out = []
    for i in range(n):
        sub = folder / "sub" if i % 3 == 0 else folder
        sub.mkdir(exist_ok=True)
        p = sub / f"img{i:03d}{exts[i % len(exts)]}"
        arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(p)
        out.append(p)
    for i in range(corrupt):
        p = folder / f"broken{i}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        out.append(p)
    (folder / "notes.txt").write_text("not an image")
    return out


def test_select_is_deterministic_and_preprocessed_like_the_model(tmp_path):
    make_images(tmp_path / "d", 20)
    a = select_images(tmp_path / "d", 8, seed=0, preprocess=PP, min_images=4)
    b = select_images(tmp_path / "d", 8, seed=0, preprocess=PP, min_images=4)
    c = select_images(tmp_path / "d", 8, seed=1, preprocess=PP, min_images=4)
    assert a.paths == b.paths and np.array_equal(a.images, b.images)
    assert a.paths != c.paths
    assert a.images.shape == (8, 3, 32, 32) and a.images.dtype == np.float32
    assert any(p.parent.name == "sub" for p in a.paths + c.paths)  # recursive
    np.testing.assert_array_equal(a.images[3], preprocess_image(a.paths[3], PP))
    assert len(set(a.sha256)) == 8 and all(len(h) == 64 for h in a.sha256)


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    make_images(tmp_path / "d", 10, corrupt=4)
    cs = select_images(tmp_path / "d", 10, seed=0, preprocess=PP, min_images=4)
    assert len(cs) == 10 and len(cs.skipped) == 4 and cs.candidates == 14
    assert all(p.name.startswith("broken") for p, _ in cs.skipped)
    m = cs.manifest()
    assert m["count"] == 10 and len(m["skipped"]) == 4 and m["skipped"][0]["reason"]


def test_empty_folder_all_corrupt_and_too_few(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no calibration images"):
        select_images(tmp_path / "empty", 8, preprocess=PP, min_images=4)
    make_images(tmp_path / "bad", 0, corrupt=6)
    with pytest.raises(DataError, match="none of the 6 image files"):
        select_images(tmp_path / "bad", 4, preprocess=PP, min_images=4)
    make_images(tmp_path / "few", 5)
    with pytest.raises(DataError, match=r"holds 5 image files, --calib-size asks for 8: .*--calib-size 5"):
        select_images(tmp_path / "few", 8, preprocess=PP, min_images=4)
    make_images(tmp_path / "mixed", 6, corrupt=3)
    with pytest.raises(DataError, match=r"only 6 of 9 image files .* readable \(3 corrupt"):
        select_images(tmp_path / "mixed", 8, preprocess=PP, min_images=4)
    with pytest.raises(DataError, match="not found"):
        select_images(tmp_path / "nope", 8, preprocess=PP, min_images=4)


def test_size_floor_and_recommendation(tmp_path, caplog):
    make_images(tmp_path / "d", 10)
    with pytest.raises(UsageError, match=r"--calib-size 8 is below the minimum of 32 .*--min-calib-size 8"):
        select_images(tmp_path / "d", 8, preprocess=PP)
    assert calibration.MIN_IMAGES == 32 and calibration.RECOMMENDED_IMAGES == 500
    with caplog.at_level(logging.WARNING, logger="edgeconvnext.data.calibration"):
        select_images(tmp_path / "d", 8, preprocess=PP, min_images=8)
    assert "about 500 are recommended" in caplog.text


def test_manifest_round_trip(tmp_path):
    make_images(tmp_path / "d", 12, corrupt=1)
    cs = select_images(tmp_path / "d", 8, seed=3, preprocess=PP, min_images=4)
    mpath = write_manifest(cs, tmp_path / "m.calib.json")
    data = read_manifest(mpath)
    assert data["format"] == MANIFEST_FORMAT and data["seed"] == 3 and data["requested_size"] == 8
    assert [e["path"] for e in data["images"]] == [p.relative_to(tmp_path / "d").as_posix() for p in cs.paths]
    back = load_manifest(mpath, preprocess=PP, min_images=4)
    assert back.paths == cs.paths and np.array_equal(back.images, cs.images) and back.source == "manifest"
    # the same images moved elsewhere: --calib-data overrides the root
    moved = tmp_path / "moved"
    (tmp_path / "d").rename(moved)
    back2 = load_manifest(mpath, preprocess=PP, root=moved, min_images=4)
    assert np.array_equal(back2.images, cs.images)


def test_small_manifest_is_refused_with_advice_that_fits_a_manifest(tmp_path):
    # the advice was "use --calib-size 32", which --calib-manifest itself refuses
    make_images(tmp_path / "d", 6)
    mpath = write_manifest(select_images(tmp_path / "d", 6, preprocess=PP, min_images=4), tmp_path / "m.json")
    with pytest.raises(UsageError, match=r"lists 6 images.*--min-calib-size 6") as e:
        load_manifest(mpath, preprocess=PP, min_images=32)
    assert "--calib-size" not in str(e.value)
    assert len(load_manifest(mpath, preprocess=PP, min_images=6).paths) == 6


def test_manifest_changed_or_missing_file_is_named(tmp_path):
    make_images(tmp_path / "d", 10)
    cs = select_images(tmp_path / "d", 6, preprocess=PP, min_images=4)
    mpath = write_manifest(cs, tmp_path / "m.json")
    victim = cs.paths[2]
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(victim, format=None)
    rel = victim.relative_to(tmp_path / "d").as_posix()
    with pytest.raises(DataError, match=rf"{victim.name} changed since .*m.json"):
        load_manifest(mpath, preprocess=PP, min_images=4)
    victim.unlink()
    with pytest.raises(DataError, match=rf"{rel} listed in .*m.json is missing"):
        load_manifest(mpath, preprocess=PP, min_images=4)


def test_bad_manifest_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not an edgeconvnext calibration manifest"):
        read_manifest(tmp_path / "other.json")
    (tmp_path / "v9.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "format_version": 9}))
    with pytest.raises(DataError, match="format_version 9"):
        read_manifest(tmp_path / "v9.json")


def test_file_names_that_are_not_utf8(tmp_path):
    # Latin-1 names from an old archive: the selection hash raised UnicodeEncodeError (an internal error)
    import os
    import shutil

    make_images(tmp_path / "d", 6)
    src = sorted((tmp_path / "d").rglob("*.png"))[0]
    try:
        for i in range(3):
            shutil.copy(src, os.path.join(os.fsencode(tmp_path / "d"), f"caf{i}".encode() + b"\xe9.png"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    cs = select_images(tmp_path / "d", 9, preprocess=PP, min_images=4)
    assert len(cs.paths) == 9
    back = load_manifest(write_manifest(cs, tmp_path / "m.json"), preprocess=PP, min_images=4)
    assert back.paths == cs.paths
