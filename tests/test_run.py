"""``edgeconvnext run`` end to end on the bundled demo (PTQ, CPU): the report's numbers equal separate
``validate`` calls, a second run skips every stage, ``--force`` re-runs, the report's HTML is
self-contained (and renders in headless Chromium where the machine has it), bad input is one line.

One run is shared by the tests (session fixture, ~30 s on 2 cores): 64 calibration images, 100 validation
images, latency at batch 1 with 2 timed iterations. run's other INT8 methods (--max-drop, --method qat) are
tested on a tiny model in test_run_methods.py.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgeconvnext.cli import main
from edgeconvnext.demo import assets

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

FAST = ["--calib-size", "64", "--limit", "100", "--latency-batch", "1", "--warmup", "0", "--iters", "2"]


class _StartTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def html_start_tags(html: str) -> list[tuple[str, dict]]:
    """Every start tag of an HTML document with its attributes, in document order."""
    p = _StartTags()
    p.feed(html)
    return p.tags


def _args(out: Path, *extra: str, val: Path | None = None) -> list[str]:
    a = assets()
    return [
        "run",
        "-c",
        str(a.checkpoint),
        "--calib-data",
        str(a.calib),
        "--val-data",
        str(val or a.val),
        "-o",
        str(out),
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "demo"
    assert main(_args(out, "--bundle-images", "20")) == 0
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _row(rep: dict, artifact_suffix: str, backend: str = "onnxruntime") -> dict:
    name = "convnextv2_atto_fmnist" + artifact_suffix
    rows = [r for r in rep["rows"] if r["artifact"] == name and r["backend"] == backend]
    assert len(rows) == 1, [r["artifact"] for r in rep["rows"]]
    return rows[0]


def test_run_writes_every_artifact_and_a_row_each(demo_run):
    stem = "convnextv2_atto_fmnist"
    for name in ("fp32", "fp16", "int8", "int8.fp16"):
        assert (demo_run / "onnx" / f"{stem}.{name}.onnx").is_file()
    assert (demo_run / "onnx" / f"{stem}.int8.calib.json").is_file()
    rep = _report(demo_run)
    assert rep["model"] == "convnextv2_atto" and rep["img_size"] == 32
    # torch checkpoint + 4 ONNX on onnxruntime, one latency batch each; no TensorRT here
    assert sorted((r["backend"], r["precision"]) for r in rep["rows"]) == [
        ("onnxruntime", "fp16"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("onnxruntime", "int8+fp16"),
        ("torch", "fp32"),
    ]
    for r in rep["rows"]:
        assert r["batch"] == 1 and r["p50_ms"] > 0 and r["images_per_s"] > 0 and r["size_mb"] > 0
        assert r["images"] == 100 and 75.0 < r["top1"] <= 100.0
    int8 = _row(rep, ".int8.onnx")
    assert int8["size_mb"] < _row(rep, ".fp32.onnx")["size_mb"] / 2  # INT8 weights
    assert rep["engines"]["built"] is False and "TensorRT" in rep["engines"]["why"]
    assert any("GPU latency was not measured" in n for n in rep["notes"])
    pm = rep["precision_map"]
    assert pm["layers"] and {r["precision"] for r in pm["layers"]} == {"INT8", "FP32"}
    assert 0.9 < pm["int8_macs_share"] < 1.0  # MLPs + downsample convs: ~93% of atto's MACs
    pc = rep["per_class"]["classes"]
    assert len(pc) == 10 and all(c["change"] == pytest.approx(c["top1"] - c["baseline_top1"]) for c in pc)
    assert sorted(rep["figures"]) == ["accuracy_latency", "per_class", "precision_map"]
    cfg = json.loads((demo_run / "config.json").read_text())
    assert cfg["quantize"]["calib_size"] == 64 and cfg["sources"]["quantize"]["calib_size"] == "cli"


def test_report_numbers_equal_separate_validate_calls(demo_run):
    from edgeconvnext.evaluate.validate import validate

    a = assets()
    rep = _report(demo_run)
    fp32 = demo_run / "onnx" / "convnextv2_atto_fmnist.fp32.onnx"
    for suffix in (".int8.onnx", ".fp16.onnx"):
        v = validate(demo_run / "onnx" / f"convnextv2_atto_fmnist{suffix}", a.val, baseline=fp32, limit=100)
        r = _row(rep, suffix)
        assert (r["top1"], r["drop"], r["agreement"]) == (v.top1, v.drop, v.top1_agreement)
    v = validate(fp32, a.val, limit=100)
    assert _row(rep, ".fp32.onnx")["top1"] == v.top1 and _row(rep, ".fp32.onnx")["drop"] is None
    torch_row = _row(rep, ".safetensors", "torch")
    assert torch_row["drop"] == pytest.approx(0.0, abs=1.01)  # torch vs its own export: at most 1 image of 100


def test_markdown_and_html_report(demo_run):
    md = (demo_run / "report.md").read_text()
    assert "| artifact | backend | device | precision | batch | top-1 % |" in md
    assert md.count("| convnextv2_atto_fmnist") == 5 and "![Accuracy vs latency](plots/accuracy_latency.png)" in md

    html = (demo_run / "report.html").read_text()
    start_tags = html_start_tags(html)
    tags = [t for t, _ in start_tags]
    assert tags.count("table") == 1 and tags.count("tr") == 1 + 5 and tags.count("figure") == 3
    imgs = [a for t, a in start_tags if t == "img"]
    assert len(imgs) == 3 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    # self-contained: no script, no external stylesheet, image or link
    assert "script" not in tags and not [a for t, a in start_tags if t in ("link", "a")]
    import base64

    png = base64.b64decode(imgs[0]["src"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (demo_run / "plots" / "accuracy_latency.png").read_bytes()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chromium-browser on PATH (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(demo_run, tmp_path):
    shot = tmp_path / "report.png"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (demo_run / "report.html").resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<tr>") == 6 and dom.stdout.count("data:image/png;base64,") == 3
    done = subprocess.run(
        [*base, "--window-size=1200,2400", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and shot.stat().st_size > 20_000  # a page with a table and three figures


def test_bundle(demo_run):
    from edgeconvnext.pipeline.bundle import verify_bundle

    b = demo_run / "bundle"
    m = verify_bundle(b)
    paths = {f["path"] for f in m["files"]}
    assert {f"onnx/convnextv2_atto_fmnist.{k}.onnx" for k in ("fp32", "fp16", "int8", "int8.fp16")} <= paths
    assert {"recipe.yaml", "README.md", "trtexec.sh"} <= paths
    assert m["images"]["count"] == 20 and len([p for p in paths if p.startswith("images/")]) == 20
    assert "edgeconvnext device-check ." in (b / "README.md").read_text()
    sh = (b / "trtexec.sh").read_text()
    assert sh.count("trtexec --onnx=onnx/") == 4 and "--stronglyTyped" in sh and "--int8" not in sh
    assert "--saveEngine=engines/convnextv2_atto_fmnist.int8.fp16.engine" in sh
    import yaml

    recipe = yaml.safe_load((b / "recipe.yaml").read_text())
    assert recipe["model"] == "convnextv2_atto" and recipe["img_size"] == 32 and recipe["build"]["batch"] == "1"
    assert recipe["quantize"]["calib_size"] == 64


def test_second_run_skips_every_stage_and_force_reruns(demo_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(demo_run, out)  # records hold paths relative to the run folder: a copied run is up to date
    capsys.readouterr()
    assert main(_args(out, "--bundle-images", "20")) == 0
    text = capsys.readouterr().out
    for stage in ("export", "quantize", "fp16", "rules", "engines", "report", "bundle"):
        assert f"{stage}: skipped, up to date" in text
    assert "validate.int8.onnxruntime: skipped" in text and "12 up to date" in text
    before = (out / "onnx" / "convnextv2_atto_fmnist.int8.onnx").stat().st_mtime_ns

    # --force validate re-runs every validate.* row; a changed output is noticed by its hash (its stage runs
    # again, writing the same bytes); the stages before stay skipped and the INT8 ONNX is not rewritten
    (out / "onnx" / "convnextv2_atto_fmnist.fp16.onnx").write_bytes(b"changed")
    assert main(_args(out, "--bundle-images", "20", "--force", "validate")) == 0
    text = capsys.readouterr().out
    assert "export: skipped" in text and "quantize: skipped" in text and "rules: skipped" in text
    assert "fp16: convnextv2_atto_fmnist.fp16.onnx" in text
    assert all(f"validate.{r}.onnxruntime: top-1" in text for r in ("fp32", "fp16", "int8", "int8_fp16"))
    assert (out / "onnx" / "convnextv2_atto_fmnist.int8.onnx").stat().st_mtime_ns == before


def test_bare_force_reruns_everything(demo_run, tmp_path, capsys):
    from edgeconvnext.cli import _bare_force

    assert _bare_force(["run", "--force", "-o", "x"]) == ["run", "--force=all", "-o", "x"]
    assert _bare_force(["run", "--force", "fp16"]) == ["run", "--force", "fp16"]
    assert _bare_force(["export", "--force"]) == ["export", "--force"]
    assert _bare_force(["run", "-o", "x", "--force"]) == ["run", "-o", "x", "--force=all"]
    assert main(["run", "-c", "x", "-o", str(tmp_path), "--calib-data", str(tmp_path), "--force", "fp61"]) == 2
    assert "--force fp61: no such stage; did you mean 'fp16'?" in capsys.readouterr().err


def test_unlabelled_val_folder_gives_latency_rows_and_says_why(demo_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(demo_run, out)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(assets().val.rglob("*.png"))[:8]:
        shutil.copy(p, flat / p.name)
    assert main(_args(out, val=flat)) == 0
    rep = _report(out)
    assert all(r["top1"] is None and r["p50_ms"] > 0 for r in rep["rows"])
    assert any("accuracy rows are empty" in n and "no class folders and no labels file" in n for n in rep["notes"])
    assert "quantize: skipped" in capsys.readouterr().out


def test_full_disk_during_report_leaves_no_report_and_resumes(demo_run, tmp_path, monkeypatch, capsys):
    from edgeconvnext.pipeline import report

    out = tmp_path / "copy"
    shutil.copytree(demo_run, out)
    for name in ("report.json", "report.md", "report.html"):
        (out / name).unlink()
    real = report.render_html

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "render_html", full)
    assert main(_args(out, "--bundle-images", "20")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "report.html: No space left on device" in err
    assert not (out / "report.json").exists() and not list(out.glob(".report*.partial"))
    monkeypatch.setattr(report, "render_html", real)
    assert main(_args(out, "--bundle-images", "20")) == 0  # resumes: only the report (and what reads it) runs
    text = capsys.readouterr().out
    assert "quantize: skipped" in text and "report: report.json" in text and (out / "report.html").is_file()


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--method", "qat"], 2, "--method qat needs --train-data DIR"),
        (["--train-data", ".", "--epochs", "2"], 2, "--train-data, --epochs: only with --method qat"),
        (["--max-drop", "0.3", "--method", "qat", "--train-data", "."], 2, "--method qat and --max-drop cannot be"),
        (["--method", "pqt"], 2, "unknown --method 'pqt'; did you mean 'ptq'?"),
        (["--recipe", "convnextv2_nano-orin_nano"], 2, "is for convnextv2_nano but"),
        (["--model", "convnextv2_nano", "--recipe", "convnextv2_atto-orin_nano"], 2, "--model convnextv2_nano but"),
        (["--device", "tpu"], 2, "unknown --device 'tpu'"),
        (["--force", "nope"], 2, "--force nope: no such stage"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, code, message):
    assert main(_args(tmp_path / "r", *extra)) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r").glob("onnx/*.onnx")) if (tmp_path / "r").exists() else True


def test_recipe_for_another_model_names_both(tmp_path, capsys):
    assert main(_args(tmp_path / "r", "--recipe", "convnextv2_nano-orin_nano")) == 2
    err = capsys.readouterr().err
    assert "convnextv2_nano-orin_nano is for convnextv2_nano" in err and "holds a convnextv2_atto" in err


def test_missing_inputs(tmp_path, capsys):
    a = assets()
    assert main(["run", "-c", str(tmp_path / "none.pt"), "--calib-data", str(a.calib), "-o", str(tmp_path)]) == 3
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["run", "-c", str(a.checkpoint), "--calib-data", str(tmp_path / "x"), "-o", str(tmp_path)]) == 4
    assert "--calib-data" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "-c", str(a.checkpoint), "--calib-data", str(a.calib), "-o", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# device-check: TensorRT cannot run here, so trtexec is a stand-in script (as in test_engine.py) that
# builds a file with a plan header for --saveEngine and prints trtexec's timing summary for --loadEngine

_FAKE_TRTEXEC = r"""#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(args))
with open({record!r}, "a") as f:
    f.write(" ".join(args) + "\n")
