"""What this machine offers for building and running engines: GPU, driver, CUDA, TensorRT, trtexec,
Jetson model, JetPack, power mode, clocks, onnxruntime execution providers, torch.

The probes themselves live in edgeconvnext.env.probes (no torch there: the engine builder and the runtime
use them); this module adds torch's view of the GPU and turns the sections into the checks the command
prints. Works without torch and without a GPU.

Input: nothing (the machine). Output: :func:`probe` returns a :class:`Report` (``.to_dict()`` for JSON,
``.checks`` for the table ``edgeconvnext doctor`` prints).

Usage::

    report = probe(); print(report.to_dict()["tensorrt"])
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

from edgeconvnext.env.probes import (  # noqa: F401 - the probes are part of doctor's API
    CPU_DIR,
    CPUFREQ_GLOB,
    CUDA_HOME_DEFAULT,
    DEVFREQ_DIR,
    DEVICE_TREE_MODEL,
    JETPACK_TENSORRT,
    JETSON_COMPUTE_CAPABILITY,
    L4T_MAJOR_TO_JETPACK,
    L4T_TO_JETPACK,
    NV_TEGRA_RELEASE,
    TRTEXEC_JETSON,
    Check,
    Report,
    _read,
    _run,
    find_trtexec,
    gpu_summary,
    install_hint,
    jetpack_for_l4t,
    jetson_dla_cores,
    jetson_family,
    parse_cuda_version_json,
    parse_device_tree_model,
    parse_dpkg_version,
    parse_number,
    parse_nv_tegra_release,
    parse_nvcc_version,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_cuda,
    parse_nvpmodel,
    parse_trt_version,
    probe_clocks,
    probe_cuda,
    probe_gpu,
    probe_jetson,
    probe_onnxruntime,
    probe_tensorrt,
    probe_trtexec,
)

log = logging.getLogger(__name__)


def probe_torch() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return {"installed": False, "error": f"{type(e).__name__}: {e}"}
    info: dict[str, Any] = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            major, minor = torch.cuda.get_device_capability(0)
            info["device_name"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = f"{major}.{minor}"
    except Exception as e:  # noqa: BLE001
        info["cuda_available"] = False
        info["error"] = f"{type(e).__name__}: {e}"
    return info


def probe_gpu_with_torch() -> dict[str, Any]:
    """:func:`probe_gpu` (nvidia-smi), completed by torch.cuda where nvidia-smi found nothing."""
    out = probe_gpu()
    torch_info = probe_torch()
    out["torch"] = torch_info
    if not out["gpus"] and torch_info.get("cuda_available"):
        out["gpus"] = [
            {"name": torch_info.get("device_name"), "compute_capability": torch_info.get("compute_capability")}
        ]
        out["source"] = "torch.cuda"
    return out


def probe(trtexec: str | Path | None = None) -> Report:
    """Probe everything; build the table lines with a hint for each missing piece."""
    sections: dict[str, Any] = {
        "host": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version()},
        "jetson": probe_jetson(),
        "gpu": probe_gpu_with_torch(),
        "cuda": probe_cuda(),
        "tensorrt": probe_tensorrt(),
        "trtexec": probe_trtexec(trtexec),
        "onnxruntime": probe_onnxruntime(),
    }
    rep = Report(sections=sections)
    rep.checks = build_checks(sections)
    return rep


def build_checks(s: dict[str, Any]) -> list[Check]:
    """Table lines from probed sections (pure: tests feed sections)."""
    jet = s.get("jetson")
    gpu = s.get("gpu") or {}
    return [
        *_gpu_checks(gpu, jet),
        *_cuda_checks(s.get("cuda") or {}, gpu),
        *_tensorrt_checks(s.get("tensorrt") or {}, s.get("trtexec") or {}, jet),
        *_jetson_checks(jet),
        *_library_checks(s.get("onnxruntime") or {}, gpu.get("torch") or {}),
    ]


def _gpu_checks(gpu: dict[str, Any], jet: dict[str, Any] | None) -> list[Check]:
    checks: list[Check] = []
    gpus = gpu.get("gpus") or []
    if gpus:
        g = gpus[0]
        desc = g.get("name") or "?"
        if g.get("compute_capability"):
            desc += f", sm {g['compute_capability']}"
        if g.get("driver"):
            desc += f", driver {g['driver']}"
        checks.append(Check("GPU", "ok", desc + f" ({gpu.get('source')})"))
    elif jet:
        checks.append(Check("GPU", "info", f"integrated ({jet.get('model')}); nvidia-smi/torch.cuda did not report it"))
    else:
        checks.append(
            Check(
                "GPU",
                "missing",
                "no NVIDIA GPU found (nvidia-smi absent, torch.cuda unavailable)",
                "TensorRT needs an NVIDIA GPU and its driver",
            )
        )
    return checks


def _cuda_checks(cuda: dict[str, Any], gpu: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    cuda_desc = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("toolkit", cuda.get("toolkit")),
            ("nvcc", cuda.get("nvcc")),
            ("driver supports", gpu.get("driver_cuda")),
        )
        if v
    )
    checks.append(
        Check(
            "CUDA",
            "ok" if cuda_desc else "missing",
            cuda_desc or "no CUDA toolkit found",
            "" if cuda_desc else "TensorRT's wheels bring the CUDA runtime they need; the toolkit is optional",
        )
    )
    return checks


def _tensorrt_checks(trt: dict[str, Any], te: dict[str, Any], jet: dict[str, Any] | None) -> list[Check]:
    checks: list[Check] = []
    if trt.get("python_version"):
        checks.append(Check("TensorRT (Python)", "ok", trt["python_version"]))
    else:
        checks.append(
            Check(
                "TensorRT (Python)",
                "missing",
                trt.get("python_package") or trt.get("python_error") or "not installed",
                install_hint(bool(jet)),
            )
        )
    if trt.get("libnvinfer"):
        checks.append(Check("libnvinfer", "ok", trt["libnvinfer"]))
    if te.get("error"):
        checks.append(
            Check("trtexec", "missing", te["error"], "give the trtexec of a TensorRT install: --trtexec PATH")
        )
    elif te.get("path"):
        checks.append(
            Check("trtexec", "ok", f"{te['path']}" + (f" (TensorRT {te['version']})" if te.get("version") else ""))
        )
    else:
        checks.append(
            Check(
                "trtexec",
                "missing",
                "not on PATH nor at /usr/src/tensorrt/bin/trtexec",
                "optional when the Python bindings work; else give it with --trtexec PATH",
            )
        )
    return checks


def _jetson_checks(jet: dict[str, Any] | None) -> list[Check]:
    checks: list[Check] = []
    if jet:
        checks.append(
            Check("Jetson", "ok", f"{jet.get('model')}, L4T {jet.get('l4t', '?')}, JetPack {jet.get('jetpack', '?')}")
        )
        dla = jet.get("dla_cores")
        if dla is not None:
            checks.append(
                Check(
                    "DLA",
                    "info",
                    f"{dla} core(s); ConvNeXt cannot run on DLA (LayerNormalization, "
                    "Erf, Sqrt, Div unsupported): engines build for the GPU",
                )
            )
        pm = jet.get("power_mode")
        checks.append(
            Check(
                "power mode",
                "ok" if pm else "warn",
                f"{pm['mode']} (id {pm.get('id', '?')})" if pm else "unknown (nvpmodel -q not readable)",
                "" if pm else "run 'sudo nvpmodel -q' to see it; benchmark in MAXN with jetson_clocks",
            )
        )
        clocks = jet.get("clocks_mhz") or {}
        if clocks:
            checks.append(Check("clocks", "info", ", ".join(f"{k} {v:g} MHz" for k, v in clocks.items())))
    else:
        checks.append(Check("Jetson", "info", "not a Jetson"))
    return checks


def _library_checks(ort: dict[str, Any], tor: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    if ort.get("installed"):
        checks.append(Check("onnxruntime", "ok", f"{ort['version']}: {', '.join(ort.get('providers', []))}"))
    else:
        checks.append(
            Check("onnxruntime", "missing", ort.get("error", "not installed"), "pip install 'edgeconvnext[onnx]'")
        )
    if tor.get("installed"):
        checks.append(
            Check(
                "torch",
                "ok",
                f"{tor['version']} (CUDA build {tor.get('cuda_build') or 'none'}, "
                f"CUDA {'available' if tor.get('cuda_available') else 'not available'})",
            )
        )
    else:
        checks.append(
            Check(
                "torch",
                "missing",
                tor.get("error", "not installed"),
                "needed for export/quantize and the TensorRT runner's CUDA buffers",
            )
        )
    return checks
