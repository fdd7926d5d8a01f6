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
  (:mod:`edgeconvnext.fp16`: LayerNorm statistics and GRN reductions stay FP32, Q/DQ scales become FP16),
  writes it beside the engine (``OUT.fp16.onnx``; an existing file there is replaced only when it is an
  earlier conversion of the same source) and checks it against the FP32 graph in onnxruntime when
  onnxruntime is installed. An ONNX that is already FP16 is built as it is.
* A Q/DQ ONNX is checked against TensorRT's explicit-quantization rules (:mod:`edgeconvnext.trt_rules`)
  before the build: a RuleViolation (exit 6) now rather than a parser error after minutes.
* DLA is refused: ConvNeXt's LayerNormalization, Erf (GELU), Sqrt and Div do not run on DLA, and Orin
  Nano has no DLA; GPU fallback would be a silent GPU build.
* Optimisation profile from ``--batch`` (``N`` or ``MIN,OPT,MAX``); a fixed-batch ONNX builds only its own
  batch. Input name and C, H, W are read from the ONNX.
* Workspace defaults to 1024 MiB (an 8 GB Orin shares its DRAM with the CPU).
* The Python bindings build when importable; otherwise trtexec (``--trtexec PATH``, PATH, or JetPack's
  /usr/src/tensorrt/bin/trtexec) builds through a subprocess. Neither: BackendMissing with what to install.

Usage::

    result = build_engine(BuildRequest(onnx=Path("nano_int8.onnx"), fp16=True, batch="1,8,32"))
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeconvnext import __version__
from edgeconvnext.artifacts import atomic_output, environment, sha256_file, sidecar_path
from edgeconvnext.engine.config import (  # noqa: F401 - BuildRequest is part of this module's API
    DEFAULT_OPT_LEVEL,
    DEFAULT_WORKSPACE_MIB,
    OPT_LEVELS,
    BuildRequest,
)
from edgeconvnext.errors import BackendMissing, ExportError, UsageError

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
MIN_TRT_MAJOR = 10
#: first 4 bytes of a serialized TensorRT plan (little-endian 0x74727466), checked after every build
PLAN_TAG = b"ftrt"
#: the FP16 conversion is kept only when its logits are finite; a larger relative difference warns
FP16_WARN_REL_DIFF = 5e-2

DLA_REFUSAL = (
    "ConvNeXt cannot run on DLA: DLA supports none of LayerNormalization, Erf (GELU), Sqrt and "
    "Div, so every block would fall back to the GPU, and Jetson Orin Nano has no DLA at all; "
    "drop --dla-core to build for the GPU"
)


class BuildError(ExportError):
    """TensorRT could not parse or build the ONNX (exit code 5, like a failed export)."""


# ---------------------------------------------------------------------------------------------------
# batch profile


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


# ---------------------------------------------------------------------------------------------------
# ONNX summary


@dataclass
class OnnxSummary:
    """What the builder needs to know about an ONNX file."""

    path: Path
    sha256: str
    input_name: str
    input_shape: list[int | str]
    input_dtype: str
    chw: tuple[int, int, int]
    batch: int | None  # None = dynamic
    outputs: list[str]
    has_qdq: bool
    weight_dtype: str | None  # "float32" | "float16"
    opset: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """fp32 | fp16 | int8 (Q/DQ, FP32 elsewhere) | int8+fp16 (Q/DQ, FP16 elsewhere)."""
        if self.has_qdq:
            return "int8+fp16" if self.weight_dtype == "float16" else "int8"
        return "fp16" if self.weight_dtype == "float16" else "fp32"


def summarize_onnx(path: str | Path) -> OnnxSummary:
    """Read input name/shape, Q/DQ presence, float type and edgeconvnext metadata from an ONNX file."""
    from edgeconvnext.onnx.fp16 import default_opset, float_weight_dtype
    from edgeconvnext.onnx.info import QDQ_OPS, load_proto
    from edgeconvnext.onnx.metadata import decode_metadata

    p = Path(path)
    proto = load_proto(p)
    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise UsageError(
            f"{p} has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); an image "
            "classifier ONNX has one (N, 3, H, W) input"
        )
    v = inputs[0]
    tt = v.type.tensor_type
    shape: list[int | str] = [
        int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim
    ]
    if len(shape) != 4:
        raise UsageError(f"{p}: input '{v.name}' has shape {shape}; expected (N, C, H, W)")
    if not all(isinstance(s, int) and s > 0 for s in shape[1:]):
        raise UsageError(
            f"{p}: input '{v.name}' has dynamic channel/height/width {shape[1:]}; re-export with "
            "a fixed image size (edgeconvnext export --img-size S)"
        )
    import onnx

    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "unknown"
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    props = {m.key: m.value for m in proto.metadata_props}
    meta = {k: val for k, val in decode_metadata(props).items() if val is not None}
    return OnnxSummary(
        path=p,
        sha256=sha256_file(p),
        input_name=v.name,
        input_shape=shape,
        input_dtype=dtype,
        chw=(int(shape[1]), int(shape[2]), int(shape[3])),
        batch=batch,
        outputs=[o.name for o in proto.graph.output],
        has_qdq=any(n.op_type in QDQ_OPS for n in proto.graph.node),
        weight_dtype=float_weight_dtype(proto),
        opset=default_opset(proto),
        metadata=meta,
    )