if args == ["--help"]:
    sys.exit(0)
print("[I] TensorRT version: 10.3.0")
save = [a.split("=", 1)[1] for a in args if a.startswith("--saveEngine=")]
if save:
    head = bytearray(128); head[0:4] = b"ftrt"; head[24:28] = bytes([10, 3, 0, 7])
    Path(save[0]).write_bytes(bytes(head))
else:
    b = int(next(a for a in args if a.startswith("--shapes=")).split(":")[1].split("x")[0])
    print("[I] Throughput: %.1f qps" % (1000.0 / (0.5 * b)))
    print("[I] GPU Compute Time: min = 0.4 ms, max = 0.9 ms, mean = 0.52 ms, median = %.2f ms, "
          "percentile(90%%) = 0.6 ms, percentile(99%%) = 0.8 ms" % (0.5 * b))
print("&&&& PASSED TensorRT.trtexec")
"""


def _fake_trtexec(tmp_path: Path) -> tuple[Path, Path]:
    import stat
    import sys

    record = tmp_path / "trtexec_calls.txt"
    script = tmp_path / "trtexec"
    script.write_text(_FAKE_TRTEXEC.format(python=sys.executable, record=str(record)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def _bundle_copy(demo_run: Path, tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(demo_run / "bundle", b)
    return b


def test_device_check_with_trtexec_builds_times_and_appends_to_report(demo_run, tmp_path, capsys):
    b = _bundle_copy(demo_run, tmp_path)
    exe, record = _fake_trtexec(tmp_path)
    args = ["device-check", str(b), "--trtexec", str(exe), "--latency-batch", "1,2", "--iters", "20"]
    assert main(args) == 0
    calls = record.read_text().splitlines()
    builds = [c for c in calls if "--saveEngine=" in c]
    assert len(builds) == 4 and all("--stronglyTyped" in c and "--memPoolSize=workspace:1024M" in c for c in builds)
    assert all("--minShapes=input:1x3x32x32" in c and "--maxShapes=input:1x3x32x32" in c for c in builds)
    times = [c for c in calls if "--loadEngine=" in c]
    assert len(times) == 8 and all("--useCudaGraph --useSpinWait --noDataTransfers" in c for c in times)
    assert sorted(p.name for p in (b / "engines").glob("*.engine")) == [
        "convnextv2_atto_fmnist.fp16.engine",
        "convnextv2_atto_fmnist.fp32.engine",
        "convnextv2_atto_fmnist.int8.engine",
        "convnextv2_atto_fmnist.int8.fp16.engine",
    ]
    rep = json.loads((b / "report.json").read_text())
    sec = rep["device_sections"][-1]
    assert sec["device"]["tensorrt"] == "10.3.0" and len(sec["rows"]) == 8
    r = next(r for r in sec["rows"] if r["artifact"] == "convnextv2_atto_fmnist.int8.fp16.engine" and r["batch"] == 2)
    assert (r["p50_ms"], r["p99_ms"], r["images_per_s"]) == (1.0, 0.8, 2000.0) and r["precision"] == "int8+fp16"
    assert r["top1"] is None and any("accuracy not measured" in n and "Python bindings" in n for n in sec["notes"])
    assert "## On the device:" in (b / "report.md").read_text()
    assert "device section for" in capsys.readouterr().out
    # again: the engines are up to date (same ONNX, settings and TensorRT), only timed; a second section
    assert main(args) == 0
    assert len([c for c in record.read_text().splitlines() if "--saveEngine=" in c]) == 4
    assert len(json.loads((b / "report.json").read_text())["device_sections"]) == 2


def test_device_check_needs_no_torch(demo_run, tmp_path):
    # one fresh interpreter: the runtime and device-check modules import no torch on their own; then, with
    # 'import torch' failing (a JetPack-only Jetson), device-check runs to the end
    b = _bundle_copy(demo_run, tmp_path)
    exe, _ = _fake_trtexec(tmp_path)
    code = (
        "import sys\n"
        "import edgeconvnext.runtime.tensorrt, edgeconvnext.runtime.cuda, edgeconvnext.pipeline.device_check\n"
        "import edgeconvnext.cli.device_check\n"
        "print('IMPORTED', 'torch' in sys.modules)\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not installed on this device')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from edgeconvnext.cli import main\n"
        f"rc = main(['device-check', {str(b)!r}, '--trtexec', {str(exe)!r}, '--latency-batch', '1'])\n"
        "print('RC', rc, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys_executable(), "-c", code], capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "IMPORTED False" and lines[-1] == "RC 0 False", done.stderr[-3000:]


def sys_executable() -> str:
    import sys

    return sys.executable


def test_device_check_without_tensorrt_is_one_line_exit_8(demo_run, tmp_path, capsys, monkeypatch):
    from edgeconvnext.engine.build import import_tensorrt

    if import_tensorrt()[0] is not None or shutil.which("trtexec"):
        pytest.skip("TensorRT is installed here: the missing-TensorRT path cannot be exercised")
    monkeypatch.setenv("PATH", "/nonexistent")
    b = _bundle_copy(demo_run, tmp_path)
    assert main(["device-check", str(b)]) == 8
    err = capsys.readouterr().err
    assert err.startswith("error: device-check needs TensorRT") and len(err.strip().splitlines()) == 1
    assert "install TensorRT" in err and not (b / "engines").exists()


def test_device_check_refuses_a_changed_or_incomplete_bundle(demo_run, tmp_path, capsys):
    from edgeconvnext.artifacts import sha256_file

    exe, record = _fake_trtexec(tmp_path)
    b = _bundle_copy(demo_run, tmp_path)
    onnx = b / "onnx" / "convnextv2_atto_fmnist.int8.onnx"
    want = sha256_file(onnx)
    onnx.write_bytes(onnx.read_bytes()[:-10])
    assert main(["device-check", str(b), "--trtexec", str(exe)]) == 3
    err = capsys.readouterr().err
    assert f"{onnx} was changed after the bundle was written: sha256 {sha256_file(onnx)[:16]}" in err
    assert f"manifest says {want[:16]}" in err and not record.exists()  # nothing was built
    onnx.unlink()
    assert main(["device-check", str(b), "--trtexec", str(exe)]) == 3
    assert f"{onnx} is missing from the bundle (manifest sha256 {want[:16]}" in capsys.readouterr().err
    img = next((b / "images").rglob("*.png"))
    shutil.copy(onnx.with_name("convnextv2_atto_fmnist.fp32.onnx"), onnx)  # wrong content
    img.unlink()
    assert main(["device-check", str(b), "--trtexec", str(exe)]) in (3, 4)
    (b / "manifest.json").unlink()
    assert main(["device-check", str(b), "--trtexec", str(exe)]) == 3
    assert "has no manifest.json" in capsys.readouterr().err
    assert main(["device-check", str(tmp_path / "nowhere")]) == 2


# ---------------------------------------------------------------------------------------------------
# the TensorRT runtime's CUDA pieces without torch (cuda-python)


def test_cuda_device_choice_and_messages():
    import numpy as np

    from edgeconvnext.errors import BackendMissing
    from edgeconvnext.runtime import cuda
    from edgeconvnext.runtime.tensorrt import numpy_dtype

    assert [numpy_dtype(d) for d in ("FLOAT", "DataType.HALF", "INT8", "INT64")] == [
        np.float32,
        np.float16,
        np.int8,
        np.int64,
    ]
    cudart, why = cuda.import_cudart()
    missing = cuda.cuda_buffers_missing()
    if cudart is None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("torch has CUDA here: the runtime uses it")
        # neither: one message naming both ways and the extra to install
        assert "cuda-python" in missing and "torch" in missing and "edgeconvnext[cuda]" in missing
        with pytest.raises(BackendMissing, match="cuda-python"):
            cuda.open_cuda_device()
    else:
        assert missing is None
        try:
            dev = cuda.open_cuda_device()
        except BackendMissing as e:  # cuda-python installed, no GPU/driver: the call and error are named
            assert "CUDA cudaGetDeviceCount failed" in str(e) or "CUDA device 0 not found" in str(e)
        else:  # a real GPU: memory round trip, events, graph capture
            x = np.arange(12, dtype=np.float32)
            p = dev.alloc(x.nbytes)
            dev.upload(p, x)
            y = np.zeros_like(x)
            dev.download(y, p)
            assert (x == y).all() and len(dev.time_ms(dev.synchronize, 3)) == 3
            dev.close()


def test_torch_cuda_device_sets_its_device_and_replays_on_its_stream():
    """The torch fallback of the runner's CUDA device (no GPU here: torch's CUDA namespace stands in, the class
    takes it as an argument). A replay must run on the device's own stream, which synchronize() waits for
    (CUDAGraph.replay launches on the current one), and cuda:N must become the current device, where TensorRT
    puts its engine and context."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from edgeconvnext.runtime.cuda import TorchCudaDevice

    calls: list[tuple[str, object]] = []
    current: list[object] = [None]

    class Stream:
        cuda_stream = 7

        def __init__(self, device: object = None) -> None:
            pass

        def synchronize(self) -> None:
            calls.append(("sync", self))

    @contextlib.contextmanager
    def stream(s: object):
        prev, current[0] = current[0], s
        try:
            yield
        finally:
            current[0] = prev

    class Graph:
        def replay(self) -> None:
            calls.append(("replay", current[0]))

    fake_cuda = SimpleNamespace(
        set_device=lambda d: calls.append(("set_device", str(d))),
        get_device_name=lambda d: "Fake GPU",
        get_device_capability=lambda d: (8, 7),
        Stream=Stream,
        stream=stream,
        CUDAGraph=Graph,
        graph=lambda g, stream=None, capture_error_mode=None: contextlib.nullcontext(),
    )
    fake = SimpleNamespace(device=torch.device, cuda=fake_cuda)
    dev = TorchCudaDevice(fake, "cuda:1")
    assert ("set_device", "cuda:1") in calls
    replay = dev.capture(lambda: None)
    replay()  # called outside any stream context, as the runner's warm-up loop does
    assert calls[-1] == ("replay", dev.stream)
    calls.clear()
    TorchCudaDevice(fake, "cuda")  # no index: the current device stays as it is
    assert not [c for c in calls if c[0] == "set_device"]


