"""Recipes: every recipe file loads and is consistent with the registry and the builder; precedence
defaults < recipe < CLI; unknown keys name the nearest valid key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeconvnext import recipes
from edgeconvnext.engine import build as engine
from edgeconvnext.errors import UsageError
from edgeconvnext.models import registry as zoo

RECIPE_FILES = recipes.list_recipes()


def test_there_are_recipes():
    assert any(p.name == "convnextv2_nano-orin_nano.yaml" for p in RECIPE_FILES)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A one-op ONNX with a (N, 3, 224, 224) input: enough for planning a build from a recipe."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 224, 224])],
    )
    path = tmp_path_factory.mktemp("recipe") / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_file(path, tiny_onnx):
    rec = recipes.load_recipe(path)
    assert rec.model in zoo.public_names() and rec.target in recipes.TARGETS
    assert path.stem == f"{rec.model}-{rec.target}"  # file name says what it is for
    assert set(rec.sections) == {"quantize", "build", "validate"} and rec.img_size == 224
    build, sources = recipes.resolve("build", rec)
    assert build["dla_core"] is None  # ConvNeXt never runs on DLA
    if recipes.TARGETS[rec.target]["memory_gb"] == 8:
        assert build["workspace_mib"] <= 1024
    plan = engine.plan_build(
        engine.BuildRequest(
            onnx=tiny_onnx,
            fp16=build["fp16"],
            batch=build["batch"],
            workspace_mib=build["workspace_mib"],
            opt_level=build["opt_level"],
        )
    )
    cmd = engine.trtexec_command(plan, (10, 3, 0))
    assert f"--memPoolSize=workspace:{build['workspace_mib']}M" in cmd
    assert f"--maxShapes=input:{plan.profile.max}x3x224x224" in cmd
    # the quantize section is a valid QuantizeConfig of the quantize stage
    from edgeconvnext.quantize.ptq import QuantizeConfig

    q, _ = recipes.resolve("quantize", rec)
    QuantizeConfig(**{**q, "exclude": tuple(q["exclude"])}).validated()
    v, _ = recipes.resolve("validate", rec)
    assert v["iters"] >= 1 and v["max_drop"] is not None


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_precedence_defaults_recipe_cli(tmp_path):
    rec = recipes.load_recipe(
        _write(tmp_path, "model: v2_nano\ntarget: orin_nano\nbuild:\n  batch: '1,4,8'\n  opt_level: 4\n")
    )
    assert rec.model == "convnextv2_nano"  # aliases resolve
    values, sources = recipes.resolve("build", rec, {"opt_level": 2, "batch": None})
    assert values["batch"] == "1,4,8" and sources["batch"] == "recipe"  # None = option not given
    assert values["opt_level"] == 2 and sources["opt_level"] == "cli"
    assert values["workspace_mib"] == 1024 and sources["workspace_mib"] == "default"
    values, _ = recipes.resolve("build", None, {})
    assert values == recipes.defaults("build")


@pytest.mark.parametrize(
    "text,match",
    [
        ("build:\n  workspace: 512\n", "unknown key 'workspace'; did you mean 'workspace_mib'?"),
        ("modle: convnextv2_nano\n", "unknown key 'modle'; did you mean 'model'?"),
        ("biuld:\n  fp16: true\n", "unknown key 'biuld'; did you mean 'build'?"),
        ("quantize:\n  calib_methd: minmax\n", "did you mean 'calib_method'?"),
        ("build:\n  opt_level: 7\n", "'build.opt_level': 7 is above the maximum 5"),
        ("build:\n  fp16: 1\n", "'build.fp16' must be bool"),
        ("quantize:\n  calib_method: entropyy\n", "did you mean 'entropy'?"),
        ("target: orin_nanoo\n", "did you mean 'orin_nano'?"),
        ("model: convnextv2_nan\n", "did you mean"),
        ("- a\n- b\n", "a YAML mapping"),
        ("build: [1, 2]\n", "must be a mapping"),
    ],
)
def test_recipe_errors(tmp_path, text, match):
    with pytest.raises(UsageError, match=match.replace("(", r"\(").replace("?", r"\?").replace(".", r"\.")):
        recipes.load_recipe(_write(tmp_path, text))


def test_cli_value_checks_and_unknown_recipe():
    with pytest.raises(UsageError, match="--workspace: 0 is below the minimum 1"):
        recipes.resolve("build", None, {"workspace_mib": 0}, cli_names={"workspace_mib": "--workspace"})
    with pytest.raises(UsageError, match="did you mean 'convnextv2_nano-orin_nano'"):
        recipes.find_recipe("convnextv2_nano-orin_nan")
    with pytest.raises(UsageError, match="did you mean 'build'"):
        recipes.defaults("buld")


def test_build_engine_cli_with_recipe_and_override(tiny_onnx, capsys):
    from edgeconvnext.cli import main

    assert (
        main(
            [
                "build-engine",
                str(tiny_onnx),
                "--recipe",
                "convnextv2_nano-orin_nano",
                "--batch",
                "2",
                "--dry-run",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["profile"]["batch"] == [2, 2, 2] and data["config_sources"]["batch"] == "cli"
    assert data["settings"]["precision"] == "fp16" and data["config_sources"]["fp16"] == "recipe"
    assert data["recipe"].endswith("convnextv2_nano-orin_nano.yaml")
    assert (
        main(
            [
                "build-engine",
                str(tiny_onnx),
                "--recipe",
                "convnextv2_nano-orin_nano",
                "--no-fp16",
                "--dry-run",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["settings"]["precision"] == "fp32"


def test_a_wheel_install_finds_the_recipes_among_its_data_files(tmp_path, monkeypatch):
    # a wheel has no recipes/ beside the package: pyproject installs them as <prefix>/share/edgeconvnext/recipes
    # (--recipe NAME said "not found" after 'pip install edgeconvnext')
    import importlib.metadata
    from pathlib import PurePosixPath

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((Path(recipes.__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["data-files"]["share/edgeconvnext/recipes"] == ["recipes/*.yaml"]
    site = tmp_path / "lib" / "site-packages"
    share = tmp_path / "share" / "edgeconvnext" / "recipes"
    (site / "edgeconvnext").mkdir(parents=True)
    share.mkdir(parents=True)
    (share / "convnextv2_atto-board.yaml").write_text("model: convnextv2_atto\n")

    class Dist:
        files = [
            PurePosixPath("edgeconvnext/recipes.py"),
            PurePosixPath("../../share/edgeconvnext/recipes/convnextv2_atto-board.yaml"),
        ]

        def locate_file(self, f):
            return site / f

    monkeypatch.setattr(recipes, "__file__", str(site / "edgeconvnext" / "recipes.py"))
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    assert recipes._recipes_dir() == share.resolve()


def test_a_key_given_twice_is_refused(tmp_path):
    from edgeconvnext.errors import UsageError

    r = tmp_path / "dup.yaml"
    r.write_text("model: convnextv2_atto\nquantize:\n  calib_size: 32\n  calib_size: 64\n")
    with pytest.raises(UsageError, match=r"'calib_size' is given twice \(lines 3 and 4; .*\): keep one"):
        recipes.load_recipe(r)
    r.write_text("model: convnextv2_atto\nquantize:\n  calib_size: 32\nvalidate:\n  batch: 8\n")
    assert recipes.load_recipe(r).sections["quantize"]["calib_size"] == 32  # the same key in two sections is fine


def test_anchors_and_merge_keys_still_load(tmp_path):
    r = tmp_path / "merge.yaml"
    r.write_text("finetune: &t {epochs: 3, lr: 1.0e-4, seed: 0}\nqat: {<<: *t, epochs: 1}\n")
    rec = recipes.load_recipe(r)
    assert rec.sections["qat"] == {"lr": 1.0e-4, "seed": 0, "epochs": 1}  # the explicit key wins over the merge
    r.write_text("a: &a {lr: 1.0e-4}\nb: &b {seed: 1}\nqat: {<<: [*a, *b], epochs: 2}\n")
    with pytest.raises(UsageError, match="unknown"):  # 'a:' and 'b:' are not recipe keys: the schema says so
        recipes.load_recipe(r)
