"""Small shared pieces for artifacts: hashing, atomic writes and JSON sidecars.

Every stage writes its output through :func:`atomic_output` so a failure never leaves a file that
looks complete, and writes a sidecar ``<output>.json`` with provenance (inputs, config, versions).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (kept beside the artifact, never inside it)."""
    p = Path(path)
    return p.with_name(p.name + ".json")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; move it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; artifacts are shared between users/machines, so give them the umask default.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | Path, data: Any) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    sc = sidecar_path(path)
    if not sc.is_file():
        return None
    try:
        return json.loads(sc.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def environment() -> dict[str, str]:
    """Library versions and host, for provenance. Only reports what is already importable."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("edgeconvnext", "torch", "onnx", "onnxruntime", "nncf", "tensorrt"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return env
