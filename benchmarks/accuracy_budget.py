"""Accuracy budget: our ``quantize --max-drop`` search against NNCF's ``quantize_with_accuracy_control`` (ONNX).

Same model, same 512 calibration images, same validation images (2,000 train images that are not calibration
images), same budget (0.3 top-1 points absolute; NNCF: max_drop=0.003, DropType.ABSOLUTE), same TensorRT-valid
settings (NNCF: preset PERFORMANCE, model_type TRANSFORMER, per-tensor activations, the stem / depthwise /
classifier in its ignored scope, as our ``nncf`` backend). The models are Fashion-MNIST checkpoints with
outlier channels of magnitude M (benchmarks/outliers.py's reparametrisation): at M=50 plain PTQ misses the
budget, so the search has work to do.

Printed per row: wall time of the whole call (export/calibration included), INT8 layers and share of MACs,
the drop measured on the 10,000 test images (not the validation images the search saw), whether TensorRT's
rules pass, and our search's cost in FP32-forward-passes.

Usage::

    python benchmarks/accuracy_budget.py --data /work/fmnist/fashion_mnist --magnitudes 50 --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from outliers import checkpoint, compare, data_root, log, logits, stressed, test_arrays  # noqa: E402


def validation_set(loaded, root: Path, exclude: set[Path], n: int):
    """``n`` train images chosen by name hash, none of them calibration images (labels in the model's order)."""
    from edgeconvnext.data.folders import LabelledImages, load_images
    from edgeconvnext.quantize.valset import ValSet

    ds = LabelledImages.discover(root / "train", class_names=loaded.class_names)
    order = sorted(range(len(ds)), key=lambda i: hashlib.sha256(f"val:{ds.paths[i].name}".encode()).hexdigest())
    pick = [i for i in order if ds.paths[i].resolve() not in exclude][:n]
    x, used, _ = load_images([ds.paths[i] for i in pick], loaded.preprocess)
    return ValSet(root / "train", used, x, np.asarray([ds.labels[i] for i in pick], np.int64))


def ours(loaded, root: Path, val, smooth: bool, max_drop: float, work: Path) -> dict:
    from edgeconvnext.quantize import QuantizeConfig, quantize
    from edgeconvnext.quantize.budget import Budget

    out = work / f"ours_{'smooth' if smooth else 'plain'}.int8.onnx"
    cfg = QuantizeConfig(calib_size=512, smooth=smooth)
    t0 = time.perf_counter()
    res = quantize(loaded, out, calib_data=root / "train", config=cfg, val=val, budget=Budget(max_drop=max_drop))
    wall = time.perf_counter() - t0
    b = res.budget
    return {
        "path": out,
        "fp32_path": res.fp32_path,
        "wall_s": wall,
        "int8_layers": sum(p.int8 for p in res.placement),
        "int8_macs_share": res.int8_macs_share,
        "trt_ok": res.report.ok,
        "val_drop": b.to_dict()["value"],
        "reverted": list(b.reverted),
        "cost_fp32_passes": b.cost.get("fp32_passes"),
        "cost_image_passes": b.cost.get("image_passes"),
        "bound_passes": round(b.bound_passes, 2),
    }


def nncf_ac(fp32_path: Path, calib_images: np.ndarray, val, ignored: list[str], max_drop: float, work: Path) -> dict:
    import nncf
    import onnx
    import onnxruntime as ort
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    from edgeconvnext.onnx.trt_rules import check_model

    model = onnx.load(str(fp32_path))
    calib = nncf.Dataset([calib_images[i : i + 1] for i in range(len(calib_images))], lambda x: {"input": x})
    items = [(val.images[i : i + 1], int(val.labels[i])) for i in range(len(val))]
    vds = nncf.Dataset(items, lambda it: {"input": it[0]})

    def validate(m, data) -> tuple[float, list[float]]:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        data = list(data)
        x = np.concatenate([d[0] for d in data])
        y = np.asarray([d[1] for d in data])
        pred = np.concatenate([s.run(None, {"input": x[i : i + 500]})[0] for i in range(0, len(x), 500)]).argmax(1)
        per = (pred == y).astype(float).tolist()
        return float(np.mean(per)), per

    t0 = time.perf_counter()
    q = nncf.quantize_with_accuracy_control(
        model,
        calib,
        vds,
        validate,
        max_drop=max_drop / 100.0,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calib_images),
        ignored_scope=nncf.IgnoredScope(names=ignored),
        advanced_quantization_parameters=AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(per_channel=False)
        ),
    )
    wall = time.perf_counter() - t0
    out = work / "nncf_ac.int8.onnx"
    onnx.save(q, str(out))
    rep = check_model(q)
    return {
        "path": out,
        "wall_s": wall,
        "int8_layers": len(rep.int8_layers),
        "int8_macs_share": rep.int8_macs_share(),
        "trt_ok": rep.ok,
        "trt_violations": [str(v) for v in rep.violations][:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--v2", type=Path, default=None)
    ap.add_argument("--v1", type=Path, default=None)
    ap.add_argument("--models", nargs="+", default=["convnextv2_atto"])
    ap.add_argument("--magnitudes", nargs="+", type=float, default=[50])
    ap.add_argument("--max-drop", type=float, default=0.3, help="top-1 points")
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--routes", nargs="+", default=["ours-smooth", "ours-plain", "nncf"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import logging

    logging.basicConfig(level=logging.WARNING)
    import onnx

    from edgeconvnext.data.calibration import select_images
    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize import policy

    args.work.mkdir(parents=True, exist_ok=True)
    root = data_root(args)
    rows: list[dict] = json.loads(args.json.read_text()) if args.json and args.json.is_file() else []
    for name in args.models:
        base = load_model(name, checkpoint(args, name, root))
        x_test, y_test = test_arrays(base, root, args.work, None)
        cs = select_images(root / "train", 512, seed=0, preprocess=base.preprocess)
        val = validation_set(base, root, {p.resolve() for p in cs.paths}, args.val_size)
        log(f"{name}: {len(val)} validation images (train, not calibration), {len(x_test)} test images")
        for mag in args.magnitudes:
            loaded, _ = stressed(base, mag, x_test)
            with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                work = Path(tmp)
                fp32_logits = None
                fp32_path = fp32_any = None
                for route in args.routes:
                    if any(r["model"] == name and r["magnitude"] == mag and r["route"] == route for r in rows):
                        continue
                    log(f"{name} x{mag:g}: {route}")
                    if route.startswith("ours"):
                        r = ours(loaded, root, val, route == "ours-smooth", args.max_drop, work)
                        if route == "ours-plain":
                            fp32_path = r["fp32_path"]  # the plain (unsmoothed) FP32 export: NNCF's input
                        fp32_any = r["fp32_path"]
                    else:
                        if fp32_path is None:  # the plain FP32 export, as NNCF would be given
                            fp32_path = ours(loaded, root, val, False, 100.0, work)["fp32_path"]
                        fp32 = onnx.load(str(fp32_path))
                        ignored = [p.node for p in policy.plan(fp32, "convnext") if not p.int8]
                        r = nncf_ac(fp32_path, cs.images, val, ignored, args.max_drop, work)
                    if fp32_logits is None:  # smoothed or not, the same function (checked at export)
                        fp32_logits = logits(fp32_path or fp32_any, x_test)
                    test = compare(fp32_logits, logits(r["path"], x_test), y_test)
                    row = {"model": name, "magnitude": mag, "route": route, "max_drop": args.max_drop,
                           **{k: v for k, v in r.items() if k not in ("path", "fp32_path")},
                           "test_fp32_top1": test["fp32_top1"], "test_int8_top1": test["int8_top1"],
                           "test_drop": test["drop"], "test_agreement": test["agreement"],
                           "val_images": len(val)}  # fmt: skip
                    rows.append(row)
                    log(json.dumps(row, default=str))
                    if args.json:
                        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = [
        "| model | M | route | wall s | INT8 layers | INT8 MACs | test drop (pts) | test agreement | TensorRT rules "
        "| search cost (FP32 passes) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"ours-smooth": "ours, default (smoothing on)", "ours-plain": "ours, --no-smooth", "nncf": "NNCF AC"}
    for r in rows:
        cost = (
            f"{r['cost_fp32_passes']:.1f} (image-passes {r['cost_image_passes']:.2f}, target {r['bound_passes']:.2f})"
            if r.get("cost_fp32_passes") is not None
            else "-"
        )
        lines.append(
            f"| {r['model']} | {r['magnitude']:g}x | {names.get(r['route'], r['route'])} | {r['wall_s']:.0f} "
            f"| {r['int8_layers']} | {100 * (r['int8_macs_share'] or 0):.1f}% | {r['test_drop']:+.2f} "
            f"| {r['test_agreement']:.2f}% | {'pass' if r['trt_ok'] else 'FAIL'} | {cost} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
