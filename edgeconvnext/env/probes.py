"""Probes of this machine for building and running engines: GPU (nvidia-smi), driver, CUDA, TensorRT,
trtexec, Jetson model, JetPack, power mode, clocks, onnxruntime execution providers. Never imports torch:
the engine builder and the TensorRT runtime use these (``edgeconvnext doctor`` adds torch's view, see
edgeconvnext.env.doctor).

Every parser takes the text of a file or a command's output (tests feed sample contents); the probes
read the files and run the commands, each failure becoming "not found", never an exception.

Usage::

    jetson = probe_jetson(); trtexec = find_trtexec()
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
TRTEXEC_JETSON = Path("/usr/src/tensorrt/bin/trtexec")
CUDA_HOME_DEFAULT = Path("/usr/local/cuda")
DEVFREQ_DIR = Path("/sys/class/devfreq")
CPUFREQ_GLOB = "cpu[0-9]*/cpufreq/scaling_cur_freq"
CPU_DIR = Path("/sys/devices/system/cpu")

#: L4T (Jetson Linux) release -> JetPack, exact releases only (NVIDIA's JetPack archive, cross-checked
#: with jetson-stats' table). An unlisted revision reports the major series only.
L4T_TO_JETPACK: dict[str, str] = {
    "38.4.0": "7.1",
    "38.2.1": "7.0",
    "38.2.0": "7.0",
    "36.4.4": "6.2.1",
    "36.4.3": "6.2",
    "36.4.2": "6.1 (rev. 1)",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "36.2.0": "6.0 DP",
    "35.6.1": "5.1.5",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
    "35.4.1": "5.1.2",
    "35.3.1": "5.1.1",
    "35.2.1": "5.1",
    "35.1.0": "5.0.2",
}
L4T_MAJOR_TO_JETPACK = {"32": "4.x", "34": "5.0 DP", "35": "5.x", "36": "6.x", "38": "7.x", "39": "7.x"}
#: TensorRT each JetPack series ships (release notes); informative only
JETPACK_TENSORRT = {"6.0": "8.6", "6.1": "10.3", "6.2": "10.3", "5.1": "8.5", "7.0": "10.13"}

#: compute capability of Jetson integrated GPUs by module family (nvidia-smi is limited on Jetson)
JETSON_COMPUTE_CAPABILITY = {"orin": "8.7", "xavier": "7.2", "thor": "11.0"}


# ---------------------------------------------------------------------------------------------------
# parsers: text in, values out


def parse_nv_tegra_release(text: str) -> dict[str, str] | None:
    """``# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, ...`` -> {l4t: 36.4.0, release, revision, ...}."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    if not m:
        return None
    release, revision = m.group(1), m.group(2).rstrip(".")
    parts = revision.split(".")
    while len(parts) < 2:
        parts.append("0")
    out = {"release": release, "revision": revision, "l4t": ".".join([release] + parts[:2])}
    for key in ("GCID", "BOARD", "EABI", "DATE"):
        km = re.search(rf"{key}:\s*([^,\n]+)", text)
        if km:
            out[key.lower()] = km.group(1).strip()
    return out


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """JetPack for an L4T version ("36.4.0" -> "6.1"); an unknown revision gives "6.x (L4T 36.9.9)"."""
    if not l4t:
        return None
    if l4t in L4T_TO_JETPACK:
        return L4T_TO_JETPACK[l4t]
    major = l4t.split(".")[0]
    if major in L4T_MAJOR_TO_JETPACK:
        return f"{L4T_MAJOR_TO_JETPACK[major]} (L4T {l4t} is not in the table)"
    return None


def parse_dpkg_version(text: str) -> str | None:
    """``dpkg-query -W -f='${Version}' nvidia-jetpack`` output (``6.1+b123``) -> ``6.1``."""
    m = re.search(r"(\d+(?:\.\d+)+)", text or "")
    return m.group(1) if m else None


