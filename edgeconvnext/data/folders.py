"""Image folders in, preprocessed batches out: the data side shared by calibration, validate and finetune.

Layouts read:
- a plain folder of images, searched recursively (calibration);
- an ImageFolder layout, one sub-folder per class (validate, finetune);
- a flat folder with a labels file (ImageNet val style): lines ``<file> <label>`` or ``<file>,<label>``,
  the label a class index or a class name.

A corrupt or unreadable image is skipped and counted, never a crash. No torch here.

Usage::

    ds = LabelledImages.discover(Path("val/"))
    for x, y in ds.batches(pp, batch=32): ...
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeconvnext.data.preprocess import preprocess_image
from edgeconvnext.errors import DataError
from edgeconvnext.models.registry import Preprocess, repeated_names

log = logging.getLogger(__name__)

# what torchvision's ImageFolder reads, less the rare .ppm/.pgm (extensions are matched case-insensitively)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_EXTS = " ".join(IMAGE_EXTS)
LABEL_FILES = ("labels.txt", "labels.csv", "val.txt", "val_labels.txt", "ground_truth.txt")


#: unreadable images named one by one in the log; the rest are only counted (reports list them)
SKIP_WARNINGS = 10


def warn_skipped(count: int, reason: str, what: str = "skipping") -> None:
    """Log the ``count``-th unreadable image of a run: the first :data:`SKIP_WARNINGS` by name, then one line
    (a folder with thousands of broken files must not bury the result)."""
    if count <= SKIP_WARNINGS:
        log.warning("%s %s", what, reason)
    elif count == SKIP_WARNINGS + 1:
        log.warning("more unreadable images: the rest are counted, not listed here")
    else:
        log.debug("%s %s", what, reason)


def is_hidden(name: str) -> bool:
    """Names that are never data: dot files/folders (.DS_Store, .ipynb_checkpoints, macOS ._ files) and the
    __MACOSX folder that unzipping a macOS archive leaves."""
    return name.startswith(".") or name == "__MACOSX"


def list_images(
    root: str | Path,
    recursive: bool = True,
    unreadable: list[tuple[Path, str]] | None = None,
    *,
    root_may_fail: bool = False,
) -> list[Path]:
    """Every image file under ``root`` (by extension), sorted for determinism.

    Hidden files and folders (:func:`is_hidden`) are left out; symlinked folders are followed, as
    torchvision's ImageFolder does (each real folder once; a link back to an ancestor is not followed).
    A sub-folder that cannot be listed (no permission) is logged and appended to ``unreadable`` as
    (folder, reason), for the caller to count with its skipped files; ``root`` itself unreadable is a DataError
    (skipped like a sub-folder with ``root_may_fail``: a class folder of a dataset).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (give a folder of images)")
    names: list[str] = []
    top = os.path.realpath(root)
    seen: set[str] = set()
    failed: list[tuple[Path, str]] = []

    def on_error(e: OSError) -> None:  # os.walk skips a folder it cannot list, silently unless told
        folder = Path(e.filename) if e.filename is not None else root
        if folder == root and not root_may_fail:
            raise DataError(f"cannot read the folder {root}: {e.strerror or e}; check its permissions") from None
        failed.append((folder, f"{folder}: cannot read the folder ({e.strerror or e}); its images are not counted"))
        warn_skipped(len(failed), failed[-1][1], "skipping")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or top.startswith(real + os.sep):  # met before, or a link back to an ancestor (a cycle)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not is_hidden(d)] if recursive else []
        for f in filenames:
            if is_hidden(f) or os.path.splitext(f)[1].lower() not in IMAGE_EXTS:
                continue
            full = os.path.join(dirpath, f)
            if os.path.isfile(full):
                names.append(full)
    if unreadable is not None:
        unreadable.extend(failed)
    # strings until the end, ordered as Paths are (component by component): 60,000 files took 0.69 s through
    # pathlib (a Path, its suffix and is_file per file, then Path comparisons), strings are several times cheaper
    names.sort(key=lambda n: n.split(os.sep))
    return [Path(n) for n in names]


# First-column names of a header row ("filename,label"); any first row whose file column does not look like an
# image and whose label is not a number is taken as a header too.
_HEADER_WORDS = (
    "file",
    "filename",
    "file_name",
    "fname",
    "image",
    "image_name",
    "imagename",
    "image_id",
    "imageid",
    "img",
    "path",
    "filepath",
    "file_path",
    "image_path",
    "name",
    "id",
)


