"""PyTorch latency baseline: the numbers an INT8 TensorRT engine is compared against.

Input: architectures (default convnextv2_nano and convnext_tiny, random weights: latency does not depend
on the weights), precisions (fp32, fp16), eager and, with ``--compile``, torch.compile, at each batch size
(default 1 and 32), on one device (default cuda when torch sees a GPU, else cpu).
Output: a Markdown table on stdout (artifact, backend, device, precision, batch, p50/p90/p99 ms, images/s,
memory) with the device name, timing method and date under it; ``--json FILE`` keeps the full reports.

Every row is one ``edgeconvnext.validate.validate`` call in this process (the library, not the CLI):
on CUDA, inputs live on the GPU, iterations are timed with CUDA events and replayed as CUDA graphs
(``--no-cuda-graph`` to time plain launches); on CPU, each call to the runner is timed with perf_counter.

Usage::

    python benchmarks/torch_latency.py                                   # nano + tiny, fp32/fp16, eager, cuda
    python benchmarks/torch_latency.py --compile --batches 1 32 64
    python benchmarks/torch_latency.py --models convnextv2_atto --precisions fp32 --batches 1 8 \\
        --device cpu --warmup 2 --iters 10 --threads 1                   # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["convnextv2_nano", "convnext_tiny"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (after eager) for each row")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when torch sees a GPU, else cpu"
    )
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=None, help="default: the library's (5 CPU, 50 CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="default: the library's (30 CPU, 200 CUDA)")
    ap.add_argument("--no-cuda-graph", action="store_true", help="time plain launches on CUDA")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (torch.set_num_threads); on a shared machine 1 avoids thread contention",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the full reports here")
    args = ap.parse_args(argv)

    import torch

    from edgeconvnext.errors import EdgeError
    from edgeconvnext.evaluate.validate import LatencyOptions, markdown_table, validate

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = LatencyOptions(
        batches=args.batches, warmup=args.warmup, iters=args.iters, cuda_graph=False if args.no_cuda_graph else None
    )
    modes = [False, True] if args.compile else [False]
    reports, failures = [], []
    for model in args.models:
        for precision in args.precisions:
            for compiled in modes:
                what = f"{model} {precision} {'compile' if compiled else 'eager'} on {device}"
                t0 = time.perf_counter()
                try:
                    rep = validate(
                        None,
                        arch=model,
                        backend="torch",
                        device=device,
                        precision=precision,
                        compile=compiled,
                        img_size=args.img_size,
                        latency=opts,
                    )
                except EdgeError as e:
                    failures.append(f"{what}: {e}")
                    print(f"failed: {failures[-1]}", file=sys.stderr)
                    continue
                finally:
                    if compiled:
                        torch._dynamo.reset()  # each row compiles its own model; don't carry guards over
                reports.append(rep)
                p50 = ", ".join(f"b{e['batch']} {e['p50_ms']:.2f} ms" for e in rep.latency)
                print(f"{what}: {p50} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if not reports:
        return 1
    n = torch.get_num_threads()
    threads = f", {n} CPU thread{'s' if n != 1 else ''}" if device == "cpu" else ""
    print(
        f"\nPyTorch {torch.__version__} latency, {args.img_size} px, random weights, "
        f"{reports[0].device_name} ({device}{threads}), {time.strftime('%Y-%m-%d')}\n"
    )
    print(markdown_table(reports))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=2, default=str) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
