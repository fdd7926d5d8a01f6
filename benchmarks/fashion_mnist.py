"""Real-data accuracy benchmark: FP32 vs INT8 (TensorRT-style Q/DQ) top-1 on Fashion-MNIST.

Input: the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist; MIT licence).
Output: a Markdown table printed to stdout (model, backend, policy, FP32 top-1, INT8 top-1, drop,
agreement, calibration time), every number measured in this run.

Steps, all through the public CLI so the benchmark measures what users run:
1. convert the IDX files to an ImageFolder tree (train/, test/; cached);
2. ``edgeconvnext finetune`` convnextv2_atto and convnext_atto at a small input size (cached checkpoints);
3. ``edgeconvnext quantize`` each with both backends and both policies (512 calibration images from train);
4. ``edgeconvnext validate`` INT8 vs the FP32 checkpoint on the 10k test images.

Usage::

    python benchmarks/fashion_mnist.py --work benchmarks/_work --epochs 3 --img-size 32
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATASET = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:  # images
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    if magic == 2049:  # labels
        return np.frombuffer(data, np.uint8, offset=8)
    raise ValueError(f"{path}: not an IDX file (magic {magic})")


def convert(dataset: Path, out: Path) -> Path:
    """IDX -> out/{train,test}/<class>/<index>.png (skipped when already complete)."""
    from PIL import Image

    done = out / ".complete"
    if done.is_file():
        return out
    if not (dataset / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"error: Fashion-MNIST not found in {dataset}: apt-get install -y dataset-fashion-mnist")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(dataset / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(dataset / f"{prefix}-labels-idx1-ubyte.gz")
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(images, labels, strict=False)):
            Image.fromarray(img, mode="L").save(out / split / CLASSES[lab] / f"{i:05d}.png", optimize=False)
        print(f"converted {split}: {len(images)} images", file=sys.stderr)
    done.write_text("ok\n")
    return out


def ort_library_defaults(fp32: Path, manifest: Path, output: Path) -> None:
    """Reference row: onnxruntime quantize_static with the TensorRT-valid options alone (every Conv/MatMul/Gemm,
    outputs quantized too, as the library does by default), on the same calibration images as our run.
    This is what a user gets without edgeconvnext's placement policy."""
    import onnxruntime.quantization as q

    from edgeconvnext.data.folders import load_images
    from edgeconvnext.models.registry import Preprocess

    m = json.loads(manifest.read_text())
    images, _, _ = load_images(
        [Path(m["root"]) / e["path"] for e in m["images"]], Preprocess.from_dict(m["preprocess"])
    )

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images[i : i + 16] for i in range(0, len(images), 16))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"input": batch}

    q.quantize_static(
        str(fp32),
        str(output),
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": True, "QuantizeBias": False},
    )
    import onnx  # carry the model's metadata (preprocessing, class names) over, as our quantize does

    src, out = onnx.load(str(fp32)), onnx.load(str(output))
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)
    onnx.save(out, str(output))


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "edgeconvnext", *args]
    print("$ edgeconvnext " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/_work"))
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--models", nargs="+", default=["convnextv2_atto", "convnext_atto"])
    ap.add_argument("--backends", nargs="+", default=["ort", "nncf"])
    ap.add_argument("--policies", nargs="+", default=["convnext", "all"])
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the 'ort quantize_static defaults' rows (onnxruntime alone: they do not depend on this library's "
        "quantizer, so a before/after comparison of the library need not rerun them)",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    data = convert(args.dataset, args.work / "fashion_mnist")
    rows = []
    for model in args.models:
        ckpt = args.work / f"{model}_fmnist_{args.img_size}px_{args.epochs}ep.pt"
        if not ckpt.is_file():
            t0 = time.perf_counter()
            cli(
                "finetune",
                "--model",
                model,
                "--train-data",
                str(data / "train"),
                "--val-data",
                str(data / "test"),
                "--img-size",
                str(args.img_size),
                "--crop-pct",
                "1.0",
                "--epochs",
                str(args.epochs),
                "--output",
                str(ckpt),
            )
            print(f"finetune {model}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for backend in args.backends:
            for policy in args.policies:
                stem = args.work / f"{model}_{backend}_{policy}"
                onnx_path = stem.with_suffix(".int8.onnx")
                cli(
                    "quantize",
                    "--model",
                    model,
                    "--checkpoint",
                    str(ckpt),
                    "--calib-data",
                    str(data / "train"),
                    "--calib-size",
                    str(args.calib_size),
                    "--backend",
                    backend,
                    "--policy",
                    policy,
                    "--output",
                    str(onnx_path),
                )
                side = json.loads(Path(str(onnx_path) + ".json").read_text())
                report = stem.with_suffix(".report.json")
                # Baseline: the FP32 ONNX quantize kept beside its output (same weights; parity <= 1e-4 relative
                # to the checkpoint, checked at export), run on the same onnxruntime CPU backend.
                fp32 = onnx_path.parent / side["details"]["fp32_baseline"]["path"]
                cli(
                    "validate",
                    str(onnx_path),
                    "--data",
                    str(data / "test"),
                    "--baseline",
                    str(fp32),
                    "--batch",
                    "256",
                    "--report",
                    str(report),
                )
                rep = json.loads(report.read_text())
                rows.append((model, backend, policy, rep, side))
                if backend == "ort" and policy == "convnext" and not args.no_reference:  # library defaults, same images
                    ref = args.work / f"{model}_ort_library_defaults.int8.onnx"
                    t0 = time.perf_counter()
                    ort_library_defaults(fp32, Path(str(onnx_path).removesuffix(".onnx") + ".calib.json"), ref)
                    ref_s = time.perf_counter() - t0
                    ref_report = ref.with_suffix(".report.json")
                    cli(
                        "validate",
                        str(ref),
                        "--data",
                        str(data / "test"),
                        "--baseline",
                        str(fp32),
                        "--batch",
                        "256",
                        "--report",
                        str(ref_report),
                    )
                    rows.append(
                        (
                            model,
                            "ort quantize_static defaults",
                            "all (+outputs)",
                            json.loads(ref_report.read_text()),
                            {"timings": {"calibration_s": ref_s}},
                        )
                    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"\nFashion-MNIST test set (10,000 images), {args.img_size} px, {args.epochs} epochs fine-tune, "
        f"{args.calib_size} calibration images from train; commit {commit}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| model | backend | policy | FP32 top-1 | INT8 top-1 | drop (pts) | top-1 agreement | min cosine "
        "| calibration s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model, backend, policy, rep, side in rows:
        print(
            f"| {model} | {backend} | {policy} | {rep['baseline_top1']:.2f} | {rep['top1']:.2f} | "
            f"{rep['drop']:+.2f} | {rep['top1_agreement']:.2f}% | {rep['cosine_min']:.4f} | "
            f"{side['timings']['calibration_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