# ---------------------------------------------------------------------------------------------------
# request -> plan (all decisions, no TensorRT)


def check_dla(dla_core: int | None) -> None:
    """``--dla-core`` is always refused for ConvNeXt, with the reason."""
    if dla_core is not None:
        raise UsageError(f"--dla-core {dla_core}: {DLA_REFUSAL}")


@dataclass
class BuildPlan:
    """Every decision of a build, made without TensorRT (what ``--dry-run`` prints)."""

    onnx: OnnxSummary
    output: Path
    sidecar: Path
    profile: BatchProfile
    precision: str
    convert_fp16: bool
    build_onnx: Path  # the ONNX TensorRT parses: the FP16 conversion when convert_fp16
    workspace_mib: int
    opt_level: int
    timing_cache: Path | None
    trtexec: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def dynamic(self) -> bool:
        return self.onnx.batch is None

    def settings(self) -> dict[str, Any]:
        return {
            "onnx": str(self.onnx.path),
            "build_onnx": str(self.build_onnx),
            "fp16_conversion": self.convert_fp16,
            "output": str(self.output),
            "sidecar": str(self.sidecar),
            "precision": self.precision,
            "strongly_typed": True,
            "input": self.onnx.input_name,
            "profile": {
                "batch": [self.profile.min, self.profile.opt, self.profile.max],
                **self.profile.shapes(self.onnx.chw),
            },
            "dynamic_batch": self.dynamic,
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.opt_level,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "notes": list(self.notes),
        }


def _check_fp16_target(path: Path, info: OnnxSummary) -> None:
    """The converted ONNX may replace only an earlier conversion of the same source, never another file."""
    if path.resolve() == info.path.resolve():
        raise UsageError(f"the FP16 conversion of {info.path} would overwrite it; give --output another name")
    if not path.exists():
        return
    from edgeconvnext.onnx.info import load_proto

    try:
        props = {m.key: m.value for m in load_proto(path).metadata_props}
    except UsageError:
        props = {}
    if props.get("edgeconvnext.fp16_converted_from") != info.sha256:
        raise UsageError(
            f"{path} exists and is not an FP16 conversion of {info.path}: the FP16 ONNX would "
            "overwrite it; move it or give --output another name"
        )


