"""What each CPU stage of the pipeline costs against its floor, measured side by side in one run (issue 11).

Inputs, built here once into ``--work`` (default ``benchmarks/_work/pipeline_cost``): 512 synthetic 320x256
JPEGs (smooth random RGB, 4 class folders so ``validate`` can read them as an ImageFolder), random
convnextv2_nano weights saved as a checkpoint (seed 0; quantize and export read it with ``-c``) and its FP32
ONNX at 224 px (``edgeconvnext export``). Random weights: the cost of these steps does not depend on the
weights.

Rows (every step and its floor run in separate processes, back to back, so each peak RSS is its own):

- floor: preprocessing (Pillow decode + timm eval transform, written out here, one image after another)
  plus one FP32 onnxruntime forward over the 512 images, batch 32, default session (all graph
  optimizations, intra-op threads = cores). Measured before and after the quantize run; the mean is used.
- ``edgeconvnext quantize`` (PTQ, default options, ``--backend ort``): the calibration step (images
  decoded and preprocessed, statistics collected, Q/DQ inserted: from files to the quantized graph, what
  the floor does from files to logits) and the whole command (process wall time); FP32 export + parity
  check shown as its part. Where a build's sidecar has no ``timings.load_s`` (older builds loaded the
  images before the step they timed), the load time is measured here with the same library call.
- quantize's peak RSS against the FP32 session's peak (one session, batch 32, nothing else held).
- ``validate`` accuracy pass (FP32 ONNX, batch 32, library call from opening the model to the last
  batch) in images/s against a bare onnxruntime session over the same batches preprocessed beforehand
  (session created and run, decoding not timed).
- ``sensitivity`` and the ``--max-drop`` budget search: their cost in FP32-forward-passes over the validation set
  (the library's meter: seconds running models, session creation included, / seconds of one FP32 pass) against
  issue 11's target, groups x subset fraction + 3; on benchmarks/accuracy_budget.py's case (convnextv2_atto
  Fashion-MNIST with 50x outliers, ``--no-smooth``, budget 0.3 points), where plain PTQ misses the budget.
- QAT: CPU seconds per training step with fake quantization against a plain FP32 step (benchmarks/qat.py's
  ``step_times``).
- ``edgeconvnext --help`` and ``edgeconvnext models`` wall time against their targets (0.3 s, 1 s).

The machine may be shared: the 1-minute load average is printed with each measurement and every process's
CPU seconds beside its wall seconds; read ratios, not seconds. The benchmark sets ``OMP_NUM_THREADS`` to the
cores and ``OMP_WAIT_POLICY=PASSIVE`` for itself and every process it starts. Output: one table (step,
seconds, floor seconds, ratio, peak RSS) and a JSON summary.

Usage::

    nice -n 10 python benchmarks/pipeline_cost.py
    python benchmarks/pipeline_cost.py --work /tmp/pc --n 512 --skip validate budget
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODEL = "convnextv2_nano"
IMG_SIZE = 224
CROP_PCT = 0.875
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BATCH = 32
CLASSES = 4


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# ---- inputs ---------------------------------------------------------------------------------------


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` smooth random 320x256 JPEGs in ``CLASSES`` class folders (written once; reused when complete)."""
    import numpy as np
    from PIL import Image

    done = folder / f".complete-{n}"
    paths = [folder / f"class_{i % CLASSES}" / f"synthetic_{i:04d}.jpg" for i in range(n)]
    if done.is_file():
        return paths
    rng = np.random.default_rng(seed)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC).save(p, quality=90)
    done.write_text("ok\n")
    return paths