def parse_device_tree_model(raw: bytes | str) -> str | None:
    """/proc/device-tree/model holds a NUL-terminated string."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.replace("\x00", "").strip()
    return text or None


def jetson_family(model: str | None) -> str | None:
    """'orin' / 'xavier' / 'thor' / None from a device-tree model string."""
    if not model or "jetson" not in model.lower():
        return None
    low = model.lower()
    for fam in ("orin", "xavier", "thor"):
        if fam in low:
            return fam
    return "other"


def jetson_dla_cores(model: str | None) -> int | None:
    """DLA cores of a Jetson module (Orin Nano: 0; Orin NX 8GB: 1; Orin NX 16GB / AGX Orin / Xavier: 2)."""
    if not model:
        return None
    low = model.lower()
    if "orin nano" in low:
        return 0
    if "orin nx" in low:
        return 1 if "8gb" in low.replace(" ", "") else 2
    if "agx orin" in low or "xavier" in low:
        return 2
    return None


def parse_nvpmodel(text: str) -> dict[str, Any] | None:
    """``nvpmodel -q`` output (``NV Power Mode: MAXN_SUPER\\n2``) -> {mode: MAXN_SUPER, id: 2}."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text or "")
    if not m:
        return None
    out: dict[str, Any] = {"mode": m.group(1)}
    rest = text[m.end() :]
    idm = re.search(r"^\s*(\d+)\s*$", rest, re.MULTILINE)
    if idm:
        out["id"] = int(idm.group(1))
    return out


def parse_nvidia_smi_csv(text: str) -> list[dict[str, str]]:
    """``nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader``."""
    gpus = []
    for row in csv.reader(io.StringIO(text or "")):
        row = [c.strip() for c in row]
        if len(row) < 2 or not row[0]:
            continue
        gpu = {"name": row[0], "driver": row[1]}
        if len(row) > 2 and re.fullmatch(r"\d+\.\d+", row[2]):
            gpu["compute_capability"] = row[2]
        if len(row) > 3 and row[3] and "N/A" not in row[3]:
            gpu["memory"] = row[3]
        gpus.append(gpu)
    return gpus


def parse_nvidia_smi_cuda(text: str) -> str | None:
    """The driver's CUDA version from the ``nvidia-smi`` banner (``CUDA Version: 12.4``)."""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", text or "")
    return m.group(1) if m else None


def parse_nvcc_version(text: str) -> str | None:
    """``nvcc --version`` -> ``12.6`` (from ``release 12.6, V12.6.68``)."""
    m = re.search(r"release\s+([0-9.]+)", text or "")
    return m.group(1) if m else None


