"""ONNX export of a loaded ConvNeXt (FP32 or FP16), verified against the torch model before it is kept.

Input: a :class:`~edgeconvnext.models.checkpoint.LoadedModel` (eval, fp32). Output: ``OUT.onnx`` with input
``input`` (N, 3, S, S) float32 and output ``logits`` (N, classes) float32, edgeconvnext metadata in the
ONNX ``metadata_props``, and a sidecar ``OUT.onnx.json`` (:class:`~edgeconvnext.artifacts.Sidecar`: the
checkpoint's hash, the resolved config, library versions, timings; details: metadata, graph, parity
numbers). Both files appear together or not at all; ``reuse=True`` skips an export whose sidecar matches.

Choices, and why:

* TorchScript exporter (``dynamo=False``): the dynamo exporter always emits opset 18, writes external
  data and cannot export fake-quantized models, so one exporter serves FP32, FP16 and the Q/DQ path.
* Opset >= 17 so every LayerNorm is one ``LayerNormalization`` op (TensorRT runs it with FP32
  statistics; a hand-written mean/var LayerNorm overflows in FP16). The export checks the count.
* Dynamic batch by default (``batch=None``); ``batch=N`` fixes it.
* FP16 keeps float32 graph input and output: the weights and activations inside are FP16 and a
  ``Cast`` at the entry and the exit converts, so every runner and the validation code feed the same
  float32 images whatever the precision; the cost is two element-wise casts (3xSxS values in, the
  logits out). LayerNorm statistics and GRN's L2 norm run in FP32 inside the FP16 graph (models/convnext.py casts
  around them; the export checks their input dtypes), because their sums of squares overflow FP16.
  The sidecar records this as ``details.graph.io_dtype = "float32"`` and ``compute_dtype = "float16"``.
* INT8 is not produced here: ``edgeconvnext quantize`` writes the Q/DQ ONNX.

Before the file is kept, onnx.checker runs and onnxruntime (CPU) runs the graph on seeded random
inputs (a batch of 2, plus a batch of 1 when the batch is dynamic: the batch an edge device runs, and one the
trace never saw) next to the fp32 torch model. An FP32 export traces the model on the first parity batch, so
the tracer's own forward gives that batch's torch logits and torch runs only the batch of 1 again (issue 11:
the reference forward was a sixth of the export).
FP32 must agree within ``PARITY_REL_TOL["fp32"]`` (max |diff| / max |logit|); FP16 is compared with the
same fp32 torch reference and fails only when something is badly wrong (non-finite outputs or a
relative difference above ``PARITY_REL_TOL["fp16"]``).

Usage::

    result = export_onnx(load_model("convnextv2_nano", ckpt), Path("nano.onnx"), precision="fp16")
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext import __version__
from edgeconvnext.artifacts import (
    Sidecar,
    Skipped,
    atomic_output,
    check_output,
    environment,
    input_ref,
    reuse_if_current,
    sidecar_path,
)
from edgeconvnext.config import parse_batch_spec
from edgeconvnext.errors import ExportError, UsageError, nearest, require
from edgeconvnext.models.registry import check_img_size
from edgeconvnext.onnx.metadata import META_PREFIX, decode_metadata, read_metadata, set_metadata

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from edgeconvnext.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
MIN_OPSET = 17
#: highest opset torch's TorchScript exporter writes (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
MAX_OPSET = 20
#: relative parity tolerance (max |onnx - torch fp32| / max |torch fp32 logit|) per precision
PARITY_REL_TOL: dict[str, float] = {"fp32": 1e-4, "fp16": 5e-2}
#: parity inputs: batches of 2 (of the fixed batch); the dynamic-batch check adds one batch of 1. One batch: on
#: convnextv2_nano at 224 px the check was 25 of quantize's 50 s of export with 4 (issue 11)
PARITY_BATCHES = 1
PARITY_SECOND_BATCH = 1
PARITY_SEED = 0
#: a protobuf cannot exceed 2 GiB; a single-file ONNX above this has to be refused
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    sidecar: Path
    precision: str
    opset: int
    batch: int | None
    img_size: int
    size_bytes: int
    sha256: str
    max_abs_diff: float | None
    rel_diff: float | None
    max_abs_logit: float | None
    top1_agreement: float | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def parity_line(self) -> str:
        """One line for the CLI: how far the ONNX is from the fp32 torch model."""
        if self.max_abs_diff is None:
            return "parity: not checked (verify=False)"
        ref = "fp32 torch" if self.precision == "fp32" else "fp32 torch (fp16 graph)"
        return (
            f"parity vs {ref}: max abs diff {self.max_abs_diff:.3g}, rel diff {self.rel_diff:.3g} "
            f"(tolerance {PARITY_REL_TOL[self.precision]:g}), top-1 agreement {self.top1_agreement:.0%}"
        )


# ---------------------------------------------------------------------------------------------------
# option checks (cheap: the CLI calls them before loading a checkpoint)


def check_precision(precision: str) -> str:
    p = str(precision).strip().lower()
    if p in PRECISIONS:
        return p
    if p == "int8":
        raise UsageError(
            "--precision int8 is not an export: run 'edgeconvnext quantize' to write an INT8 "
            "Q/DQ ONNX (export writes fp32 or fp16)"
        )
    hint = nearest(p, PRECISIONS)
    raise UsageError(
        f"unknown --precision '{precision}'"
        + (f"; did you mean '{hint}'?" if hint else "")
        + f" (export writes {' or '.join(PRECISIONS)}; INT8 comes from 'edgeconvnext quantize')"
    )


def check_opset(opset: int) -> int:
    if opset < MIN_OPSET:
        raise UsageError(
            f"--opset {opset} is too old: LayerNorm becomes one LayerNormalization op only from "
            f"opset {MIN_OPSET} (TensorRT needs it to keep FP16 LayerNorm accurate); "
            f"use --opset {MIN_OPSET} or higher"
        )
    if opset > MAX_OPSET:
        raise UsageError(
            f"--opset {opset} is newer than the TorchScript ONNX exporter writes (max {MAX_OPSET}); "
            f"use --opset {MIN_OPSET}..{MAX_OPSET}"
        )
    return opset


def parse_batch(batch: str | int | None) -> int | None:
    """``"dynamic"``/None -> None (dynamic batch), ``"8"``/8 -> 8 (the ``--batch`` grammar of
    :func:`edgeconvnext.config.parse_batch_spec`; a MIN,OPT,MAX profile belongs to build-engine)."""
    t = parse_batch_spec(batch, dynamic=True, profile=False)
    return t[0] if t is not None else None


def check_options(precision: str, opset: int, batch: str | int | None) -> tuple[str, int, int | None]:
    """Validate the export options that do not need the model; returns the normalised values."""
    return check_precision(precision), check_opset(opset), parse_batch(batch)


#: a fixed-batch export holds the batch's activations twice (torch's trace, then onnxruntime's parity run):
#: convnextv2_atto at 32 px, --batch 5000 peaked at 1.7 GB, twice registry.forward_bytes' estimate
_EXPORT_FORWARDS = 2


def _check_batch_memory(loaded: Any, batch: int, size: int) -> None:
    """Refuse a fixed ``--batch`` whose trace and parity run cannot fit in this machine's memory (--batch
    100000 of atto at 32 px ran for minutes towards a ~34 GB peak before anything said so)."""
    from edgeconvnext.env.probes import check_memory
    from edgeconvnext.models.registry import forward_bytes

    check_memory(
        _EXPORT_FORWARDS * forward_bytes(loaded.arch, size, batch),
        f"--batch {batch} at {size} px ({loaded.arch.name}: the trace and the parity check run the whole batch)",
        "use a smaller --batch, or --batch dynamic and set the engine's batch at build-engine --batch",
    )


def require_backends() -> None:
    for mod in ("onnx", "onnxruntime"):
        require(mod, "ONNX export")


# ---------------------------------------------------------------------------------------------------
# metadata


def build_metadata(
    loaded: LoadedModel, *, precision: str, preprocess: Any | None = None, num_classes: int | None = None
) -> dict[str, str]:
    """The ``metadata_props`` every edgeconvnext ONNX carries (string values; JSON where structured).

    Public so that the quantize stage writes the same keys (with ``precision="int8"``).
    """
    pp = preprocess if preprocess is not None else loaded.preprocess
    n = num_classes if num_classes is not None else int(loaded.model.num_classes)
    meta = {
        "arch": loaded.arch.name,
        "preprocess": json.dumps(pp.to_dict(), sort_keys=True),
        "num_classes": json.dumps(n),
        "class_names": json.dumps(list(loaded.class_names) if loaded.class_names is not None else None),
        "precision": precision,
        "io_dtype": "float32",
        "source_format": str(loaded.source_format),
        "version": __version__,
    }
    if loaded.source_sha256:
        meta["source_sha256"] = loaded.source_sha256
    return {META_PREFIX + k: v for k, v in meta.items()}


# ---------------------------------------------------------------------------------------------------
# graph helpers


def _inline_identity_initializers(proto: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes with a copy of the initializer under the output name.

    The TorchScript exporter's constant folding deduplicates equal weights (zero biases, unit LayerNorm
    scales) through Identity nodes; quantizers and TensorRT's weight handling expect a weight to be an
    initializer feeding its op directly. Returns how many nodes were replaced.
    """
    import onnx

    inits = {t.name: t for t in proto.graph.initializer}
    graph_outputs = {o.name for o in proto.graph.output}
    keep, n = [], 0
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in graph_outputs:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            proto.graph.initializer.append(t)
            inits[t.name] = t
            n += 1
        else:
            keep.append(node)
    if n:
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
    return n


