"""The quantize stage: loaded checkpoint -> FP32 ONNX -> calibrated INT8 Q/DQ ONNX that passes the TensorRT
rules, with its calibration manifest, FP32 baseline and sidecar.

Input: a :class:`~edgeconvnext.models.checkpoint.LoadedModel`, calibration images (a folder or a manifest), a
:class:`QuantizeConfig`. Output (all or nothing, beside ``OUT.onnx``):

- ``OUT.onnx``: explicit QuantizeLinear/DequantizeLinear, signed INT8, zero point 0, weights per output
  channel, activations per tensor, opset 17, the FP32 export's metadata plus
  ``edgeconvnext.precision = "int8"`` and ``edgeconvnext.quantization`` (JSON);
- ``OUT.onnx.json``: the sidecar (:class:`~edgeconvnext.artifacts.Sidecar`): inputs (checkpoint,
  calibration folder or manifest), outputs, resolved config, library versions, timings; details:
  placement table, backend and its settings, calibration (manifest sha256, wall time of the backend
  step), peak RSS, INT8-vs-FP32 agreement on calibration images, TensorRT check;
- ``OUT.calib.json``: the calibration manifest (calibration/README.md);
- ``OUT.fp32.onnx`` (+ its export sidecar): the FP32 model the INT8 one was made from, kept by default as
  the baseline for ``validate --baseline`` (same export, same graph: the fair comparison; with smoothing, the
  smoothed graph, which computes the export's function); ``keep_fp32=False`` skips it.

Steps: check options -> calibration set (fails fast on data) -> [smoothing statistics, torch] -> export FP32
(verified against torch) -> placement (policy) -> backend quantizes -> metadata -> TensorRT rules check (a
violation is a RuleViolation and nothing is written) -> placement verified on the result -> INT8/FP32
agreement -> atomic write. Smoothing (quantize/smooth.py, on by default) with ``--backend ort`` and minmax
takes its statistics from the calibration pass and folds into the exported graph (quantize/smooth_graph.py:
one forward over the images instead of two); the other methods and backends calibrate an export of the model
smoothed on the first calibration images in torch.

Usage::

    result = quantize(load_model("convnextv2_nano", ckpt), Path("nano.int8.onnx"),
                      calib_data=Path("calib/"), config=QuantizeConfig(backend="ort"))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.artifacts import (
    Sidecar,
    Skipped,
    atomic_output,
    check_output,
    environment,
    input_ref,
    reuse_if_current,
    sha256_file,
    sidecar_path,
    temp_dir_beside,
)
from edgeconvnext.data.calibration import CalibrationSet, load_manifest, select_images
from edgeconvnext.errors import ExportError, RuleViolation, UsageError, require
from edgeconvnext.quantize import policy as policy_mod
from edgeconvnext.quantize.config import (  # noqa: F401 - re-exported: the stage's public names
    BACKENDS,
    CALIB_METHODS,
    DEFAULT_BACKEND,
    METHODS,
    QuantizeConfig,
    resolve,
)

if TYPE_CHECKING:
    import onnx

    from edgeconvnext.export.onnx_export import ExportResult
    from edgeconvnext.models.checkpoint import LoadedModel
    from edgeconvnext.onnx.trt_rules import TrtReport
    from edgeconvnext.quantize.budget import Budget, BudgetResult
    from edgeconvnext.quantize.smooth import SmoothReport
    from edgeconvnext.quantize.smooth_graph import GraphSmoothing
    from edgeconvnext.quantize.valset import ValSet
    from edgeconvnext.recipes import Recipe

log = logging.getLogger(__name__)

#: calibration images the INT8 model is compared with FP32 on, after quantization (sidecar: agreement)
AGREEMENT_IMAGES = 32
#: calibration images the folded FP32 graph (smoothing from the calibration pass) is run on and compared with the
#: unfolded graph's logits of the same pass: the fold must not change the function (export's FP32 tolerance)
FOLD_CHECK_IMAGES = 2


def prepare(
    recipe: Recipe | None,
    overrides: dict[str, Any],
    *,
    calib_data: str | Path | None,
    calib_manifest: str | Path | None,
) -> QuantizeConfig:
    """The resolved config (defaults < recipe < ``overrides``, None: not given), with the inputs checked
    against it before any slow work: a manifest fixes the images (so no calib_size/seed override), one of
    the two image sources is given, the size is allowed, the backend's library is installed."""
    from edgeconvnext.data.calibration import check_size

    if calib_manifest is not None and (overrides.get("calib_size") is not None or overrides.get("seed") is not None):
        raise UsageError(
            "--calib-manifest fixes the calibration images: drop --calib-size/--seed, or drop "
            "--calib-manifest to choose a new set"
        )
    if calib_data is None and calib_manifest is None:
        raise UsageError("give --calib-data DIR (a folder of images) or --calib-manifest FILE")
    cfg = resolve(recipe, overrides)
    if calib_manifest is None:
        check_size(cfg.calib_size, cfg.min_calib_size, warn=False)
    require_backend(cfg.backend)
    return cfg


