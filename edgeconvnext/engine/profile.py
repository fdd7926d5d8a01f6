"""The optimisation profile of an engine build: batch sizes from ``--batch`` and the ONNX's own batch.

Input: ``--batch`` (``N`` or ``MIN,OPT,MAX``) and the ONNX's batch dimension (None when dynamic).
Output: a :class:`BatchProfile` (TensorRT's kMIN, kOPT, kMAX) and its input shapes.

Usage::

    profile = resolve_profile("1,8,32", onnx_batch=None)
    profile.shapes((3, 224, 224))  # {"min": [1, 3, 224, 224], "opt": [8, ...], "max": [32, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeconvnext.config import parse_batch_spec
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
    """``None`` -> None; ``N`` -> (N, N, N); ``"MIN,OPT,MAX"`` -> validated MIN <= OPT <= MAX, all >= 1
    (the ``--batch`` grammar of :func:`edgeconvnext.config.parse_batch_spec`, without ``dynamic``)."""
    t = parse_batch_spec(spec, dynamic=False, profile=True)
    return BatchProfile(*t) if t is not None else None


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
