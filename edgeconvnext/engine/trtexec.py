"""trtexec: the command line that builds a plan, and running it.

Input: a :class:`~edgeconvnext.engine.plan.BuildPlan` and the TensorRT version of the binary. Output: the
argv (``--stronglyTyped`` on 10.x only, no precision flags: they are gone in 11.x), and
:func:`build_with_trtexec`, which runs it into a file and keeps its full log beside the engine.

Usage::

    print(format_command(trtexec_command(plan, (10, 3, 0))))
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from edgeconvnext.artifacts import atomic_output
from edgeconvnext.engine.backend import MIN_TRT_MAJOR, Backend, too_old
from edgeconvnext.engine.plan import BuildPlan
from edgeconvnext.errors import BackendMissing, BuildError, UsageError

log = logging.getLogger(__name__)


def _shape_arg(name: str, shape: list[int]) -> str:
    """``name:NxCxHxW`` for --minShapes/--optShapes/--maxShapes.

    trtexec (samples/common/sampleOptions.cpp, 10.3 and 11.1) splits the list at every ',' before it looks
    at quotes, then takes the name between two single quotes if there are any, else everything before
    the last ':'. A name with ':' is wrapped in single quotes, as ``trtexec --help`` shows ('Input:0');
    a name with ',' or a single quote cannot be written at all, so it is refused.
    """
    if "," in name or "'" in name:
        raise UsageError(
            f"input name {name!r} contains ',' or a single quote, which trtexec's --minShapes/"
            "--optShapes/--maxShapes cannot express; rename the ONNX input (edgeconvnext export "
            "names it 'input') or build with TensorRT's Python bindings"
        )
    quoted = f"'{name}'" if ":" in name else name
    return f"{quoted}:{'x'.join(str(d) for d in shape)}"


def trtexec_command(
    plan: BuildPlan,
    trt_version: tuple[int, ...] | None,
    *,
    trtexec: str | Path = "trtexec",
    save_engine: Path | None = None,
) -> list[str]:
    """The trtexec argv that builds ``plan``; TensorRT 10.x gets --stronglyTyped, 11.x does not need it.

    ``trt_version`` None (unknown) writes the 10.x form, which TensorRT 11 also accepts (the flag is a
    deprecated no-op there). No precision flags: --fp16/--int8/--best are gone in 11.x.
    """
    major = trt_version[0] if trt_version else None
    if major is not None and major < MIN_TRT_MAJOR:
        raise BackendMissing(too_old(".".join(map(str, trt_version))))  # type: ignore[arg-type]
    cmd = [str(trtexec), f"--onnx={plan.build_onnx}", f"--saveEngine={save_engine or plan.output}"]
    if major is None or major < 11:
        cmd.append("--stronglyTyped")
    if plan.dynamic:
        shapes = plan.profile.shapes(plan.onnx.chw)
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            cmd.append(f"{flag}={_shape_arg(plan.onnx.input_name, shapes[key])}")
    cmd.append(f"--memPoolSize=workspace:{plan.workspace_mib}M")
    if plan.timing_cache is not None:
        cmd.append(f"--timingCacheFile={plan.timing_cache}")
    cmd.append(f"--builderOptimizationLevel={plan.opt_level}")
    cmd.append("--skipInference")
    return cmd


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)


#: lines of trtexec's output quoted in a failed build's error (the whole output is in the log file)
TAIL_LINES = 15


def _failure(done: subprocess.CompletedProcess, plan: BuildPlan, dest: Path, log_file: Path) -> str:
    """What a failed trtexec run says: how it ended (its exit status, or the signal that killed it), the engine
    it was building and the ONNX it read (not the temporary files, which are deleted with the failed build),
    and the last lines of its stderr (TensorRT's logger writes errors there), else of its stdout."""
    from edgeconvnext.signals import signal_name

    rc = done.returncode
    if rc < 0:
        how = f"was killed by {signal_name(-rc)}"
    elif rc > 0:
        how = f"failed with exit status {rc}"
    else:
        how = "exited 0 but wrote no engine"
    stream, text = ("stderr", done.stderr) if (done.stderr or "").strip() else ("output", done.stdout)
    lines = (text or "").replace(str(dest), str(plan.output)).strip().splitlines()[-TAIL_LINES:]
    tail = f"; last lines of its {stream}:\n" + "\n".join(lines) if lines else "; it printed nothing"
    return f"trtexec {how} building {plan.output} from {plan.onnx.path}; full log in {log_file}{tail}"


def build_with_trtexec(backend: Backend, plan: BuildPlan, dest: Path, log_file: Path) -> dict[str, Any]:
    cmd = trtexec_command(plan, backend.version, trtexec=backend.trtexec or "trtexec", save_engine=dest)
    log.info("running %s", format_command(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise BackendMissing(f"cannot run {backend.trtexec}: {e}") from None
    # the log and the messages name the engine path the user asked for, not the temporary file that is
    # deleted when the build fails
    output = ((done.stdout or "") + (done.stderr or "")).replace(str(dest), str(plan.output))
    with atomic_output(log_file) as tmp:
        tmp.write_text(f"$ {format_command(cmd).replace(str(dest), str(plan.output))}\n{output}")
    if done.returncode != 0 and re.search(
        r"no CUDA-capable device|cudaErrorNoDevice|CUDA driver version is "
        r"insufficient|CUDA initialization failure",
        output,
    ):
        raise BackendMissing(
            f"trtexec found no usable NVIDIA GPU (see {log_file}): TensorRT needs an NVIDIA GPU "
            "with a working driver; 'edgeconvnext build-engine MODEL.onnx --dry-run' prints the command to run "
            "on the target"
        )
    if done.returncode != 0 or not dest.is_file() or dest.stat().st_size == 0:
        raise BuildError(_failure(done, plan, dest, log_file))
    from edgeconvnext.env.probes import parse_trt_version

    v = parse_trt_version(output)
    if v:
        backend.version = v
    return {"command": format_command(cmd)}
