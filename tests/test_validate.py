"""validate: exact numbers on datasets labelled from the model's own predictions, baselines, bad inputs;
backends, the latency mode and the Markdown table."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconvnext.cli import main
from edgeconvnext.data.preprocess import preprocess_image
from edgeconvnext.errors import AccuracyError, DataError, UsageError
from edgeconvnext.evaluate.validate import MARKDOWN_COLUMNS, LatencyOptions, markdown_table, validate
from edgeconvnext.export.onnx_export import export_onnx
from edgeconvnext.models.checkpoint import load_model, save_checkpoint
from edgeconvnext.runtime.runners import OnnxRuntimeRunner

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
    twin = export_onnx(loaded, root / "twin.onnx", opset=18).path  # A's numbers in other bytes: a valid baseline
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
    labels[K_SECOND : K_SECOND + K_LAST] = order[K_SECOND : K_SECOND + K_LAST, -1]
    return {
        "root": root,
        "loaded": loaded,
        "onnx": onnx_a,
        "twin": twin,
        "ckpt": ckpt,
        "files": files,
        "pred": order[:, 0],
        "labels": labels,
    }


def image_folder(world, dest: Path, labels: np.ndarray) -> Path:
    for f, y in zip(world["files"], labels, strict=False):
        (dest / NAMES[y]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest / NAMES[y] / f.name)
    return dest


def flat_folder(world, dest: Path, labels: np.ndarray, as_index: bool = False) -> Path:
    dest.mkdir(parents=True)
    lines = []
    for f, y in zip(world["files"], labels, strict=False):
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


def test_an_equal_baseline_has_no_drop_and_the_model_itself_is_refused(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["pred"])
    with pytest.raises(UsageError, match="is the model itself"):  # a drop of 0 by construction (issue 8 item 17)
        validate(world["onnx"], data, baseline=world["onnx"])
    rep = validate(world["onnx"], data, baseline=world["twin"], max_drop=0.0)  # the same weights, other bytes
    assert rep.top1 == 100.0 and rep.baseline_top1 == 100.0
    assert rep.drop == 0.0 and rep.top1_agreement == 100.0 and rep.passed is True
    assert rep.cosine_mean == pytest.approx(1.0, abs=1e-6) and rep.cosine_min == pytest.approx(1.0, abs=1e-6)
    assert rep.model_sha256 != rep.baseline_sha256


def test_checkpoint_baseline_in_torch_agrees(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep = validate(world["onnx"], data, checkpoint=world["ckpt"])
    assert rep.baseline_runner.startswith("torch-cpu-fp32")
    assert rep.baseline_sha256 == hashlib.sha256(world["ckpt"].read_bytes()).hexdigest()
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
    rc = main(
        [
            "validate",
            str(worse_onnx),
            "--data",
            str(data),
            "--baseline",
            str(world["onnx"]),
            "--max-drop",
            "0.5",
            "--report",
            str(report),
        ]
    )
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
    rc = main(
        ["validate", str(world["onnx"]), "--data", str(data), "--baseline", str(world["twin"]), "--report", str(report)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "top-1 %" in out and "agreement" in out
    flat = " ".join(out.split())  # rich wraps at the terminal width
    assert (
        "a.onnx: top-1 87.50%, top-5 95.00% on 40 images (baseline 87.50%, drop 0.00 pts, agreement 100.0%) "
        f"-> {report}"
    ) in flat
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


@pytest.mark.parametrize(
    "case,code,message",
    [
        ("empty", 4, "no images found"),
        ("missing_labels_file", 4, "labels file not found"),
        ("missing_files", 4, "missing from"),
        ("unknown_class", 4, "not among the model's 10 classes"),
        ("both_baselines", 2, "not both"),
        ("max_drop_without_baseline", 2, "--max-drop needs a baseline"),
        ("all_corrupt", 4, "could be read"),
        ("missing_model", 3, "model not found"),
    ],
)
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


# ---- backends and the latency mode -----------------------------------------------------------------

FAST = LatencyOptions(batches=[1, 3], warmup=1, iters=5)


def _check_stats(entry: dict, batch: int, iters: int, warmup: int) -> None:
    assert entry["batch"] == batch and entry["iters"] == iters and entry["warmup"] == warmup
    assert 0 < entry["min_ms"] <= entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"] <= entry["max_ms"]
    assert entry["min_ms"] <= entry["mean_ms"] <= entry["max_ms"]
    assert entry["images_per_s"] == pytest.approx(batch * 1000.0 / entry["mean_ms"])


def test_latency_only_onnx(world):
    rep = validate(world["onnx"], latency=FAST)
    assert rep.top1 is None and rep.images == 0 and rep.data is None and rep.drop is None
    assert rep.backend == "onnxruntime" and rep.device == "cpu" and rep.device_name
    assert [e["batch"] for e in rep.latency] == [1, 3]
    for e, b in zip(rep.latency, (1, 3), strict=False):
        _check_stats(e, b, 5, 1)
        assert e["timer"] == "perf_counter" and e["cuda_graph"] is False
        assert e["memory_kind"] == "process peak RSS" and e["memory_bytes"] > 50 * 2**20
    lines = rep.markdown.splitlines()
    latency_columns = [c for c in MARKDOWN_COLUMNS if c not in ("top-1 %", "drop (pts)")]  # no accuracy: left out
    assert lines[0] == "| " + " | ".join(latency_columns) + " |"
    rows = [ln.split(" | ") for ln in lines[2:4]]
    assert [r[0] for r in rows] == ["| a.onnx"] * 2 and [r[4] for r in rows] == ["1", "3"]
    assert rows[0][1] == "onnxruntime" and rows[0][2] == "cpu" and rows[0][3] == "fp32"
    assert [f"{e['p50_ms']:.3f}" for e in rep.latency] == [r[5] for r in rows]
    assert [f"{e['images_per_s']:.1f}" for e in rep.latency] == [r[8] for r in rows]
    assert rep.device_name in lines[5] and "3 warm-up" not in lines[5] and "1 warm-up + 5 timed" in lines[5]


def test_fixed_batch_onnx_times_its_own_batch(world, tmp_path):
    fixed = export_onnx(world["loaded"], tmp_path / "b4.onnx", batch=4).path
    rep = validate(fixed, latency=LatencyOptions(warmup=0, iters=2))
    assert [e["batch"] for e in rep.latency] == [4]
    with pytest.raises(UsageError, match="fixed batch of 4.*--latency-batch 4"):
        validate(fixed, latency=LatencyOptions(batches=[1], warmup=0, iters=2))


def test_torch_backend_from_checkpoint_matches_its_onnx_export(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep_t = validate(world["ckpt"], data)
    rep_o = validate(world["onnx"], data)
    assert rep_t.backend == "torch" and rep_t.model_runner.startswith("torch-cpu-fp32")
    assert rep_t.top1 == rep_o.top1 == pytest.approx(87.5) and rep_t.top5 == rep_o.top5
    assert rep_t.per_class == rep_o.per_class
    assert rep_t.model_sha256 == hashlib.sha256(world["ckpt"].read_bytes()).hexdigest()
    rep16 = validate(world["ckpt"], data, precision="fp16", arch="convnextv2_test")
    assert rep16.precision == "fp16" and abs(rep16.top1 - 87.5) <= 100 / N_IMAGES  # at most one flip


def test_accuracy_and_latency_in_one_cli_call(world, tmp_path, capsys):
    data = image_folder(world, tmp_path / "val", world["labels"])
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = main(
        [
            "validate",
            str(world["onnx"]),
            "--data",
            str(data),
            "--baseline",
            str(world["twin"]),
            "--latency",
            "--latency-batch",
            "2,1",
            "--warmup",
            "0",
            "--iters",
            "3",
            "--report",
            str(report),
            "--markdown",
            str(md),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads(report.read_text())
    # the keys the benchmarks and the demo read are unchanged
    assert rep["top1"] == pytest.approx(87.5) and rep["baseline_top1"] == pytest.approx(87.5)
    assert rep["drop"] == 0.0 and rep["top1_agreement"] == 100.0 and rep["cosine_min"] > 0.999999
    assert rep["images"] == N_IMAGES and rep["skipped"] == 0
    assert [e["batch"] for e in rep["latency"]] == [2, 1]
    for e, b in zip(rep["latency"], (2, 1), strict=False):
        _check_stats(e, b, 3, 0)
    assert md.read_text() == rep["markdown"]
    rows = [ln for ln in rep["markdown"].splitlines() if ln.startswith("| a.onnx")]
    assert len(rows) == 2 and all("| 87.50 | +0.00 |" in r for r in rows)
    assert "top-1 %" in out and rep["markdown"].splitlines()[0] in out  # accuracy table and Markdown printed
    flat = " ".join(out.split())
    assert "a.onnx: top-1 87.50%" in flat and "ms at batch 2" in flat and f"-> {report}, {md}" in flat


def test_random_weights_torch_latency_from_cli(tmp_path, capsys):
    report = tmp_path / "r.json"
    rc = main(
        [
            "validate",
            "--model",
            "convnextv2_test",
            "--img-size",
            "32",
            "--latency",
            "--latency-batch",
            "2",
            "--warmup",
            "0",
            "--iters",
            "3",
            "--report",
            str(report),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(report.read_text())
    assert rep["model"] == "convnextv2_test (random weights)" and rep["model_sha256"] is None
    assert rep["backend"] == "torch" and rep["precision"] == "fp32" and rep["top1"] is None
    assert [e["batch"] for e in rep["latency"]] == [2] and rep["latency"][0]["iters"] == 3
    assert "| convnextv2_test (random weights) | torch | cpu | fp32 | 2 | " in rep["markdown"]
    assert "top-1" not in rep["markdown"].splitlines()[0]
    assert any("random weights" in n for n in rep["notes"])


def test_markdown_of_several_reports(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["labels"])
    acc = validate(world["onnx"], data, checkpoint=world["ckpt"])
    lat = validate(world["ckpt"], latency=LatencyOptions(batches=[1], warmup=0, iters=2))
    text = markdown_table([acc, lat])
    rows = [ln for ln in text.splitlines() if ln.startswith("| a.")]
    assert rows[0] == "| a.onnx | onnxruntime | cpu | fp32 | - | 87.50 | +0.00 | - | - | - | - | - |"
    assert rows[1].startswith("| a.pt | torch | cpu | fp32 | 1 | - | - | ")
    assert "Drop: baseline top-1 minus top-1 (a.pt)." in text
    only_acc = markdown_table([acc]).splitlines()
    assert only_acc[0] == "| artifact | backend | device | precision | top-1 % | drop (pts) |"
    assert only_acc[2] == "| a.onnx | onnxruntime | cpu | fp32 | 87.50 | +0.00 |"


@pytest.mark.parametrize(
    "case,code,message",
    [
        ("precision_onnxruntime", 2, "--precision applies to --backend torch only"),
        ("compile_onnxruntime", 2, "--compile applies to --backend torch only"),
        ("tensorrt_on_cpu", 2, "--device cpu: TensorRT engines run on the GPU only"),
        ("tensorrt_backend_for_onnx", 2, "expected a .engine file"),
        ("random_weights_accuracy", 2, "random weights, so its accuracy means nothing"),
        ("cuda_graph_on_cpu", 2, "--cuda-graph needs --device cuda"),
        ("timing_without_latency", 2, "--iters sets up the latency mode: add --latency"),
        ("nothing_to_do", 2, "nothing to do"),
        ("baseline_without_data", 2, "--baseline belongs to the accuracy run"),
        ("bad_latency_batch", 2, "--latency-batch '0,2'"),
        ("model_name_for_onnx", 2, "--model names the architecture"),
        ("img_size_for_fixed_onnx", 2, "--img-size 64: a.onnx takes 32 px"),
        ("model_name_mismatch", 3, "is convnextv2_test, not convnext_test"),
        ("int8_math_for_torch", 2, "--int8-math emulated applies to the onnxruntime backend"),
        ("int8_math_unknown", 2, "unknown --int8-math 'fast'; use one of auto, kernels, emulated, exact"),
    ],
)
def test_cli_refusals(world, tmp_path, capsys, case, code, message):
    onnx, ckpt = str(world["onnx"]), str(world["ckpt"])
    d = str(tmp_path)
    args = {
        "precision_onnxruntime": [onnx, "--latency", "--precision", "fp16"],
        "compile_onnxruntime": [onnx, "--latency", "--compile"],
        "tensorrt_on_cpu": [str(tmp_path / "m.engine"), "--latency", "--device", "cpu"],
        "tensorrt_backend_for_onnx": [onnx, "--latency", "--backend", "tensorrt"],
        "random_weights_accuracy": ["--model", "convnextv2_test", "--data", d],
        "cuda_graph_on_cpu": [ckpt, "--latency", "--cuda-graph"],
        "timing_without_latency": [onnx, "--data", d, "--iters", "3"],
        "nothing_to_do": [onnx],
        "baseline_without_data": [onnx, "--latency", "--baseline", onnx],
        "bad_latency_batch": [onnx, "--latency", "--latency-batch", "0,2"],
        "model_name_for_onnx": [onnx, "--latency", "--model", "convnextv2_test"],
        "img_size_for_fixed_onnx": [onnx, "--latency", "--img-size", "64"],
        "model_name_mismatch": [ckpt, "--latency", "--model", "convnext_test"],
        "int8_math_for_torch": [ckpt, "--latency", "--int8-math", "emulated"],
        "int8_math_unknown": [onnx, "--latency", "--int8-math", "fast"],
    }[case]
    rc = main(["validate", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]


def test_cuda_without_cuda_is_exit_8_with_the_fix(world, capsys):
    import onnxruntime as ort

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the missing-CUDA path cannot be exercised")
    rc = main(["validate", str(world["ckpt"]), "--latency", "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 8 and "--device cuda" in err and "install a CUDA build of torch" in err
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        rc = main(["validate", str(world["onnx"]), "--latency", "--device", "cuda"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 8 and "pip install onnxruntime-gpu" in err


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EDGECONVNEXT_SLOW"),
    reason="torch.compile on CPU takes ~30 s on 2 cores: set EDGECONVNEXT_SLOW=1",
)
def test_torch_compile_on_cpu_gives_the_same_top1(world, tmp_path):
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep = validate(world["ckpt"], data, compile=True, latency=LatencyOptions(batches=[2], warmup=1, iters=3))
    assert rep.compile and rep.top1 == pytest.approx(87.5) and "-compile" in rep.model_runner
    assert "| torch (compile) | cpu |" in rep.markdown


# ---- GPU (skipped without CUDA) --------------------------------------------------------------------


def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_latency_with_and_without_cuda_graph(world, precision):
    _need_cuda()
    rep = validate(
        world["ckpt"], device="cuda", precision=precision, latency=LatencyOptions(batches=[1, 4], warmup=3, iters=10)
    )
    assert rep.device == "cuda" and rep.device_name == torch.cuda.get_device_name()
    for e, b in zip(rep.latency, (1, 4), strict=False):
        _check_stats(e, b, 10, 3)
        assert e["timer"] == "cuda_events" and e["cuda_graph"] is True
        assert e["memory_kind"] == "torch.cuda.max_memory_allocated" and e["memory_bytes"] > 0
    assert "CUDA graph" in rep.markdown and "CUDA events" in rep.markdown
    plain = validate(
        world["ckpt"],
        device="cuda",
        precision=precision,
        latency=LatencyOptions(batches=[2], warmup=1, iters=5, cuda_graph=False),
    )
    assert plain.latency[0]["cuda_graph"] is False and plain.latency[0]["timer"] == "cuda_events"


@pytest.mark.gpu
def test_torch_cuda_accuracy_and_compile(world, tmp_path):
    _need_cuda()
    data = image_folder(world, tmp_path / "val", world["labels"])
    rep = validate(world["ckpt"], data, device="cuda", checkpoint=world["ckpt"])
    assert abs(rep.top1 - 87.5) <= 100 / N_IMAGES and rep.top1_agreement >= 95.0  # TF32 may flip one image
    comp = validate(world["ckpt"], device="cuda", compile=True, latency=LatencyOptions(batches=[2], warmup=2, iters=5))
    assert comp.latency[0]["batch"] == 2 and "compile" in comp.markdown


@pytest.mark.gpu
def test_onnxruntime_cuda_latency(world):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with a CUDA GPU")
    rep = validate(world["onnx"], device="cuda", latency=LatencyOptions(batches=[1, 2], warmup=2, iters=5))
    assert [e["cuda_graph"] for e in rep.latency] == [False, False]
    _check_stats(rep.latency[1], 2, 5, 2)


def test_default_latency_batches_fit_the_artifact():
    from types import SimpleNamespace

    from edgeconvnext.evaluate.validate import _default_batches

    notes: list[str] = []
    assert _default_batches(SimpleNamespace(batch=None, name="m.onnx"), "cpu", notes) == [1, 8] and not notes
    assert _default_batches(SimpleNamespace(batch=None, name="m.onnx"), "cuda", notes) == [1, 32]
    assert _default_batches(SimpleNamespace(batch=4, name="b4.onnx"), "cpu", notes) == [4]
    engine = SimpleNamespace(batch=None, name="e.engine", batch_range=(1, 16))  # a TensorRT profile 1..16
    assert _default_batches(engine, "cuda", notes) == [1, 16] and "accepts batch 1..16" in notes[-1]


def test_int8_math_computes_the_qdq_as_asked_and_says_so(world, tmp_path, monkeypatch):
    # --int8-math: onnxruntime's int8 kernels, emulated in float as written (TensorRT's arithmetic), exact (no
    # optimisation), or auto (the default: emulated where the kernels may saturate); the runner's name says
    # which; emulated gives exact's predictions
    from edgeconvnext.onnx import session
    from edgeconvnext.quantize import QuantizeConfig, quantize

    cfg = QuantizeConfig(calib_size=32, min_calib_size=16)
    q = quantize(world["loaded"], tmp_path / "a.int8.onnx", calib_data=world["root"] / "pool", config=cfg).path
    data = image_folder(world, tmp_path / "val", world["labels"])
    monkeypatch.setattr(session, "kernels_may_saturate", lambda: True)  # as on an x86 CPU without VNNI
    reps = {m: validate(q, data, baseline=world["onnx"], int8_math=m) for m in session.INT8_MATHS}
    assert reps["kernels"].model_runner == "onnxruntime-cpu:a.int8.onnx"
    assert reps["emulated"].model_runner == "onnxruntime-cpu int8 emulated:a.int8.onnx"
    assert reps["exact"].model_runner == "onnxruntime-cpu int8 exact:a.int8.onnx"
    assert reps["emulated"].top1 == reps["exact"].top1
    assert reps["emulated"].top1_agreement == reps["exact"].top1_agreement
    assert any("saturate on this CPU" in n and "--int8-math emulated" in n for n in reps["kernels"].notes)
    assert not any("saturate" in n for n in reps["emulated"].notes + reps["exact"].notes)
    # auto (the default) emulates there, and says why; where the kernels do not saturate it runs them, silently
    assert reps["auto"].model_runner == reps["emulated"].model_runner
    assert (reps["auto"].top1, reps["auto"].top1_agreement) == (reps["emulated"].top1, reps["emulated"].top1_agreement)
    assert any("INT8 emulated in float (--int8-math auto)" in n for n in reps["auto"].notes)
    monkeypatch.setattr(session, "kernels_may_saturate", lambda: False)  # a VNNI x86 CPU, or an Arm one
    vnni = validate(q, data, baseline=world["onnx"])
    assert vnni.model_runner == reps["kernels"].model_runner and not any("int8" in n.lower() for n in vnni.notes)
    fp = validate(world["onnx"], data, int8_math="emulated")  # a float model: said to change nothing
    assert fp.top1 == validate(world["onnx"], data).top1
    assert any("is not an INT8 model; nothing to compute differently" in n for n in fp.notes)


@pytest.mark.parametrize(
    "machine,flags,saturates",
    [
        ("x86_64", "fpu sse2 avx avx2 fma", True),  # AVX2 only: VPMADDUBSW's 16-bit sums
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),
        ("aarch64", "fp asimd asimddp", False),  # Arm: 32-bit dot products
        ("x86_64", None, False),  # no flags line: not known to saturate
    ],
)
def test_which_cpus_int8_kernels_may_saturate_on(machine, flags, saturates):
    from edgeconvnext.onnx.session import kernels_may_saturate

    cpuinfo = "processor\t: 0\n" + (f"flags\t\t: {flags}\n" if flags is not None else "")
    assert kernels_may_saturate(cpuinfo, machine) is saturates