def parse_cuda_version_json(text: str) -> str | None:
    """/usr/local/cuda/version.json -> the cuda component's version."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    v = data.get("cuda", {}).get("version") if isinstance(data, dict) else None
    return str(v) if v else None


def parse_version(value: str | tuple[int, ...] | list[int] | None) -> tuple[int, ...] | None:
    """The one version parser: ``'10.3.0.30'`` / ``(10, 3, 0, 30)`` -> (10, 3, 0, 30); ``'10.3'`` -> (10, 3, 0);
    ``'11.1.0.post1'`` -> (11, 1, 0). Major, minor and patch (0 when not given), plus the build number when
    known; None when ``value`` does not start with a number.
    """
    if value is None:
        return None
    text = ".".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        return None
    nums = tuple(int(g) for g in m.groups() if g is not None)
    return nums + (0,) * (3 - len(nums)) if len(nums) < 3 else nums


def parse_trt_version(text: str) -> tuple[int, int, int] | None:
    """TensorRT version from trtexec output: ``[TensorRT v100300]`` banner or ``TensorRT version: 10.3.0``.

    The banner number is major*10000 + minor*100 + patch since TensorRT 10 (8.x used major*1000 + ...).
    """
    m = re.search(r"TensorRT version:\s*(\d+\.\d+\.\d+)", text or "")
    v3 = parse_version(m.group(1)) if m else None
    if v3 is not None:
        return v3[0], v3[1], v3[2]
    m = re.search(r"\[TensorRT v(\d+)\]", text or "")
    if m:
        v = int(m.group(1))
        if v >= 10000:
            return v // 10000, (v // 100) % 100, v % 100
        return v // 1000, (v // 100) % 10, v % 100
    return None


def parse_number(text: str) -> float | None:
    """The number in a sysfs file (devfreq cur_freq is in Hz, cpufreq scaling_cur_freq in kHz)."""
    try:
        return float(text.strip())
    except (ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------------
# probes: read files, run commands; never raise


def _read(path: Path, binary: bool = False) -> Any:
    try:
        return path.read_bytes() if binary else path.read_text(errors="replace")
    except OSError:
        return None


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if not cmd or shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = (done.stdout or "") + (done.stderr or "")
    return out if out.strip() else None


@dataclass
class Check:
    """One line of the doctor table."""

    name: str
    status: str  # "ok" | "missing" | "warn" | "info"
    value: str
    hint: str = ""


@dataclass
class Report:
    """Everything probed, as sections (dicts) and as table lines."""

    sections: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.sections, "checks": [asdict(c) for c in self.checks]}

    @property
    def can_build(self) -> bool:
        return not self.build_blockers()

    def build_blockers(self) -> list[str]:
        """Why engines cannot be built here (empty when they can): an NVIDIA GPU and TensorRT are both needed."""
        s = self.sections
        out = []
        if not (s.get("gpu") or {}).get("gpus") and not s.get("jetson"):
            out.append("no NVIDIA GPU")
        te = s.get("trtexec") or {}
        trtexec_ok = bool(te.get("ok", bool(te.get("path"))))  # sections without "ok": older probes found a path
        if not (s.get("tensorrt") or {}).get("python_version") and not trtexec_ok:
            out.append("no TensorRT bindings or working trtexec")
        return out


def _device_tree_model(root: Path) -> str | None:
    return parse_device_tree_model(_read(root / str(DEVICE_TREE_MODEL).lstrip("/"), binary=True) or b"")


def jetson_board(root: Path = Path("/")) -> str | None:
    """This Jetson's board model from the device tree ("NVIDIA Jetson AGX Orin Developer Kit"), None elsewhere;
    no subprocess (what the engine runtime compares with the board an engine was built on)."""
    model = _device_tree_model(root)
    return model if model and jetson_family(model) is not None else None


def probe_jetson(root: Path = Path("/")) -> dict[str, Any] | None:
    """Jetson model, L4T, JetPack, power mode and clocks; None when this is not a Jetson."""
    model = _device_tree_model(root)
    release_text = _read(root / str(NV_TEGRA_RELEASE).lstrip("/"))
    release = parse_nv_tegra_release(release_text) if release_text else None
    if jetson_family(model) is None and release is None:
        return None
    out: dict[str, Any] = {"model": model, "family": jetson_family(model), "dla_cores": jetson_dla_cores(model)}
    if release:
        out["l4t"] = release["l4t"]
        out["jetpack"] = jetpack_for_l4t(release["l4t"])
    dpkg = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    if dpkg and "no packages found" not in dpkg.lower():
        v = parse_dpkg_version(dpkg)
        if v:
            out["jetpack_package"] = v
            out["jetpack"] = v  # the installed meta-package is the stronger evidence
    nvp = _run(["nvpmodel", "-q"])
    out["power_mode"] = parse_nvpmodel(nvp) if nvp else None
    out["clocks_mhz"] = probe_clocks(root)
    return out


def probe_clocks(root: Path = Path("/")) -> dict[str, float]:
    """Current frequencies (MHz) readable without root: devfreq devices (GPU) and the CPU cores' maximum."""
    clocks: dict[str, float] = {}
    devfreq = root / str(DEVFREQ_DIR).lstrip("/")
    if devfreq.is_dir():
        for d in sorted(devfreq.iterdir()):
            hz = parse_number(_read(d / "cur_freq") or "")
            if hz is not None:
                name = d.name
                if "gpu" in name or "ga10b" in name or "gv11b" in name:
                    name = f"gpu ({d.name})"
                clocks[name] = round(hz / 1e6, 1)
    cpu_dir = root / str(CPU_DIR).lstrip("/")
    read = [parse_number(_read(p) or "") for p in sorted(cpu_dir.glob(CPUFREQ_GLOB))] if cpu_dir.is_dir() else []
    cpu = [c for c in read if c is not None]
    if cpu:
        clocks["cpu max"] = round(max(cpu) / 1e3, 1)
    return clocks


