"""Outlier stress benchmark: INT8 accuracy when post-LayerNorm channels carry outliers of a chosen magnitude.

Fashion-MNIST checkpoints trained briefly from scratch have no outlier channels (ImageNet-trained ConvNeXts
do, KNOWLEDGE.md). This script makes them, without changing the FP32 function: ``inject_outliers`` multiplies
LayerNorm's affine (gamma, beta) of a few channels of every block norm and downsample norm by M and divides
the next layer's input weights (fc1 / the 2x2 downsample conv) by M. The FP32 logits are checked equal
(<= 1e-4 relative, printed), then every (model, M, backend, policy, smoothing) is quantized once with the
library's ``quantize`` (512 calibration images from train) and both FP32 and INT8 ONNX run on the 10,000
test images (onnxruntime CPU, preprocessed once and cached).

Output: a Markdown table on stdout (model, M, backend, policy, smoothing, FP32/INT8 top-1, drop, agreement,
min cosine, calibration s) and the rows as JSON (``--json``; rows already there are reused, so an interrupted
sweep resumes).

Usage::

    python benchmarks/outliers.py --work benchmarks/_work --v2 /work/fmnist/convnextv2_atto_fmnist_32px_2ep.pt \\
        --v1 /work/fmnist/convnext_atto_fmnist_32px_2ep.pt --data /work/fmnist/fashion_mnist
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEMO_V2 = HERE.parent / "edgeconvnext" / "demo" / "convnextv2_atto_fmnist.safetensors"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def data_root(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    sys.path.insert(0, str(HERE))
    from fashion_mnist import DATASET, convert  # the IDX -> ImageFolder conversion (apt-get dataset-fashion-mnist)

    return convert(DATASET, args.work / "fashion_mnist")


def checkpoint(args: argparse.Namespace, name: str, root: Path) -> Path:
    """The given checkpoint, else one trained here with ``edgeconvnext finetune`` (2 epochs, 32 px)."""
    given = args.v2 if name == "convnextv2_atto" else args.v1
    if given is not None:
        return given
    if name == "convnextv2_atto" and DEMO_V2.is_file():
        return DEMO_V2
    ckpt = args.work / f"{name}_fmnist_32px_2ep.pt"
    if not ckpt.is_file():
        import subprocess

        log(f"training {name} (2 epochs, 32 px) -> {ckpt}")
        subprocess.run(
            [sys.executable, "-m", "edgeconvnext", "finetune", "--model", name, "--train-data", str(root / "train"),
             "--val-data", str(root / "test"), "--img-size", "32", "--crop-pct", "1.0", "--epochs", "2",
             "--output", str(ckpt)],
            check=True,
        )  # fmt: skip
    return ckpt


def test_arrays(loaded, root: Path, work: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The test split preprocessed as the checkpoint expects, cached as .npy (labels in the model's order)."""
    from edgeconvnext.data.folders import LabelledImages

    pp = loaded.preprocess
    key = json.dumps([pp.to_dict(), loaded.class_names], sort_keys=True).encode()
    tag = f"test_{pp.img_size}_{hashlib.sha256(key).hexdigest()[:10]}"
    x_path, y_path = work / f"{tag}.x.npy", work / f"{tag}.y.npy"
    if not x_path.is_file():
        ds = LabelledImages.discover(root / "test", class_names=loaded.class_names)
        xs, ys = zip(*ds.batches(pp, 500), strict=False)
        np.save(y_path, np.concatenate(ys))
        np.save(x_path, np.concatenate(xs))
    x, y = np.load(x_path, mmap_mode="r"), np.load(y_path)
    return (x[:limit], y[:limit]) if limit else (x, y)


def logits(onnx_path: Path, x: np.ndarray, batch: int = 500) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [s.run(None, {"input": np.ascontiguousarray(x[i : i + batch])})[0] for i in range(0, len(x), batch)]
    )


def compare(fp: np.ndarray, q: np.ndarray, y: np.ndarray) -> dict[str, float]:
    fp, q = fp.astype(np.float64), q.astype(np.float64)
    cos = (fp * q).sum(1) / (np.linalg.norm(fp, axis=1) * np.linalg.norm(q, axis=1) + 1e-12)
    top_fp, top_q = 100 * float((fp.argmax(1) == y).mean()), 100 * float((q.argmax(1) == y).mean())
    return {
        "fp32_top1": round(top_fp, 2),
        "int8_top1": round(top_q, 2),
        "drop": round(top_fp - top_q, 2),
        "agreement": round(100 * float((fp.argmax(1) == q.argmax(1)).mean()), 2),
        "min_cosine": round(float(cos.min()), 4),
    }


