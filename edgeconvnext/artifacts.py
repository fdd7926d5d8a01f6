"""Small shared pieces for artifacts: hashing, atomic writes, the sidecar schema and the skip rule.

Every stage writes its output through :func:`atomic_output` so a failure never leaves a file that
looks complete, and writes a sidecar ``<output>.json`` (:class:`Sidecar`: stage, inputs, outputs,
resolved config, environment, timings, stage details). Before its work a stage asks
:func:`reuse_if_current` whether the sidecar already matches this run (same input hashes, config and
library versions, outputs intact); then it returns :class:`Skipped` instead of redoing it (``--force``
redoes it anyway).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.errors import UsageError

log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def native_path_ok(path: str | Path) -> bool:
    """Whether a C++ library (onnxruntime, onnx's shape inference, via pybind's UTF-8 conversion) opens the same
    file as Python. Not for a name that is not UTF-8 on disk (a Latin-1 archive) or any non-ASCII name when
    Python runs with LC_ALL=C (the name holds surrogate escapes): hand such files over as bytes, or copy them."""
    try:
        return os.fsencode(path) == str(path).encode("utf-8")
    except UnicodeError:
        return False


def readable_path(path: str | Path) -> str:
    """A path as a person can read it: bytes that are not UTF-8 (surrogate escapes) shown as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
    """Create the parent folders and an empty temporary file beside ``dest``; UsageError when impossible.

    The name carries this process's id (``.model.onnx.<pid>.<random>.partial``) so the next run writing the
    same output can remove what a killed run (SIGKILL, power loss) left, without touching a live writer's.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".partial", dir=dest.parent)
    except OSError as e:
        raise _cannot_write(dest, e) from None
    os.close(fd)
    return Path(tmp)


_TEMP_DIR_SUFFIX = ".tmp"


@contextlib.contextmanager
def temp_dir_beside(dest: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` (same file system, so its files can be moved into place; the system's
    temporary folder while dest's folder does not exist), removed on exit, including on Ctrl-C / SIGTERM; one
    left by a killed run is removed by the next run for ``dest``."""
    import shutil

    dest = Path(dest)
    where = dest.parent if dest.parent.is_dir() else None  # a missing folder is not created for a temporary
    try:
        if where is not None:
            remove_stale_temps(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=_TEMP_DIR_SUFFIX, dir=where))
    except OSError as e:
        raise _cannot_write(dest, e) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(dest: str | Path) -> list[Path]:
    """Remove the temporary files and folders for ``dest`` that a process no longer running left behind."""
    import shutil

    dest = Path(dest)
    removed: list[Path] = []
    try:
        candidates = list(dest.parent.glob(f".{glob.escape(dest.name)}.*"))
    except OSError:
        return removed
    for p in candidates:
        rest = p.name[len(dest.name) + 2 :]
        pid, _, tail = rest.partition(".")
        if not pid.isdigit() or not tail.endswith((".partial", _TEMP_DIR_SUFFIX)) or _pid_alive(int(pid)):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) a killed run left beside %s", len(removed), dest)
    return removed


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


#: names of the files the stages write (models, engines, their sidecars, calibration manifests, checkpoints):
#: a report (``report=True`` in :func:`check_output`) is never written over an existing one
ARTIFACT_SUFFIXES = (".onnx", ".onnx.json", ".engine", ".engine.json", ".calib.json", ".pt", ".safetensors")


