"""The command-line options more than one command takes, each declared once (name, help, default) as an
``Annotated`` type: ``def cmd(model: ModelOpt = None, ...)``. An option that only one command has stays in that
command's module; the QAT options, which only ``quantize`` takes, are declared in :mod:`edgeconvnext.cli.qat`.

Nothing heavy is imported here: the root ``--help`` lists the commands without importing this module, and a
command's ``--help`` imports it without torch or onnx."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

# -- the model: load_model's arguments (export, quantize, sensitivity, run, finetune, validate)
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Architecture (timm name or alias: v2_nano, v1_tiny).")
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", "-c", help="Checkpoint file (official, timm, HuggingFace or edgeconvnext)."),
]
NumClassesOpt = Annotated[
    int | None, typer.Option("--num-classes", help="Replace a classifier of another size with N outputs.")
]
ImgSizeOpt = Annotated[
    int | None, typer.Option("--img-size", help="Input size in pixels (default: the checkpoint's, else 224).")
]
UnsafeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsafe-pickle", help="Allow full unpickling of a trusted checkpoint that weights_only loading refuses."
    ),
]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Use the EMA weights of an official training checkpoint.")]

# -- output
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
JsonResultOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of the table.")]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Redo the stage even when its output's sidecar matches (same inputs, config and library versions).",
    ),
]

# -- PTQ: calibration and placement (quantize, sensitivity, run)
# Options a recipe can set default to None ("not given"), so defaults < recipe < command line holds; the
# built-in defaults live in edgeconvnext.quantize.config.QuantizeConfig and are named in the help texts.
RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="Recipe name or YAML file (recipes/): its model, "
        "img_size and quantize section set defaults the options "
        "given here override.",
    ),
]
CalibDataOpt = Annotated[
    Path | None,
    typer.Option("--calib-data", help="Folder of calibration images (searched recursively; jpg/png/webp/bmp/tif)."),
]
CalibSizeOpt = Annotated[
    int | None,
    typer.Option("--calib-size", help="Images to calibrate on (default 512; ~500 recommended).", show_default=False),
]
MinCalibOpt = Annotated[
    int | None,
    typer.Option(
        "--min-calib-size",
        help="Refuse fewer calibration images than this (default 32; lower it only for smoke tests).",
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Chooses the calibration subset (default 0); QAT's data order and augmentation follow the recipe's "
        "qat.seed (default 0), not this.",
        show_default=False,
    ),
]
ManifestOpt = Annotated[
    Path | None,
    typer.Option("--calib-manifest", help="Reuse the exact images of a manifest (OUT.calib.json), hash-checked."),
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="ort (onnxruntime, default: ~2x faster calibration) or nncf.")
]
CalibMethodOpt = Annotated[
    str | None, typer.Option("--calib-method", help="ort: minmax (default), percentile, entropy; nncf: minmax, mse.")
]
PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="convnext (default): INT8 on fc1/fc2 and "
        "downsample convs, stem, depthwise and classifier in float; "
        "all: every conv/matmul.",
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Keep layers matching this fnmatch pattern out of INT8 (repeatable), e.g. 'stages.2.blocks.*.mlp.fc2'.",
        metavar="PATTERN",
    ),
]
SmoothOpt = Annotated[
    bool | None,
    typer.Option(
        "--smooth/--no-smooth",
        help="Equalise LayerNorm outlier channels into the next layer's weights before calibrating "
        "(exact, no extra nodes; default on). --no-smooth to compare.",
    ),
]

# the PTQ options above as QuantizeConfig keys (each command's parameter of the same name)
PTQ_KEYS = ("backend", "calib_method", "policy", "exclude", "calib_size", "seed", "min_calib_size", "smooth")


def ptq_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The PTQ options of a command's parsed parameters (``ctx.params``) as QuantizeConfig overrides, None where
    not given: ``prepare(recipe, ptq_values(ctx.params), ...)``."""
    values = {k: params[k] for k in PTQ_KEYS}
    values["exclude"] = list(values["exclude"]) if values["exclude"] else None  # typer gives a tuple or None
    return values


# -- the accuracy budget (quantize --max-drop, run --max-drop, sensitivity)
MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="Accuracy budget in top-1 points vs FP32 on --val-data: keep the most harmful layers in higher "
        "precision until the drop is within it (exit 7 if it cannot be met).",
    ),
]
MaxDisagreeOpt = Annotated[
    float | None,
    typer.Option(
        "--max-disagree",
        help="Budget as % of images whose top-1 differs from FP32 (default 0.5 when --val-data has no labels).",
    ),
]
MinValOpt = Annotated[
    int | None, typer.Option("--min-val-size", help="Refuse fewer usable validation images than this (default 100).")
]
SubsetOpt = Annotated[
    int | None,
    typer.Option("--subset-size", help="Validation images the layer ranking runs on (the hardest; default 300)."),
]
MinShareOpt = Annotated[
    float | None,
    typer.Option("--min-int8-share", help="The budget search may not go below this % of MACs in INT8 (default 0)."),
]

# -- latency runs (run, device-check)
LatencyWarmupOpt = Annotated[int | None, typer.Option("--warmup", help="Untimed iterations per batch size.")]
LatencyItersOpt = Annotated[int | None, typer.Option("--iters", help="Timed iterations per batch size.")]
