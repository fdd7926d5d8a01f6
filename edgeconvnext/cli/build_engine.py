"""``edgeconvnext build-engine``: ONNX -> strongly typed TensorRT engine + sidecar (see edgeconvnext.engine.build)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import STATE, console, done, human_size, info, print_skipped
from edgeconvnext.cli._options import ForceOpt, JsonOpt


def build_engine_cmd(
    onnx: Annotated[Path, typer.Argument(help="ONNX model: FP32, FP16 or INT8 Q/DQ (precision comes from it).")],
    fp16: Annotated[
        bool | None,
        typer.Option(
            "--fp16/--no-fp16",
            help=(
                "Run the non-INT8 layers in FP16: an FP32 ONNX is converted to FP16 first (LayerNorm/GRN "
                "statistics stay FP32)."
            ),
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", help="Batch profile: N or MIN,OPT,MAX (default: the ONNX's fixed batch, else 1)."),
    ] = None,
    workspace: Annotated[
        int | None, typer.Option("--workspace", help="Builder workspace limit in MiB (default 1024, for 8 GB Jetsons).")
    ] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option("--timing-cache", help="Timing cache file: reused when present, saved after the build."),
    ] = None,
    opt_level: Annotated[
        int | None, typer.Option("--opt-level", help="Builder optimization level 0-5 (default 3).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Engine file (default: beside the ONNX, .engine).")
    ] = None,
    trtexec: Annotated[
        Path | None, typer.Option("--trtexec", help="Build with this trtexec binary instead of the Python bindings.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the builder settings and the equivalent trtexec command; needs no TensorRT."
        ),
    ] = False,
    dla_core: Annotated[
        int | None,
        typer.Option("--dla-core", help="Refused: ConvNeXt cannot run on DLA (kept so the reason is given)."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe", help="Recipe name or YAML file: its build section sets defaults the options above override."
        ),
    ] = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Build a TensorRT engine (TensorRT 10.x or 11.x, strongly typed) from an ONNX model."""
    from edgeconvnext.artifacts import Skipped
    from edgeconvnext.engine.build import build_engine, settings_json
    from edgeconvnext.engine.build import dry_run as plan_dry_run
    from edgeconvnext.engine.config import resolve_sources
    from edgeconvnext.recipes import load_recipe

    rec = load_recipe(recipe) if recipe else None
    req, sources = resolve_sources(
        rec,
        {
            "onnx": onnx,
            "output": output,
            "fp16": fp16,
            "batch": batch,
            "workspace_mib": workspace,
            "opt_level": opt_level,
            "timing_cache": timing_cache,
            "dla_core": dla_core,
            "trtexec": trtexec,
        },
    )
    if dry_run:
        result = plan_dry_run(req)
        result["config_sources"] = sources
        if rec is not None:
            result["recipe"] = str(rec.path)
        if json_out:
            print(settings_json(result))
            return
        from rich.markup import escape

        c = console()
        s = result["settings"]
        c.print(f"[bold]build-engine (dry run)[/bold]: {escape(s['onnx'])} -> {escape(s['output'])}")
        c.print(
            f"  precision {s['precision']} (strongly typed), input '{s['input']}' "
            f"min {s['profile']['min']} opt {s['profile']['opt']} max {s['profile']['max']}",
            markup=False,
        )
        c.print(
            f"  workspace {s['workspace_mib']} MiB, optimization level {s['builder_optimization_level']}, "
            f"timing cache {s['timing_cache'] or 'none'}; TensorRT {result['tensorrt']}",
            markup=False,
        )
        for note in s["notes"]:
            c.print(f"  note: {note}", markup=False)
        c.print("steps:")
        for st in result["steps"]:
            c.print(f"  {st}", soft_wrap=True, markup=False)
        return

    from rich.markup import escape
    from rich.status import Status

    with (
        Status("building", console=console(), spinner="dots")
        if not STATE.quiet and not json_out
        else nullcontext() as status
    ):

        def step(msg: str) -> None:
            if status is not None:
                status.update(escape(msg))
            if not json_out:
                info(escape(msg))

        built = build_engine(req, step=step, reuse=not force)
    if json_out and isinstance(built, Skipped):
        print(json.dumps({"engine": str(built.path), "skipped": True, "message": built.line()}, indent=2))
        return
    if isinstance(built, Skipped):
        return print_skipped(built)
    if json_out:
        print(
            json.dumps(
                {
                    "engine": str(built.engine),
                    "sidecar": str(built.sidecar),
                    "precision": built.precision,
                    "profile": str(built.profile),
                    "backend": built.backend,
                    "tensorrt": built.tensorrt_version,
                    "seconds": round(built.seconds, 2),
                    "engine_bytes": built.engine_bytes,
                    "fp16_onnx": str(built.fp16_onnx) if built.fp16_onnx else None,
                },
                indent=2,
            )
        )
        return
    for note in built.notes:
        info(escape(f"note: {note}"))
    done(
        escape(
            f"{built.engine} ({human_size(built.engine_bytes)}, {built.precision}, batch {built.profile}, "
            f"TensorRT {built.tensorrt_version or 'version unknown'} via {built.backend}) in {built.seconds:.1f} s"
        )
    )
