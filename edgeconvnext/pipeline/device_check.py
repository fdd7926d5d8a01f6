"""``edgeconvnext device-check BUNDLE``: on the device, build every engine of a bundle, validate and time it,
describe the device, and append all of it to the bundle's report. Needs TensorRT, CUDA, numpy, Pillow and
onnx; never torch.

Input: a bundle written by ``edgeconvnext run`` (edgeconvnext.pipeline.bundle). Output, in the bundle:
``engines/NAME.engine`` (+ sidecar; strongly typed, the recipe's profile and workspace, through
edgeconvnext.engine), and a device section appended to ``report.json`` / ``report.md`` (device, JetPack,
L4T, TensorRT, CUDA, power mode, clocks; one row per engine x batch).

Steps: verify the manifest (a missing or changed file is named, by hash) -> TensorRT present? (else
BackendMissing, exit 8) -> doctor -> build each engine (skipped when its record matches: same ONNX, settings
and TensorRT) -> accuracy on the bundle's images (or ``val_data``) with TensorRT's Python bindings and the
runtime's CUDA buffers (cuda-python, or torch when that is what the device has), against the FP32 ONNX on
onnxruntime when installed -> latency at the recipe's batches (the runtime's CUDA-graph benchmark; with
trtexec alone, ``trtexec --loadEngine --useCudaGraph --useSpinWait --noDataTransfers``) -> report.

Usage::

    result = device_check(DeviceCheckOptions(bundle=Path("bundle")))
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.artifacts import Sidecar, Skipped, sha256_file
from edgeconvnext.errors import BackendMissing, EdgeError, UsageError

#: trtexec's timing flags, as KNOWLEDGE.md advises: CUDA graphs, spin-wait, no host transfers
TRTEXEC_TIMING = ("--useCudaGraph", "--useSpinWait", "--noDataTransfers", "--percentile=90,99")
DEFAULT_BATCHES = (1, 32)


@dataclass
class DeviceCheckOptions:
    bundle: Path
    trtexec: Path | None = None
    val_data: Path | None = None  # instead of the bundle's images/
    latency_batches: list[int] | None = None
    warmup: int | None = None
    iters: int | None = None
    force: bool = False
    step: Callable[[str], None] = lambda text: None


@dataclass
class DeviceCheckResult:
    bundle: Path
    section: dict[str, Any]
    engines: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def device_info(report: Any) -> dict[str, Any]:
    """The device section's header from doctor's probes: what ran the engines."""
    s = report.sections
    gpus = (s.get("gpu") or {}).get("gpus") or []
    gpu = gpus[0] if gpus else {}
    jet = s.get("jetson") or {}
    cuda = s.get("cuda") or {}
    trt = s.get("tensorrt") or {}
    return {
        "name": jet.get("model") or gpu.get("name") or "unknown device",
        "gpu": gpu.get("name"),
        "compute_capability": gpu.get("compute_capability"),
        "driver": gpu.get("driver"),
        "jetson": jet.get("model"),
        "jetpack": jet.get("jetpack"),
        "l4t": jet.get("l4t"),
        "power_mode": jet.get("power_mode"),
        "clocks": jet.get("clocks_mhz"),
        "tensorrt": trt.get("python_version") or (s.get("trtexec") or {}).get("version"),
        "cuda": (cuda.get("toolkit") or cuda.get("nvcc") or cuda.get("driver_cuda")),
    }


def parse_trtexec_timing(text: str) -> dict[str, float] | None:
    """p50/p90/p99 ms and throughput from trtexec's performance summary (``GPU Compute Time: ... median = X
    ms, percentile(90%) = Y ms, percentile(99%) = Z ms`` and ``Throughput: Q qps``); None if absent."""
    line = next((ln for ln in text.splitlines() if "GPU Compute Time:" in ln), None)
    if line is None:
        return None

    def num(pattern: str) -> float | None:
        m = re.search(pattern + r"\s*=\s*([0-9.eE+-]+)\s*ms", line)
        return float(m.group(1)) if m else None

    out = {"p50_ms": num(r"median"), "p90_ms": num(r"percentile\(90%\)"), "p99_ms": num(r"percentile\(99%\)")}
    out["mean_ms"] = num(r"mean")
    m = re.search(r"Throughput:\s*([0-9.eE+-]+)\s*qps", text)
    out["qps"] = float(m.group(1)) if m else None
    if out["p50_ms"] is None:
        return None
    return out  # type: ignore[return-value]


def trtexec_latency(
    trtexec: Path, engine: Path, input_name: str, chw: tuple[int, int, int], batch: int, iters: int, warmup_ms: int
) -> dict[str, Any]:
    """One latency entry (as validate's) from ``trtexec --loadEngine`` at ``batch``."""
    from edgeconvnext.engine.trtexec import _shape_arg, format_command

    cmd = [
        str(trtexec),
        f"--loadEngine={engine}",
        f"--shapes={_shape_arg(input_name, [batch, *chw])}",
        *TRTEXEC_TIMING,
        f"--iterations={iters}",
        f"--warmUp={warmup_ms}",
        "--duration=0",
        "--avgRuns=1",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendMissing(f"cannot run {trtexec}: {e}") from None
    text = (done.stdout or "") + (done.stderr or "")
    t = parse_trtexec_timing(text)
    if done.returncode != 0 or t is None:
        tail = " / ".join(text.strip().splitlines()[-3:])
        raise EdgeError(f"trtexec could not time {engine.name} at batch {batch} (exit {done.returncode}): {tail}")
    return {
        "batch": batch,
        "p50_ms": t["p50_ms"],
        "p90_ms": t["p90_ms"],
        "p99_ms": t["p99_ms"],
        "mean_ms": t["mean_ms"],
        "images_per_s": t["qps"] * batch if t["qps"] else batch * 1000.0 / t["p50_ms"],
        "iters": iters,
        "warmup": warmup_ms,
        "timer": "trtexec GPU compute time",
        "cuda_graph": True,
        "command": format_command(cmd),
    }


def _runtime_missing() -> str | None:
    """Why engines cannot be run from Python here (None: they can): TensorRT's bindings plus CUDA buffers."""
    from edgeconvnext.engine.build import import_tensorrt

    trt, why = import_tensorrt()
    if trt is None:
        return f"TensorRT's Python bindings are not importable ({why})"
    from edgeconvnext.runtime.cuda import cuda_buffers_missing

    return cuda_buffers_missing()


def _images(bundle: Path, manifest: dict[str, Any], val_data: Path | None) -> tuple[Path | None, str | None]:
    if val_data is not None:
        from edgeconvnext.data.folders import check_folder

        return check_folder(val_data, "--val-data", "validation images"), None
    if manifest.get("images"):
        return bundle / manifest["images"]["folder"], None
    return None, "the bundle carries no validation images (run with --bundle-images N, or give --val-data DIR)"


def device_check(opts: DeviceCheckOptions) -> DeviceCheckResult:
    from edgeconvnext.engine.build import BuildRequest, build_engine, select_backend, summarize_onnx
    from edgeconvnext.env.doctor import probe
    from edgeconvnext.pipeline.bundle import verify_bundle
    from edgeconvnext.pipeline.report import rows_from_validation
    from edgeconvnext.pipeline.state import Ledger, stage_key

    t0 = time.perf_counter()
    step = opts.step
    bundle = Path(opts.bundle)
    step(f"verifying {bundle} against its manifest (sha256)")
    manifest = verify_bundle(bundle)
    try:
        backend = select_backend(opts.trtexec)
    except BackendMissing as e:
        raise BackendMissing(f"device-check needs TensorRT on this machine: {e}") from None
    step("probing the device (doctor)")
    doc = probe(opts.trtexec if opts.trtexec else backend.trtexec)
    dev = device_info(doc)
    dev["tensorrt"] = dev.get("tensorrt") or backend.version_str
    b = manifest.get("build") or {}
    ledger = Ledger(bundle)
    notes: list[str] = []
    engines: list[tuple[dict[str, Any], Path, Any]] = []
    for o in manifest["onnx"]:
        onnx = bundle / o["path"]
        dest = bundle / "engines" / (onnx.name[: -len(".onnx")] + ".engine")
        req = BuildRequest(
            onnx=onnx,
            output=dest,
            fp16=False,
            batch=b.get("batch"),
            workspace_mib=int(b.get("workspace_mib") or 1024),
            opt_level=int(b["opt_level"]) if b.get("opt_level") is not None else 3,
            trtexec=opts.trtexec,
        )
        key = stage_key(
            f"engine.{o['key']}",
            {
                "batch": req.batch,
                "workspace": req.workspace_mib,
                "opt": req.opt_level,
                "trt": backend.version_str,
                "gpu": dev.get("gpu"),
                "cc": dev.get("compute_capability"),
            },
            {"onnx": onnx},
        )
        name = f"engine.{o['key']}"
        if not opts.force and ledger.match(name, key) is not None:
            step(f"{dest.name}: up to date")
        else:
            ledger.forget(name)
            r = build_engine(req, step=step)
            assert not isinstance(r, Skipped)  # reuse=False: the ledger decides skipping
            ledger.record(name, key, [r.engine, r.sidecar], {"precision": r.precision})
        sc = Sidecar.read(dest)
        side = sc.details if sc is not None else {}  # what build-engine recorded (precision, profile...)
        engines.append((o, dest, side))

    images, why = _images(bundle, manifest, opts.val_data)
    missing = _runtime_missing()
    batches = opts.latency_batches or manifest.get("latency_batches") or list(DEFAULT_BATCHES)
    rows: list[dict[str, Any]] = []
    if missing is None:
        rows = _validate_python(engines, bundle, manifest, images, batches, opts, notes, step)
        if why:
            notes.append(f"accuracy not measured: {why}")
    else:
        if backend.trtexec is None:
            raise BackendMissing(
                f"device-check cannot run the engines: {missing}; install cuda-python (pip install cuda-python)"
            )
        notes.append(f"accuracy not measured: {missing}; latency from trtexec ({backend.trtexec})")
        info = summarize_onnx(bundle / manifest["onnx"][0]["path"])
        for _, dest, side in engines:
            lat = []
            for bsz in batches:
                step(f"timing {dest.name} at batch {bsz} with trtexec")
                lat.append(
                    trtexec_latency(
                        backend.trtexec, dest, info.input_name, info.chw, bsz, opts.iters or 200, opts.warmup or 500
                    )
                )
            v = {
                "backend": "tensorrt (trtexec)",
                "device": "cuda",
                "device_name": dev.get("gpu") or dev["name"],
                "precision": side.get("precision"),
                "latency": lat,
            }
            rows += rows_from_validation(
                v, artifact=dest.name, kind="engine", size_bytes=dest.stat().st_size, source="device"
            )
    section = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": dev,
        "rows": rows,
        "notes": notes,
        "engines": [
            {"path": str(d.relative_to(bundle)), "sha256": sha256_file(d), "precision": s.get("precision")}
            for _, d, s in engines
        ],
        "doctor": doc.to_dict(),
    }
    step("appending the device section to the bundle's report")
    _append(bundle, section)
    return DeviceCheckResult(bundle, section, [d for _, d, _ in engines], time.perf_counter() - t0)


def _validate_python(engines, bundle, manifest, images, batches, opts, notes, step) -> list[dict[str, Any]]:
    """Accuracy and latency of each engine through edgeconvnext.evaluate.validate (TensorRT runner)."""
    from edgeconvnext.evaluate.validate import LatencyOptions, validate
    from edgeconvnext.pipeline.report import rows_from_validation

    baseline = bundle / manifest["baseline"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        baseline = None
        notes.append(
            "drop and agreement not measured: onnxruntime is not installed (the FP32 ONNX baseline runs on it)"
        )
    lat = LatencyOptions(batches=list(batches), warmup=opts.warmup, iters=opts.iters)
    rows = []
    for _, dest, _ in engines:
        step(f"validating {dest.name} on TensorRT")
        rep = validate(
            dest,
            images,
            baseline=baseline if images is not None else None,
            latency=lat,
            backend="tensorrt",
            device="cuda",
        )
        assert not isinstance(rep, Skipped)  # reuse=False
        rows += rows_from_validation(
            rep.to_dict(), artifact=dest.name, kind="engine", size_bytes=dest.stat().st_size, source="device"
        )
    return rows


def _append(bundle: Path, section: dict[str, Any]) -> None:
    from edgeconvnext.artifacts import atomic_output, write_json_atomic
    from edgeconvnext.pipeline.report import render_html, render_markdown

    rp = bundle / "report.json"
    try:
        rep = json.loads(rp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {rp} ({e}); copy the bundle again") from None
    rep.setdefault("device_sections", []).append(section)
    rep["figures"] = []  # the workstation's plots/ did not travel with the bundle
    with atomic_output(bundle / "report.md") as tmp:
        tmp.write_text(render_markdown(rep))
    with atomic_output(bundle / "report.html") as tmp:
        tmp.write_text(render_html(rep, {}))
    write_json_atomic(rp, rep)
