"""validate: exact numbers on datasets labelled from the model's own predictions, baselines, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconvnext.checkpoint import load_model, save_checkpoint
from edgeconvnext.cli import main
from edgeconvnext.errors import AccuracyError, DataError, UsageError
from edgeconvnext.export import export_onnx
from edgeconvnext.preprocess import preprocess_image
from edgeconvnext.runners import OnnxRuntimeRunner
from edgeconvnext.validate import validate

N_CLASSES = 10
NAMES = [f"c{i}" for i in range(N_CLASSES)]
N_IMAGES = 40
K_SECOND = 3  # labels flipped to the model's 2nd choice: top-1 misses, top-5 hits
K_LAST = 2  # labels flipped to the model's last choice: both miss


def _model(class_names: list[str] | None, seed: int = 0):
    torch.manual_seed(seed)
    loaded = load_model("convnextv2_test", num_classes=N_CLASSES, img_size=32)
    with torch.no_grad():  # a head with spread-out logits so predictions differ between images
        loaded.model.head.fc.weight.normal_(0, 1.0)
    loaded.class_names = class_names
    return loaded


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Model A (ONNX fp32 + checkpoint), images, and labels derived from A's own ranking."""
    root = tmp_path_factory.mktemp("val")
    loaded = _model(NAMES)
    onnx_a = export_onnx(loaded, root / "a.onnx").path
    ckpt = save_checkpoint(root / "a.pt", loaded.model, loaded.arch, class_names=NAMES, preprocess=loaded.preprocess)
    rng = np.random.default_rng(0)
    pool = root / "pool"
    pool.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(pool / f"img{i:03d}.png")
    files = sorted(pool.iterdir())
    x = np.stack([preprocess_image(f, loaded.preprocess) for f in files])
    with OnnxRuntimeRunner(onnx_a) as r:
        logits = r.infer(x)
    order = np.argsort(-logits, axis=1)
    margin = np.sort(logits, axis=1)
    assert (margin[:, -1] - margin[:, -2]).min() > 1e-3  # no near-ties: the exact numbers below are robust
    assert len(set(order[:, 0])) > 2  # the predictions are spread over several classes
    labels = order[:, 0].copy()
    labels[:K_SECOND] = order[:K_SECOND, 1]
    labels[K_SECOND:K_SECOND + K_LAST] = order[K_SECOND:K_SECOND + K_LAST, -1]
    return {"root": root, "loaded": loaded, "onnx": onnx_a, "ckpt": ckpt, "files": files, "pred": order[:, 0],
            "labels": labels}


def image_folder(world, dest: Path, labels: np.ndarray) -> Path:
    for f, y in zip(world["files"], labels):
        (dest / NAMES[y]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest / NAMES[y] / f.name)
    return dest


def flat_folder(world, dest: Path, labels: np.ndarray, as_index: bool = False) -> Path:
    dest.mkdir(parents=True)
    lines = []
    for f, y in zip(world["files"], labels):
        shutil.copy(f, dest / f.name)
        lines.append(f"{f.name} {y if as_index else NAMES[y]}")
    (dest / "labels.txt").write_text("\n".join(lines) + "\n")
    return dest


# ---- exact numbers ----------------------------------------------------------------------------------

