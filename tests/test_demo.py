"""The embedded default (README's first command) runs end to end on the bundled Fashion-MNIST demo."""

import json

import onnx

from edgeconvnext.cli import main
from edgeconvnext.demo import assets
from edgeconvnext.onnx.trt_rules import check_file


def test_demo_assets_are_packaged():
    a = assets()
    assert a.checkpoint.stat().st_size > 1_000_000
    assert len(list(a.calib.glob("*.png"))) >= 512
    assert sorted(p.name for p in a.val.iterdir() if p.is_dir()) == [
        "ankle_boot",
        "bag",
        "coat",
        "dress",
        "pullover",
        "sandal",
        "shirt",
        "sneaker",
        "t-shirt_top",
        "trouser",
    ]


def test_demo_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out)]) == 0
    int8 = out / "convnextv2_atto_fmnist.int8.onnx"
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 500 and report["skipped"] == 0
    # the shipped model is a real classifier: far above the 10% of chance, and INT8 keeps it
    assert report["baseline_top1"] > 80.0
    assert report["drop"] <= 1.0 and report["top1_agreement"] >= 97.0
    assert not check_file(int8).violations
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta["edgeconvnext.precision"] == "int8"
    assert "drop" in capsys.readouterr().out