def _count_layernorms(model: Any) -> int:
    from torch import nn

    return sum(isinstance(m, nn.LayerNorm) for m in model.modules())


def _check_graph(proto: onnx.ModelProto, model: Any, precision: str) -> None:
    """Structure the rest of the pipeline relies on; a mismatch is an export bug, said plainly."""
    from edgeconvnext.onnx.info import input_dtypes, op_histogram

    hist = op_histogram(proto)
    want = _count_layernorms(model)
    got = hist.get("LayerNormalization", 0)
    if got != want:
        raise ExportError(
            f"the ONNX has {got} LayerNormalization ops for the model's {want} LayerNorms: "
            "a LayerNorm was exported as separate ops (TensorRT would run it in FP16); "
            "export with opset >= 17 and a model whose LayerNorm calls F.layer_norm"
        )
    if precision == "fp16":
        dtypes = input_dtypes(proto, ("LayerNormalization", "ReduceL2", "ReduceSumSquare"))
        bad = {op: d for op, d in dtypes.items() if set(d) != {"float32"}}
        if bad:
            raise ExportError(
                f"FP16 export: normalisation statistics are not computed in FP32 ({bad}); "
                "they overflow FP16 in TensorRT"
            )


def _trace(module: Any, sample: Any, opset: int, dynamic: bool) -> tuple[bytes, Any]:
    """TorchScript ONNX export of ``module`` to bytes, the exporter's warnings sent to the log; with the
    module's output on ``sample`` from the tracer's forward (a real tensor: the tracer runs the model eagerly)."""
    import torch

    buf = io.BytesIO()
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    seen: list[Any] = []
    # the hook only keeps a reference: it records no op in the traced graph
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(
                module,
                (sample,),
                buf,  # type: ignore[arg-type]  # the TorchScript exporter also writes to a file object
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    finally:
        handle.remove()
    for w in caught:
        log.debug("torch.onnx: %s", w.message)
    # one forward per export in torch's TorchScript exporter; anything else: no traced output to reuse
    traced = seen[0].detach().float().numpy() if len(seen) == 1 and isinstance(seen[0], torch.Tensor) else None
    return buf.getvalue(), traced


def parity_inputs(img_size: int, batch: int | None) -> list[Any]:
    """The parity check's seeded standard-normal batches: ``PARITY_BATCHES`` of the batch (2 when dynamic),
    plus one of ``PARITY_SECOND_BATCH`` when the batch is dynamic."""
    import numpy as np

    rng = np.random.default_rng(PARITY_SEED)
    sizes = [batch or 2] * PARITY_BATCHES + ([PARITY_SECOND_BATCH] if batch is None else [])
    return [rng.standard_normal((b, 3, img_size, img_size), dtype=np.float32) for b in sizes]


def _parity(onnx_bytes: bytes, reference: Any, xs: list[Any], first_ref: Any = None) -> dict[str, Any]:
    """Run the ONNX in onnxruntime (CPU) and the fp32 torch model on the parity inputs ``xs``; ``first_ref``:
    the torch logits of ``xs[0]`` when already known (the FP32 trace's forward)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    sizes = [len(x) for x in xs]
    known = [first_ref] if first_ref is not None else []
    rest = xs[len(known) :]
    if rest:
        with torch.no_grad():  # one torch call for every other batch: rows do not depend on their batch
            out = reference(torch.from_numpy(np.concatenate(rest))).float().numpy()
        known += np.split(out, np.cumsum(sizes[len(known) :])[:-1])
    refs = known
    max_abs, max_logit, agree, total, finite = 0.0, 0.0, 0, 0, True
    per_batch = []
    for b, x, ref in zip(sizes, xs, refs, strict=True):
        out = sess.run(["logits"], {"input": x})[0]
        if out.shape != ref.shape:
            raise ExportError(
                f"onnxruntime returned logits of shape {out.shape} for input {x.shape}; torch gives {ref.shape}"
            )
        finite = finite and bool(np.isfinite(out).all())
        with np.errstate(invalid="ignore"):  # inf - inf: reported through `finite`
            d = float(np.abs(out.astype(np.float64) - ref).max())
            m = float(np.abs(ref).max())
        max_abs, max_logit = max(max_abs, d), max(max_logit, m)
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        total += b
        per_batch.append({"batch": b, "max_abs_diff": d, "max_abs_logit": m})
    return {
        "reference": "torch fp32, CPU"
        + (" (the first batch's logits from the trace's forward)" if first_ref is not None else ""),
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "inputs": f"{len(sizes)} batches of standard normal noise (seed {PARITY_SEED}), batch sizes {sizes}",
        "max_abs_diff": max_abs,
        "max_abs_logit": max_logit,
        "rel_diff": max_abs / max(max_logit, 1e-12),
        "top1_agreement": agree / total,
        "finite": finite,
        "per_batch": per_batch,
    }


# ---------------------------------------------------------------------------------------------------
# the stage


def export_onnx(
    loaded: LoadedModel,
    output: str | Path,
    *,
    img_size: int | None = None,
    precision: str = "fp32",
    opset: int = 17,
    batch: int | str | None = None,
    verify: bool = True,
    on_step: Callable[[str], None] | None = None,
    reuse: bool = False,
) -> ExportResult | Skipped:
    """Export ``loaded.model`` to ``output`` (and its sidecar), checked and verified; see the module doc.

    ``img_size`` defaults to ``loaded.preprocess.img_size``; ``batch=None`` is a dynamic batch.
    ``on_step`` receives a short description of each step (for a CLI spinner). ``reuse``: return
    :class:`~edgeconvnext.artifacts.Skipped` without exporting when ``output``'s sidecar matches this
    export (same checkpoint hash, config and library versions; the ONNX unchanged).
    Raises UsageError for options that cannot be honoured, ExportError when export, the checker or the
    parity check fails (then neither file is written), BackendMissing without onnx/onnxruntime.
    """
    t0 = time.perf_counter()
    precision, opset, batch = check_options(precision, opset, batch)
    require_backends()
    step = on_step or (lambda s: None)
    output = Path(output)
    check_output(output, "--output", {"--checkpoint": loaded.source}, suffix=".onnx")
    size = check_img_size(img_size if img_size is not None else loaded.preprocess.img_size)
    if batch is not None:
        _check_batch_memory(loaded, batch, size)
    preprocess = loaded.preprocess if loaded.preprocess.img_size == size else replace(loaded.preprocess, img_size=size)
    inputs, config = _export_key(loaded, precision, opset, batch, size, preprocess, verify)
    if reuse and (reused := reuse_if_current(output, stage="export", inputs=inputs, config=config)):
        return reused

    reference = _fp32_reference(loaded, precision)
    xs = parity_inputs(size, batch) if verify else None
    t = time.perf_counter()
    raw, traced = _export_bytes(loaded, reference, precision, opset, batch, size, step, xs[0] if xs else None)
    t_export = time.perf_counter() - t

    step("checking the graph")
    t = time.perf_counter()
    meta_props = build_metadata(loaded, precision=precision, preprocess=preprocess)
    data = _finish_graph(raw, loaded, reference, precision, size, meta_props)
    t_check = time.perf_counter() - t

    sidecar = sidecar_path(output)
    with atomic_output(output) as tmp_onnx, atomic_output(sidecar) as tmp_sidecar:
        tmp_onnx.write_bytes(data)
        parity: dict[str, Any] | None = None
        t_parity = 0.0
        if verify:
            step("verifying in onnxruntime against the fp32 torch model")
            t = time.perf_counter()
            assert xs is not None  # made above when verifying
            parity = _verify(data, reference, loaded, precision, xs, traced)
            t_parity = time.perf_counter() - t
        digest = hashlib.sha256(data).hexdigest()  # the bytes just written: no need to read them back
        timings = {"export_s": round(t_export, 3), "check_s": round(t_check, 3), "parity_s": round(t_parity, 3)}
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        all_notes = list(getattr(loaded, "notes", []) or [])
        sc = _export_sidecar(loaded, output, data, digest, meta_props, precision, batch, size, parity, all_notes)
        sc.inputs, sc.config, sc.timings = inputs, config, timings
        tmp_sidecar.write_text(sc.to_json())
    seconds = time.perf_counter() - t0
    log.debug("wrote %s (%d bytes) in %.1f s", output, len(data), seconds)
    return ExportResult(
        path=output,
        sidecar=sidecar,
        precision=precision,
        opset=opset,
        batch=batch,
        img_size=size,
        size_bytes=len(data),
        sha256=digest,
        max_abs_diff=parity["max_abs_diff"] if parity else None,
        rel_diff=parity["rel_diff"] if parity else None,
        max_abs_logit=parity["max_abs_logit"] if parity else None,
        top1_agreement=parity["top1_agreement"] if parity else None,
        seconds=seconds,
        timings=timings,
        notes=all_notes,
    )


def _fp32_reference(loaded: LoadedModel, precision: str) -> Any:
    """The fp32 CPU eval-mode model parity is measured against (a copy when ``loaded.model`` is not one);
    refuses a model whose weights cannot fit a single-file ONNX."""
    import torch

    reference = loaded.model
    param = next(reference.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32 or reference.training:
        reference = copy.deepcopy(reference).to("cpu", torch.float32).eval()
    bytes_per = 2 if precision == "fp16" else 4
    n_params = sum(p.numel() for p in reference.parameters())
    if n_params * bytes_per > _PROTOBUF_LIMIT:
        hint = " (--precision fp16 halves it)" if precision == "fp32" else ""
        raise ExportError(
            f"{loaded.arch.name} in {precision} is {n_params * bytes_per / 2**30:.2f} GiB of weights, "
            f"more than a single-file ONNX can hold (2 GiB){hint}"
        )
    return reference


def _export_bytes(
    loaded: LoadedModel,
    reference: Any,
    precision: str,
    opset: int,
    batch: int | None,
    size: int,
    step: Callable[[str], None],
    parity_first: Any = None,
) -> tuple[bytes, Any]:
    """The TorchScript exporter's ONNX of the model in ``precision`` (an fp16 copy for fp16), and for FP32 the
    reference's logits of ``parity_first`` (the first parity batch, traced on; None without it or for fp16,
    whose traced module is not the fp32 reference)."""
    import torch

    module = copy.deepcopy(reference).half().eval() if precision == "fp16" else reference
    reuse = parity_first is not None and module is reference
    if reuse:
        sample = torch.from_numpy(parity_first)
    else:
        sample = torch.zeros(batch or 2, 3, size, size, dtype=torch.float16 if precision == "fp16" else torch.float32)
    step(f"exporting {loaded.arch.name} {precision} opset {opset} ({'dynamic' if batch is None else batch} batch)")
    try:
        raw, traced = _trace(module, sample, opset, dynamic=batch is None)
        return raw, traced if reuse else None
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise ExportError(
            f"torch.onnx.export (TorchScript, opset {opset}) failed for {loaded.arch.name}: {type(e).__name__}: {e}"
        ) from e


def _finish_graph(
    raw: bytes, loaded: LoadedModel, reference: Any, precision: str, size: int, meta_props: dict[str, str]
) -> bytes:
    """float32 I/O (fp16), weights as direct initializers, names, doc string and metadata; then
    onnx.checker and the structure checks. Returns the serialized graph."""
    import onnx

    from edgeconvnext.onnx.fp16 import keep_fp32_io

    proto = onnx.load_from_string(raw)
    if precision == "fp16":
        keep_fp32_io(proto)  # Casts /input_to_fp16 and /logits_to_fp32
    n_inlined = _inline_identity_initializers(proto)
    if n_inlined:
        log.debug("inlined %d Identity(initializer) nodes", n_inlined)
    proto.graph.name = loaded.arch.name
    proto.doc_string = (
        f"edgeconvnext {__version__}: {loaded.arch.name} {precision}, input 'input' "
        f"(N, 3, {size}, {size}) float32 normalised RGB, output 'logits' float32"
    )
    set_metadata(proto, meta_props)
    data = proto.SerializeToString()  # once: the checker takes these bytes, which are also what is written
    try:
        onnx.checker.check_model(data, full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"onnx.checker rejected the exported {loaded.arch.name} graph: {e}") from e
    _check_graph(proto, reference, precision)
    return data


def _verify(
    data: bytes, reference: Any, loaded: LoadedModel, precision: str, xs: list[Any], first_ref: Any = None
) -> dict[str, Any]:
    """Parity of the serialized ONNX (onnxruntime CPU) with the fp32 torch model on ``xs`` (``first_ref``: the
    torch logits of ``xs[0]`` when known); ExportError when its logits are non-finite or further off than
    ``PARITY_REL_TOL[precision]``."""
    parity = _parity(data, reference, xs, first_ref)
    tol = PARITY_REL_TOL[precision]
    parity["tolerance_rel"] = tol
    log.debug("parity %s: max abs diff %.3g, rel diff %.3g", precision, parity["max_abs_diff"], parity["rel_diff"])
    if not parity["finite"]:
        raise ExportError(
            f"the {precision} ONNX of {loaded.arch.name} produced non-finite logits in onnxruntime; nothing was written"
        )
    if not parity["rel_diff"] <= tol:
        raise ExportError(
            f"the {precision} ONNX of {loaded.arch.name} disagrees with the torch model: max abs diff "
            f"{parity['max_abs_diff']:.3g}, rel diff {parity['rel_diff']:.3g} > {tol:g}; nothing was "
            "written (rerun with --debug for the exporter log)"
        )
    return parity


def _export_key(
    loaded: LoadedModel,
    precision: str,
    opset: int,
    batch: int | None,
    size: int,
    preprocess: Any,
    verify: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sidecar's inputs (the checkpoint) and resolved config, known before any work (the skip rule)."""
    inputs = [input_ref("checkpoint", loaded.source, loaded.source_sha256)] if loaded.source else []
    config = {
        "arch": loaded.arch.name,
        "num_classes": int(loaded.model.num_classes),
        "img_size": size,
        "precision": precision,
        "opset": opset,
        "batch": "dynamic" if batch is None else batch,
        "verify": verify,
        "preprocess": preprocess.to_dict(),
    }
    return inputs, config


