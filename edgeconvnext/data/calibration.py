"""Calibration images for post-training quantization: a reproducible subset of a folder, preprocessed as
the checkpoint expects, and the manifest that pins it.

Input: a folder of images (searched recursively; JPEG, PNG, WebP, BMP), a size, a seed and the model's
:class:`~edgeconvnext.models.registry.Preprocess`. Output: a :class:`CalibrationSet` (float32 (N, 3, S, S) array, the
files used with their sha256, the unreadable files skipped) and its manifest, a JSON file written beside
the quantized model (``OUT.calib.json``) that ``--calib-manifest`` reads back to rebuild the exact set.

Selection: files are ordered by sha256(f"{seed}:{relative path}") and the first ``size`` readable ones
are used. The order depends only on the seed and the file names (not on the file system's listing order
or on a library's random generator), and adding files to the folder changes the subset only a little.
A corrupt or unreadable file is skipped and counted; fewer readable files than asked is a DataError.

Size rules (KNOWLEDGE.md: about 500 images for CNNs): below :data:`RECOMMENDED_IMAGES` a warning is logged;
below ``min_images`` (default :data:`MIN_IMAGES` = 32) the request is refused, because INT8 ranges from a
handful of images are noise. Smoke tests and unit tests lower the floor explicitly (``--min-calib-size``).

Usage::

    cs = select_images(Path("calib/"), 512, seed=0, preprocess=loaded.preprocess)
    write_manifest(cs, Path("model.calib.json"))
    cs2 = load_manifest(Path("model.calib.json"), preprocess=loaded.preprocess)   # same images, verified
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeconvnext.artifacts import sha256_file, write_json_atomic
from edgeconvnext.data import DEFAULT_SIZE, MIN_IMAGES
from edgeconvnext.data.folders import IMAGE_EXTS, decode_images, list_images, warn_skipped
from edgeconvnext.errors import DataError, UsageError
from edgeconvnext.models.registry import Preprocess

log = logging.getLogger(__name__)

#: below this many images a warning says the ranges may be poor (Model-Optimizer: ~500 for CNNs)
RECOMMENDED_IMAGES = 500
# MIN_IMAGES (refused below, unless the caller lowers ``min_images``) and DEFAULT_SIZE live in the package's
# __init__ so the quantize stage's config can name them without importing numpy
MANIFEST_FORMAT = "edgeconvnext-calibration-manifest"
MANIFEST_VERSION = 1
_CHUNK = 16  # images preprocessed per progress step

#: progress callback: (images done, images total)
ProgressFn = Callable[[int, int], None]


@dataclass
class CalibrationSet:
    """The images quantization calibrates on, and where they came from."""

    root: Path
    paths: list[Path]
    sha256: list[str]
    images: np.ndarray  # (N, 3, S, S) float32, preprocessed
    preprocess: Preprocess
    requested: int
    seed: int | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    candidates: int = 0  # image files found in the folder
    source: str = "folder"  # "folder" or "manifest"
    load_seconds: float = 0.0  # wall time of reading and preprocessing the images

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self.images), batch):
            yield self.images[i : i + batch]

    def manifest(self) -> dict[str, Any]:
        """The JSON-able manifest (see calibration/README.md)."""
        from edgeconvnext import __version__

        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "edgeconvnext": __version__,
            "root": str(self.root.resolve()),
            "seed": self.seed,
            "requested_size": self.requested,
            "count": len(self.paths),
            "candidates": self.candidates,
            "selection": "files ordered by sha256('<seed>:<relative path>'), first readable <requested_size>",
            "preprocess": self.preprocess.to_dict(),
            "images": [
                {"path": _rel(p, self.root), "sha256": h} for p, h in zip(self.paths, self.sha256, strict=False)
            ],
            "skipped": [{"path": _rel(p, self.root), "reason": r} for p, r in self.skipped],
        }


def _rel(p: Path, root: Path) -> str:
    """``p`` under ``root`` as a POSIX string: by string when it starts with root (no relative_to per image:
    ordering 60,000 files by it took 0.27 s through pathlib, 0.13 s so), else relative_to, else ``p`` itself."""
    s, prefix = str(p), str(root) + os.sep
    if s.startswith(prefix):
        return s[len(prefix) :].replace(os.sep, "/")
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def check_size(size: int, min_images: int = MIN_IMAGES, *, warn: bool = True) -> None:
    """Refuse a calibration size below ``min_images``; warn below :data:`RECOMMENDED_IMAGES` (if ``warn``)."""
    if min_images < 1:
        raise UsageError(f"--min-calib-size must be at least 1, got {min_images}")
    if size < 1:
        raise UsageError(f"--calib-size must be at least 1, got {size}")
    if size < min_images:
        raise UsageError(
            f"--calib-size {size} is below the minimum of {min_images} calibration images (INT8 ranges from so "
            f"few images are unreliable): use --calib-size {min_images} or more ({RECOMMENDED_IMAGES}+ "
            f"recommended), or pass --min-calib-size {size} to accept it for a smoke test"
        )
    if warn and size < RECOMMENDED_IMAGES:
        log.warning(
            "calibrating on %d images; about %d are recommended for CNNs (accuracy may suffer)",
            size,
            RECOMMENDED_IMAGES,
        )


def selection_order(paths: list[Path], root: Path, seed: int) -> list[Path]:
    """``paths`` ordered by sha256(f"{seed}:{relative path}"): deterministic for a seed, any listing order."""

    def key(p: Path) -> str:
        # surrogateescape: a file name that is not UTF-8 (Latin-1 from an old archive) hashes as its raw
        # bytes; UTF-8 names hash exactly as before
        return hashlib.sha256(f"{seed}:{_rel(p, root)}".encode("utf-8", "surrogateescape")).hexdigest()

    return sorted(paths, key=key)


#: ``on_prefix(images)``: the images preprocessed so far (a view that only grows), called after each one
PrefixFn = Callable[[np.ndarray], None]


def _load_into(
    paths: list[Path],
    pp: Preprocess,
    needed: int,
    on_progress: ProgressFn | None,
    skipped: list[tuple[Path, str]],
    on_prefix: PrefixFn | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """Preprocess ``paths`` in order until ``needed`` images are readable; unreadable ones go to ``skipped``.
    Decoding runs in a thread pool (:func:`~edgeconvnext.data.folders.decode_images`), in order."""
    from edgeconvnext.env.probes import check_memory

    check_memory(
        needed * 3 * pp.img_size**2 * 4,
        f"{needed} calibration images at {pp.img_size} px",
        "use a smaller --calib-size or --img-size",
    )
    out = np.empty((needed, 3, pp.img_size, pp.img_size), np.float32)
    used: list[Path] = []
    decoded = decode_images(paths, pp, ahead=_CHUNK * 4)
    try:
        for p, x, why in decoded:
            if x is None:
                skipped.append((p, str(why)))
                warn_skipped(len(skipped), str(why), "skipping calibration image:")
                continue
            out[len(used)] = x
            used.append(p)
            if on_prefix is not None:
                on_prefix(out[: len(used)])
            if on_progress is not None and (len(used) % _CHUNK == 0 or len(used) == needed):
                on_progress(len(used), needed)
            if len(used) == needed:
                break
    finally:
        decoded.close()
    return out[: len(used)], used


def select_images(
    root: str | Path,
    size: int = DEFAULT_SIZE,
    *,
    seed: int = 0,
    preprocess: Preprocess,
    min_images: int = MIN_IMAGES,
    on_progress: ProgressFn | None = None,
    on_prefix: PrefixFn | None = None,
) -> CalibrationSet:
    """Pick and preprocess ``size`` readable images of ``root`` (see the module doc for the order).
    ``on_prefix`` sees the images done so far after each one (for a caller that starts on the first ones).

    Raises UsageError for a size below ``min_images``; DataError for a missing/empty folder or fewer
    readable images than ``size`` (saying how many were found and what to pass instead).
    """
    check_size(size, min_images)
    root = Path(root)
    skipped: list[tuple[Path, str]] = []  # unreadable sub-folders first, then unreadable images
    found = list_images(root, unreadable=skipped)
    exts = "/".join(e.lstrip(".") for e in IMAGE_EXTS)
    if not found:
        why = f"; {len(skipped)} sub-folders cannot be read (first: {skipped[0][1]})" if skipped else ""
        raise DataError(f"no calibration images ({exts}) found in {root} (searched recursively{why})")
    if len(found) < size:
        raise DataError(
            f"{root} holds {len(found)} image files, --calib-size asks for {size}: "
            f"{_fewer_hint(len(found), min_images)}"
        )
    order = selection_order(found, root, seed)
    t0 = time.perf_counter()
    images, used = _load_into(order, preprocess, size, on_progress, skipped, on_prefix)
    load_s = time.perf_counter() - t0
    if len(used) < size:
        if not used:
            raise DataError(f"none of the {len(found)} image files in {root} could be read (first: {skipped[0][1]})")
        raise DataError(
            f"only {len(used)} of {len(found)} image files in {root} are readable ({len(skipped)} "
            f"corrupt or unreadable, e.g. {skipped[0][0].name}); --calib-size asks for {size}: "
            f"{_fewer_hint(len(used), min_images)}"
        )
    log.info("calibration set: %d images from %s (seed %d, %d unreadable skipped)", len(used), root, seed, len(skipped))
    return CalibrationSet(
        root=root,
        paths=used,
        sha256=[sha256_file(p) for p in used],
        images=images,
        preprocess=preprocess,
        requested=size,
        seed=seed,
        skipped=skipped,
        candidates=len(found),
        source="folder",
        load_seconds=load_s,
    )


def _fewer_hint(available: int, min_images: int) -> str:
    if available >= min_images:
        return f"add images or pass --calib-size {available}"
    return f"add images (at least {min_images} readable ones are needed)"


def write_manifest(cs: CalibrationSet, path: str | Path) -> Path:
    """Write the manifest of ``cs`` to ``path`` atomically."""
    return write_json_atomic(path, cs.manifest())


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse and validate a manifest file; a missing, malformed or foreign file is a DataError."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"calibration manifest {path} is a folder; give the manifest's JSON file, or the folder as --calib-data"
        )
    if not path.is_file():
        raise DataError(f"calibration manifest not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"calibration manifest {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise DataError(f'{path} is not an edgeconvnext calibration manifest (no "format": "{MANIFEST_FORMAT}")')
    if data.get("format_version") != MANIFEST_VERSION:
        raise DataError(
            f"calibration manifest {path} has format_version {data.get('format_version')!r}; "
            f"this edgeconvnext reads version {MANIFEST_VERSION}"
        )
    images = data.get("images")
    if (
        not isinstance(images, list)
        or not images
        or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str) for e in images
        )
    ):
        raise DataError(f'calibration manifest {path} has no valid "images" list of {{path, sha256}}')
    seen: dict[str, int] = {}
    for entry in images:
        key = entry["path"].replace("\\", "/")
        seen[key] = seen.get(key, 0) + 1
    dups = {k: n for k, n in seen.items() if n > 1}
    if dups:
        first, n = next(iter(dups.items()))
        raise DataError(
            f"calibration manifest {path} lists {len(images)} entries but {len(seen)} distinct images "
            f"({first} {n} times{f', and {len(dups) - 1} more repeated' if len(dups) > 1 else ''}): a repeated "
            "image weighs the ranges without adding data; list each image once"
        )
    for key in ("requested_size", "candidates", "count", "seed"):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise DataError(f"calibration manifest {path}: {key} is {v!r}, not a whole number; fix or rewrite the file")
    return data


def load_manifest(
    path: str | Path,
    *,
    preprocess: Preprocess,
    root: str | Path | None = None,
    min_images: int = MIN_IMAGES,
    on_progress: ProgressFn | None = None,
    warn_size: bool = True,
    on_prefix: PrefixFn | None = None,
) -> CalibrationSet:
    """Rebuild the calibration set a manifest names, verifying every file's sha256 (``on_prefix``: as
    :func:`select_images`).

    ``warn_size`` False: no "calibrating on N images" warning, for a caller re-reading the set a quantize run
    of its own has just made (and warned about once).

    ``root`` overrides the manifest's root (the same images moved elsewhere). A missing or changed file
    is a DataError naming it. A preprocess different from the manifest's is logged (the image set is
    the same; the arrays follow the model being quantized).
    """
    path = Path(path)
    data = read_manifest(path)
    base = Path(root) if root is not None else Path(str(data.get("root", "")))
    if not base.is_dir():
        raise DataError(
            f"calibration image folder {base} (from {'--calib-data' if root is not None else path}) "
            "not found: pass --calib-data DIR where the manifest's images are"
        )
    entries = data["images"]
    if len(entries) < min_images:  # check_size's advice (--calib-size) does not apply to a manifest
        raise UsageError(
            f"calibration manifest {path} lists {len(entries)} images, below the minimum of "
            f"{min_images} (INT8 ranges from so few images are unreliable): pass --min-calib-size "
            f"{len(entries)} to accept it for a smoke test, or make a larger set with --calib-data"
        )
    check_size(len(entries), min_images, warn=warn_size)
    listed_pp = data.get("preprocess")
    if isinstance(listed_pp, dict) and Preprocess.from_dict(listed_pp, f"calibration manifest {path}") != preprocess:
        log.warning(
            "manifest %s was made with preprocess %s; this model uses %s (same images, new arrays)",
            path,
            listed_pp,
            preprocess.to_dict(),
        )
    paths: list[Path] = []
    digests: list[str] = []
    for e in entries:
        p = base / e["path"]
        if not p.is_file():
            raise DataError(f"calibration image {e['path']} listed in {path} is missing from {base}")
        h = sha256_file(p)
        if h != e["sha256"]:
            raise DataError(
                f"calibration image {p} changed since {path} was written (sha256 {h[:12]}... != "
                f"{e['sha256'][:12]}...): restore it or make a new set without --calib-manifest"
            )
        paths.append(p)
        digests.append(h)
    skipped: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    images, used = _load_into(paths, preprocess, len(paths), on_progress, skipped, on_prefix)
    load_s = time.perf_counter() - t0
    if skipped:
        raise DataError(f"calibration image {skipped[0][0]} listed in {path} can no longer be read: {skipped[0][1]}")
    seed = data.get("seed")
    return CalibrationSet(
        root=base,
        paths=used,
        sha256=digests,
        images=images,
        preprocess=preprocess,
        requested=int(data.get("requested_size", len(used))),
        seed=seed if isinstance(seed, int) else None,
        skipped=skipped,  # measured in this run (every listed image was readable), not copied from the file
        candidates=int(data.get("candidates", len(used)) or len(used)),
        source="manifest",
        load_seconds=load_s,
    )