def require_backend(backend: str) -> None:
    """BackendMissing naming the extra to install when the backend's library is absent."""
    mods = ["onnx", "onnxruntime", BACKENDS[backend][0]]
    for mod in dict.fromkeys(mods):
        require(mod, f"--backend {backend}", extra="quant")


def output_paths(output: Path) -> dict[str, Path]:
    """Files the stage writes for ``output`` (``x.onnx`` -> ``x.onnx.json``, ``x.calib.json``, ``x.fp32.onnx``)."""
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    fp32 = output.with_name(f"{stem}.fp32.onnx")
    return {
        "onnx": output,
        "sidecar": sidecar_path(output),
        "manifest": output.with_name(f"{stem}.calib.json"),
        "fp32": fp32,
        "fp32_sidecar": sidecar_path(fp32),
    }


@dataclass
class QuantizeResult:
    """What :func:`quantize` wrote and measured."""

    path: Path
    sidecar: Path
    manifest: Path
    fp32_path: Path | None
    config: QuantizeConfig
    placement: list[policy_mod.Placement]
    report: TrtReport
    calib_images: int
    calib_skipped: int
    calib_seconds: float
    seconds: float
    peak_rss_mb: float
    size_bytes: int
    agreement: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    smoothing: dict[str, Any] | None = None  # quantize/smooth.py's report (None with --no-smooth)
    #: the folded s by LayerNorm name (smooth.with_scales redoes the fold on the torch model: QAT's float start)
    smooth_scales: dict[str, Any] | None = None
    budget: BudgetResult | None = None  # the --max-drop search (quantize/budget.py)

    def table(self, compress: bool = True) -> list[dict[str, Any]]:
        return policy_mod.table(self.placement, compress=compress)

    @property
    def int8_macs_share(self) -> float | None:
        return policy_mod.int8_macs_share(self.placement)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# images per onnxruntime run of the agreement check: all of its images in one run (4 runs of 8 cost 0.5 s more
# on nano 224, 2 cores)
AGREEMENT_BATCH = AGREEMENT_IMAGES


def agreement_math() -> str:
    """How the agreement check computes INT8 (edgeconvnext.onnx.session): onnxruntime's int8 kernels (at 224 px
    faster than emulating), except on a CPU where they may saturate (x86 without VNNI), where they would not show
    what TensorRT computes: there emulated (and at 32 px also the faster)."""
    from edgeconvnext.onnx.session import resolve_int8_math

    return resolve_int8_math("auto")