def stressed(base, magnitude: float, x: np.ndarray):
    """A copy of ``base`` with outliers of ``magnitude``; asserts (and returns) the FP32 logit difference."""
    import torch

    from edgeconvnext.quantize.smooth import inject_outliers

    m = copy.deepcopy(base.model).eval()
    inject_outliers(m, magnitude, channels=2, seed=0)
    with torch.no_grad():
        xb = torch.from_numpy(np.array(x[:256]))
        y0, y1 = base.model.eval()(xb), m(xb)
    rel = float((y1 - y0).abs().max() / y0.abs().max())
    if rel > 1e-4:
        raise SystemExit(f"error: the reparametrisation changed the FP32 logits ({rel:.2e} relative)")
    return type(base)(**{**base.__dict__, "model": m}), rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST ImageFolder root (train/, test/)")
    ap.add_argument("--v2", type=Path, default=None, help="convnextv2_atto checkpoint (default: the demo one)")
    ap.add_argument("--v1", type=Path, default=None, help="convnext_atto checkpoint (default: trained here)")
    ap.add_argument("--models", nargs="+", default=["convnextv2_atto", "convnext_atto"])
    ap.add_argument("--magnitudes", nargs="+", type=float, default=[1, 10, 50, 200])
    ap.add_argument("--backends", nargs="+", default=["ort", "nncf"])
    ap.add_argument("--policies", nargs="+", default=["convnext", "all"])
    ap.add_argument("--smooth", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--calib-methods", nargs="+", default=["minmax"])
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--test-limit", type=int, default=None, help="first N test images only (default all 10k)")
    ap.add_argument("--json", type=Path, default=None, help="rows as JSON (reused: an interrupted run resumes)")
    ap.add_argument("--table-only", nargs="+", type=Path, default=None, metavar="JSON",
                    help="print the table of the rows in these JSON files (from --json) and exit")  # fmt: skip
    args = ap.parse_args()
    if args.table_only:
        print(table([r for f in args.table_only for r in json.loads(f.read_text())]))
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.work.mkdir(parents=True, exist_ok=True)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize import QuantizeConfig, quantize

    root = data_root(args)
    rows: list[dict] = json.loads(args.json.read_text()) if args.json and args.json.is_file() else []
    done = {(r["model"], r["magnitude"], r["backend"], r["policy"], r["smooth"], r["calib_method"]) for r in rows}
    fp32_cache: dict[tuple[str, float], dict] = {}
    for name in args.models:
        base = load_model(name, checkpoint(args, name, root))
        x, y = test_arrays(base, root, args.work, args.test_limit)
        log(f"{name}: {len(x)} test images")
        for mag in args.magnitudes:
            loaded, rel = stressed(base, mag, x)
            log(f"{name} x{mag:g}: FP32 logits vs the checkpoint's: {rel:.2e} relative (<= 1e-4 required)")
            for backend in args.backends:
                for policy in args.policies:
                    for cm in args.calib_methods:
                        if cm not in {"ort": ("minmax", "percentile", "entropy"), "nncf": ("minmax", "mse")}[backend]:
                            continue
                        for sm in args.smooth:
                            key = (name, mag, backend, policy, sm, cm)
                            if key in done:
                                continue
                            out = args.work / f"out_{name}_x{mag:g}_{backend}_{policy}_{cm}_{sm}.int8.onnx"
                            cfg = QuantizeConfig(
                                backend=backend, policy=policy, calib_method=cm, calib_size=args.calib_size,
                                smooth=sm == "on",
                            )  # fmt: skip
                            t0 = time.perf_counter()
                            res = quantize(loaded, out, calib_data=root / "train", config=cfg)
                            q_s = time.perf_counter() - t0
                            # FP32 reference: the FP32 export of this stressed model (smoothed or not: same function)
                            if (name, mag) not in fp32_cache:
                                fp32_cache[(name, mag)] = {"logits": logits(res.fp32_path, x)}
                            q = logits(out, x)
                            row = {
                                "model": name, "magnitude": mag, "backend": backend, "policy": policy,
                                "smooth": sm, "calib_method": cm, "fp32_rel_diff": rel,
                                **compare(fp32_cache[(name, mag)]["logits"], q, y),
                                "int8_macs_share": round(100 * (res.int8_macs_share or 0), 1),
                                "calib_s": round(res.calib_seconds, 1), "quantize_s": round(q_s, 1),
                                "trt_ok": res.report.ok, "test_images": len(x),
                            }  # fmt: skip
                            rows.append(row)
                            log(json.dumps(row))
                            for p in out.parent.glob(out.name.removesuffix(".onnx") + "*"):
                                p.unlink()  # ~4 MB each x 64 runs: keep the work folder small
                            if args.json:
                                args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    head = (
        "| model | M | backend | policy | calib | smoothing | FP32 top-1 | INT8 top-1 | drop (pts) | agreement "
        "| min cosine | INT8 MACs | calib s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in sorted(
        rows,
        key=lambda r: (r["model"], r["backend"], r["policy"], r["calib_method"], r["smooth"] == "off", r["magnitude"]),
    ):
        lines.append(
            f"| {r['model']} | {r['magnitude']:g}x | {r['backend']} | {r['policy']} | {r['calib_method']} "
            f"| {r['smooth']} "
            f"| {r['fp32_top1']:.2f} | {r['int8_top1']:.2f} | {r['drop']:+.2f} | {r['agreement']:.2f}% "
            f"| {r['min_cosine']:.4f} | {r['int8_macs_share']:.1f}% | {r['calib_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