def test_known_top1_top5_and_per_class(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep = validate(world["onnx"], data)
    n = N_IMAGES
    assert rep.images == n and rep.skipped == 0 and rep.num_classes == N_CLASSES
    assert rep.top1 == pytest.approx(100 * (n - K_SECOND - K_LAST) / n)  # 87.5
    assert rep.top5 == pytest.approx(100 * (n - K_LAST) / n)  # 95.0
    assert rep.baseline is None and rep.drop is None and rep.passed is None
    labels, pred = world["labels"], world["pred"]
    rows = {r["class"]: r for r in rep.per_class}
    for c in set(labels):
        sel = labels == c
        assert rows[NAMES[c]]["count"] == sel.sum()
        assert rows[NAMES[c]]["top1"] == pytest.approx(100 * (pred[sel] == c).mean())
    assert sum(r["count"] for r in rep.per_class) == n


def test_self_baseline_has_no_drop(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["pred"])
    rep = validate(world["onnx"], data, baseline=world["onnx"], max_drop=0.0)
    assert rep.top1 == 100.0 and rep.baseline_top1 == 100.0
    assert rep.drop == 0.0 and rep.top1_agreement == 100.0 and rep.passed is True
    assert rep.cosine_mean == pytest.approx(1.0, abs=1e-9) and rep.cosine_min == pytest.approx(1.0, abs=1e-9)
    assert rep.model_sha256 == rep.baseline_sha256


def test_checkpoint_baseline_in_torch_agrees(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep = validate(world["onnx"], data, checkpoint=world["ckpt"])
    assert rep.baseline_runner.startswith("torch-cpu-fp32")
    assert rep.baseline_top1 == rep.top1 and rep.top1_agreement == 100.0
    assert rep.cosine_min > 0.99999


def test_fixed_batch_onnx_gives_the_same_numbers(world, tmp_path):
    fixed = export_onnx(world["loaded"], tmp_path / "b4.onnx", batch=4).path
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep = validate(fixed, data, baseline=world["onnx"], batch=7)  # batches of 7 split/padded to 4
    assert rep.top1 == pytest.approx(87.5) and rep.top1_agreement == 100.0 and rep.cosine_min > 0.999999


@pytest.mark.parametrize("as_index", [False, True])
def test_flat_folder_with_labels_file(world, tmp_path, as_index):
    data = flat_folder(world, tmp_path / "flat", world["labels"], as_index)
    rep = validate(world["onnx"], data)
    assert rep.top1 == pytest.approx(87.5) and rep.top5 == pytest.approx(95.0)


def test_limit_takes_a_subset(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["pred"])
    rep = validate(world["onnx"], data, limit=10)
    assert rep.images == 10 and rep.top1 == 100.0 and rep.limit == 10


def test_model_without_class_names_maps_sorted_folders(world, tmp_path):
    bare = export_onnx(_model(None), tmp_path / "bare.onnx").path  # same weights, no class names
    data = image_folder(world, tmp_path / "val", world["labels"])
    for c in NAMES:  # every class folder present, so sorted order = output order
        (data / c).mkdir(exist_ok=True)
    rep = validate(bare, data)
    assert rep.top1 == pytest.approx(87.5) and any("no class names" in n for n in rep.notes)


# ---- accuracy gate ---------------------------------------------------------------------------------

def test_max_drop_exceeded_exit_7_and_report_written(world, tmp_path, capsys):
    worse = _model(NAMES)
    with torch.no_grad():
        worse.model.head.fc.bias[0] += 1e4  # always predicts c0
    worse_onnx = export_onnx(worse, tmp_path / "worse.onnx").path
    data = image_folder(world, tmp_path / "val", world["pred"])
    n0 = int((world["pred"] == 0).sum())
    expected_top1 = 100 * n0 / N_IMAGES
    report = tmp_path / "r.json"
    with pytest.raises(AccuracyError) as e:
        validate(worse_onnx, data, baseline=world["onnx"], max_drop=0.5, report=report)
    assert e.value.report.drop == pytest.approx(100 - expected_top1)
    rc = main(["validate", str(worse_onnx), "--data", str(data), "--baseline", str(world["onnx"]),
               "--max-drop", "0.5", "--report", str(report)])
    assert rc == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: worse.onnx loses") and "--max-drop 0.5" in err[-1]
    rep = json.loads(report.read_text())
    assert rep["passed"] is False and rep["top1"] == pytest.approx(expected_top1) and rep["baseline_top1"] == 100.0
    assert rep["top1_agreement"] == pytest.approx(expected_top1) and len(rep["model_sha256"]) == 64
    assert "onnxruntime" in rep["environment"]


# ---- CLI and bad inputs ----------------------------------------------------------------------------

def test_cli_prints_table_and_one_line_and_writes_report(world, tmp_path, capsys):
    data = image_folder(world, tmp_path / "val", world["labels"])
    report = tmp_path / "out" / "report.json"
    rc = main(["validate", str(world["onnx"]), "--data", str(data), "--baseline", str(world["onnx"]),
               "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "top-1 %" in out and "agreement" in out
    flat = " ".join(out.split())  # rich wraps at the terminal width
    assert ("a.onnx: top-1 87.50%, top-5 95.00% on 40 images (baseline 87.50%, drop 0.00 pts, agreement 100.0%) "
            f"-> {report}") in flat
    rep = json.loads(report.read_text())
    assert rep["drop"] == 0.0 and len(rep["per_class"]) == len(set(world["labels"]))


def test_corrupt_images_are_skipped_and_counted(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["pred"])
    (data / "c1" / "broken.png").write_bytes(b"\x89PNG truncated")
    (data / "c2" / "empty.jpg").write_bytes(b"")
    rep = validate(world["onnx"], data)
    assert rep.images == N_IMAGES and rep.skipped == 2 and rep.top1 == 100.0
    assert {Path(s["file"]).name for s in rep.skipped_files} == {"broken.png", "empty.jpg"}


def _cli(world, *args: str) -> list[str]:
    return ["validate", str(world["onnx"]), *args]


@pytest.mark.parametrize("case,code,message", [
    ("empty", 4, "no images found"),
    ("missing_labels_file", 4, "labels file not found"),
    ("missing_files", 4, "missing from"),
    ("unknown_class", 4, "not among the model's 10 classes"),
    ("both_baselines", 2, "not both"),
    ("max_drop_without_baseline", 2, "--max-drop needs a baseline"),
    ("all_corrupt", 4, "could be read"),
    ("missing_model", 3, "model not found"),
])
def test_cli_bad_inputs_one_line(world, tmp_path, capsys, case, code, message):
    d = tmp_path / "d"
    d.mkdir()
    args = _cli(world, "--data", str(d))
    if case == "missing_labels_file":
        shutil.copy(world["files"][0], d)
        args += ["--labels", str(tmp_path / "nope.txt")]
    elif case == "missing_files":
        (d / "labels.txt").write_text("gone.png c1\n")
    elif case == "unknown_class":
        (d / "zebra").mkdir()
        shutil.copy(world["files"][0], d / "zebra")
    elif case == "both_baselines":
        args += ["--baseline", str(world["onnx"]), "--checkpoint", str(world["ckpt"])]
    elif case == "max_drop_without_baseline":
        args += ["--max-drop", "1"]
    elif case == "all_corrupt":
        (d / "c1").mkdir()
        (d / "c1" / "x.png").write_bytes(b"junk")
    elif case == "missing_model":
        args[1] = str(tmp_path / "none.onnx")
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    assert err[-1].startswith("error: ") and message in err[-1]


def test_baseline_with_other_classes_is_refused(world, tmp_path):
    other = export_onnx(_model([f"x{i}" for i in range(N_CLASSES)]), tmp_path / "other.onnx").path
    data = image_folder(world, tmp_path / "val", world["pred"])
    with pytest.raises(UsageError, match="orders its classes differently"):
        validate(world["onnx"], data, baseline=other)


def test_model_without_class_names_and_other_class_count_is_refused(world, tmp_path):
    bare = export_onnx(_model(None), tmp_path / "bare.onnx").path
    data = tmp_path / "val"
    for c in ("a", "b", "c"):
        (data / c).mkdir(parents=True)
        shutil.copy(world["files"][0], data / c)
    with pytest.raises(DataError, match="3 classes but bare.onnx has 10 outputs"):
        validate(bare, data)