def _export_sidecar(
    loaded: LoadedModel,
    output: Path,
    data: bytes,
    digest: str,
    meta_props: dict[str, str],
    precision: str,
    batch: int | None,
    size: int,
    parity: dict[str, Any] | None,
    notes: list[str],
) -> Sidecar:
    """What ``OUT.onnx.json`` records of an export (the caller adds inputs, config and timings)."""
    meta = decode_metadata(meta_props)
    return Sidecar(
        stage="export",
        outputs=[{"path": output.name, "bytes": len(data), "sha256": digest}],
        environment=environment(device="cpu"),
        details={
            "metadata": meta,
            "arch": {
                "name": loaded.arch.name,
                "version": loaded.arch.version,
                "depths": list(loaded.arch.depths),
                "dims": list(loaded.arch.dims),
            },
            "source": {
                "path": str(loaded.source) if loaded.source else None,
                "sha256": loaded.source_sha256,
                "format": loaded.source_format,
            },
            "graph": {
                "input": {
                    "name": "input",
                    "shape": ["batch" if batch is None else batch, 3, size, size],
                    "dtype": "float32",
                },
                "output": {
                    "name": "logits",
                    "shape": ["batch" if batch is None else batch, meta["num_classes"]],
                    "dtype": "float32",
                },
                "io_dtype": "float32",
                "compute_dtype": "float16" if precision == "fp16" else "float32",
                "fp32_islands": ["LayerNormalization", "GRN L2 norm"] if precision == "fp16" else [],
                "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                "do_constant_folding": True,
            },
            "parity": parity,
            "notes": notes,
        },
    )


__all__ = [
    "ExportResult",
    "export_onnx",
    "read_metadata",
    "build_metadata",
    "set_metadata",
    "decode_metadata",
    "check_options",
    "check_img_size",
    "parse_batch",
    "PARITY_REL_TOL",
]