# ---------------------------------------------------------------------------------------------------
# Torch-TensorRT as a validate backend (not installable here: the refusals are tested, the real run skips)


def _has_torch_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_tensorrt") is not None


@pytest.mark.skipif(_has_torch_tensorrt(), reason="torch-tensorrt is installed: the missing-backend path is moot")
def test_validate_torch_tensorrt_missing_is_exit_8(capsys):
    a = assets()
    assert main(["validate", str(a.checkpoint), "--data", str(a.val), "--backend", "torch-tensorrt"]) == 8
    err = capsys.readouterr().err
    assert "--backend torch-tensorrt needs Torch-TensorRT" in err and "edgeconvnext[torch-tensorrt]" in err
    assert len(err.strip().splitlines()) == 1


def test_validate_torch_tensorrt_refusals(capsys):
    a = assets()
    args = ["validate", str(a.checkpoint), "--data", str(a.val), "--backend", "torch-tensorrt"]
    assert main([*args, "--device", "cpu"]) == 2
    assert "TensorRT engines run on the GPU only" in capsys.readouterr().err
    assert main([*args, "--compile"]) == 2
    assert "Torch-TensorRT compiles the model itself" in capsys.readouterr().err
    onnx_path = "model.onnx"
    assert main(["validate", onnx_path, "--backend", "torch-tensorrt", "--latency"]) in (2, 3, 8)


@pytest.mark.gpu
@pytest.mark.skipif(
    not _has_torch_tensorrt(), reason="needs torch-tensorrt and a CUDA GPU (pip install 'edgeconvnext[torch-tensorrt]')"
)
def test_torch_tensorrt_fp16_row_close_to_fp32():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from edgeconvnext.evaluate.validate import LatencyOptions, validate

    a = assets()
    rep = validate(
        a.checkpoint,
        a.val,
        backend="torch-tensorrt",
        device="cuda",
        precision="fp16",
        limit=100,
        latency=LatencyOptions(batches=[1, 32]),
    )
    ref = validate(a.checkpoint, a.val, backend="torch", device="cuda", limit=100)
    assert abs(rep.top1 - ref.top1) <= 1.0 and [e["batch"] for e in rep.latency] == [1, 32]
