"""``edgeconvnext run``'s other INT8 methods on the tiny outlier model of test_outliers.py: the accuracy-budget
search (``--max-drop``) and quantization-aware training (``--method qat``). The PTQ default is tested end to end on
the bundled demo in test_run.py.

``--no-smooth`` keeps the model's 200x outlier channels, so all-INT8 loses far more than the budget and the
search has work to do; labels are the FP32 model's predictions. One budget run is shared (module fixture: 13
layer groups, 128 validation images); the report's search table and figure, the skip key, the exit 7 of a
budget that cannot be met and the QAT stage (from a copy of it: the export is reused) are checked against it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from test_outliers import make_outlier_data
from test_quantize import int8_layers
from test_run import html_start_tags

from edgeconvnext.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

BUDGET = 10.0
INT8_LAYERS = 13  # convnextv2_test: 5 blocks x (fc1, fc2) + 3 downsample convs
SEARCH = ("--max-drop", str(BUDGET), "--subset-size", "64")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "-c",
        str(data / "m.safetensors"),
        "--calib-data",
        str(data / "calib"),
        "--calib-size",
        "32",
        "--val-data",
        str(data / "val"),
        "--no-smooth",
        "--latency-batch",
        "1",
        "--warmup",
        "0",
        "--iters",
        "2",
        "-o",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_outlier_data(tmp_path_factory.mktemp("budget"))


@pytest.fixture(scope="module")
def budget_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "budget"
    assert main(_args(data, out, *SEARCH)) == 0
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_budget_search_is_the_int8_stage(budget_run, capsys):
    rep = _report(budget_run)
    s = rep["budget_search"]
    assert s["metric"] == "top1_drop" and s["limit"] == BUDGET and s["met"] and s["val_images"] == 128
    assert s["all_int8_value"] > BUDGET >= s["value"]  # all-INT8 misses the budget, the search meets it
    reverted = [r["layer"] for r in s["reverted"]]
    assert reverted and [r["rank"] for r in s["reverted"]] == list(range(1, len(reverted) + 1))
    # the graph has exactly the placement the table names, and the rules stage saw the same INT8 share
    stem = "m"
    layers = int8_layers(onnx.load(str(budget_run / "onnx" / f"{stem}.int8.onnx")))
    assert not any(layers[name] for name in reverted) and sum(layers.values()) == INT8_LAYERS - len(reverted)
    assert s["int8_layers"] == INT8_LAYERS - len(reverted)
    pm = rep["precision_map"]
    assert pm["int8_macs_share"] == pytest.approx(s["int8_macs_share"], abs=1e-6)
    assert s["reverted"][-1]["int8_macs_share_after"] == pytest.approx(s["int8_macs_share"], abs=1e-4)
    share_lost = sum(r["macs_share"] for r in s["reverted"])
    assert s["all_int8_macs_share"] - share_lost == pytest.approx(s["int8_macs_share"], abs=1e-4)
    # validate's own INT8 row on the same 128 images agrees with the search's re-check (within one image)
    int8 = next(r for r in rep["rows"] if r["artifact"] == f"{stem}.int8.onnx")
    assert int8["drop"] == pytest.approx(s["value"], abs=100 / 128 + 1e-6) and int8["drop"] <= BUDGET + 100 / 128
    # the sensitivity bars: every group, most harmful first, the reverted ones marked
    sens = rep["sensitivity"]
    assert len(sens["groups"]) == INT8_LAYERS and sens["harm"] == "top1_drop" and sens["subset"] == 64
    assert (
        [g["group"] for g in sens["groups"] if g["reverted"]]
        == reverted
        == [g["group"] for g in sens["groups"][: len(reverted)]]
    )
    assert sorted(rep["figures"]) == ["accuracy_latency", "per_class", "precision_map", "sensitivity"]
    png = (budget_run / "plots" / "sensitivity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    cfg = json.loads((budget_run / "config.json").read_text())
    assert cfg["budget"]["max_drop"] == BUDGET and cfg["budget"]["subset_size"] == 64


def test_bundle_recipe_rebuilds_the_searched_graph(budget_run):
    """The bundle's recipe.yaml loads as a recipe, and its quantize.exclude holds the layers the search kept in
    higher precision (recipes have no budget section: the recipe reproduces the result, its header the search)."""
    from edgeconvnext.recipes import load_recipe

    path = budget_run / "bundle" / "recipe.yaml"
    text = path.read_text()
    s = _report(budget_run)["budget_search"]
    reverted = [r["layer"] for r in s["reverted"]]
    assert f"# accuracy budget --max-drop {BUDGET:g}: the search kept {len(reverted)} layer(s)" in text
    rec = load_recipe(path)
    exclude = rec.sections["quantize"]["exclude"]
    assert reverted and set(reverted) <= set(exclude)
    assert "qat" not in rec.sections


def test_budget_table_in_markdown_and_html(budget_run):
    rep = _report(budget_run)
    n = len(rep["budget_search"]["reverted"])
    md = (budget_run / "report.md").read_text()
    assert f"## Accuracy-budget search (--max-drop {BUDGET:g})" in md
    assert "| rank | layer group kept in higher precision | its MACs | INT8 MACs after |" in md
    first = rep["budget_search"]["reverted"][0]
    assert f"| 1 | {first['layer']} | {100 * first['macs_share']:.1f}% |" in md
    assert "![Sensitivity of layer groups (accuracy-budget search)](plots/sensitivity.png)" in md

    tags = html_start_tags((budget_run / "report.html").read_text())
    tables = [a.get("class") for t, a in tags if t == "table"]
    assert tables == ["results", "budget"] and [t for t, _ in tags].count("tr") == 1 + 5 + 1 + n
    assert [a["id"] for t, a in tags if t == "figure"][-1] == "sensitivity"


def test_budget_settings_key_the_stage_and_a_missed_budget_exits_7(budget_run, data, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(budget_run, out)
    capsys.readouterr()
    assert main(_args(data, out, *SEARCH)) == 0
    assert "quantize: skipped, up to date" in capsys.readouterr().out
    int8 = out / "onnx" / "m.int8.onnx"
    before = int8.read_bytes()
    # another budget is another stage key: the search runs, cannot go below 90% of MACs in INT8 -> exit 7
    assert main(_args(data, out, "--max-drop", "0", "--min-int8-share", "90", "--subset-size", "32")) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the accuracy budget cannot be met")
    assert "--min-int8-share 90%" in err[0] and "nothing was written" in err[0]
    # nothing half-written: the INT8 ONNX of the run before is untouched, no temporaries, no record that could
    # make a later run skip the failed stage
    assert int8.read_bytes() == before and not (out / ".stages" / "quantize.json").exists()
    assert not [p for p in out.rglob("*") if ".partial" in p.name or p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "qat", "--train-data", "DATA", "--max-drop", "1"], "--method qat and --max-drop cannot be"),
        (["--max-disagree", "1", "--method", "qat", "--train-data", "DATA"], "--method qat and --max-disagree"),
        (["--subset-size", "10"], "--subset-size: only with an accuracy budget; add --max-drop"),
        (["--max-drop", "-1"], "--max-drop must be a finite number"),
        (["--max-drop", "1", "--min-val-size", "0"], "--min-val-size must be at least 1"),
        (["--max-drop", "1", "--min-val-size", "500"], "has 128 usable images, fewer than 500"),
    ],
)
def test_budget_refusals_are_one_line(data, tmp_path, capsys, extra, message):
    extra = [str(data / "calib") if a == "DATA" else a for a in extra]
    code = main(_args(data, tmp_path / "r", *extra))
    err = capsys.readouterr().err
    assert code in (2, 4) and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r").glob("onnx/*.int8.onnx"))


def test_max_drop_needs_val_data(data, tmp_path, capsys):
    args = _args(data, tmp_path / "r", "--max-drop", "1")
    i = args.index("--val-data")
    del args[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--max-drop needs --val-data DIR" in err and len(err.strip().splitlines()) == 1


def test_run_with_qat_replaces_the_int8_stage(budget_run, data, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(budget_run, out)
    capsys.readouterr()
    recipe = tmp_path / "qat.yaml"  # the recipe's qat: section is honoured, the options win over it
    recipe.write_text("qat:\n  temperature: 3.0\n  steps: 7\n  lr: 2.0e-5\n")
    args = _args(data, out, "--method", "qat", "--train-data", str(data / "calib"), "--epochs", "1", "--steps", "2")
    args += ["--recipe", str(recipe)]
    args.remove("--no-smooth")  # QAT starts from the smoothed PTQ (its start check fails on 200x outliers unsmoothed)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "export: skipped" in text and "quantize: m.int8.onnx: QAT" in text
    assert (out / "onnx" / "m.int8.qat.pt").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["qat"]["temperature"] == 3.0 and cfg["qat"]["lr"] == 2e-5 and cfg["qat"]["steps"] == 2
    assert cfg["sources"]["qat"]["temperature"] == "recipe" and cfg["sources"]["qat"]["steps"] == "cli"
    from edgeconvnext.recipes import load_recipe

    bundled = load_recipe(out / "bundle" / "recipe.yaml")  # the bundle carries what trained, loadable again
    assert bundled.sections["qat"]["temperature"] == 3.0 and bundled.sections["qat"]["steps"] == 2
    assert bundled.sections["quantize"]["method"] == "qat" and "train_data" not in bundled.sections["qat"]
    rep = _report(out)
    assert rep["config"]["quantize"]["method"] == "qat" and rep["budget_search"] is None and rep["sensitivity"] is None
    assert "sensitivity" not in rep["figures"] and "Accuracy-budget search" not in (out / "report.md").read_text()
    row = next(r for r in rep["rows"] if r["artifact"] == "m.int8.onnx")
    assert row["images"] == 128 and row["top1"] is not None and row["drop"] is not None


# ---------------------------------------------------------------------------------------------------
# a real full disk: the run's folder on a tmpfs too small for it (in a private mount namespace, so nothing
# outside the test sees it), then the tmpfs grown ("space freed") and the same command run again

_FULL_DISK = r"""
import json, shutil, subprocess, sys
from pathlib import Path
from edgeconvnext.cli import main
mnt, keep, size_k, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(mnt)], check=True)
print("RC1", main(args), flush=True)
shutil.copytree(mnt / "run", keep / "failed", symlinks=True)
subprocess.run(["mount", "-o", "remount,size=65536k", str(mnt)], check=True)
print("RC2", main(args), flush=True)
shutil.copytree(mnt / "run", keep / "resumed", symlinks=True)
"""


def _private_tmpfs_works(tmp_path: Path) -> str | None:
    """None when this process may mount a tmpfs in a private mount namespace, else why not."""
    import os
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to mount a small tmpfs in a private mount namespace"
    d = tmp_path / "probe"
    d.mkdir()
    done = subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}"


def test_full_disk_mid_run_leaves_nothing_half_written_and_the_run_resumes(data, tmp_path):
    import subprocess
    import sys

    from edgeconvnext.pipeline.state import Ledger

    why = _private_tmpfs_works(tmp_path)
    if why:
        pytest.skip(why)
    mnt, keep = tmp_path / "mnt", tmp_path / "keep"
    mnt.mkdir()
    keep.mkdir()
    args = _args(data, mnt / "run")
    i = args.index("--latency-batch")
    args[i : i + 6] = ["--no-latency"]  # accuracy rows only: the disk, not the timing, is under test
    # room for the FP32 export (~330 kB) and its sidecar, not for quantize's temporaries beside its output too
    size_k = 640
    script = [sys.executable, "-c", _FULL_DISK, str(mnt), str(keep), str(size_k), json.dumps(args)]
    done = subprocess.run(["unshare", "-m", *script], capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert "RC1 2" in out and "RC2 0" in out, (out[-2000:], done.stderr[-3000:])
    err = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "free space" in err[0]
    assert "m.int8" in err[0]  # the disk filled up in the quantize stage, writing beside m.int8.onnx
    failed = keep / "failed"
    # nothing half-written: the export and its record, no temporaries of quantize, no INT8 file, no report
    files = sorted(str(p.relative_to(failed)) for p in failed.rglob("*") if p.is_file())
    assert files == [".stages/export.json", "config.json", "onnx/m.fp32.onnx", "onnx/m.fp32.onnx.json"]
    rec = json.loads((failed / ".stages" / "export.json").read_text())
    assert Ledger(failed).match("export", rec["key"]) is not None  # its outputs are complete (hashes match)
    # resumed after the space was freed: the stages done before are skipped, the run completes
    resumed = keep / "resumed"
    assert "export: skipped, up to date" in out and (resumed / "report.json").is_file()
    assert len(_report(resumed)["rows"]) == 5


def test_budget_images_take_the_labels_file_of_a_flat_folder(data, tmp_path):
    # run --labels FILE names the labels of a flat --val-data folder; the budget's images read the same file
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize.valset import load_valset

    labels = tmp_path / "val_labels.txt"
    labels.write_text("".join(f"{p.name} {p.parent.name}\n" for p in sorted((data / "val").rglob("*.png"))))
    loaded = load_model(None, data / "m.safetensors")
    flat = load_valset(data / "plain", loaded.preprocess, loaded.class_names, loaded.num_classes, labels_file=labels)
    tree = load_valset(data / "val", loaded.preprocess, loaded.class_names, loaded.num_classes)
    assert flat.labelled and len(flat) == len(tree) == 128
    by_name = dict(zip([p.name for p in tree.paths], tree.labels.tolist(), strict=True))
    assert [by_name[p.name] for p in flat.paths] == flat.labels.tolist()
    assert not load_valset(data / "plain", loaded.preprocess, loaded.class_names, loaded.num_classes).labelled


def test_run_takes_the_budget_from_the_recipe_under_its_options(tmp_path):
    from edgeconvnext.pipeline.run import RunOptions, resolve_options

    recipe = tmp_path / "team.yaml"
    recipe.write_text("budget:\n  max_drop: 0.5\n  subset_size: 40\n")
    base = {"output": tmp_path / "r", "recipe": str(recipe), "model": "convnextv2_atto"}
    r = resolve_options(RunOptions(**base, val_data=tmp_path, budget={"max_drop": None, "min_val_size": 30}))
    assert r.budget is not None and (r.budget.max_drop, r.budget.subset_size, r.min_val_size) == (0.5, 40, 30)
    assert r.to_dict()["budget"]["max_drop"] == 0.5  # in config.json and in the quantize stage's record
    src = r.to_dict()["sources"]["budget"]  # config.json says where each budget value came from
    assert (src["max_drop"], src["subset_size"], src["min_val_size"], src["max_disagree"]) == (
        "recipe",
        "recipe",
        "cli",
        "default",
    )
    # without --val-data: no search (the recipe's budget is said not to apply), validation-free run as before
    assert resolve_options(RunOptions(**base)).budget is None


def test_an_edited_labels_file_validates_again(budget_run, data, tmp_path, capsys):
    # the validate stage keys --labels by its contents: a corrected labels file is not answered by the old rows
    out = tmp_path / "copy"
    shutil.copytree(budget_run, out)
    labels = tmp_path / "val_labels.txt"
    names = sorted((data / "val").rglob("*.png"))
    labels.write_text("".join(f"{p.name} {p.parent.name}\n" for p in names))
    args = [a if a != str(data / "val") else str(data / "plain") for a in _args(data, out, *SEARCH)]
    args += ["--labels", str(labels)]
    assert main(args) == 0
    first = _report(out)
    capsys.readouterr()
    assert main(args) == 0
    assert "validate.int8.onnxruntime: skipped, up to date" in capsys.readouterr().out
    wrong = {"c0": "c1", "c1": "c0"}  # swap two classes' labels: every top-1 of theirs changes
    labels.write_text("".join(f"{p.name} {wrong.get(p.parent.name, p.parent.name)}\n" for p in names))
    assert main(args) == 0
    assert "validate.int8.onnxruntime: skipped" not in capsys.readouterr().out
    before = {(r["artifact"], r["backend"], r["batch"]): r["top1"] for r in first["rows"]}
    after = {(r["artifact"], r["backend"], r["batch"]): r["top1"] for r in _report(out)["rows"]}
    assert before.keys() == after.keys() and all(after[k] < before[k] for k in before if before[k] is not None)


def test_a_stage_record_does_not_match_after_a_library_upgrade(tmp_path, monkeypatch):
    # the run's ledger keys on the library versions the standalone commands' sidecars compare: a run after an
    # onnxruntime (or edgeconvnext) upgrade redoes its stages as `quantize` alone would, instead of skipping them
    from edgeconvnext.artifacts import library_versions
    from edgeconvnext.pipeline import state

    out = tmp_path / "o.onnx"
    out.write_bytes(b"onnx")
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    ledger = state.Ledger(tmp_path)
    key = state.stage_key("quantize", {"calib_size": 64}, {"checkpoint": ckpt})
    ledger.record("quantize", key, [out], {"int8_layers": 3})
    assert state.stage_key("quantize", {"calib_size": 64}, {"checkpoint": ckpt}) == key
    assert ledger.match("quantize", key).result == {"int8_layers": 3}
    installed = library_versions()
    assert state._libraries() == installed and "onnxruntime" in installed
    monkeypatch.setattr(state, "_libraries", lambda: {**installed, "onnxruntime": "0.0.1"})
    upgraded = state.stage_key("quantize", {"calib_size": 64}, {"checkpoint": ckpt})
    assert upgraded != key and ledger.match("quantize", upgraded) is None
