"""Fine-tuning: schedule, augmentation, a real training run on colour-coded images, resume, CLI errors."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeconvnext.cli import main
from edgeconvnext.data.augment import TrainTransform, default_scale
from edgeconvnext.data.preprocess import eval_transform
from edgeconvnext.errors import DataError, UsageError
from edgeconvnext.models.checkpoint import load_model
from edgeconvnext.models.registry import Preprocess
from edgeconvnext.train.finetune import FinetuneConfig, LogProgress, finetune, last_state_path, lr_at

COLOURS = {"blue": (30, 30, 200), "green": (30, 200, 30), "red": (200, 30, 30)}


def make_split(root: Path, per_class: int, seed: int, size: int = 28) -> Path:
    """Noisy colour-coded images: the class is the dominant colour (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            a = np.clip(np.asarray(rgb)[None, None, :] + rng.normal(0, 40, (size, size, 3)), 0, 255)
            Image.fromarray(a.astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("colours")
    return make_split(base / "train", 32, 0), make_split(base / "val", 8, 1)


def cfg(data: tuple[Path, Path], out: Path, **kw) -> FinetuneConfig:
    base = dict(
        train_data=data[0],
        val_data=data[1],
        output=out,
        model="convnextv2_test",
        img_size=32,
        epochs=1,
        batch=16,
        lr=2e-3,
        workers=0,
    )
    return FinetuneConfig(**{**base, **kw})


# ---- schedule and augmentation --------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine():
    total, warm, base, lo = 100, 10, 1e-3, 1e-6
    lrs = [lr_at(s, total, warm, base, lo) for s in range(total)]
    assert lrs[0] == pytest.approx(base / 10) and lrs[9] == pytest.approx(base)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # linear warm-up rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # cosine falls
    assert lrs[55] == pytest.approx(lo + (base - lo) * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_at(total, total, warm, base, lo) == pytest.approx(lo)
    assert lr_at(0, 10, 0, base, lo) == pytest.approx(base)  # no warm-up: starts at the peak


def test_train_transform_crop_stays_inside_and_in_scale():
    tf = TrainTransform(Preprocess(img_size=32, crop_pct=1.0))
    assert tf.area_range == default_scale(32) == (0.6, 1.0)
    rng = random.Random(0)
    for _ in range(200):
        left, top, right, bottom = tf.crop_box(28, 40, rng)
        assert 0 <= left < right <= 28 and 0 <= top < bottom <= 40
        area = (right - left) * (bottom - top) / (28 * 40)
        assert 0.55 <= area <= 1.0  # rounding of w and h moves the area a little
    assert TrainTransform(Preprocess(img_size=224)).area_range == (0.25, 1.0)


def test_train_transform_without_jitter_is_eval_transform_flipped():
    pp = Preprocess(img_size=32, crop_pct=1.0, interpolation="bilinear")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    plain = TrainTransform(pp, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)(img, random.Random(0))
    flipped = TrainTransform(pp, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)(img, random.Random(0))
    ref = eval_transform(img, pp)
    np.testing.assert_allclose(plain, ref, atol=1e-6)
    np.testing.assert_allclose(flipped, ref[:, :, ::-1], atol=1e-6)


def test_train_transform_refuses_bad_values():
    with pytest.raises(UsageError, match="scale"):
        TrainTransform(Preprocess(img_size=32), scale=(0.0, 1.0))
    with pytest.raises(UsageError, match="interpolation"):
        TrainTransform(Preprocess(img_size=32, interpolation="cubic"))


# ---- training ---------------------------------------------------------------------------------------


def test_finetune_learns_and_saves_everything(data, tmp_path):
    out = tmp_path / "m.pt"
    res = finetune(cfg(data, out, epochs=2))
    assert out.is_file() and not last_state_path(out).exists()
    assert res.class_names == ["blue", "green", "red"]
    assert res.preprocess.crop_pct == 1.0 and res.preprocess.img_size == 32  # 28 px images: no crop
    assert any("crop_pct 1.0" in n for n in res.notes)
    # from scratch: a trained model, not the loader's "random weights ... not for accuracy" timing note
    assert "trained from random weights (convnextv2_test, no --checkpoint)" in res.notes
    assert not any("not for accuracy" in n for n in res.notes)
    h = res.history
    assert [e.epoch for e in h] == [1, 2]
    assert h[-1].val_loss < math.log(3)  # better than the uniform guess
    assert res.final_top1 > 80.0  # chance is 33.3%
    assert res.best_top1 == max(e.val_top1 for e in h)

    loaded = load_model(None, out)
    assert loaded.class_names == ["blue", "green", "red"] and loaded.model.num_classes == 3
    assert loaded.preprocess == res.preprocess
    extra = loaded.extra
    assert extra["epoch"] == 2 and extra["step"] == 2 * 6  # 96 images / batch 16
    assert extra["best_top1"] == res.best_top1 and len(extra["history"]) == 2
    assert extra["args"]["lr"] == 2e-3 and extra["args"]["model"] == "convnextv2_test"
    assert {s["step"].item() for s in extra["optimizer"]["state"].values()} == {12.0}
    assert (out.parent / "m.pt.json").is_file()


class _StopAfter(LogProgress):
    """Interrupt the run at the start of epoch ``n`` (what Ctrl-C does)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        super().start_epoch(epoch, epochs, steps)
        if epoch == self.n:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_weights(data, tmp_path):
    straight = finetune(cfg(data, tmp_path / "a.pt", epochs=2))
    out = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg(data, out, epochs=2), progress=_StopAfter(2))
    last = last_state_path(out)
    assert last.is_file() and not out.exists()
    assert load_model(None, last).extra["epoch"] == 1
    with pytest.raises(UsageError, match="--resume"):
        finetune(cfg(data, out, epochs=2))
    resumed = finetune(cfg(data, out, epochs=2, resume=True))
    assert resumed.start_epoch == 1 and [e.epoch for e in resumed.history] == [1, 2]
    a, b = load_model(None, tmp_path / "a.pt"), load_model(None, out)
    assert b.extra["epoch"] == 2 and b.extra["step"] == a.extra["step"] == 12
    # Same data order, augmentation and optimizer moments: the same weights as the uninterrupted run.
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed.history[1].val_top1 == pytest.approx(straight.history[1].val_top1)


def test_resume_adds_epochs_to_a_finished_run(data, tmp_path):
    out = tmp_path / "c.pt"
    finetune(cfg(data, out, epochs=1))
    res = finetune(cfg(data, out, epochs=2, resume=True))
    assert res.start_epoch == 1 and len(res.history) == 2
    assert load_model(None, out).extra["epoch"] == 2


def test_resumed_run_keeps_the_init_checkpoint_in_its_sidecar(data, tmp_path):
    # the sidecar of a resumed run said init_checkpoint/init_sha256 null: the provenance was lost
    import json

    from edgeconvnext.artifacts import sha256_file
    from edgeconvnext.models.checkpoint import save_checkpoint
    from edgeconvnext.models.registry import create_model

    init = save_checkpoint(tmp_path / "init.pt", create_model("convnextv2_test", num_classes=5), "convnextv2_test")
    out = tmp_path / "p.pt"
    finetune(cfg(data, out, model=None, checkpoint=init, epochs=1))
    finetune(cfg(data, out, model=None, epochs=2, resume=True))
    side = json.loads((tmp_path / "p.pt.json").read_text())
    assert side["details"]["init_checkpoint"] == str(init) and side["details"]["init_sha256"] == sha256_file(init)


def test_workers_load_data_in_subprocesses(data, tmp_path):
    res = finetune(cfg(data, tmp_path / "w.pt", workers=2))
    assert res.history[0].train_top1 > 0 and res.history[0].skipped == 0


def test_corrupt_train_image_is_skipped_and_counted(data, tmp_path):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(data[0], train)
    (train / "red" / "broken.png").write_bytes(b"not a png")
    res = finetune(cfg((train, data[1]), tmp_path / "s.pt"))
    assert res.history[0].skipped == 1


def test_val_classes_must_match_train(data, tmp_path):
    val = tmp_path / "val"
    make_split(val, 2, 3)
    (val / "red").rename(val / "yellow")
    with pytest.raises(DataError, match=r"lacks \['red'\].*adds \['yellow'\]"):
        finetune(cfg((data[0], val), tmp_path / "x.pt"))


def test_empty_train_class_folder_is_refused(data, tmp_path):
    # it became a class the classifier never sees (a silent, never-trained output in the checkpoint)
    import shutil

    train = tmp_path / "train"
    shutil.copytree(data[0], train)
    (train / "yellow").mkdir()
    (train / "yellow" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(DataError, match=r"classes \['yellow'\] have no images"):
        finetune(cfg((train, data[1]), tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_trains_one_epoch(data, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    code = main(
        [
            "-q",
            "finetune",
            "--model",
            "convnextv2_test",
            "--train-data",
            str(data[0]),
            "--val-data",
            str(data[1]),
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--workers",
            "0",
            "--crop-pct",
            "0.875",
            "--interpolation",
            "bilinear",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    line = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert str(out) in line and "3 classes" in line and "input 32/0.875 bilinear" in line
    assert load_model(None, out).preprocess.interpolation == "bilinear"


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--device", "cuda"], 8, "--device cuda"),
        (["--resume"], 3, "nothing to resume"),
        (["--epochs", "0"], 2, "--epochs must be >= 1"),
        (["--crop-pct", "1.5"], 2, "--crop-pct"),
        (["--interpolation", "cubic"], 2, "--interpolation: unknown interpolation 'cubic'"),
        (["--img-size", "40"], 2, "multiple of 32"),
        (["--output-as-safetensors"], 2, "use a .pt file"),
    ],
)
def test_cli_refuses_with_one_line(data, tmp_path, capsys, args, code, message):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "e.pt"
    if args == ["--output-as-safetensors"]:
        out, args = tmp_path / "e.safetensors", []
    rc = main(
        [
            "finetune",
            "--model",
            "convnextv2_test",
            "--train-data",
            str(data[0]),
            "--val-data",
            str(data[1]),
            "--workers",
            "0",
            "--output",
            str(out),
            *args,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not out.exists()


def test_cli_empty_train_folder(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    rc = main(
        [
            "finetune",
            "--model",
            "convnextv2_test",
            "--train-data",
            str(tmp_path / "train"),
            "--val-data",
            str(tmp_path / "train"),
            "--output",
            str(tmp_path / "o.pt"),
        ]
    )
    assert rc == 4 and "no images" in capsys.readouterr().err


def test_validation_images_that_are_training_images_are_said(data, caplog):
    import logging

    from edgeconvnext.train.finetune import load_datasets

    with caplog.at_level(logging.WARNING):
        load_datasets(data[0], data[1])
    assert not [r for r in caplog.records if "are --train-data images" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        train_ds, val_ds = load_datasets(data[0], data[0])  # the same folder twice
    (rec,) = [r for r in caplog.records if "are --train-data images" in r.getMessage()]
    assert rec.getMessage().startswith(f"{len(val_ds.paths)} of the {len(val_ds.paths)} --val-data images")


def test_one_class_is_refused_naming_the_option(tmp_path, capsys):
    one = tmp_path / "one" / "bag"
    one.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(one / f"{i}.png")
    rc = main(["finetune", "-m", "convnextv2_test", "--train-data", str(tmp_path / "one"), "--val-data",
               str(tmp_path / "one"), "-o", str(tmp_path / "m.pt")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 4 and "--train-data" in err and "holds 1 class; a classifier needs at least 2" in err
    assert not (tmp_path / "m.pt").exists()