def check_output(
    path: str | Path,
    option: str = "--output",
    inputs: dict[str, str | Path | None] | None = None,
    suffix: str | None = None,
    *,
    report: bool = False,
    example_suffix: str | None = None,
) -> Path:
    """Refuse, before any slow work, an output that cannot be written or would replace one of the inputs.

    ``inputs`` maps an option name to the path it was given (None: not given). Raises UsageError naming
    ``option`` when ``path`` is a folder, does not end in ``suffix``, is one of the inputs or an input's sidecar,
    is an existing file inside an input folder (an image of the data), or its folder cannot be created or written
    to (tested by creating and removing a temporary file or folder; nothing is left behind: the stage's
    atomic_output creates the missing folders when it writes). ``report``: also refused when it is an existing
    model, engine, sidecar, manifest or checkpoint (:data:`ARTIFACT_SUFFIXES`). ``example_suffix``: the ending
    of the file name suggested for a folder when ``suffix`` is not enforced (``--json-file DIR``: DIR/model.json).
    """
    dest = Path(path).expanduser()
    if dest.is_dir():
        example = dest / ("model" + (suffix or example_suffix or ""))
        raise UsageError(f"{option} {dest} is a folder; give a file name such as {example}")
    where = dest.resolve()
    for name, inp in (inputs or {}).items():
        if inp is None:
            continue
        src = Path(inp).expanduser()
        if where == src.resolve() or (dest.exists() and src.exists() and os.path.samefile(dest, src)):
            raise UsageError(
                f"{option} {dest} is the same file as {name}: writing it would destroy that file; "
                f"choose another {option}"
            )
        if src.is_file() and where == sidecar_path(src.resolve()):
            raise UsageError(f"{option} {dest} is the sidecar of {name} {src}: choose another {option}")
        if src.is_dir() and dest.exists() and where.is_relative_to(src.resolve()):
            raise UsageError(
                f"{option} {dest} is a file inside {name} {src}: writing it would replace that file; "
                f"choose another {option} outside the folder"
            )
    if report and dest.is_file() and dest.name.endswith(ARTIFACT_SUFFIXES):
        raise UsageError(
            f"{option} {dest} is an existing model, sidecar or manifest: writing the report there would destroy "
            f"it; choose another {option}"
        )
    if report and dest.is_file() and not written_by_us(dest):
        raise UsageError(
            f"{option} {dest} exists and was not written by edgeconvnext: writing the report there would replace "
            f"it; choose another {option}, or delete the file first"
        )
    if suffix is not None and dest.suffix != suffix:  # after the inputs: "would destroy that file" says more
        raise UsageError(f"{option} {dest} should end in {suffix}")
    _probe_writable(dest)
    return dest


#: the last line of our Markdown reports: "... edgeconvnext 0.1.0."
_FOOTER = re.compile(rb"edgeconvnext \d+\.\d+\S*\.\s*$")
#: a JSON report larger than this is not parsed to find out whose it is
_MAX_JSON = 64 << 20


def written_by_us(path: str | Path) -> bool:
    """Whether an existing file may be replaced by a report: empty; with an edgeconvnext sidecar (validate's
    JSON report); a JSON object whose ``tool`` is edgeconvnext (sensitivity), or with the keys of validate's
    report or of sensitivity's before it had ``tool``; Markdown whose last line is our footer ("...,
    edgeconvnext 0.1.0.") or that opens with sensitivity's heading; a PNG whose Software text names
    edgeconvnext. A user's notes.md, README or settings.json is not, even where it mentions edgeconvnext."""
    p = Path(path)
    sc = read_sidecar(p)
    if isinstance(sc, dict) and sc.get("format") == SIDECAR_FORMAT:
        return True
    try:
        size = p.stat().st_size
        if size == 0:
            return True
        with open(p, "rb") as f:
            head = f.read(8)
            if head == b"\x89PNG\r\n\x1a\n":
                return b"edgeconvnext" in _png_software(f)
            if head.lstrip().startswith(b"{"):
                if size > _MAX_JSON:
                    return False
                f.seek(0)
                data = json.loads(f.read())
                keys = set(data) if isinstance(data, dict) else set()
                tool = data.get("tool") if isinstance(data, dict) else None
                return (isinstance(tool, str) and tool.startswith("edgeconvnext")) or (
                    {"mode_text", "groups"} <= keys or {"model", "model_sha256", "model_runner"} <= keys
                )
            f.seek(0)
            first = f.readline(256)
            f.seek(max(0, size - 4096))
            tail = f.read().rstrip().rsplit(b"\n", 1)[-1]
    except (OSError, ValueError):  # unreadable, or a JSON that does not parse: not known to be ours
        return False
    return bool(_FOOTER.search(tail)) or first.startswith(b"# INT8 sensitivity:")


def _png_software(f: Any) -> bytes:
    """The Software text of a PNG (its tEXt chunks before the image data), read from ``f`` after the signature."""
    import struct

    while True:
        hdr = f.read(8)
        if len(hdr) < 8:
            return b""
        n, kind = struct.unpack(">I4s", hdr)
        if kind == b"IDAT" or n > 1 << 20:
            return b""
        data = f.read(n + 4)[:n]  # the chunk and its CRC
        if kind == b"tEXt" and data.startswith(b"Software\0"):
            return data[len(b"Software\0") :]


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


