"""The optimisation profile of an engine build: batch sizes from ``--batch`` and the ONNX's own batch.

Input: ``--batch`` (``N`` or ``MIN,OPT,MAX``) and the ONNX's batch dimension (None when dynamic).
Output: a :class:`BatchProfile` (TensorRT's kMIN, kOPT, kMAX) and its input shapes.

Usage::

    profile = resolve_profile("1,8,32", onnx_batch=None)
    profile.shapes((3, 224, 224))  # {"min": [1, 3, 224, 224], "opt": [8, ...], "max": [32, ...]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeconvnext.errors import UsageError


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the optimisation profile (TensorRT's kMIN, kOPT, kMAX)."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max

    def shapes(self, chw: tuple[int, int, int]) -> dict[str, list[int]]:
        return {k: [getattr(self, k), *chw] for k in ("min", "opt", "max")}


def parse_batch(spec: str | int | None) -> BatchProfile | None:
    """``None`` -> None; ``N`` -> (N, N, N); ``"MIN,OPT,MAX"`` -> validated MIN <= OPT <= MAX, all >= 1."""
    if spec is None:
        return None
    text = str(spec).strip()
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise UsageError(
            f"--batch '{spec}' is not N or MIN,OPT,MAX (positive integers, e.g. --batch 1 or --batch 1,8,32)"
        )
    vals = [int(p) for p in parts]
    if any(v < 1 for v in vals):
        raise UsageError(f"--batch '{spec}': batch sizes must be >= 1")
    if len(vals) == 1:
        return BatchProfile(vals[0], vals[0], vals[0])
    lo, opt, hi = vals
    if not lo <= opt <= hi:
        raise UsageError(f"--batch '{spec}': need MIN <= OPT <= MAX (got {lo}, {opt}, {hi})")
    return BatchProfile(lo, opt, hi)


def resolve_profile(spec: str | int | None, onnx_batch: int | None, onnx_name: str = "the ONNX") -> BatchProfile:
    """The profile to build: from ``--batch``; a fixed-batch ONNX allows only its batch; default batch 1."""
    prof = parse_batch(spec)
    if onnx_batch is not None:
        own = BatchProfile(onnx_batch, onnx_batch, onnx_batch)
        if prof is not None and prof != own:
            raise UsageError(
                f"{onnx_name} has a fixed batch of {onnx_batch}: --batch {spec} cannot be built "
                f"from it; use --batch {onnx_batch}, or re-export with a dynamic batch "
                "(edgeconvnext export without --batch)"
            )
        return own
    return prof if prof is not None else BatchProfile(1, 1, 1)
