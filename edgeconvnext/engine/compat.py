"""Plan files: the header TensorRT writes, and whether a built engine can run here.

Input: an engine file's first bytes, its sidecar, and this machine's TensorRT version and GPU. Output:
the TensorRT version in the plan header (:func:`read_plan_header`, what ``trtexec --getPlanVersionOnly``
reads), a refusal of a file that is not a plain plan (:func:`check_plan_file`), and a
:class:`Compatibility` verdict (problems refuse, warnings are logged). Plain Python: tested without TensorRT.

Usage::

    header = check_plan_file(Path("nano_int8.engine"))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.env.probes import parse_version
from edgeconvnext.errors import BuildError

#: first 4 bytes of a serialized TensorRT plan (little-endian 0x74727466), checked after every build
PLAN_TAG = b"ftrt"


def read_plan_header(data: bytes) -> tuple[int, int, int, int] | None:
    """TensorRT version (major, minor, patch, build) stored in a plan's header, None if not a plan.

    A plan starts with the u32 tag 0x74727466 (``ftrt`` in file order) and a u32 serialization version;
    for serialization version 0, bytes 24..27 hold the TensorRT version a.b.c.d. This is exactly what
    ``trtexec --getPlanVersionOnly`` reads (samples/common/sampleEngines.cpp printPlanVersion, identical in
    10.3 and 11.1; "supported only for engines created with 8.6 and forward").
    """
    if len(data) < 28 or data[:4] != PLAN_TAG:
        return None
    if int.from_bytes(data[4:8], "little") != 0:
        return None
    return data[24], data[25], data[26], data[27]


def check_plan_file(path: Path) -> tuple[int, int, int, int] | None:
    """Refuse a file that is not a TensorRT plan (e.g. bytes prepended); its header version or None."""
    with open(path, "rb") as f:
        head = f.read(28)
    if head[:4] != PLAN_TAG:
        raise BuildError(
            f"{path} is not a TensorRT plan (it does not start with the plan tag); "
            "rebuild it with edgeconvnext build-engine or trtexec --saveEngine"
        )
    return read_plan_header(head)


def _fmt(v: tuple[int, ...] | None) -> str:
    return ".".join(map(str, v)) if v else "?"


@dataclass
class Compatibility:
    """Problems refuse the engine; warnings are logged."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _name_words(name: str) -> set[str]:
    words = re.sub(r"\(.*?\)", " ", name.lower())  # "Orin (nvgpu)": the driver's note, not the model
    return set(re.findall(r"[a-z0-9]+", words)) - {"nvidia"}


def same_gpu(built: dict[str, Any], gpu_name: str | None, board: str | None = None) -> bool:
    """Whether the GPU an engine was built on (its sidecar's ``gpu``) is this one, by name: the same words
    (case, "NVIDIA" and parenthesised notes aside: "NVIDIA H100 PCIe" is not "NVIDIA H100 80GB HBM3", an RTX 3060
    is not a 3060 Ti). On a Jetson CUDA calls every Orin "Orin", so the board models decide where both sides
    recorded one (an AGX Orin is not an Orin Nano); an older sidecar's name matches this machine's CUDA name or
    its board model."""
    built_board = built.get("board")
    if built_board and board:
        return _name_words(str(built_board)) == _name_words(board)
    name = built.get("name")
    if not name:
        return True  # nothing recorded to compare
    return any(_name_words(str(name)) == _name_words(here) for here in (gpu_name, board) if here)


def check_compatibility(
    sidecar: dict[str, Any] | None,
    *,
    trt_version: str | None,
    compute_capability: str | None,
    gpu_name: str | None = None,
    header_version: tuple[int, ...] | None = None,
    engine: str = "the engine",
    board: str | None = None,
) -> Compatibility:
    """Compare what built the engine (plan header, else sidecar) with this machine's TensorRT and GPU.
    ``sidecar`` is the engine's sidecar (as a dict) or its ``details`` (tensorrt, gpu, source_onnx).

    By default an engine deserializes only in the TensorRT that built it, build number included (TensorRT
    "Version Compatibility" and DRIVE OS release notes; we never build version-compatible engines). A
    different major.minor.patch is refused here; a different build number of the same release only
    warns, because the build is not always known on both sides (pip's ``tensorrt.__version__`` has none)
    and TensorRT's own deserialization check then decides with its message.
    """
    if sidecar is not None and "details" in sidecar and "stage" in sidecar:  # a whole sidecar: its details
        sidecar = sidecar["details"]
    res = Compatibility()
    here = parse_version(trt_version)
    rebuild = "rebuild it here from its ONNX with 'edgeconvnext build-engine'"
    if sidecar is not None:
        src = (sidecar.get("source_onnx") or {}).get("path")
        if src:
            rebuild = f"rebuild it here: edgeconvnext build-engine {src}"
    # the header is read from the engine file itself; the sidecar could belong to an older build
    built_trt = parse_version(header_version)
    if built_trt is None and sidecar is not None:
        built_trt = parse_version((sidecar.get("tensorrt") or {}).get("version"))
    if built_trt is not None and here is not None:
        if built_trt[:3] != here[:3]:
            res.problems.append(
                f"{engine} was built with TensorRT {_fmt(built_trt)} and this machine has TensorRT "
                f"{_fmt(here)}: a TensorRT engine loads only in the TensorRT version that built "
                f"it; {rebuild}"
            )
        elif len(built_trt) > 3 and len(here) > 3 and built_trt[3] != here[3]:
            res.warnings.append(
                f"{engine} was built with TensorRT {_fmt(built_trt)} and this machine has "
                f"{_fmt(here)} (another build of the same release): TensorRT may refuse it; "
                f"if it does, {rebuild}"
            )
    if sidecar is None:
        res.warnings.append(f"{engine} has no sidecar (.engine.json): its GPU could not be checked")
        return res
    gpu = sidecar.get("gpu") or {}
    built_cc, built_name = gpu.get("compute_capability"), gpu.get("name")
    if built_cc and compute_capability and str(built_cc) != str(compute_capability):
        res.problems.append(
            f"{engine} was built for compute capability {built_cc} ({built_name or 'unknown GPU'}) "
            f"and this GPU is {compute_capability} ({gpu_name or 'unknown'}): its kernels cannot run "
            f"here; {rebuild}"
        )
    elif built_name and (gpu_name or board) and not same_gpu(gpu, gpu_name, board):
        res.warnings.append(
            f"{engine} was built on {gpu.get('board') or built_name} and runs on {board or gpu_name} (same compute "
            f"capability {compute_capability}): it runs, but its kernels were timed on the other GPU; "
            "rebuild for best speed"
        )
    return res