def _agreement(fp32: bytes, int8: bytes, images: Any, fp32_logits: Any = None) -> dict[str, Any]:
    """Top-1 agreement and mean cosine similarity of INT8 vs FP32 logits (onnxruntime CPU, INT8 computed as
    :func:`agreement_math` says). ``fp32_logits`` (of ``images``, e.g. from the calibration pass) saves running
    the FP32 model again."""
    import numpy as np

    from edgeconvnext.onnx.session import cpu_session

    math = agreement_math()
    b = cpu_session(int8, int8=math)
    a = None if fp32_logits is not None else cpu_session(fp32)
    ya, yb = [], []
    for i in range(0, len(images), AGREEMENT_BATCH):
        x = images[i : i + AGREEMENT_BATCH]
        if a is not None:
            ya.append(a.run(None, {"input": x})[0])
        yb.append(b.run(None, {"input": x})[0])
    la = np.asarray(fp32_logits if a is None else np.concatenate(ya), np.float64)
    lb = np.concatenate(yb).astype(np.float64)
    if not np.isfinite(lb).all():
        raise ExportError("the quantized model produces non-finite logits in onnxruntime; nothing was written")
    cos = (la * lb).sum(1) / (np.linalg.norm(la, axis=1) * np.linalg.norm(lb, axis=1) + 1e-12)
    return {
        "images": int(len(la)),
        "top1_agreement": float((la.argmax(1) == lb.argmax(1)).mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_diff": float(np.abs(la - lb).max()),
        "int8_math": math,
    }


def _first_rows(batches: list[Any], n: int) -> Any:
    """The first ``n`` rows of a list of batches, or None when they hold fewer."""
    import numpy as np

    if not batches or sum(len(b) for b in batches) < n:
        return None
    return np.concatenate(batches)[:n]


def _verify_placement(placement: Sequence[policy_mod.Placement], report: TrtReport, backend: str) -> None:
    """The graph must compute in INT8 exactly the layers the policy chose: never a silent difference."""
    by_node = {r.node: r for r in report.layers}
    wrong = []
    for p in placement:
        r = by_node.get(p.node)
        got = None if r is None else r.precision == "INT8"
        if got is None or got != p.int8:
            wrong.append(
                f"{p.layer} ({'INT8' if p.int8 else 'FP'} planned, "
                f"{'missing' if r is None else r.precision} in the graph)"
            )
    if wrong:
        raise ExportError(
            f"--backend {backend} did not place INT8 as planned for {len(wrong)} layer(s): "
            f"{'; '.join(wrong[:4])}; nothing was written (try the other --backend or --exclude them)"
        )


def quantize(
    loaded: LoadedModel,
    output: str | Path,
    *,
    calib_data: str | Path | None = None,
    config: QuantizeConfig | None = None,
    calib_manifest: str | Path | None = None,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    val: ValSet | None = None,
    budget: Budget | None = None,
    reuse: bool = False,
) -> QuantizeResult | Skipped:
    """Quantize ``loaded`` to ``output`` (see the module doc). ``on_step`` gets a description of each step,
    ``on_progress`` (done, total) during image loading and calibration. With ``val`` and ``budget`` the INT8
    placement is chosen by the accuracy-budget search (quantize/budget.py; AccuracyError when it cannot be met).
    ``reuse``: return :class:`~edgeconvnext.artifacts.Skipped` without quantizing when ``output``'s sidecar
    matches (same checkpoint and calibration images, config and library versions; the files it lists
    unchanged); never with a budget (its validation images are not part of the match).

    Raises UsageError / DataError / BackendMissing before any heavy work when options or data are wrong,
    ExportError when export or the backend fails, RuleViolation when the result breaks a TensorRT rule.
    """
    t0 = time.perf_counter()
    cfg = (config or QuantizeConfig()).validated()
    if cfg.method != "ptq":  # QAT trains: edgeconvnext.quantize.qat.qat (it runs this PTQ as its start)
        raise UsageError("quantize() is post-training quantization; --method qat runs through quantize.qat.qat()")
    require_backend(cfg.backend)
    step = on_step or (lambda s: None)
    output = Path(output)
    check_output(output, "--output", {"--checkpoint": loaded.source}, suffix=".onnx")
    paths = output_paths(output)
    if calib_data is None and calib_manifest is None:
        raise UsageError("give --calib-data DIR (a folder of images) or --calib-manifest FILE")
    # --exclude patterns are checked against the torch modules now, before minutes of work
    policy_mod.check_excludes(cfg.exclude, policy_mod.torch_layer_names(loaded.model))
    key = _key(loaded, cfg, calib_data, calib_manifest)
    if (
        reuse
        and budget is None
        and (reused := reuse_if_current(output, stage="quantize", inputs=key[0], config=key[1]))
    ):
        return reused

    if (val is None) != (budget is None):
        raise UsageError("an accuracy budget needs both --val-data DIR and --max-drop/--max-disagree")
    pp = loaded.preprocess
    load: Callable[[Callable[[Any], None]], CalibrationSet]
    if calib_manifest is not None:
        step(f"verifying the calibration manifest {calib_manifest}")

        def load(on_prefix: Callable[[Any], None]) -> CalibrationSet:
            return load_manifest(
                calib_manifest, preprocess=pp, root=calib_data, min_images=cfg.min_calib_size, on_prefix=on_prefix
            )
    else:
        assert calib_data is not None  # refused above when neither source is given
        step(f"loading {cfg.calib_size} calibration images from {calib_data} (decoded while the model exports)")

        def load(on_prefix: Callable[[Any], None]) -> CalibrationSet:
            return select_images(
                calib_data,
                cfg.calib_size,
                seed=cfg.seed,
                preprocess=pp,
                min_images=cfg.min_calib_size,
                on_prefix=on_prefix,
            )

    with _Prefetch(load) as images:
        images.first(1)  # the folder's or manifest's own errors before any model work
        return _quantize_with(loaded, images, cfg, paths, step, on_progress, t0, key, val=val, budget=budget)


class _Cancelled(Exception):
    pass


class _Prefetch:
    """The calibration set loaded in a background thread while the model is smoothed and exported (issue 11:
    decoding 512 images at 224 px is a few seconds the single-threaded export leaves a core free for).
    ``first(n)`` waits for the first ``n`` images, ``result()`` for the set; the loader's errors are raised there.
    Leaving the context stops the loading."""

    def __init__(self, load: Callable[[Callable[[Any], None]], CalibrationSet]) -> None:
        import threading

        self._cond = threading.Condition()
        self._prefix: Any = None
        self._result: CalibrationSet | None = None
        self._error: BaseException | None = None
        self._done = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(load,), name="edgeconvnext-calib-load", daemon=True)

    def __enter__(self) -> _Prefetch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stop = True
        self._thread.join()

    def _run(self, load: Callable[[Callable[[Any], None]], CalibrationSet]) -> None:
        try:
            result = load(self._on_prefix)
        except _Cancelled:
            result = None
        except BaseException as e:  # re-raised in the caller's thread by first()/result()
            with self._cond:
                self._error, self._done = e, True
                self._cond.notify_all()
            return
        with self._cond:
            self._result, self._done = result, True
            self._cond.notify_all()

    def _on_prefix(self, images: Any) -> None:
        with self._cond:
            if self._stop:
                raise _Cancelled
            self._prefix = images
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool]) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._done or ready())
            if self._error is not None:
                raise self._error

    def first(self, n: int) -> Any:
        """The first ``n`` images (fewer when the set is smaller), (n, 3, S, S) float32."""
        self._wait(lambda: self._prefix is not None and len(self._prefix) >= n)
        if self._result is not None:
            return self._result.images[:n]
        return self._prefix[:n]

    def result(self) -> CalibrationSet:
        self._wait(lambda: False)
        assert self._result is not None  # done without an error
        return self._result

    @property
    def done(self) -> bool:
        with self._cond:
            return self._done


