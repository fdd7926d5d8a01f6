"""Wall time and peak memory of ``edgeconvnext quantize`` calibration (default: convnextv2_nano, 224 px, 512 images).

Input: a folder of images (``--images DIR``) or, by default, ``--n`` synthetic images generated here
(smooth random RGB, 256x320 JPEG). Output: one line per backend (wall time of the whole command, the
calibration step alone from the sidecar, peak RSS of the quantize process) and a JSON summary.

The machine may be shared: the CPU time of the run and the 1-minute load average are printed with the wall
time, so a number taken under contention can be read as such. Each backend runs
``python -m edgeconvnext quantize ... --json`` in its own process, so the peak RSS is that run's alone.
Random weights: calibration cost does not depend on the weights.

Usage::

    python benchmarks/calibration_time.py                       # ort, 512 synthetic images, nano @ 224
    python benchmarks/calibration_time.py --backends ort nncf --images /data/calib --n 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_synthetic(folder: Path, n: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC)
        img.save(folder / f"synthetic_{i:04d}.jpg", quality=90)


def run(backend: str, images: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    out = out_dir / f"{args.model}.{backend}.int8.onnx"
    cmd = [
        sys.executable,
        "-m",
        "edgeconvnext",
        "-q",
        "quantize",
        "-m",
        args.model,
        "--img-size",
        str(args.img_size),
        "--calib-data",
        str(images),
        "--calib-size",
        str(args.n),
        "--backend",
        backend,
        "--calib-method",
        args.calib_method,
        "-o",
        str(out),
        "--json",
    ]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        return {"backend": backend, "ok": False, "exit_code": proc.returncode, "stderr": proc.stderr[-2000:]}
    side = json.loads((out_dir / f"{out.name}.json").read_text())
    return {
        "backend": backend,
        "ok": True,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "calibration_s": side["timings"]["calibration_s"],
        "export_s": side["timings"]["export_s"],
        "quantize_total_s": side["timings"]["total_s"],
        "peak_rss_mb": side["details"]["peak_rss_mb"],
        "images": side["details"]["calibration"]["images"],
        "int8_macs_share": side["details"]["placement"]["int8_macs_share"],
        "agreement_vs_fp32": side["details"]["agreement_vs_fp32"],
        "trt_ok": side["details"]["trt_check"]["ok"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="convnextv2_nano")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=512, help="calibration images")
    ap.add_argument("--images", type=Path, default=None, help="folder of images (default: generate --n synthetic)")
    ap.add_argument("--backends", nargs="+", default=["ort"], choices=["ort", "nncf"])
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--keep", type=Path, default=None, help="write outputs here instead of a temporary folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        work = args.keep or Path(tmp)
        images = args.images
        if images is None:
            images = work / "images"
            t = time.perf_counter()
            make_synthetic(images, args.n)
            print(f"generated {args.n} synthetic images in {time.perf_counter() - t:.1f} s", flush=True)
        results = []
        for b in args.backends:
            r = run(b, images, work, args)
            results.append(r)
            if r["ok"]:
                print(
                    f"{b:5} {args.model} {args.img_size}px {r['images']} images: wall {r['wall_s']:.1f} s "
                    f"(calibration {r['calibration_s']:.1f} s, export {r['export_s']:.1f} s; CPU {r['cpu_s']:.0f} s, "
                    f"load {r['load_avg_1m']}), "
                    f"peak RSS {r['peak_rss_mb']:.0f} MiB, INT8 {r['int8_macs_share']:.1%} of MACs, "
                    f"top-1 agreement vs FP32 {r['agreement_vs_fp32']['top1_agreement']:.1%}",
                    flush=True,
                )
            else:
                print(f"{b:5} failed (exit {r['exit_code']}): {r['stderr']}", flush=True)
        print(
            json.dumps(
                {"cpu_count": os.cpu_count(), "model": args.model, "img_size": args.img_size, "results": results},
                indent=2,
            )
        )
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