def probe_gpu() -> dict[str, Any]:
    """GPU name, driver, compute capability from nvidia-smi (no torch: see :func:`edgeconvnext.env.doctor.probe`).

    The engine builder uses this: importing torch and initialising CUDA in the builder's process costs
    seconds and memory an 8 GB Jetson needs for the build (Jetsons fall back to the model table in
    :func:`gpu_summary`).
    """
    out: dict[str, Any] = {"gpus": [], "source": None}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"])
    if smi:
        gpus = parse_nvidia_smi_csv(smi)
        if gpus:
            out["gpus"], out["source"] = gpus, "nvidia-smi"
        banner = _run(["nvidia-smi"])
        if banner:
            out["driver_cuda"] = parse_nvidia_smi_cuda(banner)
    return out


def probe_cuda() -> dict[str, Any]:
    out: dict[str, Any] = {}
    home = Path(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or CUDA_HOME_DEFAULT)
    vj = _read(home / "version.json")
    if vj:
        out["toolkit"] = parse_cuda_version_json(vj)
        out["home"] = str(home)
    nvcc = shutil.which("nvcc") or (str(home / "bin" / "nvcc") if (home / "bin" / "nvcc").is_file() else None)
    if nvcc:
        v = parse_nvcc_version(_run([nvcc, "--version"]) or "")
        if v:
            out["nvcc"] = v
    return out


def probe_tensorrt() -> dict[str, Any]:
    """TensorRT Python bindings (importable? version) and the libnvinfer shared library."""
    import ctypes.util
    import importlib.metadata as md

    out: dict[str, Any] = {}
    try:
        import tensorrt as trt  # type: ignore[import-not-found]

        out["python_version"] = str(trt.__version__)
    except Exception as e:  # noqa: BLE001 - ImportError, OSError from a broken libnvinfer
        out["python_error"] = f"{type(e).__name__}: {e}"
        for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-bindings", "tensorrt-cu13-bindings"):
            try:
                out["python_package"] = f"{dist} {md.version(dist)} (installed but not importable)"
                break
            except md.PackageNotFoundError:
                continue
    lib = ctypes.util.find_library("nvinfer")
    if lib:
        out["libnvinfer"] = lib
    return out


def find_trtexec(explicit: str | Path | None = None) -> Path | None:
    """``explicit`` if given (must be a file; returned absolute, so ``./trtexec`` runs that file and is not
    looked up on PATH as ``trtexec``), else trtexec on PATH, else JetPack's /usr/src/tensorrt/bin/trtexec."""
    if explicit is not None:
        p = Path(explicit)
        return p.absolute() if p.is_file() else None
    on_path = shutil.which("trtexec")
    if on_path:
        return Path(on_path)
    return TRTEXEC_JETSON if TRTEXEC_JETSON.is_file() else None


def check_trtexec(explicit: str | Path, option: str = "--trtexec") -> Path:
    """The absolute path of an explicit trtexec when it is an executable file; else UsageError with the reason
    (no such file, a folder, not executable). Checked when the command starts: ``run --trtexec missing`` used
    to run the whole pipeline and ``doctor --trtexec missing`` exited 0."""
    from edgeconvnext.errors import UsageError

    p = Path(explicit)
    if p.is_dir():
        inside = next((c for c in (p / "trtexec", p / "bin" / "trtexec") if c.is_file()), None)
        fix = f"use {option} {inside}" if inside else f"pass the trtexec file itself (e.g. {p / 'bin' / 'trtexec'})"
        raise UsageError(f"{option} {explicit} is a folder, not the trtexec binary: {fix}")
    if not p.exists():
        raise UsageError(f"{option} {explicit}: no such file; pass the path of TensorRT's trtexec binary")
    if not p.is_file():
        raise UsageError(f"{option} {explicit} is not a regular file; pass the path of TensorRT's trtexec binary")
    if not os.access(p, os.X_OK):
        raise UsageError(f"{option} {explicit} is not executable: chmod +x {explicit}, or pass another trtexec")
    return p.absolute()