def _key(
    loaded: LoadedModel, cfg: QuantizeConfig, calib_data: str | Path | None, calib_manifest: str | Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sidecar's inputs (checkpoint, calibration images) and resolved config, known before any work."""
    inputs = [input_ref("checkpoint", loaded.source, loaded.source_sha256)] if loaded.source else []
    if calib_manifest is not None:
        inputs.append(input_ref("calib_manifest", calib_manifest))
    else:
        inputs.append(input_ref("calib_data", calib_data))
    config = {
        **cfg.to_dict(),
        "arch": loaded.arch.name,
        "num_classes": int(loaded.model.num_classes),
        "img_size": pp_size(loaded),
        "preprocess": loaded.preprocess.to_dict(),
        "opset": 17,
    }
    return inputs, config


def _drop_stale_baseline(paths: dict[str, Path], fp32_sha256: str) -> None:
    """--no-fp32-baseline: an OUT.fp32.onnx left by an earlier run beside the new OUT.onnx would pass for its
    baseline. It is kept only when it is this model's FP32 export byte for byte, else removed with its sidecar."""
    old = paths["fp32"]
    if not old.exists():
        return
    if old.is_file() and sha256_file(old) == fp32_sha256:
        log.info("%s from an earlier run is this model's FP32 export (same sha256): kept as its baseline", old)
        return
    for p in (old, paths["fp32_sidecar"]):
        p.unlink(missing_ok=True)
    log.warning(
        "removed %s: an earlier run's FP32 baseline, not this model's (--no-fp32-baseline writes none)", old.name
    )


def _quantize_with(
    loaded: LoadedModel,
    images: _Prefetch,
    cfg: QuantizeConfig,
    paths: dict[str, Path],
    step: Callable[[str], None],
    on_progress: Callable[[int, int], None] | None,
    t0: float,
    key: tuple[list[dict[str, Any]], dict[str, Any]],
    *,
    val: ValSet | None = None,
    budget: Budget | None = None,
) -> QuantizeResult:
    output = paths["onnx"]
    with temp_dir_beside(output) as tmp:  # removed on errors, Ctrl-C and SIGTERM; a killed run's by the next
        exp, fp32_model, placement, smoothing, fold, smooth_s = _smooth_and_export(
            loaded, images, cfg, tmp / paths["fp32"].name, step
        )
        if not images.done:
            step("waiting for the calibration images")
        t_wait = time.perf_counter()
        cs = images.result()
        wait_s = time.perf_counter() - t_wait
        notes: list[str] = []
        if val is not None:
            from edgeconvnext.quantize.valset import warn_if_calibration

            note = warn_if_calibration(val, cs.paths, cs.root)
            if note:
                notes.append(note)
        q_path = tmp / "quantized.onnx"
        fp32_logits: list[Any] = []  # FP32 logits of the calibration batches, when the backend gives them
        settings, calib_s = _calibrate(
            loaded, exp.path, q_path, cs, cfg, placement, step, on_progress, fp32_model, fp32_logits, fold
        )
        if fold is not None:  # the FP32 graph the Q/DQ went into: the export with the smoothing folded in
            assert fold.folded is not None and fold.report is not None  # set by the calibration
            fp32_model, smoothing = fold.folded, fold.report
        if smoothing is not None:  # torch-smoothed export or the fold of the calibration pass
            policy_mod.mark_smoothed(placement, smoothing.layers)
        budget_result = None
        if val is not None and budget is not None:
            placement, budget_result = _budget_search(q_path, fp32_model, placement, val, budget, step)
            note = budget_result.float_note()
            if note:
                notes.append(note)

        step("checking the result against TensorRT's explicit-quantization rules")
        q, report = _finish_graph(q_path, fp32_model, loaded, cs, cfg, placement, output)
        data = q.SerializeToString()

        step(f"comparing INT8 with FP32 on {min(AGREEMENT_IMAGES, len(cs))} calibration images")
        if fold is not None:
            fp32_bytes = fp32_model.SerializeToString()
            n_fold = min(FOLD_CHECK_IMAGES, len(cs))
            fold_check = _check_fold(fp32_bytes, cs.images[:n_fold], _first_rows(fp32_logits, n_fold))
            fp32_sha = _sha256_bytes(fp32_bytes)
            fp32_sidecar = _folded_baseline_sidecar(exp, fp32_bytes, fp32_sha, smoothing, fold_check)
        else:
            fp32_bytes, fp32_sidecar = exp.path.read_bytes(), exp.sidecar.read_bytes()
            fp32_sha = _sha256_bytes(fp32_bytes)
        fp32_ref: dict[str, Any] = {"bytes": len(fp32_bytes), "sha256": fp32_sha}
        n_agree = min(AGREEMENT_IMAGES, len(cs))
        agreement = _agreement(fp32_bytes, data, cs.images[:n_agree], _first_rows(fp32_logits, n_agree))

        manifest = cs.manifest()
        manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
        with (
            atomic_output(paths["onnx"]) as t_onnx,
            atomic_output(paths["sidecar"]) as t_side,
            atomic_output(paths["manifest"]) as t_man,
            _MaybeAtomic(paths["fp32"], cfg.keep_fp32) as t_fp,
            _MaybeAtomic(paths["fp32_sidecar"], cfg.keep_fp32) as t_fps,
        ):
            t_onnx.write_bytes(data)
            t_man.write_bytes(manifest_bytes)
            if t_fp is not None and t_fps is not None:
                t_fp.write_bytes(fp32_bytes)
                t_fps.write_bytes(fp32_sidecar)
            rss = peak_rss_mb()
            sidecar = _quantize_sidecar(
                loaded,
                cs,
                cfg,
                paths,
                q,
                data,
                exp,
                settings,
                placement,
                report,
                agreement,
                fp32_ref=fp32_ref,
                manifest_bytes=manifest_bytes,
                calib_s=calib_s,
                seconds=time.perf_counter() - t0,
                rss=rss,
            )
            sidecar.inputs, sidecar.config = key
            # 0 when the statistics came from the calibration pass (then in calibration_s)
            sidecar.timings["smooth_s"] = round(smooth_s, 3)
            # the images load during smoothing and export: what they cost the command is the wait for them
            sidecar.timings["load_wait_s"] = round(wait_s, 3)
            sidecar.details["smoothing"] = smoothing.to_dict() if smoothing is not None else None
            sidecar.details["budget"] = budget_result.to_dict() if budget_result is not None else None
            sidecar.details["notes"] = [*sidecar.details["notes"], *notes]
            t_side.write_text(sidecar.to_json())
    if not cfg.keep_fp32:
        _drop_stale_baseline(paths, fp32_ref["sha256"])
    log.info(
        "quantized %s: %d/%d layers INT8, calibration %.1f s",
        loaded.arch.name,
        sum(p.int8 for p in placement),
        len(placement),
        calib_s,
    )
    return QuantizeResult(
        path=output,
        sidecar=paths["sidecar"],
        manifest=paths["manifest"],
        fp32_path=paths["fp32"] if cfg.keep_fp32 else None,
        config=cfg,
        placement=placement,
        report=report,
        calib_images=len(cs),
        calib_skipped=len(cs.skipped),
        calib_seconds=calib_s,
        seconds=time.perf_counter() - t0,
        peak_rss_mb=rss,
        size_bytes=len(data),
        agreement=agreement,
        notes=[*(getattr(loaded, "notes", []) or []), *notes],
        smoothing=smoothing.to_dict() if smoothing is not None else None,
        smooth_scales=dict(smoothing.scales) if smoothing is not None else None,
        budget=budget_result,
    )


def _smooth_and_export(
    loaded: LoadedModel, images: _Prefetch, cfg: QuantizeConfig, fp32_path: Path, step: Callable[[str], None]
) -> tuple[
    ExportResult, onnx.ModelProto, list[policy_mod.Placement], SmoothReport | None, GraphSmoothing | None, float
]:
    """The FP32 export to calibrate, its placement and the smoothing: (export, its graph, placement, the torch
    smoothing's report, the fold to apply in the calibration pass, seconds of the torch smoothing). With
    :func:`smooth_in_calibration` the unsmoothed model is exported and the fold located in its graph; a graph
    the fold does not recognise is smoothed in torch and exported again (same result, one more pass)."""
    if smooth_in_calibration(cfg):
        from edgeconvnext.quantize.smooth_graph import match

        exp, fp32_model, placement = _export_and_place(loaded, cfg, fp32_path, step)
        fold = match(fp32_model, loaded.model)
        if fold is not None:
            return exp, fp32_model, placement, None, fold, 0.0
        for f in (exp.path, exp.sidecar):
            f.unlink()
    t_smooth = time.perf_counter()
    loaded, smoothing = _smooth(loaded, images, cfg, step)
    smooth_s = time.perf_counter() - t_smooth
    exp, fp32_model, placement = _export_and_place(loaded, cfg, fp32_path, step)
    return exp, fp32_model, placement, smoothing, None, smooth_s


def smooth_in_calibration(cfg: QuantizeConfig) -> bool:
    """Whether the smoothing statistics come from the calibration pass itself (quantize/smooth_graph.py): the
    ort backend's minmax pass can collect them; the histogram methods and NNCF calibrate a smoothed export,
    for which a torch forward measures them first (:func:`_smooth`)."""
    return cfg.smooth and cfg.backend == "ort" and cfg.calib_method == "minmax"


def _check_fold(fp32: bytes, images: Any, unfolded_logits: Any) -> dict[str, Any] | None:
    """The folded FP32 graph (``fp32``) against the unfolded graph's logits of the same calibration images (the
    calibration pass's): max |diff| / max |logit| must stay within the export's FP32 tolerance, else ExportError
    (a fold that changed the function would hide behind every later check, which all compare with it). None
    when the pass kept no logits."""
    import numpy as np
    import onnxruntime as ort

    from edgeconvnext.export.onnx_export import PARITY_REL_TOL

    if unfolded_logits is None:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(fp32, opts, providers=["CPUExecutionProvider"])
    got = np.asarray(sess.run(None, {"input": images})[0], np.float64)
    ref = np.asarray(unfolded_logits, np.float64)
    diff = float(np.abs(got - ref).max()) if np.isfinite(got).all() else float("inf")
    rel = diff / max(float(np.abs(ref).max()), 1e-12)
    tol = PARITY_REL_TOL["fp32"]
    if not rel <= tol:
        raise ExportError(
            f"the smoothing fold changed the FP32 model: on {len(ref)} calibration images its logits differ from "
            f"the unfolded graph's by {diff:.3g} (rel {rel:.3g} > {tol:g}); nothing was written. Quantize with "
            "--no-smooth, and report this graph (rerun with --debug)"
        )
    return {"images": int(len(ref)), "max_abs_diff": diff, "rel_diff": rel, "tolerance_rel": tol}


def _folded_baseline_sidecar(
    exp: ExportResult, data: bytes, sha: str, report: SmoothReport | None, check: dict[str, Any] | None = None
) -> bytes:
    """The export's sidecar for the FP32 baseline with the smoothing folded in (``data``, of SHA-256 ``sha``): its
    output is the folded graph, and it says what was folded after the export's parity check and how the fold
    was checked."""
    sc = Sidecar.from_dict(json.loads(exp.sidecar.read_text()))
    sc.outputs[0] = {**sc.outputs[0], "bytes": len(data), "sha256": sha}
    sc.details["smoothing"] = {
        "folded": "after calibration: LayerNorm scale and bias / s, the next layer's input channels x s "
        "(quantize/smooth_graph.py)",
        "function": "unchanged: the parity above is of the export before the fold; fold_check: the folded graph vs "
        "the unfolded one on calibration images (onnxruntime)",
        "fold_check": check,
        "pairs": len(report.pairs) if report else 0,
        "alpha": report.alpha if report else None,
        "statistics": report.statistics if report else None,
    }
    return sc.to_json().encode()


def _smooth(
    loaded: LoadedModel, images: _Prefetch, cfg: QuantizeConfig, step: Callable[[str], None]
) -> tuple[LoadedModel, SmoothReport | None]:
    """A copy of ``loaded`` with LayerNorm outlier channels equalised into the next layers (``cfg.smooth``), on
    the first calibration images."""
    if not cfg.smooth:
        return loaded, None
    from edgeconvnext.quantize.smooth import STATS_IMAGES, smoothed_copy

    first = images.first(STATS_IMAGES)
    step(f"equalising LayerNorm outlier channels into the next layers ({len(first)} images)")
    return smoothed_copy(loaded, first)


def _budget_search(
    q_path: Path,
    fp32_model: onnx.ModelProto,
    placement: list[policy_mod.Placement],
    val: ValSet,
    budget: Budget,
    step: Callable[[str], None],
) -> tuple[list[policy_mod.Placement], BudgetResult]:
    """The --max-drop search on the calibrated all-INT8 graph at ``q_path`` (rewritten with the result)."""
    import onnx

    from edgeconvnext.quantize.budget import search

    step(f"accuracy budget: all-INT8 vs FP32 on {len(val)} validation images")
    q, placement, result = search(onnx.load(str(q_path)), fp32_model, placement, val, budget, on_message=step)
    onnx.save(q, str(q_path))
    return placement, result


def _export_and_place(
    loaded: LoadedModel, cfg: QuantizeConfig, fp32_path: Path, step: Callable[[str], None]
) -> tuple[ExportResult, onnx.ModelProto, list[policy_mod.Placement]]:
    """The FP32 export (verified against torch) and the policy's placement on its graph."""
    import onnx

    from edgeconvnext.export.onnx_export import export_onnx

    step(f"exporting {loaded.arch.name} FP32 ONNX ({pp_size(loaded)} px, verified against torch)")
    exp = export_onnx(loaded, fp32_path, precision="fp32", opset=17, batch=None, verify=True)
    assert not isinstance(exp, Skipped)  # reuse=False: always exported
    fp32_model = onnx.load(str(exp.path))
    placement = policy_mod.plan(fp32_model, cfg.policy, cfg.exclude)
    return exp, fp32_model, placement


def _calibrate(
    loaded: LoadedModel,
    fp32_path: Path,
    q_path: Path,
    cs: CalibrationSet,
    cfg: QuantizeConfig,
    placement: Sequence[policy_mod.Placement],
    step: Callable[[str], None],
    on_progress: Callable[[int, int], None] | None,
    model: onnx.ModelProto | None = None,
    fp32_logits: list[Any] | None = None,
    fold: GraphSmoothing | None = None,
) -> tuple[dict[str, Any], float]:
    """The backend's calibration and Q/DQ insertion into ``q_path``: its settings and wall seconds.
    ``model`` is ``fp32_path`` already loaded; the ort backend appends the FP32 logits of the calibration
    batches to ``fp32_logits`` (minmax) and, with ``fold``, smooths in the same pass."""
    int8_nodes = [p.node for p in placement if p.int8]
    fp_nodes = [p.node for p in placement if not p.int8]
    step(
        f"calibrating {len(cs)} images with {cfg.backend} ({cfg.calib_method}), "
        f"{len(int8_nodes)}/{len(placement)} layers INT8"
        + (", equalising LayerNorm outlier channels from the same pass" if fold is not None else "")
    )
    t_cal = time.perf_counter()
    try:
        with _library_output():
            if cfg.backend == "ort":
                from edgeconvnext.quantize.ort_backend import quantize_ort

                settings = quantize_ort(
                    fp32_path,
                    q_path,
                    cs,
                    int8_nodes,
                    cfg.calib_method,
                    on_progress=on_progress,
                    model=model,
                    logits=fp32_logits,
                    fold=fold,
                )
            else:
                from edgeconvnext.quantize.nncf_backend import quantize_nncf

                settings = quantize_nncf(fp32_path, q_path, cs, fp_nodes, cfg.calib_method, on_progress=on_progress)
    except MemoryError:
        raise
    except Exception as e:  # library errors of many types: one message, traceback with --debug
        raise ExportError(
            f"--backend {cfg.backend} failed to quantize {loaded.arch.name}: {type(e).__name__}: {e}"
        ) from e
    return settings, time.perf_counter() - t_cal


def _finish_graph(
    q_path: Path,
    fp32_model: onnx.ModelProto,
    loaded: LoadedModel,
    cs: CalibrationSet,
    cfg: QuantizeConfig,
    placement: Sequence[policy_mod.Placement],
    output: Path,
) -> tuple[onnx.ModelProto, TrtReport]:
    """The quantized graph with the FP32 export's metadata plus the quantization's, checked against
    TensorRT's rules (a violation: nothing is written) and the placement verified on it."""
    import onnx

    from edgeconvnext.onnx.metadata import set_metadata
    from edgeconvnext.onnx.trt_rules import check_model

    q = onnx.load(str(q_path))
    fp32_meta = {p.key: p.value for p in fp32_model.metadata_props}
    quant_meta = {
        "method": cfg.method,
        "backend": cfg.backend,
        "calib_method": cfg.calib_method,
        "policy": cfg.policy,
        "exclude": list(cfg.exclude),
        "smooth": cfg.smooth,
        "calib_images": len(cs),
        "activations": "int8 per tensor, symmetric",
        "weights": "int8 per output channel, symmetric",
    }
    set_metadata(
        q,
        {
            **fp32_meta,
            "edgeconvnext.precision": "int8",
            "edgeconvnext.quantization": json.dumps(quant_meta, sort_keys=True),
        },
    )
    q.doc_string = (
        f"edgeconvnext: {loaded.arch.name} INT8 Q/DQ ({cfg.backend}, {cfg.calib_method}, "
        f"policy {cfg.policy}), input 'input' float32, output 'logits' float32"
    )
    report = check_model(q)
    try:
        report.raise_for_violations()  # refuse to leave a file TensorRT would reject
    except RuleViolation as e:
        raise RuleViolation(
            f"--backend {cfg.backend} produced a graph TensorRT would reject, so {output} was not written: {e}"
        ) from None
    report.path = output
    _verify_placement(placement, report, cfg.backend)
    return q, report


def _quantize_sidecar(
    loaded: LoadedModel,
    cs: CalibrationSet,
    cfg: QuantizeConfig,
    paths: dict[str, Path],
    q: onnx.ModelProto,
    data: bytes,
    exp: ExportResult,
    settings: dict[str, Any],
    placement: Sequence[policy_mod.Placement],
    report: TrtReport,
    agreement: dict[str, Any],
    *,
    fp32_ref: dict[str, Any],
    manifest_bytes: bytes,
    calib_s: float,
    seconds: float,
    rss: float,
) -> Sidecar:
    """What ``OUT.onnx.json`` records of a quantization (the caller adds inputs and config). ``fp32_ref``: bytes
    and sha256 of the FP32 baseline (the export, or the export with the smoothing folded in)."""
    from edgeconvnext.onnx.metadata import decode_metadata

    manifest_sha = _sha256_bytes(manifest_bytes)
    # the bytes being written, without reading them back
    outputs = [
        {"path": paths["onnx"].name, "bytes": len(data), "sha256": _sha256_bytes(data)},
        {"path": paths["manifest"].name, "bytes": len(manifest_bytes), "sha256": manifest_sha},
    ]
    if cfg.keep_fp32:
        outputs.append({"path": paths["fp32"].name, **fp32_ref})
    return Sidecar(
        stage="quantize",
        outputs=outputs,
        environment=environment(device="cpu"),
        timings={
            "load_s": round(cs.load_seconds, 3),
            "calibration_s": round(calib_s, 3),
            "export_s": round(exp.seconds, 3),
            "total_s": round(seconds, 3),
        },
        details={
            "metadata": decode_metadata({p.key: p.value for p in q.metadata_props}),
            "arch": {"name": loaded.arch.name, "version": loaded.arch.version},
            "source": {
                "path": str(loaded.source) if loaded.source else None,
                "sha256": loaded.source_sha256,
                "format": loaded.source_format,
            },
            "backend": settings,
            "placement": policy_mod.details(placement),
            "calibration": {
                "manifest": paths["manifest"].name,
                "manifest_sha256": manifest_sha,
                "source": cs.source,
                "root": str(cs.root),
                "images": len(cs),
                "skipped": len(cs.skipped),
                "seed": cs.seed,
                "requested_size": cs.requested,
                "method": cfg.calib_method,
                "wall_s": round(calib_s, 3),
            },
            "fp32_baseline": ({"path": paths["fp32"].name, "sha256": fp32_ref["sha256"]} if cfg.keep_fp32 else None),
            "agreement_vs_fp32": agreement,
            "trt_check": report.check_details(),
            "peak_rss_mb": round(rss, 1),
            "notes": list(getattr(loaded, "notes", []) or []),
        },
    )


def pp_size(loaded: LoadedModel) -> int:
    return int(loaded.preprocess.img_size)


@contextlib.contextmanager
def _library_output() -> Iterator[None]:
    """Keep stdout for the command's result (``--json``): onnxruntime's calibrators print progress lines
    and NNCF draws progress bars and logs through a handler bound to stdout. Send all of it to stderr, or
    nowhere when INFO logging is off (``--quiet``)."""
    sink = sys.stderr if log.isEnabledFor(logging.INFO) else open(os.devnull, "w")  # noqa: SIM115
    bound = [
        h
        for h in logging.getLogger("nncf").handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.__stdout__)
    ]
    old_streams = [h.stream for h in bound]
    for h in bound:
        h.setStream(sink)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        for h, stream in zip(bound, old_streams, strict=False):
            h.setStream(stream)
        if sink is not sys.stderr:
            sink.close()


def _sha256_bytes(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


class _MaybeAtomic:
    """atomic_output(path) when ``enabled``, else a context yielding None."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self._cm = atomic_output(path) if enabled else None

    def __enter__(self) -> Path | None:
        return self._cm.__enter__() if self._cm is not None else None

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc) if self._cm is not None else None
