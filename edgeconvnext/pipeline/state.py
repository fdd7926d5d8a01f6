"""Stage records of a run: a stage is skipped when its record matches what it would be run with.

Input: a run folder, a stage name, the stage's key (its config and the sha256 of every input file). Output:
``RUN/.stages/STAGE.json`` ({key, outputs: {relative path: sha256}, result}) written atomically after the
stage's outputs, so an interrupted run resumes at the first stage without a matching record, and an output
changed or deleted since (its hash differs) makes the stage run again.

The run's own ledger beside the stages' sidecars: a stage of a run is a set of artifacts (the quantize stage's
ONNX, sidecar and manifest, the QAT checkpoint) and a result the report reads back, which one artifact's
sidecar does not hold; it reads nothing but its own files.

Usage::

    ledger = Ledger(run_dir)
    key = stage_key("export", {"precision": "fp32"}, {"checkpoint": ckpt})
    if (hit := ledger.match("export", key)) is None:
        ...  # run it
        ledger.record("export", key, [out_path], result={"top1": 1.0})
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.artifacts import library_versions, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

#: bump when a stage's outputs change meaning, so records of older versions never match
LEDGER_VERSION = 1


@functools.cache
def _libraries() -> dict[str, str]:
    """The installed versions :func:`stage_key` keys on, read once per process (~50 ms from the metadata)."""
    return library_versions()


def stage_key(stage: str, config: Mapping[str, Any], inputs: Mapping[str, Path | None]) -> str:
    """sha256 over the stage name, its config (JSON), the sha256 of each input file (None: absent) and the
    versions of the libraries that decide whether an artifact is current (edgeconvnext, torch, onnx,
    onnxruntime, nncf, tensorrt: the standalone commands' skip rule, :func:`edgeconvnext.artifacts.up_to_date`),
    so a run after an upgrade redoes its stages as ``quantize`` alone would."""
    files = {name: (sha256_file(p) if p is not None and Path(p).is_file() else None) for name, p in inputs.items()}
    blob = json.dumps(
        {"v": LEDGER_VERSION, "stage": stage, "config": config, "inputs": files, "libraries": _libraries()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Hit:
    """A matching record: the stage's outputs are intact and ``result`` is what it returned."""

    outputs: list[Path]
    result: dict[str, Any] = field(default_factory=dict)


class Ledger:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / ".stages"

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def match(self, stage: str, key: str) -> Hit | None:
        """The record of ``stage`` when its key equals ``key`` and every output still has its hash."""
        p = self.path(stage)
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if rec.get("key") != key:
            log.debug("stage %s: inputs or settings changed", stage)
            return None
        outs = []
        for rel, digest in (rec.get("outputs") or {}).items():
            f = self.root / rel
            if not f.is_file() or sha256_file(f) != digest:
                log.info("stage %s: %s changed or is missing since it was written: running it again", stage, rel)
                return None
            outs.append(f)
        return Hit(outs, rec.get("result") or {})

    def record(self, stage: str, key: str, outputs: Iterable[Path], result: Mapping[str, Any] | None = None) -> None:
        outs = {}
        for f in outputs:
            f = Path(f)
            outs[str(f.resolve().relative_to(self.root.resolve()))] = sha256_file(f)
        write_json_atomic(self.path(stage), {"stage": stage, "key": key, "outputs": outs, "result": dict(result or {})})

    def forget(self, stage: str) -> None:
        self.path(stage).unlink(missing_ok=True)
