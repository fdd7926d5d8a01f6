"""TensorRT engine building: ONNX (FP32, FP16 or INT8 Q/DQ) -> strongly typed TensorRT plan + JSON sidecar.

Input: an ONNX file. Output: ``OUT.engine`` (a plain TensorRT plan: nothing prepended, loadable by any
TensorRT tool of the same version) and ``OUT.engine.json`` (TensorRT version, GPU and compute capability,
Jetson model and JetPack, optimisation profile, precision, source ONNX sha256, build time and size).

Decisions, and why:

* Always a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; trtexec
  ``--stronglyTyped`` on 10.x, where it is opt-in, and omitted on 11.x, where it is the default and the
  flag is a deprecated no-op). TensorRT 11 removed the weak-typing flags (BuilderFlag.FP16/INT8, trtexec
  --fp16/--int8/--best) and implicit INT8 calibration; precision therefore comes from the ONNX: Q/DQ nodes
  for INT8, float16 tensors for FP16. TensorRT older than 10 is refused.
* ``--fp16`` on an FP32 (or FP32 Q/DQ) ONNX converts the graph to FP16 at the ONNX level first
  (:mod:`edgeconvnext.onnx.fp16`: LayerNorm statistics and GRN reductions stay FP32, Q/DQ scales become FP16),
  writes it beside the engine (``OUT.fp16.onnx``; an existing file there is replaced only when it is an
  earlier conversion of the same source) and checks it against the FP32 graph in onnxruntime when
  onnxruntime is installed. An ONNX that is already FP16 is built as it is.
* A Q/DQ ONNX is checked against TensorRT's explicit-quantization rules (:mod:`edgeconvnext.onnx.trt_rules`)
  before the build: a RuleViolation (exit 6) now rather than a parser error after minutes.
* DLA is refused: ConvNeXt's LayerNormalization, Erf (GELU), Sqrt and Div do not run on DLA, and Orin
  Nano has no DLA; GPU fallback would be a silent GPU build.
* Optimisation profile from ``--batch`` (``N`` or ``MIN,OPT,MAX``); a fixed-batch ONNX builds only its own
  batch. Input name and C, H, W are read from the ONNX.
* Workspace defaults to 1024 MiB (an 8 GB Orin shares its DRAM with the CPU).
* The Python bindings build when importable; otherwise trtexec (``--trtexec PATH``, PATH, or JetPack's
  /usr/src/tensorrt/bin/trtexec) builds through a subprocess. Neither: BackendMissing with what to install.

Layout: :mod:`~edgeconvnext.engine.profile` (``--batch``), :mod:`~edgeconvnext.engine.plan` (request ->
decisions, no TensorRT), :mod:`~edgeconvnext.engine.backend` (bindings or trtexec),
:mod:`~edgeconvnext.engine.trtexec` (its command line), :mod:`~edgeconvnext.engine.compat` (plan header,
engine/machine compatibility); this module runs the build and writes the sidecar.

Usage::

    result = build_engine(BuildRequest(onnx=Path("nano_int8.onnx"), fp16=True, batch="1,8,32"))
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.artifacts import (
    Sidecar,
    Skipped,
    atomic_output,
    environment,
    input_ref,
    output_ref,
    reuse_if_current,
    sha256_file,
)
from edgeconvnext.engine.backend import MIN_TRT_MAJOR, Backend, import_tensorrt, select_backend, too_old
from edgeconvnext.engine.compat import PLAN_TAG, check_plan_file, read_plan_header
from edgeconvnext.engine.config import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_MIB, OPT_LEVELS, BuildRequest
from edgeconvnext.engine.plan import (
    DLA_REFUSAL,
    ENGINE_SUFFIXES,
    BuildPlan,
    OnnxSummary,
    check_dla,
    plan_build,
    summarize_onnx,
)
from edgeconvnext.engine.profile import BatchProfile, parse_batch, resolve_profile
from edgeconvnext.engine.trtexec import build_with_trtexec, format_command, trtexec_command
from edgeconvnext.errors import BackendMissing, BuildError, ExportError, UsageError

log = logging.getLogger(__name__)

#: the FP16 conversion is kept only when its logits are finite; a larger relative difference warns
FP16_WARN_REL_DIFF = 5e-2


@dataclass
class BuildResult:
    """What :func:`build_engine` wrote."""

    engine: Path
    sidecar: Path
    precision: str
    profile: BatchProfile
    backend: str
    tensorrt_version: str | None
    seconds: float
    engine_bytes: int
    fp16_onnx: Path | None = None
    log_file: Path | None = None
    notes: list[str] = field(default_factory=list)


def _convert_fp16(plan: BuildPlan, step: Callable[[str], None]) -> dict[str, Any]:
    from edgeconvnext.onnx.fp16 import compare_outputs, convert_file

    step(f"converting {plan.onnx.path.name} to FP16 (LayerNorm and GRN reductions kept FP32) -> {plan.build_onnx}")
    report = convert_file(plan.onnx.path, plan.build_onnx, source_sha256=plan.onnx.sha256)
    out: dict[str, Any] = {
        "path": str(plan.build_onnx),
        "sha256": sha256_file(plan.build_onnx),
        "report": report.to_dict(),
    }
    try:
        parity = compare_outputs(plan.onnx.path, plan.build_onnx, batch=2)
    except BackendMissing as e:
        log.warning("FP16 conversion not checked: %s", e)
        parity = None
    if parity is not None:
        out["parity_vs_fp32"] = parity
        if not parity["finite"]:
            plan.build_onnx.unlink(missing_ok=True)
            raise ExportError(
                f"the FP16 conversion of {plan.onnx.path} produces non-finite logits in "
                "onnxruntime; build it in FP32 (without --fp16) or export FP16 from the checkpoint"
            )
        if parity["rel_diff"] > FP16_WARN_REL_DIFF:
            log.warning(
                "FP16 conversion differs from FP32 by %.3g (relative) on random input; validate accuracy",
                parity["rel_diff"],
            )
    return out


def _build_python(trt: Any, plan: BuildPlan, dest: Path) -> dict[str, Any]:
    """Build with TensorRT's Python API into ``dest``; returns details for the sidecar."""
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # noqa: BLE001 - raised when no CUDA device/driver is usable
        raise BackendMissing(
            f"TensorRT cannot create a builder ({e}): it needs an NVIDIA GPU with a working driver"
        ) from None
    if builder is None:
        raise BackendMissing("TensorRT cannot create a builder: it needs an NVIDIA GPU with a working driver")
    # STRONGLY_TYPED: required for Q/DQ-and-FP16 precision from the ONNX on 10.x; accepted (default) on 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.build_onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        # named by the source ONNX: the FP16 conversion (plan.build_onnx) is deleted with the failed build
        fp16 = " (its FP16 conversion)" if plan.convert_fp16 else ""
        raise BuildError(f"TensorRT's ONNX parser rejected {plan.onnx.path}{fp16}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    config.builder_optimization_level = plan.opt_level
    if plan.dynamic:
        shapes = plan.profile.shapes(plan.onnx.chw)
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.onnx.input_name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    cache = None
    if plan.timing_cache is not None:
        # create_timing_cache(b"") starts an empty cache (size 0); a blob TensorRT cannot read gives None,
        # and set_timing_cache returns False for a cache written on another device or TensorRT version
        # (NvInfer.h, IBuilderConfig::createTimingCache/setTimingCache). trtexec passes ignoreMismatch=true;
        # we do not (NvInfer.h warns of functional and performance bugs), and refuse rather than replace the
        # file silently, since it is overwritten after the build.
        data = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise UsageError(
                f"--timing-cache {plan.timing_cache}: TensorRT cannot use this timing cache (written by "
                "another TensorRT version or GPU, or not a timing cache); give another path, or delete "
                "the file to start a new cache"
            )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(
            f"TensorRT could not build {plan.output} from {plan.onnx.path} (see the TensorRT messages "
            "above; a larger --workspace or a lower --opt-level can help)"
        )
    dest.write_bytes(memoryview(serialized))
    if cache is not None:
        # as trtexec saves it (sampleEngines.cpp: config->getTimingCache() after the build)
        with atomic_output(plan.timing_cache) as tmp:  # type: ignore[arg-type]
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return {}


def build_engine(
    req: BuildRequest, *, step: Callable[[str], None] | None = None, reuse: bool = False
) -> BuildResult | Skipped:
    """Build the engine described by ``req``; engine and sidecar appear together or not at all.

    ``reuse``: return :class:`~edgeconvnext.artifacts.Skipped` without building when the engine's sidecar
    matches (same ONNX hash, settings, library and TensorRT versions; the engine file unchanged)."""
    step = step or (lambda msg: log.info("%s", msg))
    plan = plan_build(req)
    # the rules first: a violation is exit 6 whether or not TensorRT is here, before anything is written
    trt_check = _check_qdq_rules(plan.onnx.path) if plan.onnx.has_qdq else None
    backend = select_backend(plan.trtexec)
    if backend.version is not None and backend.version[0] < MIN_TRT_MAJOR:
        raise BackendMissing(too_old(backend.version_str or "?"))
    inputs, config, versions = _engine_key(req, plan, backend)
    if reuse and (
        reused := reuse_if_current(plan.output, stage="build-engine", inputs=inputs, config=config, versions=versions)
    ):
        return reused

    t0 = time.perf_counter()
    try:
        return _build(plan, backend, step, t0, trt_check, (inputs, config, versions))
    except BaseException:  # errors, Ctrl-C, SIGTERM: nothing of a failed build is kept, the FP16 ONNX neither
        if plan.convert_fp16:
            plan.build_onnx.unlink(missing_ok=True)
        raise


def _build(
    plan: BuildPlan,
    backend: Backend,
    step: Callable[[str], None],
    t0: float,
    trt_check: dict[str, Any] | None,
    key: tuple[Any, Any, Any],
) -> BuildResult:
    inputs, config, versions = key
    fp16_info = _convert_fp16(plan, step) if plan.convert_fp16 else None
    if plan.convert_fp16 and plan.onnx.has_qdq:
        trt_check = _check_qdq_rules(plan.build_onnx)  # the conversion kept the rules (checked again: cheap)
    step(
        f"building {plan.precision} engine with TensorRT {backend.version_str or '(version unknown)'} "
        f"({backend.kind}), "
        f"batch {plan.profile}, workspace {plan.workspace_mib} MiB, opt level {plan.opt_level}"
    )
    log_file = plan.output.with_name(plan.output.name + ".trtexec.log") if backend.kind == "trtexec" else None
    t_build = time.perf_counter()
    extra: dict[str, Any]
    with atomic_output(plan.sidecar) as sc_tmp:
        with atomic_output(plan.output) as tmp:
            if backend.kind == "python":
                extra = _build_python(backend.module, plan, tmp)
            else:
                assert log_file is not None  # set for every trtexec build above
                extra = build_with_trtexec(backend, plan, tmp, log_file)
            header = check_plan_file(tmp)
        side = _engine_sidecar(plan, backend, header, fp16_info, trt_check, extra)
        side.inputs, side.config = inputs, config
        side.environment = {**environment(device=side.details["gpu"].get("name")), **versions}
        side.timings = {
            "build_s": round(time.perf_counter() - t_build, 2),
            "total_s": round(time.perf_counter() - t0, 2),
        }
        sc_tmp.write_text(side.to_json())
    return BuildResult(
        engine=plan.output,
        sidecar=plan.sidecar,
        precision=plan.precision,
        profile=plan.profile,
        backend=backend.kind,
        tensorrt_version=backend.version_str,
        seconds=time.perf_counter() - t0,
        engine_bytes=plan.output.stat().st_size,
        fp16_onnx=plan.build_onnx if plan.convert_fp16 else None,
        log_file=log_file,
        notes=plan.notes,
    )


def _check_qdq_rules(onnx_path: Path) -> dict[str, Any]:
    """TensorRT's explicit-quantization rules, checked before a long build (RuleViolation, exit 6)."""
    from edgeconvnext.onnx.trt_rules import check_file

    report = check_file(onnx_path)
    report.raise_for_violations()
    return {"violations": 0, "warnings": list(report.warnings)}


def _engine_key(
    req: BuildRequest, plan: BuildPlan, backend: Backend
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, str]]:
    """The sidecar's inputs (the ONNX), resolved settings and the TensorRT that builds (the skip rule)."""
    inputs = [input_ref("onnx", plan.onnx.path, plan.onnx.sha256)]
    config = {
        "precision": plan.precision,
        "fp16": req.fp16,
        "profile": [plan.profile.min, plan.profile.opt, plan.profile.max],
        "workspace_mib": plan.workspace_mib,
        "opt_level": plan.opt_level,
        "timing_cache": str(plan.timing_cache) if plan.timing_cache else None,
        "builder": backend.kind,
    }
    return inputs, config, {"tensorrt_builder": backend.version_str or "?"}


