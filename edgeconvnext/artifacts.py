"""Small shared pieces for artifacts: hashing, atomic writes and JSON sidecars.

Every stage writes its output through :func:`atomic_output` so a failure never leaves a file that
looks complete, and writes a sidecar ``<output>.json`` with provenance (inputs, config, versions).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeconvnext.errors import UsageError


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
    tmp_path = _temp_beside(dest)
    # mkstemp creates 0600; artifacts are shared between users/machines, so give them the umask default.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        try:
            yield tmp_path
        except OSError as e:
            if e.errno in _FULL_ERRNOS:  # the disk filled up while writing: not a bug of the stage
                raise UsageError(
                    f"cannot write {dest}: {e.strerror}; free space or choose another output path"
                ) from None
            raise
        try:
            os.replace(tmp_path, dest)
        except OSError as e:  # e.g. dest became a folder meanwhile
            raise UsageError(f"cannot write {dest}: {e.strerror}; choose another output path") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _temp_beside(dest: Path) -> Path:
    """Create the parent folders and an empty temporary file beside ``dest``; UsageError when impossible."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as e:
        raise _cannot_write(dest, e) from None
    os.close(fd)
    return Path(tmp)


def _cannot_write(dest: Path, e: OSError, folder: Path | None = None) -> UsageError:
    blocker = next((a for a in dest.parents if a.exists() and not a.is_dir()), None)
    reason = (
        f"{blocker} is a file, not a folder" if blocker is not None else f"{e.strerror or e} in {folder or dest.parent}"
    )
    return UsageError(f"cannot write {dest}: {reason}; choose another output path")


def _probe_writable(dest: Path) -> None:
    """Create and remove a temporary file in dest's folder (or a temporary folder in its nearest existing
    ancestor, so nothing is left behind when the command fails later); UsageError when that fails."""
    anc = dest.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    try:
        if not anc.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(anc))
        if anc == dest.parent:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".probe", dir=anc)
            os.close(fd)
            os.unlink(tmp)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".edgeconvnext.", suffix=".probe", dir=anc))
    except OSError as e:
        raise _cannot_write(dest, e, anc) from None


def check_output(
    path: str | Path,
    option: str = "--output",
    inputs: dict[str, str | Path | None] | None = None,
    suffix: str | None = None,
) -> Path:
    """Refuse, before any slow work, an output that cannot be written or would replace one of the inputs.

    ``inputs`` maps an option name to the path it was given (None: not given). Raises UsageError naming
    ``option`` when ``path`` is a folder, does not end in ``suffix``, is one of the inputs, or its folder
    cannot be created or written to (tested by creating and removing a temporary file or folder; nothing
    is left behind: the stage's atomic_output creates the missing folders when it writes).
    """
    dest = Path(path).expanduser()
    if dest.is_dir():
        raise UsageError(f"{option} {dest} is a folder; give a file name such as {dest / ('model' + (suffix or ''))}")
    if suffix is not None and dest.suffix != suffix:
        raise UsageError(f"{option} {dest} should end in {suffix}")
    for name, inp in (inputs or {}).items():
        if inp is None:
            continue
        src = Path(inp).expanduser()
        if dest.resolve() == src.resolve() or (dest.exists() and src.exists() and os.path.samefile(dest, src)):
            raise UsageError(
                f"{option} {dest} is the same file as {name}: writing it would destroy that file; "
                f"choose another {option}"
            )
    _probe_writable(dest)
    return dest


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
