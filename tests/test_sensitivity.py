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
    # each output says it is ours, so the next run may write over it (and over nobody else's file)
    from edgeconvnext.artifacts import check_output, written_by_us

    for p in (js, md, png):
        assert written_by_us(p), p
        check_output(p, "--x", report=True)


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


def test_too_few_val_images_names_the_ranking(data, capsys):
    args = ["sensitivity", *common(data), "--val-data", str(data / "val"), "--min-val-size", "100000"]
    assert main(args) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a sensitivity ranking measured on so few is noise" in err[0]
    assert "budget" not in err[0]  # sensitivity has no budget; the message said one


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


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--report", "same.md", "--json-file", "same.md"], "--json-file same.md is the same file as --report"),
        (["--plot", "val/a/0.png"], "--plot val/a/0.png is a file inside --val-data"),
        (["--json-file", "calib/0.png"], "--json-file calib/0.png is a file inside --calib-data"),
        (["--json-file", "val"], "--json-file val is a folder; give a file name such as val/model.json"),
    ],
)
def test_sensitivity_outputs_never_replace_an_input_or_each_other(tmp_path, capsys, monkeypatch, extra, words):
    # refused before the (absent) checkpoint is read, and the images are still there
    monkeypatch.chdir(tmp_path)
    for f in ("val/a/0.png", "calib/0.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"image")
    rc = main(["sensitivity", "-c", "absent.pt", "--calib-data", "calib", "--val-data", "val", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0]
    assert (tmp_path / "val/a/0.png").read_bytes() == (tmp_path / "calib/0.png").read_bytes() == b"image"


@pytest.fixture(scope="module")
def quantized(data, tmp_path_factory):
    """(all-INT8 model, FP32 model, placement, validation set) of the tiny outlier model, ``--no-smooth``."""
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize import QuantizeConfig, quantize
    from edgeconvnext.quantize.valset import load_valset

    loaded = load_model("convnextv2_test", data / "m.safetensors")
    out = tmp_path_factory.mktemp("q") / "all.int8.onnx"
    cfg = QuantizeConfig(calib_size=32, smooth=False, keep_fp32=True)
    res = quantize(loaded, out, calib_data=data / "calib", config=cfg)
    val = load_valset(data / "val", loaded.preprocess, loaded.class_names, loaded.num_classes)
    return onnx.load(str(res.path)), onnx.load(str(res.fp32_path)), res.placement, val


@pytest.mark.parametrize("mode", ["isolate", "revert"])
def test_variants_in_one_session_score_exactly_as_one_session_each(quantized, mode):
    # combine(): the group variants side by side in one graph, one session; the scores (every metric, hence the
    # ranking) must equal those of a session per variant, and the image-passes count each variant
    from edgeconvnext.quantize import sensitivity as sens

    q, fp32, placement, val = quantized
    groups = sens.groups_of(placement)
    assert sens.variants_per_session(fp32, len(groups)) == (len(groups), sens.BATCH)  # 40 px: all in one
    got = {}
    for per in (None, 1, 5):
        # all in one, one each, in chunks (the last one short): the same scores
        ev = sens.Evaluator(fp32.SerializeToString(), val.images, val.labels)
        base = ev.run(q)
        subset = ev.subset(base, 64)
        scores = sens.rank(ev, q, fp32, groups, subset, base, mode=mode, per_session=per)
        got[per] = [s.to_dict() for s in scores]
        assert ev.images_run == 2 * len(ev) + len(groups) * len(subset)
    assert all(g == got[None] for g in got.values())
    assert len(got[None]) == INT8_LAYERS


@pytest.mark.parametrize("mode", ["isolate", "revert"])
def test_combined_variants_hold_their_common_part_once_and_compute_each_variant(quantized, mode):
    # combine(): a node the same as one already added (name, op, attributes, the same input tensors) is reused,
    # so the part before each variant's first change is in the graph once (in revert the all-INT8 prefix with
    # its DequantizeLinears, which onnxruntime's own elimination does not merge); each output is still that
    # variant's logits, bit for bit; one Reverter gives what revert() gives
    import numpy as np

    from edgeconvnext.onnx.session import cpu_session
    from edgeconvnext.quantize import sensitivity as sens

    q, fp32, placement, val = quantized
    groups = sens.groups_of(placement)
    every = [n for g in groups for n in g.nodes]
    sets = [[n for n in every if n not in g.nodes] if mode == "isolate" else g.nodes for g in groups]
    rev = sens.Reverter(q, fp32)
    variants = [rev(s) for s in sets]
    for s, v in zip(sets, variants, strict=True):
        assert v.SerializeToString() == rev(s).SerializeToString()  # planned once, the same graph again
        fresh = sens.revert(q, fp32, s)
        assert [n.SerializeToString() for n in fresh.graph.node] == [n.SerializeToString() for n in v.graph.node]
        assert {t.name: t.SerializeToString() for t in fresh.graph.initializer} == {
            t.name: t.SerializeToString() for t in v.graph.initializer
        }
    combined = sens.combine(variants + [variants[0]])  # the last one twice: its own output name
    assert len(combined.graph.node) < 0.7 * sum(len(v.graph.node) for v in variants)
    assert len({o.name for o in combined.graph.output}) == len(variants) + 1
    x = val.images[:16]
    together = cpu_session(combined, int8=sens.INT8_MATH).run(None, {"input": x})
    for v, z in zip(variants + [variants[0]], together, strict=True):
        alone = cpu_session(v, int8=sens.INT8_MATH).run(None, {"input": x})[0]
        np.testing.assert_array_equal(z, alone)


def test_variants_per_session_bounds_the_activation_memory(quantized):
    from edgeconvnext.quantize import sensitivity as sens

    _, fp32, _, _ = quantized
    largest = sens.largest_activation(fp32)
    assert largest is not None and largest > 0
    per_iv = 16 * largest  # the estimate's bytes per image and variant
    for n in (1, 3, 13, 1000):
        v, b = sens.variants_per_session(fp32, n)
        assert 1 <= v <= n
        assert v == 1 or v * b * per_iv <= sens.VARIANT_MEMORY
    old = sens.VARIANT_MEMORY
    try:  # a budget for 2 variants at the smallest batch: 2 variants, the batch cut to fit
        sens.VARIANT_MEMORY = 2 * sens.MIN_VARIANT_BATCH * per_iv
        assert sens.variants_per_session(fp32, 13) == (2, sens.MIN_VARIANT_BATCH)
        sens.VARIANT_MEMORY = per_iv  # not even one variant at the smallest batch: a session each, full batch
        assert sens.variants_per_session(fp32, 13) == (1, sens.BATCH)
    finally:
        sens.VARIANT_MEMORY = old


@pytest.mark.parametrize(
    "budget, sizes, stops, failed_checks, stopped_check, retry",
    [
        (10.0, 64, True, False, False, False),
        (10.0, 20, False, True, True, False),  # 20 images: one batch, no stop on the subset; a check stops
        # a check fails with nothing lost on the subset: "outside losses stay" then holds every estimate over
        # budget, and the search goes on anchored on all-INT8 from that check, where it is met
        # which subset size makes the first check fail depends on the image decoder's rounding (numpy, Pillow):
        # the first of these sizes whose search retries is the one tested (whether a subset step stops is not
        # asserted there, it depends on the same rounding)
        (0.5, (64, 48, 32), None, True, False, True),
    ],
)
def test_budget_search_early_stops_only_steps_over_budget_and_counts_its_images(
    quantized, budget, sizes, stops, failed_checks, stopped_check, retry
):
    # every step's estimate is anchored on the last model checked on every image (budget.py's doc); a step
    # stopped early must be over budget on the whole subset too (its complete run is redone here), and the
    # images counted must be exactly: FP32 + all-INT8 + the ranking + what each step ran + the re-checks'
    # images outside the subset
    import numpy as np

    from edgeconvnext.quantize import sensitivity as sens
    from edgeconvnext.quantize.budget import Budget, search

    q, fp32, placement, val = quantized
    for f in sizes if isinstance(sizes, tuple) else (sizes,):
        model, placement2, r = search(q, fp32, placement, val, Budget(max_drop=budget, subset_size=f))
        if (r.retry_from is not None) == retry:
            break
    assert r.met and r.steps[-1].checked and r.steps[-1].value <= budget
    assert (r.retry_from is not None) == retry
    n = len(val)
    ev = sens.Evaluator(fp32.SerializeToString(), val.images, val.labels)
    base = ev.run(q)
    subset = ev.subset(base, f)
    outside = np.setdiff1d(np.arange(n), subset)
    by_layer = {g.layer: g for g in sens.groups_of(placement)}
    anchor_sub, anchor_out = ev.lost(base[subset].argmax(1), subset), ev.lost(base[outside].argmax(1), outside)
    base_anchor = (anchor_sub, anchor_out)

    def estimate(sub_lost: int) -> float:
        ratio = max(0, sub_lost) / anchor_sub if anchor_sub > 0 else 1.0
        return 100.0 * (sub_lost + anchor_out * ratio) / n

    images = 2 * n + len(by_layer) * f
    reverted: list[str] = []
    stopped = failed = 0
    first_failed: int | None = None
    for i, s in enumerate(r.steps[1:], 1):
        if i == r.retry_from:  # on from the first failed check, anchored on all-INT8
            assert first_failed is not None
            reverted = reverted[:first_failed]
            anchor_sub, anchor_out = base_anchor
        anchored = r.retry_from is None or i < r.retry_from
        if s.checked:
            images += n - f if s.stopped_at is None else s.stopped_at
            if s.value > budget:  # a failed check: the new anchor
                failed += 1
                first_failed = len(reverted) if first_failed is None else first_failed
                full = ev.run(sens.revert(q, fp32, [x for la in reverted for x in by_layer[la].nodes]))
                assert 100.0 * ev.lost(full.argmax(1)) / n > budget  # fails on every image too
                if anchored:
                    anchor_sub = ev.lost(full[subset].argmax(1), subset)
                    anchor_out = ev.lost(full[outside].argmax(1), outside)
                if s.stopped_at is not None:  # stopped: the anchor is the lower bound of its outside losses
                    assert 0 < s.stopped_at < n - f and s.value <= 100.0 * ev.lost(full.argmax(1)) / n + 1e-9
                    if anchored:
                        anchor_out = round(s.value * n / 100.0) - anchor_sub
            continue
        reverted.append(s.layer)
        logits = ev.run(sens.revert(q, fp32, [x for la in reverted for x in by_layer[la].nodes]), subset)
        est = estimate(ev.lost(logits.argmax(1), subset))
        if s.stopped_at is None:
            assert s.value == pytest.approx(est, abs=1e-9)
            images += f
        else:  # stopped: a lower bound, over budget, and the whole subset says over budget too
            stopped += 1
            assert 0 < s.stopped_at < f and budget < s.value <= est + 1e-9
            images += s.stopped_at
    assert reverted == r.reverted and (stops is None or (stopped > 0) == stops) and (failed > 0) == failed_checks
    assert any(s.checked and s.stopped_at is not None for s in r.steps) == stopped_check
    assert r.cost["image_passes"] == pytest.approx(images / n, abs=0.006)
    assert sum(not p.int8 for p in placement2) == sum(not p.int8 for p in placement) + len(r.reverted)
    assert model is not None


def test_the_printed_search_says_where_each_step_was_measured_as_the_json_does():
    # cli/_budget.print_budget's "measured on" column is Step.where (report.json's measured_on), naming the subset
    import io

    from rich.console import Console

    from edgeconvnext.cli._budget import print_budget
    from edgeconvnext.quantize.budget import BudgetResult, Step
    from edgeconvnext.quantize.sensitivity import Metrics

    steps = [
        Step(None, 1.5, 0.9, 20, checked=True),
        Step("stages.0.blocks.0.mlp.fc1", 0.9, 0.85, 19, checked=False, stopped_at=40),
        Step("stages.1.blocks.0.mlp.fc1", 0.2, 0.8, 18, checked=False),
        Step(None, 0.6, 0.8, 18, checked=True, stopped_at=7),
    ]
    m = Metrics(n=500, top1=80.0, agreement=98.0, kl=0.01, cos_min=0.9, cos_mean=0.99, measured_on=500)
    b = BudgetResult("top1_drop", 0.3, False, [steps[2].layer], steps, m, m, subset=120, groups=24)
    out = io.StringIO()
    print_budget(Console(file=out, width=400), b)
    cells = [line.split("│")[-2].strip() for line in out.getvalue().splitlines() if line.startswith("│")]
    steps_json = b.to_dict()["steps"]
    assert cells == [s["measured_on"] for s in steps_json]
    assert cells == [
        "all images",
        "120 hardest, stopped after 40 (over budget)",
        "120 hardest (estimate)",
        "all images, stopped after 7 outside the subset (over budget)",
    ]
    assert [s["stopped_at"] for s in steps_json] == [None, 40, None, 7]


def test_a_budget_met_by_keeping_most_macs_out_of_int8_is_said():
    # the search may meet a tight budget only by reverting nearly everything: that result is warned about
    # (names the option, the share, and the ways out), a result mostly in INT8 or a missed budget is not
    from edgeconvnext.quantize import budget as bmod
    from edgeconvnext.quantize.sensitivity import Metrics

    m = Metrics(2000, 85.0, 99.7, 0.0, 1.0, 1.0, 2000)

    def result(share: float, metric: str = "disagreement", met: bool = True) -> bmod.BudgetResult:
        steps = [bmod.Step(None, 0.7, 1.0, 41, True), bmod.Step(None, 0.3, share, 1, True)]
        return bmod.BudgetResult(metric, 0.3, met, ["a"] * 40, steps, m, m)

    note = result(0.037).float_note()
    assert note is not None
    assert "--max-disagree 0.3" in note and "40 of 41 INT8 layers" in note and "3.7% of MACs" in note
    assert "--min-int8-share" in note and "--fp16" in note
    assert "--max-drop 0.3" in (result(0.2, "top1_drop").float_note() or "")
    assert result(0.6).float_note() is None and result(0.037, met=False).float_note() is None


def test_the_evaluator_computes_int8_as_the_graph_is_written(quantized):
    # INT8_MATH "emulated": Q/DQ not fused into onnxruntime's integer kernels (which saturate on CPUs without
    # VNNI) but run as written: the logits of a session with every optimisation off, up to float rounding
    import numpy as np

    from edgeconvnext.onnx.session import cpu_session
    from edgeconvnext.quantize import sensitivity as sens

    q, fp32, _, val = quantized
    ev = sens.Evaluator(fp32.SerializeToString(), val.images, val.labels)
    got = ev.run(q)
    exact = np.concatenate(
        [cpu_session(q, int8="exact").run(None, {"input": val.images[i : i + 50]})[0] for i in range(0, len(val), 50)]
    )
    fp = ev.fp32_logits
    assert np.abs(got - fp).max() > 100 * np.abs(got - exact).max()  # INT8, not FP32: the outliers cost it
    assert np.abs(got - exact).max() <= 1e-3 * np.abs(exact).max()
    assert (got.argmax(1) == exact.argmax(1)).all()
    with pytest.raises(ValueError, match="int8 must be one of"):
        cpu_session(q, int8="fast")


def test_a_recipes_budget_section_is_searched_with_val_data_and_said_without(tmp_path, data, capsys, caplog):
    recipe = tmp_path / "team.yaml"
    recipe.write_text("quantize:\n  smooth: false\nbudget:\n  max_drop: 10\n  subset_size: 64\n")
    val = ["--val-data", str(data / "val")]
    out = tmp_path / "b.onnx"
    assert main(["quantize", *common(data), "--recipe", str(recipe), *val, "-o", str(out)]) == 0
    b = json.loads((tmp_path / "b.onnx.json").read_text())["details"]["budget"]
    assert (b["metric"], b["limit"], b["ranking_subset"]) == ("top1_drop", 10, 64) and b["met"] and b["reverted"]
    # an option wins over the recipe's key, the recipe's other keys stand
    loose = tmp_path / "loose.onnx"
    assert main(["quantize", *common(data), "--recipe", str(recipe), *val, "--max-drop", "100", "-o", str(loose)]) == 0
    b = json.loads((tmp_path / "loose.onnx.json").read_text())["details"]["budget"]
    assert (b["limit"], len(b["steps"]), b["reverted"]) == (100, 1, [])
    # without --val-data the recipe's budget cannot be measured: said in one line, the PTQ model written
    plain = tmp_path / "plain.onnx"
    caplog.clear()
    assert main(["quantize", *common(data), "--recipe", str(recipe), "-o", str(plain)]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "edgeconvnext.budget"]
    assert said == [
        "recipe team: budget (max_drop 10, subset_size 64) is measured on validation images: not applied without "
        "--val-data DIR"
    ]
    assert json.loads((tmp_path / "plain.onnx.json").read_text())["details"].get("budget") is None


@pytest.mark.parametrize(
    "section, words",
    [
        ("budget:\n  max_dorp: 1\n", "unknown key 'max_dorp'; did you mean 'max_drop'?"),
        ("budget:\n  max_drop: -1\n", "'budget.max_drop': -1.0 is below the minimum 0"),
        ("budget:\n  max_disagree: 101\n", "'budget.max_disagree': 101.0 is above the maximum 100"),
        ("budget:\n  subset_size: 0\n", "'budget.subset_size': 0 is below the minimum 1"),
        ("budget:\n  subset_size: 64\n", "--val-data is for an accuracy budget: add --max-drop"),
    ],
)
def test_a_bad_recipe_budget_is_one_line(tmp_path, data, capsys, section, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(section)
    out = tmp_path / "o" / "x.onnx"
    args = ["quantize", *common(data), "--recipe", str(recipe), "--val-data", str(data / "val"), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not out.parent.exists()


def test_resolve_budget_precedence_and_refusals():
    from edgeconvnext.errors import UsageError
    from edgeconvnext.quantize.config import resolve_budget
    from edgeconvnext.recipes import validate_recipe

    rec = validate_recipe({"budget": {"max_drop": 0.5, "min_int8_share": 50}}, "team.yaml")
    none = {"max_drop": None, "subset_size": None}
    req = resolve_budget(rec, {**none, "subset_size": 20}, val_data=True, method="ptq")
    assert req.config is not None and req.note is None
    assert (req.config.max_drop, req.config.subset_size, req.config.min_int8_share) == (0.5, 20, 50)
    assert (req.sources["max_drop"], req.sources["subset_size"], req.sources["min_val_size"]) == (
        "recipe",
        "cli",
        "default",
    )
    assert req.config.to_budget().min_int8_share == 0.5  # % of MACs -> the search's fraction
    # a limit among the options is the budget asked for: it replaces the recipe's, it is not added to it
    req = resolve_budget(rec, {**none, "max_disagree": 1.0}, val_data=True, method="ptq")
    assert req.config is not None and (req.config.max_drop, req.config.max_disagree) == (None, 1.0)
    assert (req.sources["max_drop"], req.sources["max_disagree"], req.sources["min_int8_share"]) == (
        "cli",
        "cli",
        "recipe",
    )
    assert req.config.to_budget().criterion(labelled=True) == ("disagreement", 1.0, None)
    # both limits (here in the recipe): the drop where the data has labels, said; disagreement where it has none
    both = validate_recipe({"budget": {"max_drop": 0.5, "max_disagree": 2.0}}, "team.yaml")
    b = resolve_budget(both, none, val_data=True, method="ptq").config.to_budget()
    metric, limit, note = b.criterion(labelled=True)
    assert (metric, limit) == ("top1_drop", 0.5)
    assert note == (
        "--val-data has labels: the budget is on the top-1 drop <= 0.5 point(s) (--max-drop); --max-disagree 2 "
        "applies to validation data without labels"
    )
    assert b.criterion(labelled=False)[:2] == ("disagreement", 2.0)
    # QAT: the recipe's budget is said not to apply; an option for it is refused by name
    qat = resolve_budget(rec, none, val_data=True, method="qat")
    assert qat.config is None and "is for --method ptq: not applied to QAT" in (qat.note or "")
    with pytest.raises(UsageError, match="--method qat and --max-drop cannot be combined"):
        resolve_budget(rec, {"max_drop": 1.0}, val_data=True, method="qat")
    with pytest.raises(UsageError, match="--subset-size needs --val-data DIR"):
        resolve_budget(None, {"subset_size": 5}, val_data=False, method="ptq")
    with pytest.raises(UsageError, match="--subset-size: only with an accuracy budget"):
        resolve_budget(None, {"subset_size": 5}, val_data=True, method="ptq")
    # no budget anywhere: none, and --val-data alone is fine where it has another use (run's validation rows)
    assert resolve_budget(None, none, val_data=True, method="ptq").config is None
    # a recipe budget without a limit is said, not dropped in silence (quantize refuses it: test above)
    limitless = validate_recipe({"budget": {"subset_size": 200}}, "team.yaml")
    req = resolve_budget(limitless, none, val_data=True, method="ptq")
    assert (
        req.config is None
        and req.note == "recipe team: budget (subset_size 200) sets no max_drop or max_disagree: no budget search"
    )
