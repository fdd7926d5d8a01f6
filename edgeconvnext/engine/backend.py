"""Which TensorRT builds the engine: its Python bindings when importable, else a trtexec binary.

Input: an optional ``--trtexec PATH``. Output: a :class:`Backend` (kind, TensorRT version, the module or
the binary's path), or BackendMissing naming what to install. TensorRT older than 10 is refused
(:func:`too_old`): edgeconvnext builds strongly typed networks only.

Usage::

    backend = select_backend(None)
    print(backend.kind, backend.version_str)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeconvnext.errors import BackendMissing

MIN_TRT_MAJOR = 10


def too_old(version: str) -> str:
    return (
        f"TensorRT {version} is older than {MIN_TRT_MAJOR}.0: edgeconvnext builds strongly typed networks "
        "(precision from the ONNX), which TensorRT 10 and 11 build; on Jetson install JetPack 6.1 or newer "
        "(TensorRT 10.3)"
    )


@dataclass
class Backend:
    """How the engine gets built: TensorRT's Python bindings or a trtexec binary."""

    kind: str  # "python" | "trtexec"
    version: tuple[int, ...] | None
    trtexec: Path | None = None
    module: Any = None

    @property
    def version_str(self) -> str | None:
        return ".".join(map(str, self.version)) if self.version else None


def import_tensorrt() -> tuple[Any, str | None]:
    """(the tensorrt module, None) or (None, why it cannot be imported)."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - ImportError or OSError from a broken libnvinfer
        return None, f"{type(e).__name__}: {e}"
    return trt, None


def trtexec_version(path: Path) -> tuple[int, ...] | None:
    """TensorRT version of a trtexec binary, from the banner ``--help`` prints."""
    from edgeconvnext.env.probes import parse_trt_version

    try:
        done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendMissing(f"trtexec at {path} cannot run ({e}); check the TensorRT installation") from None
    return parse_trt_version((done.stdout or "") + (done.stderr or ""))


def select_backend(trtexec: Path | None = None) -> Backend:
    """``--trtexec`` if given, else the Python bindings, else a trtexec found on PATH or in JetPack."""
    from edgeconvnext.env.probes import check_trtexec, find_trtexec, install_hint, parse_version, probe_jetson

    if trtexec is not None:
        given = check_trtexec(trtexec)
        return Backend("trtexec", trtexec_version(given), given)
    trt, why = import_tensorrt()
    if trt is not None:
        return Backend("python", parse_version(str(trt.__version__)), module=trt)
    path = find_trtexec()
    if path is not None:
        return Backend("trtexec", trtexec_version(path), path)
    raise BackendMissing(
        f"TensorRT is not available: no Python bindings ({why}) and no trtexec (not on PATH, "
        f"not at /usr/src/tensorrt/bin/trtexec); {install_hint(probe_jetson() is not None)}; "
        "'edgeconvnext build-engine MODEL.onnx --dry-run' prints the trtexec command without TensorRT"
    )
