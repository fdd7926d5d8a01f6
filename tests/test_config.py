"""The configuration layer through the library API: defaults < recipe < override for every stage, one
source of defaults, unknown keys named with the nearest valid key, values type-checked and coerced to the
stage's Enums; ``validate --recipe`` reads the recipe's validate section."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from edgeconvnext import recipes
from edgeconvnext.config import specs
from edgeconvnext.engine import config as build_config
from edgeconvnext.errors import UsageError
from edgeconvnext.evaluate import config as validate_config
from edgeconvnext.export import config as export_config
from edgeconvnext.quantize import config as quantize_config
from edgeconvnext.quantize.config import Backend, CalibMethod, Method, Policy, QuantizeConfig
from edgeconvnext.train import config as finetune_config


def _recipe(tmp_path: Path, text: str) -> recipes.Recipe:
    p = tmp_path / "r.yaml"
    p.write_text("model: convnextv2_test\n" + text)
    return recipes.load_recipe(p)


def test_quantize_precedence_defaults_recipe_override(tmp_path):
    rec = _recipe(tmp_path, "quantize: {policy: all, calib_size: 256, seed: 3, exclude: ['stem.*']}\n")
    cfg, sources = quantize_config.resolve_sources(rec, {"calib_size": 64, "seed": None, "backend": "NNCF"})
    assert cfg.calib_size == 64 and sources["calib_size"] == "cli"  # override beats recipe
    assert cfg.seed == 3 and sources["seed"] == "recipe"  # None = not given: the recipe's value stays
    assert cfg.policy is Policy.ALL and sources["policy"] == "recipe"
    assert cfg.exclude == ("stem.*",)  # a YAML list becomes the config's tuple
    assert cfg.backend is Backend.NNCF and cfg.backend == "nncf"  # normalised to the Enum, equal to its value
    assert cfg.calib_method is CalibMethod.MINMAX and sources["calib_method"] == "default"
    assert cfg.method is Method.PTQ and cfg.keep_fp32 is True and cfg.min_calib_size == 32
    # no recipe, no overrides: the dataclass defaults, which are also the recipe's defaults
    assert quantize_config.resolve(None) == QuantizeConfig().validated()
    assert recipes.defaults("quantize") == QuantizeConfig().to_dict()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"calib_sise": 8}, "unknown key 'calib_sise'; did you mean 'calib_size'?"),
        ({"backend": "nccf"}, "unknown --backend 'nccf'; did you mean 'nncf'? (choose from ort, nncf)"),
        ({"calib_size": True}, "--calib-size must be int, got True"),
        ({"calib_size": "64"}, "--calib-size must be int, got '64'"),
        ({"calib_size": 0}, "--calib-size: 0 is below the minimum 1"),
        ({"keep_fp32": 1}, "--fp32-baseline must be bool, got 1"),
        ({"backend": "ort", "calib_method": "mse"}, "--calib-method mse is not available with --backend ort"),
        ({"method": "pqt"}, "unknown --method 'pqt'"),
    ],
)
def test_quantize_refusals_name_the_option(overrides, message):
    with pytest.raises(UsageError) as e:
        quantize_config.resolve(None, overrides)
    assert message in str(e.value)


def test_recipe_section_keys_are_the_config_fields():
    # one list of keys: every recipe-settable field of each stage config is a recipe key, nothing else
    for section, cls in recipes.SECTIONS.items():
        settable = [f.name for f in fields(cls) if f.metadata.get("recipe", True)]
        assert list(recipes.SCHEMA[section]) == settable, section
    assert "onnx" not in recipes.SCHEMA["build"] and "train_data" not in recipes.SCHEMA["finetune"]
    assert specs(QuantizeConfig)["policy"].choices == ("convnext", "all")


def test_build_precedence_and_required_onnx(tmp_path):
    rec = _recipe(tmp_path, "build: {fp16: true, batch: '1,4,8', opt_level: 4, timing_cache: cache.bin}\n")
    req, sources = build_config.resolve_sources(rec, {"onnx": tmp_path / "m.onnx", "opt_level": 2, "batch": None})
    assert req.onnx == tmp_path / "m.onnx" and req.output is None
    assert req.fp16 is True and sources["fp16"] == "recipe"
    assert req.batch == "1,4,8" and sources["batch"] == "recipe"
    assert req.opt_level == 2 and sources["opt_level"] == "cli"
    assert req.workspace_mib == 1024 and sources["workspace_mib"] == "default"
    assert req.timing_cache == Path("cache.bin")  # a YAML string becomes the field's Path
    with pytest.raises(UsageError, match="--workspace: 0 is below the minimum 1"):
        build_config.resolve(None, {"onnx": tmp_path / "m.onnx", "workspace_mib": 0})
    with pytest.raises(UsageError, match="did you mean 'workspace_mib'"):
        build_config.resolve(None, {"onnx": tmp_path / "m.onnx", "workspace": 512})
    # the recipe may not set the paths of a run
    with pytest.raises(UsageError, match="unknown key 'onnx'"):
        _recipe(tmp_path, "build: {onnx: x.onnx}\n")


def test_validate_precedence_and_latency_options(tmp_path):
    rec = _recipe(tmp_path, "validate: {batch: 8, max_drop: 1, latency_batch: 4, warmup: 2, iters: 5}\n")
    cfg, sources = validate_config.resolve_sources(rec, {"batch": 16, "iters": None, "limit": 10})
    assert (cfg.batch, sources["batch"]) == (16, "cli")
    assert cfg.max_drop == 1.0 and isinstance(cfg.max_drop, float)  # an int is a valid float setting
    assert (cfg.limit, sources["limit"]) == (10, "cli") and (cfg.iters, sources["iters"]) == (5, "recipe")
    opts = cfg.latency_options()
    assert (opts.batches, opts.warmup, opts.iters, opts.cuda_graph) == ([4], 2, 5, None)
    assert validate_config.resolve(None) == validate_config.ValidateConfig()  # batch 32, timing by device
    with pytest.raises(UsageError, match="--latency-batch '1,x'"):
        validate_config.resolve(None, {"latency_batch": "1,x"})


def test_export_resolve(tmp_path):
    cfg = export_config.resolve(None, {"precision": "FP16", "batch": "8"})
    assert cfg.precision is export_config.Precision.FP16 and cfg.batch == 8 and cfg.batch_size == 8
    assert export_config.resolve(None).batch_size is None and export_config.resolve(None).opset == 17
    rec = _recipe(tmp_path, "export: {precision: fp16, opset: 18}\n")
    assert export_config.resolve(rec, {"opset": 17}) == export_config.ExportConfig("fp16", 17, "dynamic")
    with pytest.raises(UsageError, match="--precision int8 is not an export"):
        export_config.resolve(None, {"precision": "int8"})
    with pytest.raises(UsageError, match="did you mean 'fp16'"):
        export_config.resolve(None, {"precision": "fp61"})
    with pytest.raises(UsageError, match="--opset 16 is too old"):
        export_config.resolve(None, {"opset": 16})


def test_finetune_resolve(tmp_path):
    paths = {"train_data": tmp_path / "t", "val_data": tmp_path / "v", "output": tmp_path / "m.pt"}
    rec = _recipe(tmp_path, "finetune: {epochs: 3, lr: 0.002, hflip: 0}\n")
    cfg = finetune_config.resolve(rec, {**paths, "model": "convnextv2_test", "epochs": 5, "hflip": None})
    assert (cfg.epochs, cfg.lr, cfg.hflip, cfg.batch) == (5, 0.002, 0.0, 64)
    with pytest.raises(UsageError, match="--min-lr must be in"):
        finetune_config.resolve(None, {**paths, "model": "convnextv2_test", "lr": 1e-4, "min_lr": 1e-3})
    with pytest.raises(UsageError, match="did you mean 'epochs'"):
        _recipe(tmp_path, "finetune: {epoch: 3}\n")


def test_validate_cli_reads_the_recipe_validate_section(tmp_path, capsys):
    """``validate --recipe``: the recipe's limit/batch/max_drop apply, an option overrides them."""
    import numpy as np
    from PIL import Image

    from edgeconvnext.cli import main
    from edgeconvnext.export.onnx_export import export_onnx
    from edgeconvnext.models.checkpoint import load_model

    loaded = load_model("convnextv2_test", num_classes=2, img_size=32)
    loaded.class_names = ["a", "b"]
    onnx_path = export_onnx(loaded, tmp_path / "m.onnx").path
    twin = export_onnx(loaded, tmp_path / "twin.onnx", opset=18).path  # the model itself is refused as baseline
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "val" / c / f"{i}.png")
    recipe = tmp_path / "v.yaml"
    recipe.write_text("validate: {limit: 5, batch: 2, max_drop: 0.25}\n")
    base = ["validate", str(onnx_path), "--data", str(tmp_path / "val"), "--baseline", str(twin)]
    assert main([*base, "--recipe", str(recipe), "--report", str(tmp_path / "r1.json")]) == 0
    rep = json.loads((tmp_path / "r1.json").read_text())
    assert rep["images"] == 5 and rep["limit"] == 5 and rep["max_drop"] == 0.25
    assert main([*base, "--recipe", str(recipe), "--limit", "7", "--report", str(tmp_path / "r2.json")]) == 0
    assert json.loads((tmp_path / "r2.json").read_text())["images"] == 7
    capsys.readouterr()
    recipe.write_text("validate: {limt: 5}\n")
    assert main([*base, "--recipe", str(recipe)]) == 2
    assert "did you mean 'limit'" in capsys.readouterr().err
