"""``edgeconvnext run``: one call from a checkpoint to every artifact, validated, reported and bundled.

Input: :class:`RunOptions` (checkpoint, calibration and validation images, recipe, options). Output, under
``RUN`` (the ``--output`` folder)::

    config.json                       the resolved settings (defaults < recipe < options) and where each came from
    onnx/NAME.fp32.onnx               FP32 export, verified against torch                      (stage export)
    onnx/NAME.int8.onnx               INT8 Q/DQ (PTQ; QAT with method qat; the accuracy-budget  (stage quantize)
                                      search with budget), calibration manifest and sidecar beside
    onnx/NAME.fp16.onnx, NAME.int8.fp16.onnx   FP16 conversions (LayerNorm/GRN reductions FP32)  (stage fp16)
                                      TensorRT explicit-quantization rules of the INT8 graphs   (stage rules)
    engines/NAME.*.engine             when TensorRT is on this machine                          (stage engines)
    validate/ROW.json                 accuracy vs the FP32 ONNX and latency, one file per row   (stage validate)
    report.json, report.md, report.html, plots/*.png                                            (stage report)
    bundle/                           what the device needs (edgeconvnext.pipeline.bundle)      (stage bundle)

Every stage runs through library calls (export_onnx, quantize, fp16.convert_file, trt_rules.check_file,
engine.build_engine, evaluate.validate) and is recorded in ``RUN/.stages`` (edgeconvnext.pipeline.state):
a stage whose record matches its inputs and settings, with its outputs unchanged, is skipped and says so;
``force`` re-runs named stages (or all). A run stopped by an error, Ctrl-C or a full disk leaves no
half-written file (atomic outputs) and the next run resumes at the first stage without a record.

Usage::

    result = run_pipeline(RunOptions(output=Path("runs/nano"), checkpoint=Path("nano.pt"),
                                     calib_data=Path("calib/"), val_data=Path("val/")))
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext.artifacts import (
    Skipped,
    check_output,
    environment,
    folder_sha256,
    sha256_file,
    write_json_atomic,
)
from edgeconvnext.errors import AccuracyError, CheckpointError, DataError, EdgeError, UsageError, nearest
from edgeconvnext.pipeline import STAGES
from edgeconvnext.pipeline.state import Ledger, stage_key

if TYPE_CHECKING:
    from edgeconvnext.models.checkpoint import LoadedModel
    from edgeconvnext.quantize.budget import Budget
    from edgeconvnext.quantize.config import QuantizeConfig
    from edgeconvnext.quantize.qat_config import QatConfig

log = logging.getLogger(__name__)

#: methods ``run`` offers; a method another engineer lands later is refused by name until then
METHODS = ("ptq", "qat")


@dataclass
class Events:
    """What the runner reports while it works (the CLI draws a progress display from it)."""

    stage: Callable[[str, int, int], None] = lambda name, i, n: None
    skipped: Callable[[str, str], None] = lambda name, why: None
    finished: Callable[[str, str, float], None] = lambda name, summary, seconds: None
    step: Callable[[str], None] = lambda text: None
    progress: Callable[[int, int], None] = lambda done, total: None


@dataclass
class RunOptions:
    """What ``edgeconvnext run`` was asked (None: not given, so the recipe or the default decides)."""

    output: Path
    checkpoint: Path | None = None
    model: str | None = None
    recipe: str | None = None
    img_size: int | None = None
    num_classes: int | None = None
    allow_unsafe: bool = False
    ema: bool = False
    calib_data: Path | None = None
    calib_manifest: Path | None = None
    val_data: Path | None = None
    labels: Path | None = None
    method: str | None = None
    train_data: Path | None = None
    qat: dict[str, Any] = field(default_factory=dict)  # QatConfig keys (epochs, steps, ...) for --method qat
    # the accuracy-budget search (quantize/config.py BudgetConfig): max_drop, max_disagree, subset_size,
    # min_int8_share (% of MACs), min_val_size; None values are not given (the recipe's budget: or the default)
    budget: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)  # QuantizeConfig keys given on the command line
    build: dict[str, Any] = field(default_factory=dict)  # recipe 'build' keys given on the command line
    validate: dict[str, Any] = field(default_factory=dict)  # recipe 'validate' keys given on the command line
    latency_batches: list[int] | None = None
    latency: bool = True
    device: str = "cpu"
    bundle_images: int = 0
    trtexec: Path | None = None
    force: tuple[str, ...] = ()  # stage names, or ("all",)


@dataclass
class Row:
    """One validation row: an artifact on a backend and device."""

    name: str  # file stem in validate/
    artifact: Path
    backend: str
    device: str
    precision: str
    kind: str  # "checkpoint" | "onnx" | "engine" | "torch-tensorrt"
    baseline: Path | None  # None: this row is the baseline
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    output: Path
    report_json: Path
    report_md: Path
    report_html: Path
    bundle: Path
    skipped: list[str]
    ran: list[str]
    seconds: float
    report: dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# options -> resolved settings (cheap: nothing heavy is loaded)


def check_force(force: tuple[str, ...] | list[str]) -> set[str]:
    out: set[str] = set()
    for f in force:
        if f == "all":
            return set(STAGES)
        if f not in STAGES:
            hint = nearest(f, list(STAGES))
            raise UsageError(
                f"--force {f}: no such stage"
                + (f"; did you mean '{hint}'?" if hint else "")
                + f" ({', '.join(STAGES)})"
            )
        out.add(f)
    return out


def _check_method(opts: RunOptions) -> str:
    method = (opts.method or opts.quantize.get("method") or "ptq").strip().lower()
    if method not in METHODS:
        hint = nearest(method, ["ptq"])
        raise UsageError(f"unknown --method '{method}'" + (f"; did you mean '{hint}'?" if hint else "; use ptq"))
    if method == "qat":
        import importlib.util

        if importlib.util.find_spec("edgeconvnext.quantize.qat") is None:  # pragma: no cover - landed
            raise UsageError("--method qat: quantization-aware training is not available in this version; use ptq")
        if opts.train_data is None:
            raise UsageError(
                "--method qat needs --train-data DIR (an ImageFolder for label loss + distillation, or a folder "
                "of images for distillation only; the calibration folder works)"
            )
    else:
        given = [o for o, v in (("--train-data", opts.train_data), *((f"--{k}", v) for k, v in opts.qat.items())) if v]
        if given:
            from edgeconvnext.quantize.qat_config import only_with_qat

            raise only_with_qat(given)
    return method


def check_budget(opts: RunOptions, method: str, recipe: Any = None) -> tuple[Budget | None, int | None, dict[str, str]]:
    """The accuracy budget asked for (``--max-drop`` ... over the recipe's ``budget:`` section), checked before
    anything heavy: (the Budget or None, its --min-val-size, where each setting came from).

    Refused with ``--method qat``: the search reverts layers of the calibrated all-INT8 PTQ graph to higher
    precision; QAT trains every INT8 layer instead, and its graph is not searched (quantize refuses the pair too).
    A recipe's budget that cannot apply (QAT, no --val-data) is said in a log line.
    """
    from edgeconvnext.quantize.config import resolve_budget

    req = resolve_budget(recipe, dict(opts.budget), val_data=opts.val_data is not None, method=method)
    if req.note:
        log.warning(req.note)
    if req.config is None:
        return None, None, {}
    return req.config.to_budget(), req.config.min_val_size, req.sources


@dataclass
class Resolved:
    """Settings after defaults < recipe < options, plus where each came from."""

    recipe: Any  # Recipe | None
    model: str | None
    img_size: int | None
    quantize: QuantizeConfig
    build: dict[str, Any]
    validate: dict[str, Any]
    latency_batches: list[int] | None
    sources: dict[str, dict[str, str]]
    budget: Budget | None = None  # the accuracy-budget search of the quantize stage (--max-drop ...)
    min_val_size: int | None = None  # its --min-val-size (None: quantize.valset's default)
    qat: QatConfig | None = None  # --method qat: defaults < the recipe's qat: section < the options

    def qat_settings(self) -> dict[str, Any] | None:
        """The QAT hyperparameters (the recipe's ``qat:`` keys: not the paths or the machine), or None."""
        if self.qat is None:
            return None
        from edgeconvnext.config import recipe_keys
        from edgeconvnext.quantize.qat_config import QatConfig

        d = self.qat.to_dict()
        return {k: d[k] for k in recipe_keys(QatConfig)}

    def budget_dict(self) -> dict[str, Any] | None:
        if self.budget is None:
            return None
        return {**asdict(self.budget), "min_val_size": self.min_val_size}

    def to_dict(self) -> dict[str, Any]:
        q = self.quantize.to_dict()
        return {
            "recipe": str(self.recipe.path) if self.recipe is not None else None,
            "target": getattr(self.recipe, "target", None),
            "model": self.model,
            "img_size": self.img_size,
            "quantize": q,
            "budget": self.budget_dict(),
            "qat": self.qat_settings(),
            "build": dict(self.build),
            "validate": dict(self.validate),
            "latency_batches": self.latency_batches,
            "sources": self.sources,
        }

    def recipe_yaml(
        self, model: str | None = None, img_size: int | None = None, budget: dict[str, Any] | None = None
    ) -> str:
        """The resolved settings as a recipe file (what the bundle carries; ``load_recipe`` reads it back).

        ``model``/``img_size``: what the checkpoint turned out to be when neither the options nor the recipe
        said. ``budget``: the accuracy-budget search's result (``BudgetResult.to_dict``), whose reverted layers
        become ``quantize.exclude``: the recipe rebuilds the searched graph without searching again (the search's
        settings are in the header, not in a ``budget:`` section that would search again, and a recipe's own
        ``budget:`` is dropped for the same reason). With ``--method qat`` the ``qat:`` section holds the training
        hyperparameters that ran.
        """
        import yaml

        q = {k: v for k, v in self.to_dict()["quantize"].items() if k != "keep_fp32"}
        head = [f"# resolved by edgeconvnext run from {self.recipe.path.name if self.recipe else 'defaults'}"]
        if budget is not None and self.budget is not None:
            added = [e for e in budget.get("exclude") or [] if e not in q.get("exclude", [])]
            q["exclude"] = [*q.get("exclude", []), *added]
            limit = " ".join(
                f"{opt} {v:g}"
                for opt, v in (("--max-drop", self.budget.max_drop), ("--max-disagree", self.budget.max_disagree))
                if v is not None
            )
            head.append(
                f"# accuracy budget {limit}: the search kept {len(added)} layer(s) in higher precision "
                f"({'met' if budget.get('met') else 'NOT met'}); they are in quantize.exclude"
            )
        data = {
            "model": self.model or model,
            "target": getattr(self.recipe, "target", None),
            "description": head[0][2:],
            "img_size": self.img_size or img_size,
            "quantize": q,
            "qat": self.qat_settings(),
            "build": self.build,
            "validate": self.validate,
        }
        body = yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)
        return "\n".join(head) + "\n" + body


def resolve_options(opts: RunOptions) -> Resolved:
    """Merge defaults < recipe < options through each stage's own config (quantize.config, engine.config,
    evaluate.config) and refuse what cannot be honoured (nothing heavy loaded)."""
    from edgeconvnext.engine.config import resolve_sources as resolve_build
    from edgeconvnext.evaluate.config import resolve_sources as resolve_validate
    from edgeconvnext.quantize.config import resolve_sources as resolve_quantize
    from edgeconvnext.recipes import load_recipe

    method = _check_method(opts)
    if opts.calib_manifest is not None:
        fixed = [f"--{k.replace('_', '-')}" for k in ("calib_size", "seed") if opts.quantize.get(k) is not None]
        if fixed:
            raise UsageError(
                f"--calib-manifest fixes the calibration images: drop {'/'.join(fixed)}, or drop --calib-manifest "
                "to choose a new set"
            )
    if not opts.latency:
        given = [k for k, v in (("--latency-batch", opts.latency_batches), ("--warmup", opts.validate.get("warmup")),
                                ("--iters", opts.validate.get("iters"))) if v is not None]  # fmt: skip
        if given:
            raise UsageError(f"{given[0]} sets up the latency measurement: drop it, or drop --no-latency")
    rec = load_recipe(opts.recipe) if opts.recipe else None
    budget, min_val_size, budget_src = check_budget(opts, method, rec)
    qat = None
    if method == "qat":
        from edgeconvnext.quantize.qat_config import resolve_sources as resolve_qat

        qat, qat_src = resolve_qat(rec, {**opts.qat, "train_data": opts.train_data, "device": opts.device})
        qat = qat.validated()
    q_cli = {k: v for k, v in opts.quantize.items() if v is not None}
    q_cli["method"] = method
    if "exclude" in q_cli:
        q_cli["exclude"] = tuple(q_cli["exclude"])
    q_cli["keep_fp32"] = False  # the export stage writes the FP32 ONNX (same exporter, same graph)
    qcfg, q_src = resolve_quantize(rec, q_cli)
    q_src["keep_fp32"] = "run"
    breq, b_src = resolve_build(rec, {"onnx": Path("."), **{k: v for k, v in opts.build.items() if v is not None}})
    v_cli = {k: v for k, v in opts.validate.items() if v is not None}
    if opts.latency_batches is not None:
        v_cli["latency_batch"] = ",".join(map(str, opts.latency_batches))
    vcfg, v_src = resolve_validate(rec, v_cli, labels={"batch": "--val-batch"})
    model = rec.model_to_load(opts.model, None) if rec is not None else opts.model
    img_size = opts.img_size if opts.img_size is not None else (rec.img_size if rec is not None else None)
    if breq.dla_core is not None:
        from edgeconvnext.engine.build import check_dla

        check_dla(breq.dla_core)
    batches = vcfg.latency_options().batches
    build = {k: v for k, v in breq.to_dict().items() if k not in ("onnx", "output", "trtexec")}
    if build.get("batch") is None:
        # the engines' profile covers the batches they are timed at (CUDA defaults 1 and 32 otherwise);
        # optimised for the smallest, the latency case
        from edgeconvnext.evaluate.validate import CUDA_BATCHES

        bs = batches or list(CUDA_BATCHES)
        lo, hi = min(bs), max(bs)
        build["batch"] = str(lo) if lo == hi else f"{lo},{lo},{hi}"
        b_src["batch"] = "latency batches"
    return Resolved(
        recipe=rec,
        model=model,
        img_size=img_size,
        quantize=qcfg,
        build=build,
        validate=vcfg.to_dict(),
        latency_batches=batches,
        sources={
            "quantize": q_src,
            "build": b_src,
            "validate": v_src,
            **({"qat": qat_src} if qat else {}),
            **({"budget": budget_src} if budget_src else {}),
        },
        budget=budget,
        min_val_size=min_val_size,
        qat=qat,
    )


def folder_fingerprint(root: Path | None) -> str | None:
    """:func:`edgeconvnext.artifacts.folder_sha256` of ``root`` (relative path, size and modification time of
    every non-hidden file), None when not given: cheap enough to key a stage on a folder of images."""
    return None if root is None else folder_sha256(root)


# ---------------------------------------------------------------------------------------------------
# the runner


class Pipeline:
    """The stages of one run (see the module doc); :meth:`run` executes them in order."""

    def __init__(self, opts: RunOptions, events: Events | None = None) -> None:
        self.opts = opts
        self.ev = events or Events()
        self.force = check_force(opts.force)
        self._check_inputs()
        self.cfg = resolve_options(opts)
        self._check_data()
        self.out = Path(opts.output).expanduser()
        self.ledger = Ledger(self.out)
        stem = Path(opts.checkpoint).name.split(".")[0] if opts.checkpoint else "model"
        self.stem = stem or "model"
        o = self.out / "onnx"
        self.paths = {
            "fp32": o / f"{self.stem}.fp32.onnx",
            "int8": o / f"{self.stem}.int8.onnx",
            "fp16": o / f"{self.stem}.fp16.onnx",
            "int8_fp16": o / f"{self.stem}.int8.fp16.onnx",
        }
        self._loaded: LoadedModel | None = None
        self.results: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []
        self.ran: list[str] = []
        self.notes: list[str] = []

    # -- checks ---------------------------------------------------------------------------------------

    def _check_inputs(self) -> None:
        o = self.opts
        if o.checkpoint is None:
            raise UsageError("give --checkpoint FILE (-c): run starts from a trained checkpoint")
        if not Path(o.checkpoint).exists():
            raise CheckpointError(f"checkpoint not found: {o.checkpoint}")
        if o.calib_data is None and o.calib_manifest is None:
            raise UsageError("give --calib-data DIR (a folder of images) or --calib-manifest FILE")
        from edgeconvnext.data.folders import check_folder

        for p, opt in ((o.calib_data, "--calib-data"), (o.val_data, "--val-data")):
            if p is not None:
                check_folder(p, opt)
        if o.labels is not None:
            if o.val_data is None:
                raise UsageError(f"--labels {o.labels} labels a flat --val-data folder: add --val-data DIR")
            if not Path(o.labels).is_file():
                what = "is a folder" if Path(o.labels).is_dir() else "not found"
                raise DataError(f"--labels {o.labels}: {what}; give the labels file ('<file> <label>' lines)")
        if o.val_data is None and not o.latency:
            raise UsageError("nothing to validate: give --val-data DIR, or keep the latency measurement on")
        if o.bundle_images < 0:
            raise UsageError(f"--bundle-images must be >= 0, got {o.bundle_images}")
        if o.bundle_images and o.val_data is None:
            raise UsageError("--bundle-images copies validation images: add --val-data DIR")
        if o.device not in ("cpu", "cuda"):
            raise UsageError(f"unknown --device '{o.device}'; use cpu or cuda")
        if o.trtexec is not None:
            from edgeconvnext.env.probes import check_trtexec

            check_trtexec(o.trtexec)
        out = Path(o.output).expanduser()
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output {out} is a file; give a folder (runs/NAME)")
        check_output(out / "config.json", "--output", {"--checkpoint": o.checkpoint})
        if o.device == "cuda":
            from edgeconvnext.runtime.runners import check_device

            check_device("cuda")

    def _check_data(self) -> None:
        """Image folders without an image, found when the command starts (after the options are checked), not
        after the export and quantize stages have run."""
        from edgeconvnext.data.folders import list_images

        for p, opt in ((self.opts.calib_data, "--calib-data"), (self.opts.val_data, "--val-data")):
            if p is not None and not list_images(p):
                raise DataError(f"{opt} {p}: no images found (image files end in .jpg .png .webp ...)")
        if self.opts.bundle_images and self.opts.val_data is not None:  # known now, not at the bundle stage
            from edgeconvnext.pipeline.bundle import bundle_images_source

            bundle_images_source(self.opts.bundle_images, self.opts.val_data, self.opts.labels)

    # -- helpers -------------------------------------------------------------------------------------

    def loaded(self) -> LoadedModel:
        """The checkpoint, loaded once and only when a stage needs it (a run where every stage is up to
        date never loads torch)."""
        if self._loaded is None:
            from edgeconvnext.models.checkpoint import load_model

            o = self.opts
            self.ev.step(f"loading {o.checkpoint}")
            loaded = load_model(
                self.opts.model,
                Path(o.checkpoint),  # type: ignore[arg-type]
                num_classes=o.num_classes,
                img_size=self.cfg.img_size,
                allow_unsafe=o.allow_unsafe,
                ema=o.ema,
            )
            if self.cfg.recipe is not None:
                self.cfg.recipe.check_loaded(loaded.arch.name, o.checkpoint)
            self._loaded = loaded
        return self._loaded

    def _stage(self, name: str, config: dict[str, Any], inputs: dict[str, Path | None], fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless the stage's record matches; ``fn`` returns (outputs, result dict, summary)."""
        key = stage_key(name, config, inputs)
        base = name.split(".")[0]
        if base not in self.force:
            hit = self.ledger.match(name, key)
            if hit is not None:
                self.skipped.append(name)
                self.ev.skipped(name, ", ".join(str(p.relative_to(self.out)) for p in hit.outputs) or "up to date")
                self.results[name] = hit.result
                return hit.result
        t0 = time.perf_counter()
        self.ledger.forget(name)  # a stage that fails leaves no record that could match
        outputs, result, summary = fn()
        self.ledger.record(name, key, outputs, result)
        self.ran.append(name)
        self.results[name] = result
        self.ev.finished(name, summary, time.perf_counter() - t0)
        return result

    def _rel(self, p: Path | None) -> str | None:
        """A path inside the run as relative (a copied or moved run stays up to date), others as given."""
        if p is None:
            return None
        try:
            return str(Path(p).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(p)

    # -- stages --------------------------------------------------------------------------------------

    def _model_config(self) -> dict[str, Any]:
        o = self.opts
        return {"model": self.cfg.model, "img_size": self.cfg.img_size, "num_classes": o.num_classes, "ema": o.ema}

    def stage_export(self) -> dict[str, Any]:
        def fn():
            from edgeconvnext.export.onnx_export import export_onnx

            r = export_onnx(
                self.loaded(), self.paths["fp32"], precision="fp32", opset=17, verify=True, on_step=self.ev.step
            )
            assert not isinstance(r, Skipped)  # reuse=False: the pipeline's own ledger decides skipping
            result = {
                "path": str(r.path.relative_to(self.out)),
                "arch": self.loaded().arch.name,
                "img_size": r.img_size,
                "rel_diff_vs_torch": r.rel_diff,
                "bytes": r.size_bytes,
            }
            return [r.path, r.sidecar], result, f"{r.path.name}, {r.parity_line()}"

        return self._stage("export", {**self._model_config(), "opset": 17}, {"checkpoint": self.opts.checkpoint}, fn)

    def stage_quantize(self) -> dict[str, Any]:
        from edgeconvnext.quantize.ptq import output_paths

        cfg = self.cfg.quantize.to_dict()
        qat = self.cfg.quantize.method == "qat"
        config = {
            **self._model_config(),
            **cfg,
            "calib_data": folder_fingerprint(self.opts.calib_data),
            "qat": {**(self.cfg.qat_settings() or {}), "train_data": folder_fingerprint(self.opts.train_data)}
            if qat
            else None,
        }
        if (budget := self.cfg.budget_dict()) is not None:  # the search's settings and its images (a run without
            # a budget keeps the key it had before the search landed)
            config["budget"] = {**budget, "val_data": folder_fingerprint(self.opts.val_data)}
        inputs: dict[str, Path | None] = {
            "checkpoint": self.opts.checkpoint,
            "calib_manifest": self.opts.calib_manifest,
        }
        if self.cfg.budget is not None:
            inputs["labels"] = self.opts.labels

        def fn():
            if qat:
                r = self._qat()
            else:
                from edgeconvnext.quantize import quantize

                r = quantize(
                    self.loaded(),
                    self.paths["int8"],
                    calib_data=self.opts.calib_data,
                    config=self.cfg.quantize,
                    calib_manifest=self.opts.calib_manifest,
                    on_step=self.ev.step,
                    on_progress=self.ev.progress,
                    val=self._valset(),
                    budget=self.cfg.budget,
                )
            share = r.int8_macs_share
            result = {
                "path": str(r.path.relative_to(self.out)),
                "placement": [p.to_dict() for p in r.placement],
                "int8_layers": sum(p.int8 for p in r.placement),
                "layers": len(r.placement),
                "int8_macs_share": share,
                # QAT's result has no calibration counts of its own (its calibration is in the sidecar)
                "calib_images": getattr(r, "calib_images", None),
                "calib_skipped": getattr(r, "calib_skipped", None),
                "calib_seconds": round(r.calib_seconds, 3) if hasattr(r, "calib_seconds") else None,
                "agreement_vs_fp32": r.agreement,
                "config": cfg,
                "budget": r.budget.to_dict() if getattr(r, "budget", None) is not None else None,
                "notes": list(getattr(r, "notes", None) or []),
            }
            p = output_paths(r.path)
            outputs = [p["onnx"], p["sidecar"], p["manifest"]]
            if qat:
                from edgeconvnext.quantize.qat import qat_paths

                outputs.append(qat_paths(r.path)["checkpoint"])
                result["qat"] = {"mode": r.mode, "best_epoch": r.best_epoch, "epochs": len(r.history)}
            summary = (
                f"{r.path.name}: {'QAT' if qat else 'PTQ'}, INT8 on {result['int8_layers']}/{result['layers']} layers"
                + (f" ({share:.1%} of MACs)" if share is not None else "")
                + (f", {r.calib_images} calibration images" if hasattr(r, "calib_images") else f", {r.mode}")
                + (_budget_summary(result["budget"]) if result["budget"] else "")
            )
            return outputs, result, summary

        return self._stage("quantize", config, inputs, fn)

    def _valset(self) -> Any:
        """The validation images of the accuracy-budget search (None without --max-drop/--max-disagree)."""
        if self.cfg.budget is None:
            return None
        from edgeconvnext.quantize.valset import MIN_VAL_IMAGES, load_valset

        loaded = self.loaded()
        val = self.opts.val_data
        assert val is not None  # check_budget refuses a budget without --val-data
        self.ev.step(f"loading the validation images of the accuracy budget from {val}")
        return load_valset(
            val,
            loaded.preprocess,
            loaded.class_names,
            loaded.num_classes,
            min_size=self.cfg.min_val_size if self.cfg.min_val_size is not None else MIN_VAL_IMAGES,
            labels_file=self.opts.labels,
            on_progress=self.ev.progress,
            labels_option="--labels",
        )

    def _qat(self) -> Any:
        """Quantization-aware training (edgeconvnext.quantize.qat) to the same INT8 ONNX path as PTQ."""
        from edgeconvnext.quantize.qat import qat

        qcfg = self.cfg.qat
        assert qcfg is not None  # resolve_options resolves it for --method qat
        cs = getattr(self.ev, "progress", None)
        return qat(
            self.loaded(),
            self.paths["int8"],
            config=qcfg,
            quant=self.cfg.quantize,
            calib_data=self.opts.calib_data,
            calib_manifest=self.opts.calib_manifest,
            on_step=self.ev.step,
            on_progress=cs,
        )

    def stage_fp16(self) -> dict[str, Any]:
        def fn():
            from edgeconvnext.onnx.fp16 import compare_outputs, convert_file

            result: dict[str, Any] = {}
            for src, dst in (("fp32", "fp16"), ("int8", "int8_fp16")):
                self.ev.step(f"converting {self.paths[src].name} to FP16 (LayerNorm and GRN reductions kept FP32)")
                rep = convert_file(self.paths[src], self.paths[dst])
                parity = compare_outputs(self.paths[src], self.paths[dst], batch=2)
                if not parity["finite"]:
                    self.paths[dst].unlink(missing_ok=True)
                    raise EdgeError(f"the FP16 conversion of {self.paths[src].name} produces non-finite logits")
                result[dst] = {"path": str(self.paths[dst].relative_to(self.out)), "parity": parity, **rep.to_dict()}
            names = ", ".join(self.paths[k].name for k in ("fp16", "int8_fp16"))
            return [self.paths["fp16"], self.paths["int8_fp16"]], result, names

        return self._stage("fp16", {}, {"fp32": self.paths["fp32"], "int8": self.paths["int8"]}, fn)

    def stage_rules(self) -> dict[str, Any]:
        def fn():
            from dataclasses import asdict as dc_asdict

            from edgeconvnext.onnx.trt_rules import check_file

            result: dict[str, Any] = {}
            lines = []
            for k in ("int8", "int8_fp16"):
                self.ev.step(f"checking {self.paths[k].name} against TensorRT's explicit-quantization rules")
                rep = check_file(self.paths[k])
                rep.raise_for_violations()  # RuleViolation, exit 6
                result[k] = {
                    "summary": rep.summary(),
                    "ok": rep.ok,
                    "int8_macs_share": rep.int8_macs_share(),
                    "layers": [dc_asdict(r) for r in rep.layers],
                    "warnings": list(rep.warnings),
                }
                lines.append(f"{self.paths[k].name}: {rep.summary()}")
            return [], result, "; ".join(lines)

        return self._stage("rules", {}, {"int8": self.paths["int8"], "int8_fp16": self.paths["int8_fp16"]}, fn)

    def onnx_artifacts(self) -> list[tuple[str, Path]]:
        return [(k, self.paths[k]) for k in ("fp32", "fp16", "int8", "int8_fp16")]

    def build_request(self, onnx: Path, output: Path):
        from edgeconvnext.engine.config import BuildRequest

        b = self.cfg.build
        return BuildRequest(
            onnx=onnx,
            output=output,
            fp16=False,  # the FP16 conversions are artifacts of their own (stage fp16)
            batch=b.get("batch"),
            workspace_mib=int(b["workspace_mib"]),
            opt_level=int(b["opt_level"]),
            timing_cache=Path(b["timing_cache"]) if b.get("timing_cache") else None,
            trtexec=self.opts.trtexec,
        )

    def stage_engines(self) -> dict[str, Any]:
        from edgeconvnext.engine.build import select_backend

        try:
            backend = select_backend(self.opts.trtexec)
            why = None
            version = backend.version_str
        except EdgeError as e:
            backend, why, version = None, str(e), None
        config = {"build": self.cfg.build, "tensorrt": version, "available": backend is not None}

        def fn():
            if backend is None:
                return (
                    [],
                    {"built": False, "why": why, "engines": []},
                    "TensorRT is not on this machine: the bundle holds the trtexec commands",
                )
            from edgeconvnext.engine.build import build_engine

            outs: list[Path] = []
            engines = []
            for key, onnx in self.onnx_artifacts():
                dest = self.out / "engines" / (onnx.name[: -len(".onnx")] + ".engine")
                r = build_engine(self.build_request(onnx, dest), step=self.ev.step)
                assert not isinstance(r, Skipped)  # reuse=False
                outs += [r.engine, r.sidecar]
                engines.append({"key": key, "path": str(r.engine.relative_to(self.out)), "precision": r.precision})
            return (
                outs,
                {"built": True, "tensorrt": version, "engines": engines},
                f"{len(engines)} engines (TensorRT {version})",
            )

        inputs: dict[str, Path | None] = {k: p for k, p in self.onnx_artifacts()}
        result = self._stage("engines", config, inputs, fn)
        if not result.get("built"):
            self.notes.append(f"no engines built on this machine: {result.get('why')}")
        return result

    # -- validation ------------------------------------------------------------------------------------

    def _accuracy_data(self) -> tuple[Path | None, str | None]:
        """The validation folder when it is labelled; else None and why (latency still runs)."""
        val = self.opts.val_data
        if val is None:
            return None, "no --val-data given"
        from edgeconvnext.data.folders import LabelledImages

        try:
            LabelledImages.discover(val, self.opts.labels, labels_option="--labels")
        except DataError as e:
            if "no class folders and no labels file" in str(e):
                return None, str(e)
            raise
        return Path(val), None

    def rows(self) -> list[Row]:
        dev = self.opts.device
        fp32 = self.paths["fp32"]
        rows = []
        if self.opts.num_classes is None:
            rows.append(Row("checkpoint.torch", Path(self.opts.checkpoint), "torch", dev, "fp32", "checkpoint", fp32))  # type: ignore[arg-type]
            if dev == "cuda":
                rows.append(
                    Row("checkpoint.torch-fp16", Path(self.opts.checkpoint), "torch", dev, "fp16", "checkpoint", fp32)  # type: ignore[arg-type]
                )
        if dev == "cuda" and self.opts.num_classes is None and _has_torch_tensorrt():
            for prec in ("fp32", "fp16"):
                ckpt = Path(self.opts.checkpoint)  # type: ignore[arg-type]
                rows.append(
                    Row(f"checkpoint.torch-tensorrt-{prec}", ckpt, "torch-tensorrt", dev, prec, "checkpoint", fp32)
                )
        for key, path in self.onnx_artifacts():
            prec = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8_fp16": "int8+fp16"}[key]
            rows.append(
                Row(f"{key}.onnxruntime", path, "onnxruntime", dev, prec, "onnx", None if key == "fp32" else fp32)
            )
        eng = self.results.get("engines") or {}
        if eng.get("built"):
            from edgeconvnext.runtime.runners import check_device

            try:
                check_device("cuda")
                for e in eng["engines"]:
                    rows.append(
                        Row(
                            f"{e['key']}.tensorrt",
                            self.out / e["path"],
                            "tensorrt",
                            "cuda",
                            e["precision"],
                            "engine",
                            fp32,
                        )
                    )
            except EdgeError as e:
                self.notes.append(f"engines not validated here: {e}")
        return rows

    def stage_validate(self) -> dict[str, Any]:
        from edgeconvnext.evaluate.validate import LatencyOptions

        data, why = self._accuracy_data()
        if why and self.opts.val_data is not None:
            self.notes.append(f"accuracy not measured: {why}")
        v = self.cfg.validate
        lat = None
        if self.opts.latency:
            lat = LatencyOptions(
                batches=self.cfg.latency_batches,
                warmup=v["warmup"],
                iters=v["iters"],
                # a recipe's cuda_graph is for the GPU; on the CPU there is none to replay
                cuda_graph=v["cuda_graph"] if self.opts.device == "cuda" else None,
            )
        if data is None and lat is None:
            raise DataError(f"nothing to validate: {why}; give a labelled --val-data or keep latency on")
        rows = self.rows()
        results: dict[str, Any] = {}
        for i, row in enumerate(rows):
            self.ev.step(f"validating {row.artifact.name} on {row.backend} ({row.device}) [{i + 1}/{len(rows)}]")
            results[row.name] = self._validate_row(row, data, why, lat)
        return results

    def _validate_row(self, row: Row, data: Path | None, why: str | None, lat: Any) -> dict[str, Any]:
        dest = self.out / "validate" / f"{row.name}.json"
        v = self.cfg.validate
        config = {
            "row": {**asdict(row), "artifact": self._rel(row.artifact), "baseline": self._rel(row.baseline)},
            "data": folder_fingerprint(data),
            "labels": str(self.opts.labels) if self.opts.labels else None,
            "batch": v["batch"],
            "limit": v["limit"],
            "latency": asdict(lat) if lat is not None else None,
            "img_size": self.cfg.img_size,
        }
        # the labels file by its contents (its path alone kept a stale row after the file was edited)
        inputs: dict[str, Path | None] = {
            "artifact": row.artifact,
            "baseline": row.baseline,
            "labels": self.opts.labels,
        }

        def fn():
            from edgeconvnext.evaluate.validate import validate

            rep = validate(
                row.artifact,
                data,
                baseline=row.baseline if data is not None else None,
                batch=int(v["batch"]),
                labels=self.opts.labels if data is not None else None,
                limit=v["limit"] if data is not None else None,
                report=dest,
                backend=row.backend,
                device=row.device,
                precision=row.precision if row.kind == "checkpoint" else None,
                arch=self.opts.model if row.kind == "checkpoint" else None,
                img_size=self.cfg.img_size if row.kind == "checkpoint" else None,
                allow_unsafe=self.opts.allow_unsafe and row.kind == "checkpoint",
                latency=lat,
                progress=self.ev.progress,
            )
            assert not isinstance(rep, Skipped)  # reuse=False
            d = rep.to_dict()
            summary = (f"top-1 {rep.top1:.2f}%" if rep.top1 is not None else "accuracy not measured") + (
                f", p50 {rep.latency[0]['p50_ms']:.2f} ms at batch {rep.latency[0]['batch']}" if rep.latency else ""
            )
            return (
                [dest],
                {"row": asdict(row), "report": str(dest.relative_to(self.out)), "accuracy_why": why, "top1": d["top1"]},
                summary,
            )

        return self._stage(f"validate.{row.name}", config, inputs, fn)

    # -- report and bundle -------------------------------------------------------------------------------

    def stage_report(self) -> dict[str, Any]:
        from edgeconvnext.pipeline import report as report_mod

        vals = {k: v for k, v in self.results.items() if k.startswith("validate.")}
        inputs: dict[str, Path | None] = {k: self.out / v["report"] for k, v in vals.items()}
        config = {
            "rules": self.results.get("rules"),
            "quantize": self.results.get("quantize"),
            "engines": self.results.get("engines"),
            "config": self.cfg.to_dict(),
            "notes": self.notes,
            "version": report_mod.REPORT_VERSION,
        }

        def fn():
            self.ev.step("writing report.json, report.md and report.html (with plots)")
            rep = report_mod.build_report(self)
            paths = report_mod.write_report(rep, self.out)
            return paths, {"rows": len(rep["rows"])}, ", ".join(p.name for p in paths[:3])

        return self._stage("report", config, inputs, fn)

    def stage_bundle(self) -> dict[str, Any]:
        from edgeconvnext.pipeline import bundle as bundle_mod

        inputs: dict[str, Path | None] = {k: p for k, p in self.onnx_artifacts()}
        inputs["report"] = self.out / "report.json"
        config = {
            "images": self.opts.bundle_images,
            "val": folder_fingerprint(self.opts.val_data) if self.opts.bundle_images else None,
            "config": self.cfg.to_dict(),
            "version": bundle_mod.BUNDLE_VERSION,
        }

        def fn():
            self.ev.step("writing the device bundle")
            files = bundle_mod.write_bundle(self)
            return files, {"files": len(files)}, f"{self.out / 'bundle'} ({len(files)} files)"

        return self._stage("bundle", config, inputs, fn)

    # -- all of it -------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.out / "config.json",
            {**self.cfg.to_dict(), "options": _plain(asdict(self.opts)), "environment": environment()},
        )
        steps = [
            ("export", self.stage_export),
            ("quantize", self.stage_quantize),
            ("fp16", self.stage_fp16),
            ("rules", self.stage_rules),
            ("engines", self.stage_engines),
            ("validate", self.stage_validate),
            ("report", self.stage_report),
            ("bundle", self.stage_bundle),
        ]
        for i, (name, fn) in enumerate(steps):
            self.ev.stage(name, i + 1, len(steps))
            fn()
        rep = json.loads((self.out / "report.json").read_text())
        result = RunResult(
            output=self.out,
            report_json=self.out / "report.json",
            report_md=self.out / "report.md",
            report_html=self.out / "report.html",
            bundle=self.out / "bundle",
            skipped=self.skipped,
            ran=self.ran,
            seconds=time.perf_counter() - t0,
            report=rep,
        )
        budget = rep.get("budget") or {}
        if budget.get("passed") is False:
            raise AccuracyError(f"{budget['message']}; report: {self.out / 'report.md'}")
        return result


def _budget_summary(b: dict[str, Any]) -> str:
    what = "top-1 drop" if b["metric"] == "top1_drop" else "disagreement with FP32"
    unit = " pts" if b["metric"] == "top1_drop" else "%"
    kept = f"{len(b['reverted'])} layer(s) kept in higher precision" if b["reverted"] else "nothing reverted"
    return f"; accuracy budget met: {kept}, {what} {b['value']:.2f}{unit} <= {b['limit']:g}"


def _has_torch_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_tensorrt") is not None


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def run_pipeline(opts: RunOptions, events: Events | None = None) -> RunResult:
    """Run every stage of ``opts`` (see the module doc); raises the library's errors (EdgeError subclasses)."""
    return Pipeline(opts, events).run()


def artifact_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


__all__ = ["RunOptions", "RunResult", "Events", "Pipeline", "run_pipeline", "resolve_options", "sha256_file"]
