"""``edgeconvnext device-check BUNDLE``: on the device, build, validate and time every engine of a bundle
written by ``edgeconvnext run``, and append a device section to its report (see
edgeconvnext.pipeline.device_check). Needs TensorRT and CUDA; no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeconvnext.cli._common import STATE, console, done
from edgeconvnext.cli._options import LatencyItersOpt, LatencyWarmupOpt


def device_check_cmd(
    bundle: Annotated[Path, typer.Argument(help="The bundle/ folder written by 'edgeconvnext run'.")],
    trtexec: Annotated[
        Path | None, typer.Option("--trtexec", help="Build (and, without the Python bindings, time) with this trtexec.")
    ] = None,
    val_data: Annotated[
        Path | None, typer.Option("--val-data", help="Labelled images instead of the bundle's images/.")
    ] = None,
    latency_batch: Annotated[
        str | None, typer.Option("--latency-batch", help="Batch sizes to time (default: the bundle's, else 1,32).")
    ] = None,
    warmup: LatencyWarmupOpt = None,
    iters: LatencyItersOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild engines even when they are up to date.")] = False,
) -> None:
    """Build each engine of BUNDLE (strongly typed, the recipe's profile and workspace), validate accuracy and
    latency, run doctor, and append the device's results to the bundle's report.json and report.md."""
    from rich.markup import escape

    from edgeconvnext.evaluate.validate import parse_batches
    from edgeconvnext.pipeline.device_check import DeviceCheckOptions, device_check
    from edgeconvnext.pipeline.report import _md_table

    c = console()
    with c.status("device-check", spinner="dots") if not STATE.quiet else _Null() as status:

        def step(text: str) -> None:
            if status is not None:
                status.update(escape(text))

        res = device_check(
            DeviceCheckOptions(
                bundle=bundle,
                trtexec=trtexec,
                val_data=val_data,
                latency_batches=parse_batches(latency_batch) if latency_batch else None,
                warmup=warmup,
                iters=iters,
                force=force,
                step=step,
            )
        )
    sec = res.section
    if not STATE.quiet:
        c.print(escape(_md_table(sec["rows"])), soft_wrap=True)
        for n in sec["notes"]:
            c.print(f"note: {n}", markup=False, soft_wrap=True)
    dev = sec["device"]
    done(
        escape(
            f"{bundle / 'report.md'}: device section for {dev['name']} "
            f"(TensorRT {dev.get('tensorrt') or 'version unknown'}), "
            f"{len(res.engines)} engines, {len(sec['rows'])} rows  {res.seconds:.1f} s"
        )
    )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
