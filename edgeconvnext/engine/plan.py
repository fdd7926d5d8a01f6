"""An engine build request turned into a plan: every decision made from the ONNX, without TensorRT.

Input: a :class:`~edgeconvnext.engine.config.BuildRequest` (the ``build-engine`` options) and the ONNX it
names. Output: a :class:`BuildPlan` (precision, profile, FP16 conversion or not, output/sidecar paths, builder settings;
what ``--dry-run`` prints). :func:`summarize_onnx` reads what the builder needs from an ONNX file.

Usage::

    plan = plan_build(BuildRequest(onnx=Path("nano_int8.onnx"), fp16=True, batch="1,8,32"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.artifacts import sha256_file, sidecar_path
from edgeconvnext.engine.config import DEFAULT_OPT_LEVEL, OPT_LEVELS, BuildRequest
from edgeconvnext.engine.profile import BatchProfile, resolve_profile
from edgeconvnext.env.probes import check_trtexec
from edgeconvnext.errors import CheckpointError, UsageError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

DLA_REFUSAL = (
    "ConvNeXt cannot run on DLA: DLA supports none of LayerNormalization, Erf (GELU), Sqrt and "
    "Div, so every block would fall back to the GPU, and Jetson Orin Nano has no DLA at all; "
    "drop --dla-core to build for the GPU"
)


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
    from edgeconvnext.onnx.graph import QDQ_OPS
    from edgeconvnext.onnx.info import load_proto
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
    except CheckpointError:  # the existing file is not ONNX: not our conversion
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
    if req.timing_cache is not None and Path(req.timing_cache).suffix.lower() == ".onnx":  # the input is one too
        raise UsageError(
            f"--timing-cache {req.timing_cache} is an ONNX file: TensorRT writes its timing cache there, which "
            "would destroy it; give a cache file such as model.timing.cache"
        )
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
        trtexec=check_trtexec(req.trtexec) if req.trtexec else None,
        notes=notes,
    )
