"""``edgeconvnext models``: every architecture with params and GMACs computed from the model."""

from __future__ import annotations

import json
from typing import Any

from edgeconvnext.cli._common import console
from edgeconvnext.cli._options import JsonOpt


def models_cmd(json_out: JsonOpt = False) -> None:
    """List architectures: params (M) and GMACs at 224 px computed from the model, default preprocessing."""
    from edgeconvnext.models.registry import ALIASES, ARCHS, count_stats, public_names

    rows: list[dict[str, Any]] = []
    for name in public_names():
        arch = ARCHS[name]
        stats = count_stats(arch)
        rows.append(
            {
                "name": name,
                "version": arch.version,
                "aliases": sorted(a for a, n in ALIASES.items() if n == name and a.startswith(("v1_", "v2_"))),
                "depths": list(arch.depths),
                "dims": list(arch.dims),
                "params_m": round(stats["params_m"], 2),
                "gmacs": round(stats["gmacs"], 3),
                "published_params_m": arch.published_params_m,
                "published_gmacs": arch.published_gmacs,
                "preprocess": arch.preprocess.to_dict(),
                "weights_licence": arch.weights_licence,
            }
        )
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table(title="ConvNeXt architectures (224 px; params and GMACs computed from the model)")
    for col in ("name", "alias", "depths", "width", "params M", "GMACs", "input"):
        # only "input" may wrap: the other cells are names and numbers that an 80-column pipe must not cut off
        t.add_column(
            col,
            justify="right" if col in ("width", "params M", "GMACs") else "left",
            no_wrap=col != "input",
            min_width=len(col) if col != "input" else 9,
        )
    for r in rows:
        pp = r["preprocess"]
        t.add_row(
            r["name"],
            ",".join(r["aliases"]),
            "-".join(map(str, r["depths"])),
            str(r["dims"][0]),
            f"{r['params_m']:.2f}",
            f"{r['gmacs']:.2f}",
            f"{pp['img_size']}/{pp['crop_pct']} {pp['interpolation']}",
        )
    c = console()
    c.print(t)
    c.print(
        "input: size/crop_pct interpolation; mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) "
        "unless a checkpoint says otherwise"
    )