def _cli(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeconvnext", *args], capture_output=capture, text=True, check=check)


def make_checkpoint(work: Path) -> Path:
    """Random convnextv2_nano weights (seed 0) saved once: quantize and export read them with ``-c`` as a user's
    run does, instead of paying a random initialisation (~1.2 s, torch's truncated-normal loop) every time."""
    out = work / f"{MODEL}.random.safetensors"
    if not out.is_file():
        code = (
            "import sys\nfrom pathlib import Path\nimport torch\n"
            "from edgeconvnext.models.checkpoint import save_checkpoint\n"
            "from edgeconvnext.models.registry import create_model\n"
            "torch.manual_seed(0)\n"
            f"save_checkpoint(Path(sys.argv[1]), create_model({MODEL!r}).eval(), {MODEL!r})\n"
        )
        subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    return out


def make_fp32(work: Path) -> Path:
    out = work / f"{MODEL}.fp32.onnx"
    if not out.is_file():
        ckpt = make_checkpoint(work)
        _cli("-q", "export", "-m", MODEL, "-c", str(ckpt), "--img-size", str(IMG_SIZE), "-o", str(out))
    return out


# ---- floors (run as worker processes) --------------------------------------------------------------


def _preprocess(path: Path):
    """timm's eval transform, written out with Pillow and numpy (fixed here, so the floor does not move
    when the library's preprocessing changes)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    scale = math.floor(IMG_SIZE / CROP_PCT)
    w, h = im.size
    if min(w, h) != scale:
        if w <= h:
            im = im.resize((scale, int(scale * h / w)), Image.Resampling.BICUBIC)
        else:
            im = im.resize((int(scale * w / h), scale), Image.Resampling.BICUBIC)
    w, h = im.size
    top, left = int(round((h - IMG_SIZE) / 2.0)), int(round((w - IMG_SIZE) / 2.0))
    im = im.crop((left, top, left + IMG_SIZE, top + IMG_SIZE))
    arr = (np.asarray(im, np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)


def _session(onnx_path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def worker_floor(images: list[Path], onnx_path: Path) -> dict:
    """Preprocessing + one FP32 forward over all images, batch 32 (session creation included)."""
    import numpy as np

    t0 = time.perf_counter()
    x = np.stack([_preprocess(p) for p in images])
    t_pre = time.perf_counter() - t0
    sess = _session(onnx_path)
    for i in range(0, len(x), BATCH):
        sess.run(None, {"input": x[i : i + BATCH]})
    total = time.perf_counter() - t0
    return {"preprocess_s": t_pre, "forward_s": total - t_pre, "seconds": total, "peak_rss_mb": _rss_mb()}


def worker_memfloor(images: list[Path], onnx_path: Path) -> dict:
    """The FP32 session's peak RSS: one session, batch 32, run twice, nothing else held."""
    import numpy as np

    x = np.stack([_preprocess(p) for p in images[:BATCH]])
    sess = _session(onnx_path)
    for _ in range(2):
        sess.run(None, {"input": x})
    return {"peak_rss_mb": _rss_mb()}


def worker_bare(images: list[Path], onnx_path: Path) -> dict:
    """A bare session over the same batches validate reads, preprocessed beforehand (not timed)."""
    import numpy as np

    batches = [np.stack([_preprocess(p) for p in images[i : i + BATCH]]) for i in range(0, len(images), BATCH)]
    t0 = time.perf_counter()
    sess = _session(onnx_path)
    for x in batches:
        sess.run(None, {"input": x})
    s = time.perf_counter() - t0
    return {"seconds": s, "images_per_s": len(images) / s, "peak_rss_mb": _rss_mb()}


def worker_validate(data: Path, onnx_path: Path) -> dict:
    """validate's accuracy pass through the library: open the model, read, preprocess and infer every batch.
    The labels file gives class indices (the random-weight model has 1000 unnamed classes)."""
    from edgeconvnext.evaluate.validate import validate

    labels = data.parent / "labels.txt"
    if not labels.is_file():
        rows = [f"{p.relative_to(data).as_posix()} {p.parent.name.split('_')[1]}" for p in sorted(data.rglob("*.jpg"))]
        labels.write_text("\n".join(rows) + "\n")
    t0 = time.perf_counter()
    rep = validate(onnx_path, data=data, labels=labels, batch=BATCH)
    s = time.perf_counter() - t0
    return {"seconds": s, "images": rep.images, "images_per_s": rep.images / s, "peak_rss_mb": _rss_mb()}


def worker_load(images_dir: Path, n: int) -> dict:
    """The library's calibration-image loading alone (for builds whose sidecar does not time it)."""
    from edgeconvnext.data.calibration import select_images
    from edgeconvnext.models.registry import Preprocess

    t0 = time.perf_counter()
    select_images(images_dir, n, seed=0, preprocess=Preprocess(img_size=IMG_SIZE))
    return {"seconds": time.perf_counter() - t0}


def worker_budget(work: Path, data: Path | None, val_size: int) -> dict:
    """``sensitivity`` and the ``--max-drop`` search on benchmarks/accuracy_budget.py's case (the bundled
    convnextv2_atto Fashion-MNIST checkpoint with 50x outlier channels, ``--no-smooth``, 512 calibration images,
    ``val_size`` train images that are not calibration images, budget 0.3 points): plain PTQ misses the budget
    there, so the search has work to do. Each one's cost in FP32-forward-passes over the validation set (the
    library's own meter) and issue 11's target for it (groups x subset fraction + 3)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from accuracy_budget import validation_set
    from fashion_mnist import DATASET, convert
    from outliers import DEMO_V2, stressed

    from edgeconvnext.data.calibration import select_images
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize import QuantizeConfig, quantize
    from edgeconvnext.quantize.budget import Budget
    from edgeconvnext.quantize.sensitivity import analyse

    root = data if data is not None else convert(DATASET, work / "fashion_mnist")
    base = load_model("convnextv2_atto", DEMO_V2)
    cs = select_images(root / "train", 512, seed=0, preprocess=base.preprocess)
    val = validation_set(base, root, {p.resolve() for p in cs.paths}, val_size)
    loaded, _ = stressed(base, 50.0, val.images)
    cfg = QuantizeConfig(calib_size=512, smooth=False)
    out = work / "budget" / "atto50x.int8.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = quantize(loaded, out, calib_data=root / "train", config=cfg, val=val, budget=Budget(max_drop=0.3))
    budget_wall = time.perf_counter() - t0
    b = res.budget
    t0 = time.perf_counter()
    sens = analyse(loaded, val, cfg, calib_data=root / "train")
    sens_wall = time.perf_counter() - t0
    return {
        "val_images": len(val),
        "budget": {
            "wall_s": budget_wall,
            "cost": b.cost,
            "bound_passes": b.bound_passes,
            "groups": b.groups,
            "subset": b.subset,
            "reverted": list(b.reverted),
            "met": b.met,
            "steps": len(b.steps),
            "checks": sum(st.checked for st in b.steps),
        },
        "sensitivity": {"wall_s": sens_wall, "cost": sens.cost, "bound_passes": sens.bound_passes,
                        "groups": len(sens.scores), "subset": sens.subset,
                        "top": [s.layer for s in sens.scores[:6]]},
        "peak_rss_mb": _rss_mb(),
    }  # fmt: skip


def worker_qat() -> dict:
    """The QAT engineer's step-time measurement (benchmarks/qat.py step_times): nano at 32 px, batch 32."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from qat import step_times

    return step_times("convnextv2_nano", 32, 32, 3, 1, False)


def _worker(kind: str, work: Path, n: int, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--work", str(work), "--n", str(n), "--worker", kind, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["load_avg_1m"] = _load()
    r["process_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r


def _cpu(r: dict) -> float:
    return r["process_cpu_s"]


# ---- steps -----------------------------------------------------------------------------------------


def step_quantize(work: Path, images_dir: Path, n: int) -> dict:
    out = work / "out" / f"{MODEL}.int8.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["-q", "quantize", "-m", MODEL, "-c", str(make_checkpoint(work)), "--img-size", str(IMG_SIZE)]
    args += ["--calib-data", str(images_dir)]
    # --force: a sidecar left by an earlier run of another build matches this one's inputs and config, so the
    # stage would be skipped and its old timings read back
    args += ["--calib-size", str(n), "--backend", "ort", "-o", str(out), "--json", "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = _cli(*args, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"quantize failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    side = json.loads(Path(f"{out}.json").read_text())
    fp32_side = json.loads(Path(str(out).removesuffix(".onnx") + ".fp32.onnx.json").read_text())
    t = side["timings"]
    d = side.get("details", side)  # the stage's own numbers: under "details" since the one sidecar schema
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "timings": t,
        "export_timings": fp32_side.get("timings", {}),
        "peak_rss_mb": d["peak_rss_mb"],
        "images": d["calibration"]["images"],
        "trt_ok": d["trt_check"]["ok"],
        "agreement_vs_fp32": d["agreement_vs_fp32"],
        "load_avg_1m": _load(),
    }


def step_startup(args_list: list[str], repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _cli(*args_list)
        best = min(best, time.perf_counter() - t0)
    return best


# ---- report ----------------------------------------------------------------------------------------


def _row(step: str, seconds: float | None, floor: float | None, ratio: float | None, rss: float | None, note=""):
    return {"step": step, "seconds": seconds, "floor_s": floor, "ratio": ratio, "peak_rss_mb": rss, "note": note}


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    print("| step | seconds | floor seconds | ratio | peak RSS MiB | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['step']} | {_fmt(r['seconds'], '.2f')} | {_fmt(r['floor_s'], '.2f')} | "
            f"{_fmt(r['ratio'], '.2f') + 'x' if r['ratio'] is not None else ''} | {_fmt(r['peak_rss_mb'], '.0f')} | "
            f"{r['note']} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/_work/pipeline_cost"))
    ap.add_argument("--n", type=int, default=512, help="images (calibration set and validation set)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["quantize", "validate", "startup", "budget", "qat"])
    ap.add_argument(
        "--fmnist",
        type=Path,
        default=Path("/work/fmnist/fashion_mnist") if Path("/work/fmnist/fashion_mnist/train").is_dir() else None,
        help="Fashion-MNIST as an ImageFolder (benchmarks/fashion_mnist.py's conversion) for the budget rows; "
        "default: converted into --work from the installed dataset",
    )
    ap.add_argument("--val-size", type=int, default=2000, help="validation images of the budget rows")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    # the same threading for every run whatever the caller's shell says (torch's OpenMP; onnxruntime sizes its
    # own pool to the cores); PASSIVE: idle OpenMP threads sleep instead of spinning on a shared machine
    os.environ["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    work = args.work.resolve()
    images_dir = work / "images"
    paths = make_images(images_dir, args.n)
    fp32 = make_fp32(work)
    if args.worker:
        fn = {
            "floor": lambda: worker_floor(paths, fp32),
            "memfloor": lambda: worker_memfloor(paths, fp32),
            "bare": lambda: worker_bare(paths, fp32),
            "validate": lambda: worker_validate(images_dir, fp32),
            "load": lambda: worker_load(images_dir, args.n),
            "qat": worker_qat,
            "budget": lambda: worker_budget(work, args.fmnist, args.val_size),
        }[args.worker]
        print(json.dumps(fn()))
        return 0

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgeconvnext"], capture_output=True, text=True)
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit + ("+changes" if dirty.stdout.strip() else ""),
        "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "model": f"{MODEL} {IMG_SIZE} px, random weights",
        "images": f"{args.n} synthetic 320x256 JPEG",
        "threads": f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} OMP_WAIT_POLICY=PASSIVE",
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    print(f"pipeline cost: {info}", file=sys.stderr, flush=True)
    rows: list[dict] = []
    raw: dict = {}

    if "quantize" not in args.skip:
        f1 = _worker("floor", work, args.n)
        print(f"floor {f1['seconds']:.1f} s (load {f1['load_avg_1m']})", file=sys.stderr, flush=True)
        q = step_quantize(work, images_dir, args.n)
        print(f"quantize {q['wall_s']:.1f} s (load {q['load_avg_1m']})", file=sys.stderr, flush=True)
        f2 = _worker("floor", work, args.n)
        print(f"floor {f2['seconds']:.1f} s (load {f2['load_avg_1m']})", file=sys.stderr, flush=True)
        mem = _worker("memfloor", work, args.n)
        floor = (f1["seconds"] + f2["seconds"]) / 2
        floor_cpu = (_cpu(f1) + _cpu(f2)) / 2
        t = q["timings"]
        if "load_s" in t:
            load_s, load_note = t["load_s"], ""
        else:
            load_s = _worker("load", work, args.n)["seconds"]
            load_note = f"image loading {load_s:.1f} s measured separately (not in this build's sidecar) + "
        calib = load_s + t["calibration_s"]
        et = q["export_timings"]
        raw.update(floor_runs=[f1, f2], quantize=q, memfloor=mem, load_s=load_s)
        rows.append(
            _row(
                "floor: preprocessing + FP32 onnxruntime forward, batch 32",
                floor,
                floor,
                1.0,
                max(f1["peak_rss_mb"], f2["peak_rss_mb"]),
                f"{f1['seconds']:.1f} / {f2['seconds']:.1f} s before / after quantize (load {f1['load_avg_1m']} / "
                f"{f2['load_avg_1m']}); preprocessing {f1['preprocess_s']:.1f} s; process CPU {floor_cpu:.0f} s",
            )
        )
        rows.append(
            _row(
                "quantize: calibration step (files -> quantized graph)",
                calib,
                floor,
                calib / floor,
                None,
                f"{load_note}statistics + Q/DQ {t['calibration_s']:.1f} s",
            )
        )
        rows.append(
            _row(
                "quantize: whole command",
                q["wall_s"],
                floor,
                q["wall_s"] / floor,
                q["peak_rss_mb"],
                f"CPU {q['cpu_s']:.0f} s vs floor's {floor_cpu:.0f} s ({q['cpu_s'] / floor_cpu:.2f}x), "
                f"load {q['load_avg_1m']}, TensorRT rules {'pass' if q['trt_ok'] else 'FAIL'}",
            )
        )
        rows.append(
            _row(
                "  of which FP32 export + parity check",
                t["export_s"],
                None,
                None,
                None,
                f"trace {et.get('export_s', 0):.1f} s, check {et.get('check_s', 0):.1f} s, "
                f"parity {et.get('parity_s', 0):.1f} s",
            )
        )
        rows.append(
            _row(
                "  of which smoothing statistics (torch, 64 images)",
                t.get("smooth_s"),
                None,
                None,
                None,
                "not in this build's sidecar"
                if "smooth_s" not in t
                else "0: from the calibration pass (in its seconds)"
                if not t["smooth_s"]
                else "",
            )
        )
        rows.append(
            _row(
                "quantize peak RSS / FP32 session peak RSS (batch 32)",
                None,
                None,
                q["peak_rss_mb"] / mem["peak_rss_mb"],
                q["peak_rss_mb"],
                f"FP32 session {mem['peak_rss_mb']:.0f} MiB",
            )
        )

    if "validate" not in args.skip:
        bare = _worker("bare", work, args.n)
        val = _worker("validate", work, args.n)
        bare2 = _worker("bare", work, args.n)
        bare_ips = (bare["images_per_s"] + bare2["images_per_s"]) / 2
        raw.update(bare=[bare, bare2], validate=val)
        rows.append(
            _row(
                "validate accuracy pass (images/s vs a bare session's)",
                val["seconds"],
                args.n / bare_ips,
                val["images_per_s"] / bare_ips,
                val["peak_rss_mb"],
                f"{val['images_per_s']:.1f} vs {bare_ips:.1f} images/s (higher is better, goal >= 0.9); process CPU "
                f"{_cpu(val):.0f} s vs {(_cpu(bare) + _cpu(bare2)) / 2:.0f} s (bare includes its untimed decoding); "
                f"load {val['load_avg_1m']}",
            )
        )

    if "budget" not in args.skip:
        extra = ["--val-size", str(args.val_size)] + (["--fmnist", str(args.fmnist)] if args.fmnist else [])
        bw = _worker("budget", work, args.n, *extra)
        raw["budget"] = bw
        for key, label in (
            ("sensitivity", "sensitivity (isolate), FP32-forward-passes over the validation set"),
            ("budget", "--max-drop 0.3 budget search, FP32-forward-passes over the validation set"),
        ):
            r = bw[key]
            c = r["cost"]
            what = (
                f"{r['groups']} groups x {r['subset']}/{bw['val_images']} + 3"
                + (f"; {r['steps']} steps, {r['checks']} on every image, {len(r['reverted'])} reverted" if key ==
                   "budget" else "")
            )  # fmt: skip
            rows.append(
                _row(
                    label,
                    c["fp32_passes"],
                    r["bound_passes"],
                    c["fp32_passes"] / r["bound_passes"],
                    bw["peak_rss_mb"],
                    f"seconds and floor in FP32 passes: target {r['bound_passes']:.2f} = {what}; in CPU seconds "
                    f"{c.get('cpu_fp32_passes', float('nan')):.2f} passes; image-passes {c['image_passes']:.2f}; "
                    f"FP32 pass {c['fp32_pass_s']:.2f} s; wall {r['wall_s']:.0f} s "
                    f"(calibration and export included); convnextv2_atto 32 px, 50x outliers, --no-smooth, load "
                    f"{bw['load_avg_1m']}",
                )
            )

    if "qat" not in args.skip:
        if (Path(__file__).resolve().parent / "qat.py").is_file():
            t = _worker("qat", work, args.n)
            raw["qat_step"] = t
            rows.append(
                _row(
                    "QAT step (frozen scales, + teacher) / FP32 training step",
                    t["qat frozen"],
                    t["fp32"],
                    t["qat frozen"] / t["fp32"],
                    None,
                    f"benchmarks/qat.py step_times (CPU s per step), nano 32 px batch 32, 1 round; FP32 + teacher "
                    f"{t['fp32+kd']:.3f} s ({t['qat frozen'] / t['fp32+kd']:.2f}x); load {t['load_avg_1m']}",
                )
            )
        else:
            rows.append(_row("QAT step / FP32 training step", None, None, None, None, "not landed"))

    if "startup" not in args.skip:
        h = step_startup(["--help"])
        m = step_startup(["models"])
        raw.update(help_s=h, models_s=m)
        rows.append(_row("edgeconvnext --help (best of 2)", h, 0.3, h / 0.3, None, "floor = the 0.3 s target"))
        rows.append(_row("edgeconvnext models (best of 2)", m, 1.0, m, None, "floor = the 1 s target"))

    info["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    info["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"\n{info['date']} - {info['finished']}, commit {info['commit']}, {info['machine']}, {info['model']}, "
        f"{info['images']}, {info['threads']}\nuptime at start: {info['uptime']}\nuptime at end: {info['uptime_end']}\n"
    )
    print_table(rows)
    print(json.dumps({"info": info, "rows": rows, "raw": raw}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
