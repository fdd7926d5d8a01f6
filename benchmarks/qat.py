"""QAT benchmark: seconds per training step (FP32 vs fake-quant, torch ops vs NNCF) and FP32 / PTQ / QAT
top-1 on the Fashion-MNIST test set, every number measured side by side in this run.

Input: the Debian package dataset-fashion-mnist (converted to image folders, as benchmarks/fashion_mnist.py
does) and V1/V2 atto checkpoints trained on it at 32 px (``--v2-checkpoint`` / ``--v1-checkpoint``; trained
here with ``edgeconvnext finetune`` when not given). Output: Markdown tables on stdout.

1. step time: atto and nano at 32 px, batch 32, one thread per process: a plain FP32 training step
   (cross-entropy), the FP32 step with the distillation teacher, the QAT step with frozen and with learned
   scales (teacher included) and, with ``--nncf``, NNCF's torch QAT (``nncf.quantize`` then train);
   rounds interleaved, median of the rounds.
2. accuracy: for each model x policy x label mode, ``quantize --method ptq`` and ``quantize --method qat``
   (same calibration: 512 train images, minmax) on a class-balanced train subset with ``--steps`` per epoch;
   FP32 / PTQ / QAT top-1 on the test images (onnxruntime CPU, the Q/DQ ONNX TensorRT would build), drop,
   top-1 agreement and min cosine with FP32, QAT seconds per epoch and images/s; optionally the same QAT
   under torchrun with 2 CPU processes (gloo).

Usage::

    python benchmarks/qat.py --data /work/fmnist/fashion_mnist \\
        --v2-checkpoint /work/fmnist/convnextv2_atto_fmnist_32px_2ep.pt --v1-checkpoint ... --steps 50 --ddp
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# ---- 1. step time ---------------------------------------------------------------------------------


def step_times(arch: str, img: int, batch: int, steps: int, rounds: int, nncf: bool) -> dict[str, float]:
    """CPU seconds per training step of each variant (the library's loss and teacher, as QAT trains)."""
    import torch
    import torch.nn.functional as F

    from edgeconvnext.models.checkpoint import load_model
    from edgeconvnext.quantize.fake_quant import wrap
    from edgeconvnext.quantize.qat import TeacherLogits, distill_loss, make_loss

    torch.manual_seed(0)
    teacher = load_model(arch, None, num_classes=10, img_size=img).model.eval()
    x = torch.randn(batch, 3, img, img).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    names = [n for n, _ in teacher.named_modules() if n.endswith(("mlp.fc1", "mlp.fc2", "downsample.1"))]
    mods = dict(teacher.named_modules())
    scales = {n: (torch.tensor(0.05), mods[n].weight.detach().abs().flatten(1).amax(1) / 127) for n in names}
    teacher = teacher.to(memory_format=torch.channels_last)

    def no_grad_loss(model, xb, yb):  # the loss as QAT computed it before (teacher under no_grad)
        with torch.no_grad():
            t = teacher(xb)
        s = model(xb)
        return distill_loss(s, t, 2.0) * 0.5 + 0.5 * F.cross_entropy(s, yb), s

    def ce_loss(model, xb, yb):
        s = model(xb)
        return F.cross_entropy(s, yb), s

    cached = TeacherLogits(teacher, cache=True)
    cached(x)  # a later epoch without augmentation: every image's logits are in the cache

    def runner(student: torch.nn.Module, loss_fn):
        student = student.to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)

        def one() -> None:
            loss, _ = loss_fn(student, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()

        return one

    kd = make_loss(teacher, 0.5, 2.0, True)
    runs = {
        "fp32": runner(copy.deepcopy(teacher), ce_loss),
        "fp32+kd": runner(copy.deepcopy(teacher), kd),
        "qat frozen (no_grad teacher)": runner(wrap(teacher, scales, "frozen"), no_grad_loss),
        "qat frozen": runner(wrap(teacher, scales, "frozen"), kd),
        "qat frozen cached": runner(wrap(teacher, scales, "frozen"), make_loss(cached, 0.5, 2.0, True)),
        "qat learned": runner(wrap(teacher, scales, "learned"), kd),
    }
    if nncf:
        runs["nncf qat"] = runner(_nncf_model(teacher, img), kd)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(rounds):
        for k, fn in runs.items():
            # CPU seconds of this process (one thread): the shared machine's other load barely moves them,
            # where wall time swung 2x between rounds
            t0 = time.process_time()
            for _ in range(steps):
                fn()
            times[k].append((time.process_time() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def _nncf_model(model, img: int):
    import nncf
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    xs = [torch.randn(1, 3, img, img) for _ in range(4)]
    return nncf.quantize(
        copy.deepcopy(model).eval(),
        nncf.Dataset(xs),
        subset_size=4,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER,
        advanced_parameters=AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(per_channel=False)
        ),
    )


# ---- 2. accuracy ----------------------------------------------------------------------------------


def subset_folder(train: Path, per_class: int, dest: Path, skip: int = 0) -> Path:
    """A class-balanced subset of an ImageFolder as symlinks (files ``skip`` .. ``skip + per_class`` of each
    class, sorted: ``skip`` = the training subset's size gives validation images it does not hold)."""
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    for cls in sorted(p for p in train.iterdir() if p.is_dir()):
        (tmp / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[skip : skip + per_class]:
            (tmp / cls.name / f.name).symlink_to(f.resolve())
    tmp.rename(dest)
    return dest


def load_test(test: Path, ckpt: Path, limit: int | None, cache: Path | None = None):
    """The (seeded subset of the) test images, preprocessed as ``ckpt`` says, and their labels; with ``cache``
    (a .npz path) decoded once and reused by later invocations (a sweep: 10k PNGs take minutes on a loaded machine)."""
    if cache is not None and cache.exists():
        z = np.load(cache)
        return z["x"], z["y"]
    from edgeconvnext.data.folders import LabelledImages, load_images
    from edgeconvnext.models.checkpoint import load_model

    loaded = load_model(None, ckpt)
    ds = LabelledImages.discover(test, class_names=loaded.class_names)
    idx = np.arange(len(ds.paths))
    if limit is not None and limit < len(idx):
        idx = np.random.default_rng(0).permutation(len(idx))[:limit]
    x, used, _ = load_images([ds.paths[i] for i in idx], loaded.preprocess)
    lab = dict(zip(ds.paths, ds.labels, strict=False))
    y = np.asarray([lab[p] for p in used])
    if cache is not None:
        np.savez(cache, x=x, y=y)
    return x, y


def logits(onnx_path: Path, x: np.ndarray, exact: bool = False) -> np.ndarray:
    """onnxruntime logits: its default session (fused int8 kernels, as outliers.py measures) or, ``exact``, the
    Q/DQ graph as written (graph optimizations off: the integer arithmetic TensorRT carries out)."""
    from edgeconvnext.quantize.qat import ort_logits

    return ort_logits(onnx_path.read_bytes(), x, batch=256, exact=exact)


def compare(ref: np.ndarray, got: np.ndarray, y: np.ndarray) -> dict[str, float]:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return {
        "top1": float((got.argmax(1) == y).mean() * 100),
        "agreement": float((got.argmax(1) == ref.argmax(1)).mean() * 100),
        "cos_min": float(cos.min()),
    }


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli(*args: str, torchrun: int = 0) -> None:
    # passive OpenMP waits: on a shared, oversubscribed machine spinning threads made a QAT step 20 s instead of 0.5 s
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "edgeconvnext", "-q", *args]
    if torchrun:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
        cmd += ["-m", "edgeconvnext", "-q", *args]
    subprocess.run(cmd, check=True, env=env)


def stressed_checkpoint(ckpt: Path, magnitude: float, x: np.ndarray, work: Path) -> Path:
    """``ckpt`` with activation outliers of ``magnitude`` (benchmarks/outliers.py's FP32-equivalent
    reparametrisation), saved as a checkpoint the CLI loads; the FP32 logit change is checked there."""
    from outliers import stressed

    from edgeconvnext.models.checkpoint import load_model, save_checkpoint

    out = work / f"{ckpt.name.split('.')[0]}_x{magnitude:g}.safetensors"
    if not out.exists():
        base = load_model(None, ckpt)
        loaded, rel = stressed(base, magnitude, x)
        print(f"<!-- {ckpt.name} x{magnitude:g}: FP32 logits vs the checkpoint's {rel:.2e} relative -->", flush=True)
        save_checkpoint(out, loaded.model, loaded.arch, class_names=loaded.class_names, preprocess=loaded.preprocess)
    return out


def accuracy_row(
    model: str,
    ckpt: Path,
    policy: str,
    labels: bool,
    scales: str,
    ddp: int,
    a,
    data,
    work: Path,
    *,
    magnitude: float | None = None,
    smooth: bool = True,
):
    x, y = data
    tag = f"{model}_{policy}_{'lab' if labels else 'free'}_{scales}" + (f"_ddp{ddp}" if ddp else "")
    if a.val is not None:
        tag += f"_val{a.val_per_class or a.val.name}_e{a.epochs}s{a.steps}"
    if a.sweep:  # every setting of the run in the folder name: rows of a sweep never reuse each other's QAT
        tag += "_" + settings_tag(a)
    if magnitude is not None:
        tag += f"_x{magnitude:g}" + ("" if smooth else "_nosmooth")
        ckpt = stressed_checkpoint(ckpt, magnitude, x, work)
    out = work / tag
    common = ["-c", str(ckpt), "--calib-data", str(a.train), "--calib-size", str(a.calib_size), "--policy", policy]
    common += [] if smooth else ["--no-smooth"]
    # the PTQ model depends only on the checkpoint, policy and smoothing: one per such triple, shared by rows
    ptq_dir = out if not a.sweep else work / f"ptq_{ckpt.stem}_{policy}{'' if smooth else '_nosmooth'}"
    ptq = ptq_dir / "ptq.onnx"
    c0 = children_cpu()
    if not ptq.exists():
        cli("quantize", *common, "-o", str(ptq))
    ptq_cpu = children_cpu() - c0
    q = out / "qat.onnx"
    qat_args = ["--method", "qat", "--train-data", str(a.subset), "--epochs", str(a.epochs), "--steps", str(a.steps)]
    qat_args += ["--batch-size", str(a.batch_size), "--lr", str(a.lr), "--scales", scales]
    qat_args += [] if labels else ["--no-labels"]
    qat_args += [] if a.workers is None else ["--workers", str(a.workers)]
    qat_args += [] if a.val is None else ["--val-data", str(a.val)]
    qat_args += [] if a.temperature is None else ["--temperature", str(a.temperature)]
    qat_args += [] if a.ema_decay is None else ["--ema-decay", str(a.ema_decay)]
    qat_args += [] if a.distill_weight is None else ["--distill-weight", str(a.distill_weight)]
    qat_args += a.qat_args.replace(",", " ").split() if a.qat_args else []
    t0, c0 = time.perf_counter(), children_cpu()
    if not q.exists():
        cli("quantize", *common, *qat_args, "-o", str(q), torchrun=ddp)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    side = json.loads((out / "qat.onnx.json").read_text())
    fp32 = logits(ptq_dir / "ptq.fp32.onnx", x)
    r_ptq, r_qat = compare(fp32, logits(ptq, x), y), compare(fp32, logits(q, x), y)
    if a.exact:  # the Q/DQ graph as written too (the PTQ model's once per PTQ folder and test set)
        memo = ptq_dir / f"exact_{len(y)}.json"
        if not memo.exists():
            memo.write_text(json.dumps(compare(fp32, logits(ptq, x, exact=True), y)))
        r_ptq["exact"] = json.loads(memo.read_text())
        r_qat["exact"] = compare(fp32, logits(q, x, exact=True), y)
    hist = side["details"]["training"]["history"]
    return {
        "model": model,
        "policy": policy,
        "magnitude": magnitude,
        "smooth": smooth,
        "mode": side["details"]["training"]["mode"],
        "scales": scales,
        "procs": side["details"]["training"]["world_size"],
        "fp32": float((fp32.argmax(1) == y).mean() * 100),
        "ptq": r_ptq,
        "qat": r_qat,
        "s_per_epoch": sum(h["seconds"] for h in hist) / len(hist),
        "img_s": sum(h["images_per_s"] for h in hist) / len(hist),
        "images_per_epoch": hist[0]["images"],
        "best_epoch": side["details"]["training"]["best_epoch"],
        "history": hist,
        "wall": wall,
        "qat_cpu": cpu,  # CPU s of the whole quantize --method qat process (PTQ start, training, export); 0: reused
        "ptq_cpu": ptq_cpu,
    }


def settings_tag(a) -> str:
    """The QAT settings of this invocation, short (folder names and the sweep table's settings column)."""
    parts = [f"s{a.steps}", f"e{a.epochs}", f"lr{a.lr:g}", f"pc{a.per_class}"]
    parts += [] if a.temperature is None else [f"T{a.temperature:g}"]
    parts += [] if a.ema_decay is None else [f"ema{a.ema_decay:g}"]
    parts += [] if a.distill_weight is None else [f"dw{a.distill_weight:g}"]
    parts += [] if not a.qat_args else [a.qat_args.replace("--", "").replace(" ", "").replace(",", "_")]
    return "_".join(parts)


def sweep_table(a, ckpts: dict[str, Path], data) -> None:
    """One row per model x policy x label mode x scales at this invocation's settings (a sweep is several
    invocations): FP32 / PTQ / QAT top-1, drop, agreement, min cosine, CPU s, the exported epoch."""
    for m in a.models:
        for p in a.policies:
            for mode in a.modes:
                for sc in a.sweep_scales:
                    r = accuracy_row(m, ckpts[m], p, mode == "labels", sc, 0, a, data, a.work)
                    hist = " ".join(
                        f"{h['epoch']}:{h['val_top1']:.1f}/{h['val_agreement']:.2f}"
                        for h in r["history"]
                        if h.get("val_top1") is not None
                    )
                    ex = (
                        f" (exact {r['ptq']['exact']['agreement']:.2f}% / {r['qat']['exact']['agreement']:.2f}%, "
                        f"QAT top-1 {r['qat']['exact']['top1']:.2f}, min cos {r['ptq']['exact']['cos_min']:.4f} / "
                        f"{r['qat']['exact']['cos_min']:.4f})"
                        if a.exact
                        else ""
                    )
                    print(
                        f"| {m} | {p} | {r['mode']} | {sc} {settings_tag(a)} | {r['fp32']:.2f} | "
                        f"{r['ptq']['top1']:.2f} | {r['qat']['top1']:.2f} | {r['fp32'] - r['ptq']['top1']:+.2f} | "
                        f"{r['fp32'] - r['qat']['top1']:+.2f} | {r['ptq']['agreement']:.2f}% | "
                        f"{r['qat']['agreement']:.2f}% | {r['ptq']['cos_min']:.4f} | {r['qat']['cos_min']:.4f} | "
                        f"{r['qat_cpu']:.0f} | {r['best_epoch']} | {hist or '-'} |{ex}",
                        flush=True,
                    )


def stress_table(a, ckpts: dict[str, Path], data) -> None:
    """QAT on the outlier-stress models: PTQ with and without smoothing, QAT started from each."""
    print(
        f"\nOutlier-stress models (benchmarks/outliers.py's reparametrisation, 2 channels per LayerNorm x M): "
        f"PTQ and QAT as above ({a.steps} steps x batch {a.batch_size}, lr {a.lr:g}); smoothing off = "
        "--no-smooth (plain minmax). CPU s: user+system seconds of the whole quantize --method qat process.\n"
    )
    print(
        "| model | M | smoothing | policy | training | scales | FP32 | PTQ | QAT | PTQ drop | QAT drop | recovered "
        "| PTQ agree | QAT agree | PTQ min cos | QAT min cos | QAT CPU s | QAT wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [
        (m, mag, sm, p, mode == "labels", sc)
        for m in a.models
        for mag in a.stress
        for p in a.stress_policies
        for sm in a.stress_smooth
        for sc in a.stress_scales
        for mode in a.modes
    ]
    for m, mag, sm, p, lab, sc in rows:
        r = accuracy_row(m, ckpts[m], p, lab, sc, 0, a, data, a.work, magnitude=mag, smooth=sm == "on")
        ptq_drop, qat_drop = r["fp32"] - r["ptq"]["top1"], r["fp32"] - r["qat"]["top1"]
        rec = f"{(ptq_drop - qat_drop) / ptq_drop:.0%}" if ptq_drop > 0.3 else "-"
        print(
            f"| {m} | {mag:g}x | {sm} | {p} | {r['mode']} | {sc} | {r['fp32']:.2f} | {r['ptq']['top1']:.2f} | "
            f"{r['qat']['top1']:.2f} | {ptq_drop:+.2f} | {qat_drop:+.2f} | {rec} | {r['ptq']['agreement']:.2f}% | "
            f"{r['qat']['agreement']:.2f}% | {r['ptq']['cos_min']:.4f} | {r['qat']['cos_min']:.4f} | "
            f"{r['qat_cpu']:.0f} | {r['wall']:.0f} |",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/_work/qat"))
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST ImageFolder root (train/, test/)")
    ap.add_argument("--dataset", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--v2-checkpoint", type=Path, default=None)
    ap.add_argument("--v1-checkpoint", type=Path, default=None)
    ap.add_argument("--skip-steps", action="store_true", help="skip the step-time table")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the accuracy table")
    ap.add_argument("--step-archs", nargs="+", default=["convnextv2_atto", "convnextv2_nano"])
    ap.add_argument("--nncf", action="store_true", help="also time NNCF's torch QAT (compiles its extension)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step-steps", type=int, default=3, help="steps per variant and round")
    ap.add_argument("--models", nargs="+", default=["convnextv2_atto", "convnext_atto"])
    ap.add_argument("--policies", nargs="+", default=["convnext", "all"])
    ap.add_argument("--modes", nargs="+", default=["labels", "label-free"])
    ap.add_argument("--learned", action="store_true", help="add a --scales learned row per model (convnext, labels)")
    ap.add_argument("--ddp", action="store_true", help="add a 2-process torchrun row per model (convnext, labels)")
    ap.add_argument("--per-class", type=int, default=200, help="train subset: images per class")
    ap.add_argument(
        "--val-per-class",
        type=int,
        default=0,
        help="QAT --val-data: this many train images per class that the training subset does not hold (0: none)",
    )
    ap.add_argument(
        "--val-folder",
        type=Path,
        default=None,
        help="QAT --val-data: this labelled folder (e.g. the test set itself, to read every epoch's test "
        "top-1 and agreement from the sidecar's history); instead of --val-per-class",
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate a seeded subset of the 10k test images")
    ap.add_argument("--skip-plain", action="store_true", help="skip the unstressed accuracy table")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="instead of the plain table: one row per model x policy x mode x --sweep-scales at these settings, "
        "each in a folder named by its settings, the PTQ model shared",
    )
    ap.add_argument("--sweep-scales", nargs="+", default=["frozen"], choices=["frozen", "learned"])
    ap.add_argument("--sweep-header", action="store_true", help="print the sweep table's header")
    ap.add_argument(
        "--exact",
        action="store_true",
        help="sweep rows: also evaluate PTQ and QAT with the Q/DQ graph as written (onnxruntime graph "
        "optimizations off, TensorRT's arithmetic; its default session's fused int8 CPU kernels differ)",
    )
    ap.add_argument("--temperature", type=float, default=None, help="QAT --temperature (default: QAT's)")
    ap.add_argument("--ema-decay", type=float, default=None, help="QAT --ema-decay (default: off)")
    ap.add_argument("--distill-weight", type=float, default=None, help="QAT --distill-weight (default: QAT's)")
    ap.add_argument(
        "--qat-args",
        default="",
        help="further `quantize --method qat` options, one string, commas or spaces between them "
        "(--qat-args=--logit-mse=1,--warmup-steps=0)",
    )
    ap.add_argument("--workers", type=int, default=None, help="QAT data-loading processes (default: QAT's)")
    ap.add_argument("--stress", nargs="*", type=float, default=[], help="outlier magnitudes (e.g. 50 200)")
    ap.add_argument("--stress-policies", nargs="+", default=["convnext"])
    ap.add_argument("--stress-smooth", nargs="+", default=["off", "on"], choices=["on", "off"])
    ap.add_argument("--stress-scales", nargs="+", default=["frozen"], choices=["frozen", "learned"])
    a = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"# QAT benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC, torch {torch.__version__}, {os.cpu_count()} cpus\n")

    if not a.skip_steps:
        print(
            "CPU seconds per training step, 32 px, batch 32, AdamW, one thread, median of interleaved rounds; "
            "teacher: the library's (inference_mode); 'cached': a later epoch with --no-augment (teacher "
            "logits from the cache); 'no_grad': the teacher as QAT ran it before\n"
        )
        print(
            "| model | FP32 | FP32 + teacher | QAT frozen, no_grad teacher | QAT frozen | QAT frozen, cached teacher "
            "| QAT learned | NNCF QAT | QAT / FP32 | QAT / FP32+teacher | cached QAT / FP32 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for arch in a.step_archs:
            t = step_times(arch, 32, 32, a.step_steps, a.rounds, a.nncf)
            nn = f"{t['nncf qat']:.3f}" if "nncf qat" in t else "-"
            q, f = t["qat frozen"], t["fp32"]
            print(
                f"| {arch} | {f:.3f} | {t['fp32+kd']:.3f} | {t['qat frozen (no_grad teacher)']:.3f} | {q:.3f} "
                f"| {t['qat frozen cached']:.3f} | {t['qat learned']:.3f} | {nn} | {q / f:.2f}x "
                f"| {q / t['fp32+kd']:.2f}x | {t['qat frozen cached'] / f:.2f}x |",
                flush=True,
            )
        print()
    if a.skip_accuracy:
        return 0

    if a.data is None:
        from fashion_mnist import convert

        a.data = convert(a.dataset, a.work / "fashion_mnist")
    a.train = a.data / "train"
    a.subset = subset_folder(a.train, a.per_class, a.work / f"train_{a.per_class}_per_class")
    a.val = (
        subset_folder(a.train, a.val_per_class, a.work / f"val_{a.val_per_class}_after_{a.per_class}", a.per_class)
        if a.val_per_class
        else a.val_folder
    )
    demo = HERE.parent / "edgeconvnext" / "demo" / "convnextv2_atto_fmnist.safetensors"
    ckpts = {"convnextv2_atto": a.v2_checkpoint or (demo if a.stress else None), "convnext_atto": a.v1_checkpoint}
    for m in a.models:
        if ckpts.get(m) is None:
            ckpts[m] = a.work / f"{m}_fmnist_32px.pt"
            if not ckpts[m].exists():
                cli(
                    "finetune",
                    "-m",
                    m,
                    "--train-data",
                    str(a.train),
                    "--val-data",
                    str(a.data / "test"),
                    "-o",
                    str(ckpts[m]),
                    "--img-size",
                    "32",
                    "--epochs",
                    "2",
                )
    cache = a.work / f"test_{ckpts[a.models[0]].stem}_{a.test_limit or 'all'}.npz" if a.sweep else None
    data = load_test(a.data / "test", ckpts[a.models[0]], a.test_limit, cache)
    print(
        f"FP32 / PTQ / QAT top-1 on {len(data[1])} Fashion-MNIST test images (onnxruntime CPU); PTQ and QAT "
        f"start: {a.calib_size} calibration images from train, minmax; QAT: {a.epochs} epoch(s) of at most "
        f"{a.steps} steps x batch {a.batch_size} on a {a.per_class}-per-class train subset, AdamW lr {a.lr:g}, "
        "cosine, distillation (QAT's defaults unless a sweep row says otherwise; + labels 0.5/0.5)\n"
    )
    if a.stress:
        stress_table(a, ckpts, data)
    if a.sweep:
        if a.sweep_header:
            print(
                "| model | policy | training | settings | FP32 | PTQ | QAT | PTQ drop | QAT drop | PTQ agree "
                "| QAT agree | PTQ min cos | QAT min cos | QAT CPU s | best epoch | val top-1/agree per epoch |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        sweep_table(a, ckpts, data)
        return 0
    if a.skip_plain:
        return 0
    print(
        "| model | policy | training | scales | procs | FP32 | PTQ | QAT | PTQ drop | QAT drop | PTQ agree | QAT agree "
        "| PTQ min cos | QAT min cos | QAT s/epoch | images/epoch | img/s | best epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [(m, p, mode == "labels", "frozen", 0) for m in a.models for p in a.policies for mode in a.modes]
    if a.learned:
        rows += [(m, "convnext", True, "learned", 0) for m in a.models]
    if a.ddp:
        rows += [(m, "convnext", True, "frozen", 2) for m in a.models]
    for m, p, lab, sc, ddp in rows:
        r = accuracy_row(m, ckpts[m], p, lab, sc, ddp, a, data, a.work)
        print(
            f"| {m} | {p} | {r['mode']} | {sc} | {r['procs']} | {r['fp32']:.2f} | {r['ptq']['top1']:.2f} | "
            f"{r['qat']['top1']:.2f} | {r['fp32'] - r['ptq']['top1']:+.2f} | {r['fp32'] - r['qat']['top1']:+.2f} | "
            f"{r['ptq']['agreement']:.2f}% | {r['qat']['agreement']:.2f}% | {r['ptq']['cos_min']:.4f} | "
            f"{r['qat']['cos_min']:.4f} | {r['s_per_epoch']:.1f} | {r['images_per_epoch']} | {r['img_s']:.0f} "
            f"| {r['best_epoch']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