def environment(device: str | None = None) -> dict[str, str]:
    """Library versions and host (and the device the stage ran on, when given), for provenance. Only
    reports what is installed."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform()}
    if device is not None:
        env["device"] = device
    for pkg in ("edgeconvnext", "torch", "onnx", "onnxruntime", "nncf", "tensorrt"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return env


# ---------------------------------------------------------------------------------------------------
# one sidecar schema for every artifact, and the skip-on-matching-sidecar rule

SIDECAR_FORMAT = "edgeconvnext-sidecar"
SIDECAR_VERSION = 1
#: the libraries whose versions decide whether an artifact is still current (python/platform are recorded
#: but do not force a rerun)
MATCHED_LIBRARIES = ("edgeconvnext", "torch", "onnx", "onnxruntime", "nncf", "tensorrt")


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(data: Any) -> Any:
    """JSON-normalised (tuples -> lists, paths/Enums -> str), so a recorded config compares equal to a new one."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


@dataclass
class Sidecar:
    """The provenance of one artifact, written beside it as ``<artifact>.json`` by every stage.

    ``inputs``: ``[{"role", "path", "sha256"}]`` (a folder of images is hashed by :func:`folder_sha256`);
    ``outputs``: ``[{"path", "bytes", "sha256"}]`` with paths relative to the sidecar's folder, the artifact
    first; ``config``: the stage's resolved config; ``environment``: library versions, host and the device;
    ``timings``: seconds per step; ``details``: what the stage measured (parity, placement, calibration,
    TensorRT build settings...).
    """

    stage: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    format: str = SIDECAR_FORMAT
    version: int = SIDECAR_VERSION

    @property
    def output(self) -> dict[str, Any]:
        """The artifact itself (the first output)."""
        return self.outputs[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "stage": self.stage,
            "created": self.created,
            "inputs": _plain(self.inputs),
            "outputs": _plain(self.outputs),
            "config": _plain(self.config),
            "environment": _plain(self.environment),
            "timings": _plain(self.timings),
            "details": json.loads(json.dumps(self.details, default=str)),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Sidecar:
        """ValueError when ``data`` is not an edgeconvnext sidecar of this schema."""
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise ValueError("not an edgeconvnext sidecar")
        if data.get("version") != SIDECAR_VERSION:
            raise ValueError(
                f"sidecar schema version {data.get('version')} (this edgeconvnext writes {SIDECAR_VERSION})"
            )
        return cls(
            stage=str(data.get("stage")),
            inputs=list(data.get("inputs") or []),
            outputs=list(data.get("outputs") or []),
            config=dict(data.get("config") or {}),
            environment=dict(data.get("environment") or {}),
            timings=dict(data.get("timings") or {}),
            details=dict(data.get("details") or {}),
            created=str(data.get("created", "")),
        )

    @classmethod
    def read(cls, artifact: str | Path) -> Sidecar | None:
        """The sidecar beside ``artifact``; None when missing, unreadable or of another schema."""
        raw = read_sidecar(artifact)
        try:
            return cls.from_dict(raw)
        except ValueError:
            return None


def input_ref(role: str, path: str | Path | None, sha256: str | None = None) -> dict[str, Any]:
    """An ``inputs`` entry; ``sha256`` is computed when not given (a folder: :func:`folder_sha256`)."""
    if path is None:
        return {"role": role, "path": None, "sha256": sha256}
    p = Path(path)
    if sha256 is None and p.exists():  # a missing input is the stage's own error to report
        sha256 = folder_sha256(p) if p.is_dir() else sha256_file(p)
    return {"role": role, "path": str(p), "sha256": sha256}


def output_ref(path: str | Path, data: bytes | None = None, *, relative_to: Path | None = None) -> dict[str, Any]:
    """An ``outputs`` entry; ``data`` (the bytes just written) spares reading the file back."""
    p = Path(path)
    if data is not None:
        size, digest = len(data), hashlib.sha256(data).hexdigest()
    else:
        size, digest = p.stat().st_size, sha256_file(p)
    name = os.path.relpath(p, relative_to) if relative_to is not None else p.name
    return {"path": name, "bytes": size, "sha256": digest}


def folder_sha256(root: str | Path) -> str:
    """A hash of a folder's contents as listed: every non-hidden file's relative path, size and
    modification time (reading every image of a dataset on each run would cost what skipping saves).

    Files of a folder in name order, then its sub-folders in name order (symbolic links followed, unreadable
    folders and files left out). Strings and ``os.scandir``, not ``pathlib``: 60,000 Fashion-MNIST files took
    0.76 s through pathlib, 4x what the listing and the stat calls themselves cost.

    ``root`` must be a folder: NotADirectoryError otherwise (a file listed nothing, so every file had one hash and
    a record keyed on it never went stale; the commands refuse a file where a folder belongs first)."""
    if not os.path.isdir(root):
        raise NotADirectoryError(f"folder_sha256: {root} is not a folder")
    h = hashlib.sha256()

    def walk(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError:
            return
        dirs: list[str] = []
        files: list[str] = []
        for e in entries:
            try:
                (dirs if e.is_dir() else files).append(e.name)
            except OSError:
                files.append(e.name)
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            h.update(f"{rel}{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        for name in sorted(dirs):
            walk(os.path.join(folder, name), f"{rel}{name}/")

    walk(os.fspath(root), "")
    return h.hexdigest()


def library_versions(env: dict[str, Any] | None = None) -> dict[str, str]:
    """The versions :func:`up_to_date` compares (:data:`MATCHED_LIBRARIES`), from ``env`` or this process."""
    env = environment() if env is None else env
    return {k: str(env[k]) for k in MATCHED_LIBRARIES if k in env}


@dataclass(frozen=True)
class Freshness:
    """Whether an artifact's sidecar matches this run (``fresh``), and why not (``reason``)."""

    fresh: bool
    reason: str
    sidecar: Sidecar | None = None


@dataclass(frozen=True)
class Skipped:
    """What a stage returns instead of its result when its output was already current."""

    stage: str
    path: Path
    sidecar: Sidecar

    def line(self) -> str:
        return (
            f"skipped {self.stage}: {self.path} is up to date (its sidecar matches: same inputs, config and "
            "library versions, outputs unchanged); --force redoes it"
        )


def up_to_date(
    artifact: str | Path,
    *,
    stage: str,
    inputs: list[dict[str, Any]],
    config: dict[str, Any],
    versions: dict[str, str] | None = None,
) -> Freshness:
    """The one skip rule every stage applies: ``artifact``'s sidecar is of ``stage``, records the same input
    hashes (in order), the same resolved config and the same library versions, and every output it lists
    exists with the recorded size and sha256. ``versions`` adds versions a stage knows beyond the
    importable libraries (e.g. the trtexec that builds)."""
    sc = Sidecar.read(artifact)
    if sc is None:
        return Freshness(False, f"{sidecar_path(artifact)} is missing or not an edgeconvnext sidecar")
    if sc.stage != stage:
        return Freshness(False, f"the sidecar is of stage '{sc.stage}', not '{stage}'", sc)
    recorded = [(i.get("role"), i.get("sha256")) for i in sc.inputs]
    if recorded != [(i.get("role"), i.get("sha256")) for i in _plain(inputs)]:
        return Freshness(False, "an input changed", sc)
    if sc.config != _plain(config):
        changed = sorted(k for k in set(sc.config) | set(_plain(config)) if sc.config.get(k) != _plain(config).get(k))
        return Freshness(False, f"the config changed ({', '.join(changed)})", sc)
    want = {**library_versions(), **(versions or {})}
    have = {**library_versions(sc.environment), **{k: sc.environment.get(k) for k in versions or {}}}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        return Freshness(False, f"library versions changed ({', '.join(diff)})", sc)
    if not sc.outputs:
        return Freshness(False, "the sidecar lists no outputs", sc)
    folder = sidecar_path(artifact).parent
    for o in sc.outputs:
        p = folder / str(o.get("path"))
        if not p.is_file():
            return Freshness(False, f"{p} is missing", sc)
        if p.stat().st_size != o.get("bytes") or sha256_file(p) != o.get("sha256"):
            return Freshness(False, f"{p} differs from what its sidecar recorded", sc)
    return Freshness(True, "up to date", sc)


def reuse_if_current(
    artifact: str | Path,
    *,
    stage: str,
    inputs: list[dict[str, Any]],
    config: dict[str, Any],
    versions: dict[str, str] | None = None,
) -> Skipped | None:
    """:func:`up_to_date` as a stage uses it: a :class:`Skipped` to return when current, else None (the
    reason is logged at debug level)."""
    import logging

    f = up_to_date(artifact, stage=stage, inputs=inputs, config=config, versions=versions)
    if f.fresh and f.sidecar is not None:
        return Skipped(stage, Path(artifact), f.sidecar)
    logging.getLogger(__name__).debug("%s: running %s (%s)", artifact, stage, f.reason)
    return None