def probe_trtexec(explicit: str | Path | None = None) -> dict[str, Any]:
    """{path, ok, version | error} of trtexec (``explicit``, else found as :func:`find_trtexec` does); {} when none
    is found. A file is accepted only when running ``PATH --help`` prints trtexec's TensorRT banner: any file at
    the path (/etc/passwd) is not a trtexec. An explicit path that does not exist is reported, not ignored."""
    out: dict[str, Any] = {}
    if explicit is not None:
        out["explicit"] = str(explicit)
        if not Path(explicit).is_file():
            return {**out, "ok": False, "error": f"--trtexec {explicit}: no such file"}
    path = find_trtexec(explicit)
    if path is None:
        return out
    out["path"] = str(path)
    try:
        done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return {**out, "ok": False, "error": f"{path} does not run: {getattr(e, 'strerror', None) or e}"}
    text = (done.stdout or "") + (done.stderr or "")
    v = parse_trt_version(text)
    if v is None and "TensorRT" not in text:
        return {**out, "ok": False, "error": f"{path} ran but printed no TensorRT banner: it is not trtexec"}
    out["ok"] = True
    if v:
        out["version"] = ".".join(map(str, v))
    return out


def probe_onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        return {"installed": False, "error": f"{type(e).__name__}: {e}"}
    return {"installed": True, "version": ort.__version__, "providers": list(ort.get_available_providers())}


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now (/proc/meminfo MemAvailable), None where unknown."""
    text = _read(Path("/proc/meminfo")) or ""
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse a request estimated at ``need`` bytes when the machine has less available (UsageError with both
    numbers): --latency-batch 100000 was OOM-killed after a minute with no message."""
    from edgeconvnext.errors import UsageError

    have = available_memory()
    if have is not None and need > have:
        raise UsageError(
            f"{what} needs about {_gib(need)} of memory and this machine has {_gib(have)} available: {fix}"
        )


def _gib(n: int) -> str:
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.1f} GiB" if n < 2**40 else f"{n / 2**40:.1f} TiB"


def install_hint(jetson: bool) -> str:
    """What to install for TensorRT, in one sentence."""
    if jetson:
        return (
            "TensorRT comes with JetPack: sudo apt install nvidia-jetpack (python3-libnvinfer for the "
            "bindings, libnvinfer-bin for /usr/src/tensorrt/bin/trtexec); a venv needs "
            "--system-site-packages to see the bindings"
        )
    return (
        "install TensorRT 10.x or 11.x on a machine with an NVIDIA GPU: pip install tensorrt (NVIDIA's "
        "wheels for your CUDA), or NVIDIA's tarball and pass its bin/trtexec with --trtexec PATH"
    )


def gpu_summary(report: Report | None = None) -> dict[str, Any]:
    """{name, compute_capability, driver} of GPU 0 (Jetson: from the model name), empty when none.

    Never imports torch (the engine builder calls it).
    """
    rep = report or Report(sections={"gpu": probe_gpu(), "jetson": probe_jetson()})
    gpus = rep.sections.get("gpu", {}).get("gpus") or []
    out: dict[str, Any] = dict(gpus[0]) if gpus else {}
    jet = rep.sections.get("jetson")
    if jet:
        out.setdefault("name", jet.get("model"))
        if jet.get("model"):
            out["board"] = jet["model"]  # CUDA calls every Orin "Orin": the board tells an AGX from a Nano
        fam = jet.get("family")
        if not out.get("compute_capability") and fam in JETSON_COMPUTE_CAPABILITY:
            out["compute_capability"] = JETSON_COMPUTE_CAPABILITY[fam]
    return {k: v for k, v in out.items() if v}