def _is_header(file: str, label: str, root: Path | None) -> bool:
    if label.lstrip("-").isdigit():
        return False
    if file.lower() in _HEADER_WORDS:
        return True
    return Path(file).suffix.lower() not in IMAGE_EXTS and not (root is not None and (root / file).is_file())


def check_folder(root: str | Path, option: str | None, what: str = "images") -> Path:
    """``root`` as a Path when it is a folder; else the one DataError every command gives, naming ``option``
    (the option that gave it; None: none to name): a file where a folder of ``what`` belongs, or not found."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"{option + ' ' if option else ''}{root} is a file, not a folder of {what}")
    if not root.is_dir():
        raise DataError(f"{option} folder not found: {root}" if option else f"data folder not found: {root}")
    return root


def has_labels(root: Path, labels_option: str | None = None) -> bool:
    """Whether ``root`` is labelled: class folders (ImageFolder), or images with a labels file
    (``labels_option``: the command's ``--labels``, named when two labels files are found)."""
    return find_labels_file(root, labels_option) is not None or bool(class_folders(root))


def class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that are classes in the ImageFolder layout (hidden ones left out), sorted."""
    return sorted(d for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))


def find_labels_file(root: Path, labels_option: str | None = None) -> Path | None:
    """The labels file (:data:`LABEL_FILES`) that makes ``root`` a flat labelled folder, or None; two or more
    of them are refused (they may disagree), the fix naming ``labels_option`` (``--labels``) where there is one.

    A folder of class sub-folders and no images of its own is an ImageFolder even when it holds a file of
    such a name: image-retraining tools write ``labels.txt`` as a plain list of class names.
    """
    present = [root / n for n in LABEL_FILES if (root / n).is_file()]
    found = present[0] if present else None
    if found is not None and class_folders(root) and not list_images(root, recursive=False):
        log.info(
            "%s has class folders: reading it as an ImageFolder, not by %s (pass --labels to use it)", root, found.name
        )
        return None
    if len(present) > 1:
        names = ", ".join(p.name for p in present)
        fix = f"pass {labels_option} FILE to choose one" if labels_option else "keep the one that is right"
        raise DataError(f"{root} holds {len(present)} labels files ({names}): which labels are right? {fix}")
    return found


def _read_labels_file(path: Path, root: Path | None = None) -> list[tuple[str, str]]:
    """Rows (file, label) of a labels file: ``<file> <label>`` (the label is the last field, so file names may
    hold spaces), ``<file>\t<label>`` or CSV ``<file>,<label>[,...]`` (quoted fields allowed); UTF-8 with or
    without a BOM, any line endings, ``#`` comments, an optional header row."""
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports start with a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(
            f"labels file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise DataError(f"labels file {path} has no entries")
    first = lines[0][1]
    rows: list[tuple[str, str]] = []
    for i, (n, line) in enumerate(lines):
        if "," in first:
            parts = next(csv.reader([line], skipinitialspace=True))
        elif "\t" in first:
            parts = line.split("\t")
        else:
            parts = line.rsplit(None, 1)
        parts = [q.strip() for q in parts]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise DataError(f"{path}:{n}: expected '<file> <label>', got '{line}'")
        if i == 0 and _is_header(parts[0], parts[1], root):
            continue
        rows.append((parts[0], parts[1]))
    if not rows:
        raise DataError(f"labels file {path} has no entries")
    return rows


def _by_name(class_names: Sequence[str], data: Path) -> list[str]:
    """The model's class names, for mapping ``data``'s class names onto outputs: refused when they repeat."""
    names = list(class_names)
    repeated = repeated_names(names)
    if repeated:
        raise DataError(
            f"the model's {len(names)} class names repeat {', '.join(repeated[:5])}, so the classes of {data} "
            "cannot be mapped onto its outputs by name: fix the model's class names, or label the data by index"
        )
    return names


def _dedupe(rows: list[tuple[str, str]], labels_file: Path) -> list[tuple[str, str]]:
    """Rows with each file once: a file listed again with the same label is a warning (counted once), with
    another label a DataError naming it (counting it under both labels would score it twice)."""
    first: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    repeats = 0
    for name, lab in rows:
        key = name.replace("\\", "/")
        if key not in first:
            first[key] = lab
            out.append((name, lab))
        elif first[key] != lab:
            raise DataError(
                f"{labels_file} lists {name} with the labels '{first[key]}' and '{lab}': give each file one label"
            )
        else:
            repeats += 1
    if repeats:
        log.warning(
            "%s lists %d file(s) more than once with the same label: each is counted once", labels_file, repeats
        )
    return out


_SAID_UNLISTED: set[tuple[str, int]] = set()


def _unlisted(paths: Sequence[Path]) -> list[Path]:
    """Images beside the labelled ``paths`` (in the folders that hold them, not below) that no label names;
    compared by real path, so a symlinked folder or absolute names in the labels file are not miscounted, and
    only the labelled files' own folders are listed (a labels file for part of a large tree costs no walk)."""
    listed = {os.path.realpath(q) for q in paths}
    out: list[Path] = []
    for d in dict.fromkeys(q.parent for q in paths):
        out.extend(q for q in list_images(d, recursive=False) if os.path.realpath(q) not in listed)
    return out


def warn_overlap(train: Sequence[Path], val: Sequence[Path], train_root: Path, val_root: Path) -> int:
    """One warning when validation images are also training images (the same files, by real path): the
    validation top-1 and the best epoch it picks then measure memory, not accuracy. Returns how many."""
    seen = {os.path.realpath(p) for p in train}
    shared = sum(os.path.realpath(p) in seen for p in val)
    if shared:
        log.warning(
            "%d of the %d --val-data images (%s) are --train-data images (%s): the validation top-1 and the best "
            "epoch it picks say little; give a held-out folder",
            shared,
            len(val),
            val_root,
            train_root,
        )
    return shared


@dataclass
class LabelledImages:
    """Image paths with integer labels and the class names they index."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    root: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a report should say of how the images were read

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def discover(
        cls,
        root: str | Path,
        labels_file: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        *,
        labels_option: str | None = None,
        option: str | None = None,
    ) -> LabelledImages:
        """Read ``root`` as an ImageFolder, or as a flat folder with a labels file.

        ``labels_option``: the command's option for a labels file (validate's and run's ``--labels``), named in
        the error for a flat folder without one; None where the command has no such option (finetune, QAT).
        ``option``: the option that named ``root`` (``--data``), for the error when it is not a folder.

        ``class_names`` (e.g. stored in the model) fixes the label order; folder classes that are not in
        it are an error naming them, never a silent mismatch.
        """
        root = check_folder(root, option)
        if labels_file is None:
            labels_file = find_labels_file(root, labels_option)
        if labels_file is not None:
            return cls._from_labels_file(root, Path(labels_file), class_names)
        subdirs = class_folders(root)
        if not subdirs:
            if list_images(root, recursive=False):
                fix = f"add one, or pass {labels_option} FILE" if labels_option else "add one ('<file> <label>' lines)"
                raise DataError(
                    f"{root} holds images but no class folders and no labels file ({' / '.join(LABEL_FILES)}): {fix}"
                )
            raise DataError(f"no images found in {root} (image files end in {_EXTS}, any case)")
        folder_classes = [d.name for d in subdirs]
        names = _by_name(class_names, root) if class_names else folder_classes
        index = {c: i for i, c in enumerate(names)}
        unknown = [c for c in folder_classes if c not in index]
        if unknown:
            raise DataError(
                f"class folders {unknown[:5]} in {root} are not among the model's {len(names)} classes "
                f"(e.g. {names[:3]}): the label mapping would be wrong"
            )
        paths: list[Path] = []
        labels: list[int] = []
        unreadable: list[tuple[Path, str]] = []  # folders that cannot be listed: counted with the skipped images
        for d in subdirs:
            for p in list_images(d, unreadable=unreadable, root_may_fail=True):
                paths.append(p)
                labels.append(index[d.name])
        if not paths:
            why = f" ({len(unreadable)} unreadable, first: {unreadable[0][1]})" if unreadable else ""
            raise DataError(
                f"no images found in the class folders of {root}{why} (image files end in {_EXTS}, any case)"
            )
        return cls(paths, labels, names, root, skipped=unreadable)

    @classmethod
    def _from_labels_file(cls, root: Path, labels_file: Path, class_names: Sequence[str] | None) -> LabelledImages:
        if not labels_file.is_file():
            raise DataError(f"labels file not found: {labels_file}")
        rows = _dedupe(_read_labels_file(labels_file, root), labels_file)
        all_int = all(lab.lstrip("-").isdigit() for _, lab in rows)
        negative = next(((f, lab) for f, lab in rows if all_int and int(lab) < 0), None)
        if negative is not None:
            raise DataError(f"{labels_file} gives {negative[0]} the label {negative[1]}: class indices start at 0")
        if all_int:
            n_cls = max(int(lab) for _, lab in rows) + 1
            names = list(class_names) if class_names else [str(i) for i in range(n_cls)]
            if n_cls > len(names):
                raise DataError(f"{labels_file} uses label {n_cls - 1} but the model has {len(names)} classes")
            to_idx = {str(i): i for i in range(len(names))}
        else:
            names = _by_name(class_names, labels_file) if class_names else sorted({lab for _, lab in rows})
            to_idx = {c: i for i, c in enumerate(names)}
            unknown = sorted({lab for _, lab in rows if lab not in to_idx})
            if unknown:
                raise DataError(f"labels {unknown[:5]} in {labels_file} are not among the model's classes")
        paths, labels, missing = [], [], []
        for name, lab in rows:
            p = root / name
            if not p.is_file() and "\\" in name:  # a labels file written on Windows: cat\001.jpg
                p = root / name.replace("\\", "/")
            if not p.is_file():
                missing.append(name)
                continue
            paths.append(p)
            labels.append(to_idx[lab])
        if missing:
            raise DataError(
                f"{len(missing)} files named in {labels_file} are missing from {root} (first: {missing[0]})"
            )
        notes = [f"labels read from {labels_file}"]
        unlisted = _unlisted(paths)
        if unlisted:
            first = unlisted[0].relative_to(root).as_posix() if unlisted[0].is_relative_to(root) else unlisted[0]
            notes.append(
                f"{len(unlisted)} image(s) in {root} have no label in {labels_file.name} and are not evaluated "
                f"(first: {first})"
            )
            said = (os.path.realpath(labels_file), len(unlisted))
            if said not in _SAID_UNLISTED:  # run discovers the folder once per artifact: said once
                _SAID_UNLISTED.add(said)
                log.warning("%s", notes[-1])
        return cls(paths, labels, names, root, notes=notes)

    def batches(self, pp: Preprocess, batch: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images (B,3,S,S) float32, labels (B,) int64); unreadable files are skipped and recorded.
        The next batch is decoded in threads while the caller works on this one (:func:`decode_images`)."""
        decoded = decode_images(self.paths, pp, ahead=batch + 2 * decode_workers())
        labels = iter(self.labels)
        try:
            for start in range(0, len(self.paths), batch):
                xs, ys = [], []
                for (p, x, why), y in zip(
                    itertools.islice(decoded, min(batch, len(self.paths) - start)), labels, strict=False
                ):
                    if x is None:
                        self.skipped.append((p, str(why)))
                        warn_skipped(len(self.skipped), str(why))
                    else:
                        xs.append(x)
                        ys.append(y)
                if xs:
                    yield np.stack(xs), np.asarray(ys, dtype=np.int64)
        finally:
            decoded.close()


def decode_workers() -> int:
    """Threads that decode images: the cores this process may run on (Pillow's decoders and resizers and
    numpy's arithmetic release the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _decode_one(p: Path, pp: Preprocess) -> tuple[np.ndarray | None, str | None]:
    try:
        return preprocess_image(p, pp), None
    except DataError as e:
        return None, str(e)


def decode_images(
    paths: Iterable[Path], pp: Preprocess, *, workers: int | None = None, ahead: int = 64
) -> Generator[tuple[Path, np.ndarray | None, str | None], None, None]:
    """Yield (path, preprocessed (3,S,S) array or None, reason it could not be read or None) for each of
    ``paths`` in order, decoded by a thread pool up to ``ahead`` images in front of the consumer (so the
    decoding of the next images overlaps whatever the consumer does with the last ones). Same arrays as
    ``preprocess_image(p, pp)``; closing the generator early cancels what is queued."""
    n_workers = workers or decode_workers()
    it = iter(paths)
    if n_workers <= 1:
        for p in it:
            yield (p, *_decode_one(p, pp))
        return
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(n_workers, thread_name_prefix="edgeconvnext-decode") as pool:
        try:
            for p in itertools.islice(it, max(1, ahead)):
                pending.append((p, pool.submit(_decode_one, p, pp)))
            while pending:
                p, fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(_decode_one, nxt, pp)))
                yield (p, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()


def load_images(paths: Sequence[Path], pp: Preprocess) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Preprocess ``paths`` (in parallel, :func:`decode_images`); returns (array (N,3,S,S), paths used,
    skipped (path, reason))."""
    xs, used, skipped = [], [], []
    for p, x, why in decode_images(paths, pp):
        if x is None:
            skipped.append((p, str(why)))
        else:
            xs.append(x)
            used.append(p)
    arr = np.stack(xs) if xs else np.zeros((0, 3, pp.img_size, pp.img_size), np.float32)
    return arr, used, skipped
