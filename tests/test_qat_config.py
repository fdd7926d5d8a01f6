"""QAT's settings in the typed config layer: the recipe's ``qat:`` section, defaults < recipe < command line,
unknown keys named with the nearest valid one, values checked with the option (or recipe key) they came from.
No model is built here: every refusal happens before the checkpoint load."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeconvnext import recipes
from edgeconvnext.cli import main
from edgeconvnext.config import recipe_keys
from edgeconvnext.errors import UsageError
from edgeconvnext.quantize import qat_config
from edgeconvnext.quantize.qat_config import Optimizer, QatConfig, Scales


def _recipe(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text("model: convnextv2_test\n" + text)
    return p


def test_recipe_qat_section_precedence(tmp_path):
    rec = recipes.load_recipe(
        _recipe(tmp_path, "qat: {epochs: 3, lr: 2.0e-5, steps: 7, optimizer: SGD, ema_decay: 0.99, augment: false}\n")
    )
    cfg, sources = qat_config.resolve_sources(rec, {"train_data": tmp_path, "epochs": 5, "lr": None, "scales": None})
    assert (cfg.epochs, cfg.lr, cfg.steps, cfg.batch_size, cfg.ema_decay, cfg.augment) == (5, 2e-5, 7, 32, 0.99, False)
    assert cfg.optimizer is Optimizer.SGD and cfg.scales is Scales.FROZEN
    assert (sources["epochs"], sources["lr"], sources["batch_size"]) == ("cli", "recipe", "default")
    # the sidecar / resume-state form is plain strings (loadable with torch.load(weights_only=True))
    d = cfg.to_dict()
    assert type(d["optimizer"]) is str and d["optimizer"] == "sgd" and d["train_data"] == str(tmp_path)
    # the schema is the dataclass: paths and the machine are not recipe keys
    keys = recipe_keys(QatConfig)
    assert {"epochs", "lr", "batch_size", "steps", "distill_weight", "temperature", "optimizer"} <= set(keys)
    assert {"warmup_steps", "clip_grad", "ema_decay", "scales", "augment"} <= set(keys)
    assert not {"train_data", "val_data", "device", "resume", "workers", "threads"} & set(keys)
    assert recipes.defaults("qat")["lr"] == QatConfig.lr == 1e-5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qat: {epoch: 3}\n", "unknown key 'epoch'; did you mean 'epochs'?"),
        ("qat: {distill_wieght: 0.5}\n", "did you mean 'distill_weight'?"),
        ("qat: {train_data: x}\n", "unknown key 'train_data'"),  # a path of the run, not a recipe setting
        ("qat: {lr: fast}\n", "'qat.lr' must be float"),
        ("qat: {epochs: true}\n", "'qat.epochs' must be int"),
        ("qat: {optimizer: adam}\n", "did you mean 'adamw'"),
        ("qa: {epochs: 3}\n", "did you mean 'qat'"),
    ],
)
def test_recipe_qat_section_refusals(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("?", r"\?").replace("(", r"\(")):
        recipes.load_recipe(_recipe(tmp_path, text))


def test_out_of_range_recipe_value_names_the_recipe_key(tmp_path):
    rec = recipes.load_recipe(_recipe(tmp_path, "qat: {epochs: 0}\n"))
    with pytest.raises(UsageError, match=r"--epochs must be >= 1, got 0 \(set by the recipe's 'qat.epochs'\)"):
        qat_config.resolve(rec, {"train_data": tmp_path})
    with pytest.raises(UsageError, match="unknown --optimizer 'adam'; did you mean 'adamw'"):
        qat_config.resolve(None, {"train_data": tmp_path, "optimizer": "adam"})
    with pytest.raises(UsageError, match="unknown key 'epoch'; did you mean 'epochs'"):
        qat_config.resolve(None, {"train_data": tmp_path, "epoch": 2})


def test_cli_recipe_qat_section_is_used_and_refused_before_loading(tmp_path, capsys):
    """``quantize --method qat --recipe``: a bad qat: value is exit 2 with the recipe key named, before the
    checkpoint (which does not exist here) is read; a command-line option overrides the recipe's value."""
    (tmp_path / "imgs").mkdir()
    rec = _recipe(tmp_path, "qat: {epochs: 0}\n")
    args = ["quantize", "--method", "qat", "--recipe", str(rec), "-c", str(tmp_path / "missing.pt")]
    imgs = str(tmp_path / "imgs")
    args += ["--calib-data", imgs, "--train-data", imgs, "-o", str(tmp_path / "q.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--epochs must be >= 1, got 0 (set by the recipe's 'qat.epochs')" in err and "Traceback" not in err
    # --epochs on the command line wins over the recipe: the run now gets as far as the missing checkpoint
    assert main([*args, "--epochs", "1"]) == 3
    assert "missing.pt" in capsys.readouterr().err
    assert not list(tmp_path.glob("q*"))
