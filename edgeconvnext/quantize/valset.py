"""The validation images of ``sensitivity`` and ``quantize --max-drop``: labelled or not, loaded once, checked.

Input: a folder (an ImageFolder tree or a flat folder with a labels file: labelled; a plain image folder:
unlabelled, the budget is then on top-1 agreement with FP32), the checkpoint's preprocessing and classes.
Output: a :class:`ValSet` (preprocessed images, labels or None, the paths).

Checks (one clear error each): fewer than ``min_size`` usable images (``--min-val-size``); class folders or
labels the checkpoint does not have; a set that is the calibration set (a warning: the budget is optimistic).

Usage::

    val = load_valset(Path("val/"), loaded.preprocess, loaded.class_names, loaded.num_classes)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeconvnext.errors import DataError, UsageError
from edgeconvnext.quantize.config import MIN_VAL_IMAGES  # fewer make a budget meaningless (1 image = 1 point)

if TYPE_CHECKING:
    from edgeconvnext.models.registry import Preprocess

log = logging.getLogger(__name__)


@dataclass
class ValSet:
    root: Path
    paths: list[Path]
    images: np.ndarray  # (N, 3, S, S) float32
    labels: np.ndarray | None  # (N,) int64, None for a plain image folder
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def check_root(root: str | Path, option: str = "--val-data") -> Path:
    """``root`` as a Path; DataError when it is not a folder (commands call it before loading the model)."""
    from edgeconvnext.data.folders import check_folder

    return check_folder(root, option, "validation images")


def load_valset(
    root: str | Path,
    pp: Preprocess,
    class_names: Sequence[str] | None,
    num_classes: int,
    *,
    min_size: int = MIN_VAL_IMAGES,
    option: str = "--val-data",
    labels_file: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    purpose: str = "a budget",
    labels_option: str | None = None,
) -> ValSet:
    """Load and check ``root`` (see the module doc); DataError for data that cannot give a fair budget.
    ``labels_file``: a ``--labels FILE`` for a flat ``root`` (else a labels file inside it is found);
    ``labels_option``: the command's name for that option, where it has one (run's ``--labels``)."""
    from edgeconvnext.data.folders import LabelledImages, has_labels, list_images, load_images

    if min_size < 1:
        raise UsageError(f"--min-val-size must be at least 1, got {min_size}")
    root = check_root(root, option)
    labelled = labels_file is not None or has_labels(root, labels_option)
    if labelled:
        ds = LabelledImages.discover(
            root, labels_file, class_names=list(class_names) if class_names else None, labels_option=labels_option
        )
        if not class_names and len(ds.class_names) != num_classes:
            raise DataError(
                f"{option} {root} has {len(ds.class_names)} classes but the checkpoint has {num_classes} outputs "
                "and no class names to map them: use the checkpoint's classes"
            )
        paths, labels = list(ds.paths), np.asarray(ds.labels, dtype=np.int64)
    else:
        paths, labels = list_images(root), None
        if not paths:
            raise DataError(f"no images found in {option} {root}")
    imgs: list[np.ndarray] = []
    used_idx: list[int] = []
    skipped: list[tuple[Path, str]] = []
    step = 256
    for s in range(0, len(paths), step):
        arr, used, bad = load_images(paths[s : s + step], pp)
        imgs.append(arr)
        used_set = set(used)
        used_idx.extend(i for i in range(s, min(s + step, len(paths))) if paths[i] in used_set)
        skipped.extend(bad)
        if on_progress is not None:
            on_progress(min(s + step, len(paths)), len(paths))
    images = np.concatenate(imgs) if imgs else np.zeros((0, 3, pp.img_size, pp.img_size), np.float32)
    if len(images) < min_size:
        raise DataError(
            f"{option} {root} has {len(images)} usable images"
            + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
            + f", fewer than {min_size}: {purpose} measured on so few is noise; add images or lower --min-val-size"
        )
    if skipped:
        log.warning("%s: %d unreadable images skipped", root, len(skipped))
    return ValSet(
        root=root,
        paths=[paths[i] for i in used_idx],
        images=images,
        labels=None if labels is None else labels[used_idx],
        skipped=skipped,
    )


def calibration_overlap(val: ValSet, calib_paths: Sequence[Path]) -> float:
    """Share of the validation images that are also calibration images (by resolved path)."""
    calib = {p.resolve() for p in calib_paths}
    return sum(p.resolve() in calib for p in val.paths) / max(1, len(val))


def warn_if_calibration(val: ValSet, calib_paths: Sequence[Path], calib_root: Path | None = None) -> str | None:
    """A note (also logged) when the validation set is the calibration folder or mostly calibration images."""
    share = calibration_overlap(val, calib_paths)
    same = calib_root is not None and Path(calib_root).resolve() == val.root.resolve()
    if share == 0 or (share < 0.5 and not same):
        return None
    what = f"the calibration folder ({share:.0%} of its images" if same else f"{share:.0%} calibration images ("
    note = (
        f"--val-data is {what}{' are calibration images' if same else 'same files'}): the budget measured "
        "on it is optimistic (use held-out images)"
    )
    log.warning("%s", note)
    return note