def plan_build(req: BuildRequest) -> BuildPlan:
    """Validate the request against the ONNX and decide precision, profile, paths."""
    check_dla(req.dla_core)
    if req.opt_level not in OPT_LEVELS:
        raise UsageError(
            f"--opt-level {req.opt_level}: TensorRT's builder optimization level is 0..5 (default {DEFAULT_OPT_LEVEL})"
        )
    if req.workspace_mib < 1:
        raise UsageError(f"--workspace {req.workspace_mib}: give the workspace limit in MiB (>= 1)")
    onnx_path = Path(req.onnx)
    if onnx_path.suffix.lower() != ".onnx":
        raise UsageError(f"{onnx_path}: build-engine takes an .onnx file")
    if req.timing_cache is not None and Path(req.timing_cache).is_dir():
        raise UsageError(f"--timing-cache {req.timing_cache} is a folder; give a file path")
    info = summarize_onnx(onnx_path)
    profile = resolve_profile(req.batch, info.batch, str(onnx_path))
    notes: list[str] = []
    convert = False
    precision = info.precision
    if req.fp16:
        if info.weight_dtype == "float16":
            notes.append("the ONNX is already FP16: built as it is")
        else:
            convert = True
            precision = "int8+fp16" if info.has_qdq else "fp16"
    elif info.precision == "int8":
        notes.append("INT8 Q/DQ with FP32 elsewhere: add --fp16 to run the non-INT8 layers in FP16")
    if info.batch is None and req.batch is None:
        notes.append("dynamic-batch ONNX and no --batch: built for batch 1 (use --batch MIN,OPT,MAX for more)")
    stem = onnx_path.name[: -len(".onnx")]
    output = Path(req.output) if req.output else onnx_path.with_name(stem + (".fp16" if convert else "") + ".engine")
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise UsageError(f"--output {output}: an engine file ends in {', '.join(ENGINE_SUFFIXES)}")
    if output.resolve() == onnx_path.resolve():
        raise UsageError("--output would overwrite the ONNX; give another path")
    build_onnx = onnx_path
    if convert:
        out_stem = output.name[: -len(output.suffix)]
        build_onnx = output.with_name(out_stem + ("" if out_stem.endswith(".fp16") else ".fp16") + ".onnx")
        _check_fp16_target(build_onnx, info)
    return BuildPlan(
        onnx=info,
        output=output,
        sidecar=sidecar_path(output),
        profile=profile,
        precision=precision,
        convert_fp16=convert,
        build_onnx=build_onnx,
        workspace_mib=req.workspace_mib,
        opt_level=req.opt_level,
        timing_cache=Path(req.timing_cache) if req.timing_cache else None,
        trtexec=Path(req.trtexec) if req.trtexec else None,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------
# trtexec


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
        raise BackendMissing(_too_old(".".join(map(str, trt_version))))  # type: ignore[arg-type]
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


def _too_old(version: str) -> str:
    return (
        f"TensorRT {version} is older than {MIN_TRT_MAJOR}.0: edgeconvnext builds strongly typed networks "
        "(precision from the ONNX), which TensorRT 10 and 11 build; on Jetson install JetPack 6.1 or newer "
        "(TensorRT 10.3)"
    )


# ---------------------------------------------------------------------------------------------------
# backends


@dataclass
class Backend:
    """How the engine gets built: TensorRT's Python bindings or a trtexec binary."""

    kind: str  # "python" | "trtexec"
    version: tuple[int, ...] | None
    trtexec: Path | None = None
    module: Any = None

    @property
    def version_str(self) -> str | None:
        return ".".join(map(str, self.version)) if self.version else None


def _version_tuple(text: str) -> tuple[int, ...] | None:
    """'10.3.0.30' -> (10, 3, 0, 30); '10.3.0' -> (10, 3, 0): the build number is kept when given."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def import_tensorrt() -> tuple[Any, str | None]:
    """(the tensorrt module, None) or (None, why it cannot be imported)."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - ImportError or OSError from a broken libnvinfer
        return None, f"{type(e).__name__}: {e}"
    return trt, None


def trtexec_version(path: Path) -> tuple[int, ...] | None:
    """TensorRT version of a trtexec binary, from the banner ``--help`` prints."""
    from edgeconvnext.env.probes import parse_trt_version

    try:
        done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendMissing(f"trtexec at {path} cannot run ({e}); check the TensorRT installation") from None
    return parse_trt_version((done.stdout or "") + (done.stderr or ""))


def select_backend(trtexec: Path | None = None) -> Backend:
    """``--trtexec`` if given, else the Python bindings, else a trtexec found on PATH or in JetPack."""
    from edgeconvnext.env.probes import find_trtexec, install_hint, probe_jetson

    if trtexec is not None:
        path = find_trtexec(trtexec)
        if path is None:
            raise UsageError(f"--trtexec {trtexec}: no such file")
        return Backend("trtexec", trtexec_version(path), path)
    trt, why = import_tensorrt()
    if trt is not None:
        return Backend("python", _version_tuple(str(trt.__version__)), module=trt)
    path = find_trtexec()
    if path is not None:
        return Backend("trtexec", trtexec_version(path), path)
    raise BackendMissing(
        f"TensorRT is not available: no Python bindings ({why}) and no trtexec (not on PATH, "
        f"not at /usr/src/tensorrt/bin/trtexec); {install_hint(probe_jetson() is not None)}; "
        "--dry-run prints the trtexec command without TensorRT"
    )


# ---------------------------------------------------------------------------------------------------
# plan header


def read_plan_header(data: bytes) -> tuple[int, int, int, int] | None:
    """TensorRT version (major, minor, patch, build) stored in a plan's header, None if not a plan.

    A plan starts with the u32 tag 0x74727466 (``ftrt`` in file order) and a u32 serialization version;
    for serialization version 0, bytes 24..27 hold the TensorRT version a.b.c.d. This is exactly what
    ``trtexec --getPlanVersionOnly`` reads (samples/common/sampleEngines.cpp printPlanVersion, identical in
    10.3 and 11.1; "supported only for engines created with 8.6 and forward").
    """
    if len(data) < 28 or data[:4] != PLAN_TAG:
        return None
    if int.from_bytes(data[4:8], "little") != 0:
        return None
    return data[24], data[25], data[26], data[27]


def check_plan_file(path: Path) -> tuple[int, int, int, int] | None:
    """Refuse a file that is not a TensorRT plan (e.g. bytes prepended); its header version or None."""
    with open(path, "rb") as f:
        head = f.read(28)
    if head[:4] != PLAN_TAG:
        raise BuildError(
            f"{path} is not a TensorRT plan (it does not start with the plan tag); "
            "rebuild it with edgeconvnext build-engine or trtexec --saveEngine"
        )
    return read_plan_header(head)


# ---------------------------------------------------------------------------------------------------
# build


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
        raise BuildError(f"TensorRT's ONNX parser rejected {plan.build_onnx}: {errors}")
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
            f"TensorRT could not build an engine from {plan.build_onnx} (see the TensorRT messages "
            "above; a larger --workspace or a lower --opt-level can help)"
        )
    dest.write_bytes(memoryview(serialized))
    if cache is not None:
        # as trtexec saves it (sampleEngines.cpp: config->getTimingCache() after the build)
        with atomic_output(plan.timing_cache) as tmp:  # type: ignore[arg-type]
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return {}