def _engine_sidecar(
    plan: BuildPlan,
    backend: Backend,
    header: tuple[int, int, int, int] | None,
    fp16_info: dict[str, Any] | None,
    trt_check: dict[str, Any] | None,
    extra: dict[str, Any],
) -> Sidecar:
    """What ``OUT.engine.json`` records of a finished build (inputs, config, environment and timings are
    added by the caller)."""
    from edgeconvnext.env.probes import gpu_summary, probe_jetson

    jetson = probe_jetson()
    outputs = [output_ref(plan.output)]
    if plan.convert_fp16:
        outputs.append(output_ref(plan.build_onnx, relative_to=plan.sidecar.parent))
    details = {
        "tensorrt": {
            "version": backend.version_str,
            "builder": backend.kind,
            "trtexec": str(backend.trtexec) if backend.trtexec else None,
            "plan_header_version": ".".join(map(str, header)) if header else None,
        },
        "gpu": gpu_summary(),
        "jetson": ({k: jetson.get(k) for k in ("model", "l4t", "jetpack", "power_mode")} if jetson else None),
        "precision": plan.precision,
        "strongly_typed": True,
        "input": {"name": plan.onnx.input_name, "dtype": plan.onnx.input_dtype, "chw": list(plan.onnx.chw)},
        "outputs": plan.onnx.outputs,
        "profile": {
            "batch": [plan.profile.min, plan.profile.opt, plan.profile.max],
            **plan.profile.shapes(plan.onnx.chw),
        },
        "source_onnx": {"path": str(plan.onnx.path), "sha256": plan.onnx.sha256},
        "fp16_conversion": fp16_info,
        "qdq_rules_check": trt_check,
        "metadata": plan.onnx.metadata,
        "settings": {
            "workspace_mib": plan.workspace_mib,
            "builder_optimization_level": plan.opt_level,
            "timing_cache": str(plan.timing_cache) if plan.timing_cache else None,
            **extra,
        },
        "notes": plan.notes,
    }
    return Sidecar(stage="build-engine", outputs=outputs, details=details)


