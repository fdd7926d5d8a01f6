"""Sensitivity ranking and the accuracy-budget search on a tiny outlier model (see test_outliers.py).

``--no-smooth`` keeps the 200x outlier channels in the INT8 model, so the all-INT8 drop is large and the
search has work to do; labels are the FP32 model's predictions (FP32 top-1 100%).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import onnx
import pytest
from test_outliers import make_outlier_data
from test_quantize import int8_layers

from edgeconvnext.cli import main
from edgeconvnext.onnx.trt_rules import check_file

pytest.importorskip("onnxruntime")

INT8_LAYERS = 13  # convnextv2_test: 5 blocks x (fc1, fc2) + 3 downsample convs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_outlier_data(tmp_path_factory.mktemp("sens"))


def common(data: Path) -> list[str]:
    return ["-c", str(data / "m.safetensors"), "--calib-data", str(data / "calib"), "--calib-size", "32"]


def test_sensitivity_ranks_every_group_sorted_by_harm(tmp_path, data, capsys):
    js, md, png = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "s.png"
    args = ["sensitivity", *common(data), "--val-data", str(data / "val"), "--no-smooth", "--subset-size", "64"]
    assert main([*args, "--json-file", str(js), "--report", str(md), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "most harmful first" in out and "FP32-forward-passes" in out
    r = json.loads(js.read_text())
    groups = r["groups"]
    assert len(groups) == INT8_LAYERS and r["ranking_subset"] == 64 and r["val_images"] == 128
    assert {g["layer"] for g in groups} == {f"stages.{i}.downsample.1" for i in (1, 2, 3)} | {
        f"stages.{s}.blocks.{b}.mlp.{fc}" for s, b in ((0, 0), (1, 0), (2, 0), (2, 1), (3, 0)) for fc in ("fc1", "fc2")
    }
    keys = [(-round(g["harm"], 6), -g["kl_harm"]) for g in groups]
    assert keys == sorted(keys)  # most harmful (most points lost alone in INT8, then KL) first
    # the outlier-fed downsample convs are the most harmful; fc2 (reads GELU/GRN, no outliers) the least
    assert {g["layer"] for g in groups[:3]} == {f"stages.{i}.downsample.1" for i in (1, 2, 3)}
    assert all(g["layer"].endswith("fc2") for g in groups[-5:]) and groups[0]["harm"] > 30
    assert r["fp32"]["top1"] == 100.0 and r["int8"]["top1"] < 80  # the outliers hurt without smoothing
    assert sum(g["macs_share"] for g in groups) == pytest.approx(r["int8_macs_share"], 1e-3)
    # cost: FP32 once, all-INT8 once, every group on the subset: exactly groups x fraction + 2 image-passes
    assert r["cost"]["image_passes"] == pytest.approx(INT8_LAYERS * 64 / 128 + 2, abs=0.01)
    assert r["cost"]["image_passes"] <= r["cost"]["bound_fp32_passes"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png.read_bytes()[16:24])[1] > 200
    assert md.read_text().count("\n| ") == INT8_LAYERS + 1


def test_budget_search_stops_at_the_budget_and_passes_trt(tmp_path, data, capsys):
    out = tmp_path / "b.onnx"
    budget = 10.0
    args = ["quantize", *common(data), "--no-smooth", "--val-data", str(data / "val"), "--max-drop", str(budget)]
    assert main([*args, "-o", str(out), "--subset-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy budget" in printed and "reuse: --exclude" in printed
    side = json.loads((tmp_path / "b.onnx.json").read_text())
    b = side["details"]["budget"]
    assert b["met"] and b["metric"] == "top1_drop" and b["value"] <= budget
    steps = b["steps"]
    assert steps[0]["layer"] is None and steps[0]["value"] > budget  # all-INT8 misses it
    assert steps[-1]["measured_on"] == "all images" and steps[-1]["value"] <= budget  # the re-check
    estimates = [s for s in steps if s["layer"] is not None]
    assert len(estimates) == len(b["reverted"]) >= 1
    # an estimate within budget is re-checked on every image at once; the search stops at the first check that
    # passes, and goes on (one more layer) after an estimate over budget or a check that fails
    for s, nxt in zip(steps[1:], steps[2:], strict=False):
        within = s["value"] <= budget
        if s["layer"] is not None:
            assert (nxt["layer"] is None) == within
        else:
            assert not within and nxt["layer"] is not None
    # ... and the reverted layers are the top of the ranking, in order
    assert b["reverted"] == [g["layer"] for g in b["ranking"][: len(b["reverted"])]]
    # the graph has exactly the planned placement, INT8 share falls by what was reverted, TensorRT accepts it
    layers = int8_layers(onnx.load(str(out)))
    assert not any(layers[name] for name in b["reverted"])
    assert sum(layers.values()) == INT8_LAYERS - len(b["reverted"])
    assert side["details"]["placement"]["int8_macs_share"] == pytest.approx(steps[-1]["int8_macs_share"], abs=1e-4)
    assert check_file(out).ok and main(["-q", "inspect", str(out), "--trt"]) == 0
    detail = {r["layer"]: r for r in side["details"]["placement"]["layers_detail"]}
    assert all(detail[name]["reason"].startswith("--max-drop: kept in higher precision") for name in b["reverted"])
    # the --exclude list reproduces the placement without a search
    again = tmp_path / "again.onnx"
    excl = [a for name in b["exclude"] for a in ("--exclude", name)]
    assert main(["-q", "quantize", *common(data), "--no-smooth", "-o", str(again), *excl]) == 0
    assert int8_layers(onnx.load(str(again))) == layers


def test_budget_that_cannot_be_met_exits_7_and_writes_nothing(tmp_path, data, capsys):
    out = tmp_path / "sub" / "x.onnx"
    args = ["quantize", *common(data), "--no-smooth", "--val-data", str(data / "val"), "--max-drop", "0"]
    assert main([*args, "--min-int8-share", "90", "--subset-size", "32", "-o", str(out)]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the accuracy budget cannot be met")
    assert "--min-int8-share 90%" in err[0] and "nothing was written" in err[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_unlabelled_val_data_budgets_agreement_and_warns_on_calibration_images(tmp_path, data, capsys):
    # the calibration folder, a plain folder without labels, as --val-data: the budget is on disagreement with
    # FP32 instead of --max-drop (said), and a warning that a budget measured on calibration images is optimistic
    out = tmp_path / "u.onnx"
    args = ["quantize", *common(data), "--val-data", str(data / "calib"), "--max-drop", "0.3", "--min-val-size", "10"]
    assert main([*args, "--max-disagree", "100", "-o", str(out)]) == 0
    side = json.loads((tmp_path / "u.onnx.json").read_text())
    b = side["details"]["budget"]
    assert b["metric"] == "disagreement" and b["limit"] == 100 and "--max-disagree" in b["note"]
    assert b["met"] and len(b["steps"]) == 1  # met by all-INT8: no ranking needed
    assert "no labels" in capsys.readouterr().out
    assert any("calibration folder" in n and "optimistic" in n for n in side["details"]["notes"])


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--max-drop", "-1"], 2, "--max-drop must be a finite number"),
        (["--max-drop", "nan"], 2, "--max-drop must be a finite number"),
        (["--max-disagree", "101"], 2, "percentage"),
        (["--max-drop", "0.3", "--subset-size", "0"], 2, "--subset-size"),
        (["--max-drop", "0.3", "--min-val-size", "0"], 2, "--min-val-size"),
        (["--max-drop", "0.3", "VAL=NONE"], 2, "--max-drop needs --val-data"),
        (["VAL"], 2, "add --max-drop"),
        (["--max-drop", "0.3", "VAL=few"], 4, "has 20 usable images"),
        (["--max-drop", "0.3", "VAL=wrong"], 4, "not among the model's"),
    ],
)
def test_budget_bad_input(tmp_path, data, capsys, extra, code, words):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((data / "plain").iterdir())[:20]:
        (few / p.name).write_bytes(p.read_bytes())
    wrong = tmp_path / "wrong"
    for i, p in enumerate(sorted((data / "plain").iterdir())[:120]):
        (wrong / f"k{i % 3}").mkdir(parents=True, exist_ok=True)
        (wrong / f"k{i % 3}" / p.name).write_bytes(p.read_bytes())
    val = {"VAL": data / "val", "VAL=NONE": None, "VAL=few": few, "VAL=wrong": wrong}
    args = [a for a in extra if not a.startswith("VAL")]
    chosen = next((val[a] for a in extra if a.startswith("VAL")), data / "val")
    if chosen is not None:
        args += ["--val-data", str(chosen)]
    out = tmp_path / "o" / "x.onnx"
    assert main(["quantize", *common(data), "-o", str(out), *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_plot_without_matplotlib_names_the_extra(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "s.png"
    args = ["sensitivity", *common(data), "--val-data", str(data / "val"), "--plot", str(png)]
    assert main(args) == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'edgeconvnext[plot]'" in err[0] and "--plot" in err[0]
    assert not png.exists()


def test_missing_val_data_is_refused_before_the_model_loads(tmp_path, capsys):
    # the checkpoint does not exist either: the --val-data line (exit 4) shows the folder is checked first
    rc = main(
        [
            "sensitivity",
            "-c",
            str(tmp_path / "absent.pt"),
            "--calib-data",
            str(tmp_path),
            "--val-data",
            str(tmp_path / "nope"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and err == [f"error: --val-data folder not found: {tmp_path / 'nope'}"]