def _build_trtexec(backend: Backend, plan: BuildPlan, dest: Path, log_file: Path) -> dict[str, Any]:
    cmd = trtexec_command(plan, backend.version, trtexec=backend.trtexec or "trtexec", save_engine=dest)
    log.info("running %s", format_command(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise BackendMissing(f"cannot run {backend.trtexec}: {e}") from None
    output = (done.stdout or "") + (done.stderr or "")
    with atomic_output(log_file) as tmp:
        tmp.write_text(f"$ {format_command(cmd)}\n{output}")
    if done.returncode != 0 and re.search(
        r"no CUDA-capable device|cudaErrorNoDevice|CUDA driver version is "
        r"insufficient|CUDA initialization failure",
        output,
    ):
        raise BackendMissing(
            f"trtexec found no usable NVIDIA GPU (see {log_file}): TensorRT needs an NVIDIA GPU "
            "with a working driver; --dry-run prints the command to run on the target"
        )
    if done.returncode != 0 or not dest.is_file() or dest.stat().st_size == 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise BuildError(
            f"trtexec failed (exit {done.returncode}) building {plan.build_onnx}; full log in "
            f"{log_file}; last lines:\n{tail}"
        )
    from edgeconvnext.env.probes import parse_trt_version

    v = parse_trt_version(output)
    if v:
        backend.version = v
    return {"command": format_command(cmd)}


def build_engine(req: BuildRequest, *, step: Callable[[str], None] | None = None) -> BuildResult:
    """Build the engine described by ``req``; engine and sidecar appear together or not at all."""
    step = step or (lambda msg: log.info("%s", msg))
    plan = plan_build(req)
    backend = select_backend(plan.trtexec)
    if backend.version is not None and backend.version[0] < MIN_TRT_MAJOR:
        raise BackendMissing(_too_old(backend.version_str or "?"))
    from edgeconvnext.env.probes import gpu_summary, probe_jetson

    t0 = time.perf_counter()
    fp16_info = _convert_fp16(plan, step) if plan.convert_fp16 else None
    trt_check = None
    if plan.onnx.has_qdq:
        # TensorRT's explicit-quantization rules, checked before a long build (RuleViolation, exit 6)
        from edgeconvnext.onnx.trt_rules import check_file

        report = check_file(plan.build_onnx)
        report.raise_for_violations()
        trt_check = {"violations": 0, "warnings": list(report.warnings)}
    step(
        f"building {plan.precision} engine with TensorRT {backend.version_str or '?'} ({backend.kind}), "
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
                extra = _build_trtexec(backend, plan, tmp, log_file)  # type: ignore[arg-type]
            header = check_plan_file(tmp)
        build_s = time.perf_counter() - t_build
        jetson = probe_jetson()
        side = {
            "kind": "tensorrt-engine",
            "edgeconvnext": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "engine": {
                "path": plan.output.name,
                "bytes": plan.output.stat().st_size,
                "sha256": sha256_file(plan.output),
            },
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
            "build_seconds": round(build_s, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
            "notes": plan.notes,
            "environment": environment(),
        }
        sc_tmp.write_text(json.dumps(side, indent=2, default=str) + "\n")
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


def dry_run(req: BuildRequest) -> dict[str, Any]:
    """Settings and the equivalent trtexec command line, without TensorRT and without writing anything.

    The TensorRT version is taken from trtexec or the bindings when present; otherwise the command is
    the 10.x form, which 11.x accepts too. ``trtexec_command`` is None when trtexec cannot express the
    input name (the steps say why).
    """
    plan = plan_build(req)
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
        steps.append(f"FP16 conversion (edgeconvnext.fp16, ONNX level): {plan.onnx.path} -> {plan.build_onnx}")
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