def dry_run(req: BuildRequest) -> dict[str, Any]:
    """Settings and the equivalent trtexec command line, without TensorRT and without writing anything.

    The TensorRT version is taken from trtexec or the bindings when present; otherwise the command is
    the 10.x form, which 11.x accepts too. ``trtexec_command`` is None when trtexec cannot express the
    input name (the steps say why).
    """
    plan = plan_build(req)
    if plan.onnx.has_qdq:  # a command for an ONNX TensorRT would reject is no plan (exit 6)
        _check_qdq_rules(plan.onnx.path)
    version: tuple[int, ...] | None = None
    source = "not found (command written for 10.x; 11.x accepts it)"
    trtexec_path: Path | str = plan.trtexec or "trtexec"
    try:
        backend = select_backend(plan.trtexec)
        version = backend.version
        source = f"{backend.kind}: {backend.version_str or 'version unknown'}"
        if backend.trtexec is not None:
            trtexec_path = backend.trtexec
    except BackendMissing:
        from edgeconvnext.env.probes import find_trtexec

        found = find_trtexec()
        if found is not None:
            trtexec_path = found
    steps = []
    if plan.convert_fp16:
        steps.append(f"FP16 conversion (edgeconvnext.onnx.fp16, ONNX level): {plan.onnx.path} -> {plan.build_onnx}")
    cmd: list[str] | None
    try:
        cmd = trtexec_command(plan, version, trtexec=trtexec_path)
        steps.append(format_command(cmd))
    except UsageError as e:  # an input name trtexec cannot express: the Python bindings can still build it
        cmd = None
        steps.append(f"no trtexec command: {e}")
    return {"settings": plan.settings(), "tensorrt": source, "trtexec_command": cmd, "steps": steps, "plan": plan}


def settings_json(result: dict[str, Any]) -> str:
    """The dry-run result as JSON (without the BuildPlan object)."""
    return json.dumps({k: v for k, v in result.items() if k != "plan"}, indent=2, default=str)


__all__ = [
    "DEFAULT_OPT_LEVEL",
    "DEFAULT_WORKSPACE_MIB",
    "DLA_REFUSAL",
    "ENGINE_SUFFIXES",
    "MIN_TRT_MAJOR",
    "OPT_LEVELS",
    "PLAN_TAG",
    "BatchProfile",
    "BuildError",
    "BuildPlan",
    "BuildRequest",
    "BuildResult",
    "OnnxSummary",
    "build_engine",
    "check_dla",
    "check_plan_file",
    "dry_run",
    "format_command",
    "import_tensorrt",
    "parse_batch",
    "plan_build",
    "read_plan_header",
    "resolve_profile",
    "settings_json",
    "summarize_onnx",
    "trtexec_command",
]
