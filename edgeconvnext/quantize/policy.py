"""Which Conv/MatMul/Gemm layers of a ConvNeXt run in INT8: the placement policy, as data.

Input: the FP32 ONNX graph (node names map to our module names, see graph.layer_name), a policy name and
``--exclude`` patterns. Output: one :class:`Placement` per Conv/MatMul/Gemm node, with the reason.

Policies:

- ``convnext`` (default): INT8 on the pointwise MLP (``mlp.fc1``, ``mlp.fc2``: MatMul, or 1x1 Conv) and the
  downsample convs (``stages.N.downsample.1``), 94-99% of a block's MACs. Higher precision for the stem
  conv (raw-image input, tiny fan-in), the classifier (``head.fc``; stem + classifier are ~1% of the MACs
  but, on a Fashion-MNIST atto, 0.68 of a 0.70-point INT8 drop), the 7x7 depthwise conv (INT8 grouped
  convs are often slower than FP16 in TensorRT) and, implicitly, LayerNorm, GELU, GRN and the residual
  stream (no Q/DQ is placed on them).
- ``all``: every Conv/MatMul/Gemm, stem and classifier included.

``--exclude`` patterns (fnmatch on layer names, e.g. ``stages.2.blocks.*.mlp.fc2``) keep matching layers
out of INT8 under either policy; a pattern that matches no layer is an error listing real names.

Usage::

    placement = plan(fp32_model, "convnext", exclude=["stages.3.*"])
    int8_nodes = [p.node for p in placement if p.int8]
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgeconvnext.errors import UsageError, nearest
from edgeconvnext.onnx.graph import COMPUTE_OPS, GraphIndex, compress_rows, compute_macs, layer_name
from edgeconvnext.quantize.config import Policy

if TYPE_CHECKING:
    import onnx

POLICIES = tuple(p.value for p in Policy)  # the config's Enum: one list of choices

# role -> (INT8 under "convnext", reason)
_ROLES: dict[str, tuple[bool, str]] = {
    "stem": (False, "stem: raw-image input"),
    "downsample": (True, "downsample conv"),
    "dwconv": (False, "depthwise: slow in INT8"),
    "fc1": (True, "pointwise MLP"),
    "fc2": (True, "pointwise MLP"),
    "classifier": (False, "classifier"),
    "other": (False, "unknown layer"),
}
_ROLE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("stem", re.compile(r"^stem(\.\d+)?$")),
    ("downsample", re.compile(r"^stages\.\d+\.downsample(\.\d+)?$")),
    ("dwconv", re.compile(r"^stages\.\d+\.blocks\.\d+\.conv_dw$")),
    ("fc1", re.compile(r"^stages\.\d+\.blocks\.\d+\.mlp\.fc1$")),
    ("fc2", re.compile(r"^stages\.\d+\.blocks\.\d+\.mlp\.fc2$")),
    ("classifier", re.compile(r"^head\.fc$")),
]


def role(layer: str) -> str:
    """stem / downsample / dwconv / fc1 / fc2 / classifier / other, from the module name."""
    for name, pat in _ROLE_PATTERNS:
        if pat.match(layer):
            return name
    return "other"


@dataclass
class Placement:
    """The decision for one Conv/MatMul/Gemm node."""

    node: str
    layer: str
    op: str
    role: str
    int8: bool
    reason: str
    macs: int | None = None

    @property
    def precision(self) -> str:
        return "INT8" if self.int8 else "FP"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision}


def check_policy(policy: str) -> str:
    p = policy.strip().lower()
    if p not in POLICIES:
        hint = nearest(p, POLICIES)
        raise UsageError(
            f"unknown --policy '{policy}'"
            + (f"; did you mean '{hint}'?" if hint else "")
            + f" (choose from {', '.join(POLICIES)})"
        )
    return p


def check_excludes(patterns: Sequence[str], layers: Iterable[str]) -> None:
    """Every ``--exclude`` pattern must match at least one of ``layers`` (module names)."""
    layers = list(layers)
    for pat in patterns:
        if not pat.strip():
            raise UsageError("--exclude needs a pattern such as 'stages.2.blocks.*.mlp.fc2'")
        if not any(fnmatch.fnmatchcase(name, pat) for name in layers):
            hint = nearest(pat, layers)
            examples = hint or ", ".join(sorted({name for name in layers if "blocks.0" in name or "." not in name})[:4])
            raise UsageError(
                f"--exclude '{pat}' matches no Conv/MatMul/Gemm layer (layer names look like "
                f"{examples}; patterns use fnmatch, e.g. 'stages.2.blocks.*.mlp.fc2')"
            )


def torch_layer_names(model: Any) -> list[str]:
    """Names of the Conv2d/Linear modules of a torch model: the layer names ``--exclude`` matches."""
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def plan(model: onnx.ModelProto, policy: str, exclude: Sequence[str] = ()) -> list[Placement]:
    """One Placement per Conv/ConvTranspose/MatMul/Gemm of ``model`` under ``policy`` and ``exclude``."""
    policy = check_policy(policy)
    g = GraphIndex(model)
    macs = compute_macs(model)
    nodes = [n for n in g.nodes if n.op_type in COMPUTE_OPS]
    names = [layer_name(n) for n in nodes]
    check_excludes(exclude, names)
    out: list[Placement] = []
    for n, name in zip(nodes, names, strict=False):
        r = role(name)
        if policy == "all":
            int8, reason = True, "--policy all"
        else:
            int8, reason = _ROLES[r]
        hit = next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None)
        if hit is not None and int8:
            int8, reason = False, f"--exclude {hit}"
        out.append(
            Placement(node=n.name, layer=name, op=n.op_type, role=r, int8=int8, reason=reason, macs=macs.get(n.name))
        )
    if not any(p.int8 for p in out):
        raise UsageError(
            f"--policy {policy} with --exclude {' '.join(exclude) or '(none)'} leaves no layer in "
            "INT8: nothing to quantize"
        )
    return out


def int8_macs_share(placement: Sequence[Placement]) -> float | None:
    total = sum(p.macs or 0 for p in placement)
    if not total or any(p.macs is None for p in placement):
        return None
    return sum(p.macs or 0 for p in placement if p.int8) / total


def details(placement: Sequence[Placement]) -> dict[str, Any]:
    """The sidecars' ``placement`` section (PTQ and QAT): counts, the INT8 share of MACs, the table and each layer."""
    return {
        "int8_layers": sum(p.int8 for p in placement),
        "layers": len(placement),
        "int8_macs_share": int8_macs_share(placement),
        "table": table(placement),
        "layers_detail": [p.to_dict() for p in placement],
    }


def table(placement: Sequence[Placement], compress: bool = True) -> list[dict[str, Any]]:
    """Rows (layer, op, precision, count, macs, macs_share, reason) with repeated blocks merged."""
    rows: list[dict[str, Any]] = [
        {"layer": p.layer, "op": p.op, "precision": p.precision, "macs": p.macs, "reason": p.reason} for p in placement
    ]
    rows = compress_rows(rows, keys=("op", "precision", "reason")) if compress else [{**r, "count": 1} for r in rows]
    total = sum(p.macs or 0 for p in placement)
    for r in rows:
        r["macs_share"] = round(r["macs"] / total, 5) if (total and r["macs"] is not None) else None
    return rows


#: appended to the reason of an INT8 layer whose input channels were equalised (quantize/smooth.py)
SMOOTHED = "input equalised"


def mark_smoothed(placement: Sequence[Placement], layers: Iterable[str]) -> None:
    """Say in the placement table which INT8 layers read an equalised LayerNorm output."""
    wanted = set(layers)
    for p in placement:
        if p.int8 and p.layer in wanted:
            p.reason = f"{p.reason}, {SMOOTHED}"
