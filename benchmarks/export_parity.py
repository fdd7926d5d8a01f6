"""ONNX export parity: onnxruntime CPU vs the torch model, FP32 and FP16, per architecture.

Input: architecture names (random weights: parity does not depend on training). Output: a Markdown table
(model, precision, max abs diff, relative diff = max abs diff / max abs logit, top-1 agreement, size,
export seconds) measured by ``edgeconvnext.export.export_onnx``'s own self-check, the one every export runs.

Usage::

    python benchmarks/export_parity.py --models convnextv2_atto convnext_atto --img-size 224
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["convnextv2_atto", "convnext_atto"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--img-size", type=int, default=224)
    args = ap.parse_args()

    from edgeconvnext.export.onnx_export import export_onnx
    from edgeconvnext.models.checkpoint import load_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"Export parity, {args.img_size} px, random weights, dynamic batch, opset 17; commit {commit}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print("| model | precision | max abs diff | relative diff | top-1 agreement | size MB | export s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            loaded = load_model(name, img_size=args.img_size)
            for precision in args.precisions:
                r = export_onnx(loaded, Path(tmp) / f"{name}.{precision}.onnx", precision=precision)
                print(
                    f"| {name} | {precision} | {r.max_abs_diff:.2e} | {r.rel_diff:.2e} | "
                    f"{r.top1_agreement:.0%} | {r.size_bytes / 1e6:.1f} | {r.seconds:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
