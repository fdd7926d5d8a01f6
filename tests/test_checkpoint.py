"""Checkpoint loading: every format round-trips to the same outputs; every bad input is one clear error.

The foreign files are made from our own model by inverse converters (ours -> official / timm conv_mlp /
HuggingFace) written here independently of the library's remaps, so a wrong key or shape on either side
shows up as a load error or different logits.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

import pytest
import torch
from safetensors.torch import save_file

from edgeconvnext.artifacts import sha256_file
from edgeconvnext.errors import CheckpointError, UsageError
from edgeconvnext.models import registry as zoo
from edgeconvnext.models.checkpoint import (
    LoadedModel,
    detect_layout,
    infer_arch,
    load_model,
    remap_huggingface,
    remap_official,
    remap_timm,
    save_checkpoint,
)

# ------------------------------------------------------------------------------------------------
# Inverse converters: our (timm) keys -> the foreign layouts
# ------------------------------------------------------------------------------------------------


def to_official(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "downsample_layers.0." + k[len("stem.") :]
        elif m := re.match(r"stages\.(\d+)\.downsample\.(.*)", k):
            k = f"downsample_layers.{m[1]}.{m[2]}"
        elif m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", k):
            rest = m[3]
            rest = {
                "conv_dw.weight": "dwconv.weight",
                "conv_dw.bias": "dwconv.bias",
                "mlp.fc1.weight": "pwconv1.weight",
                "mlp.fc1.bias": "pwconv1.bias",
                "mlp.fc2.weight": "pwconv2.weight",
                "mlp.fc2.bias": "pwconv2.bias",
                "mlp.grn.weight": "grn.gamma",
                "mlp.grn.bias": "grn.beta",
            }.get(rest, rest)
            if rest.startswith("grn."):
                v = v.reshape(1, 1, 1, -1)
            k = f"stages.{m[1]}.{m[2]}.{rest}"
        elif k.startswith("head.norm."):
            k = "norm." + k[len("head.norm.") :]
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc.") :]
        out[k] = v
    return out


def to_timm_conv_mlp(sd: dict) -> dict:
    return {k: (v[:, :, None, None] if re.search(r"mlp\.fc[12]\.weight$", k) else v) for k, v in sd.items()}


def to_hf(sd: dict, v2: bool) -> dict:
    p = "convnextv2." if v2 else "convnext."
    out = {}
    for k, v in sd.items():
        if k.startswith("stem.0."):
            k = p + "embeddings.patch_embeddings." + k[len("stem.0.") :]
        elif k.startswith("stem.1."):
            k = p + "embeddings.layernorm." + k[len("stem.1.") :]
        elif m := re.match(r"stages\.(\d+)\.downsample\.(.*)", k):
            k = f"{p}encoder.stages.{m[1]}.downsampling_layer.{m[2]}"
        elif m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", k):
            rest = m[3]
            for a, b in (
                ("conv_dw", "dwconv"),
                ("norm", "layernorm"),
                ("mlp.fc1", "pwconv1"),
                ("mlp.fc2", "pwconv2"),
                ("mlp.grn", "grn"),
                ("gamma", "layer_scale_parameter"),
            ):
                if rest == a or rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            if rest.startswith("grn."):
                v = v.reshape(1, 1, 1, -1)  # transformers' ConvNextV2GRN stores (1, 1, 1, C)
            k = f"{p}encoder.stages.{m[1]}.layers.{m[2]}.{rest}"
        elif k.startswith("head.norm."):
            k = p + "layernorm." + k[len("head.norm.") :]
        elif k.startswith("head.fc."):
            k = "classifier." + k[len("head.fc.") :]
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def make_model(name: str, num_classes: int = 7, seed: int = 0):
    """A model whose every parameter is random (GRN and LayerScale too), so a dropped remap shows."""
    torch.manual_seed(seed)
    m = zoo.create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(0, 0.05)
            if re.search(r"norm.*\.weight$|downsample\.0\.weight$|stem\.1\.weight$", n):
                p.add_(1.0)
    return m


def logits(model, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        return model(x)


def plain_sd(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(loaded: LoadedModel, model, size: int = 32) -> None:
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert torch.equal(logits(loaded.model, size), logits(model, size))


# ------------------------------------------------------------------------------------------------
# Round trips: one per format and file type, architecture inferred from the shapes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["convnextv2_test", "convnext_test"])
def test_official_pth_round_trip(tmp_path, name):
    src = make_model(name)
    f = tmp_path / "official.pth"
    torch.save({"model": to_official(plain_sd(src)), "epoch": 299, "optimizer": {"state": {}, "param_groups": []}}, f)
    loaded = load_model(None, f)
    assert loaded.source_format == "official"
    assert loaded.arch.name == name
    assert loaded.source == f and loaded.source_sha256 == sha256_file(f)
    assert loaded.class_names is None and loaded.preprocess == loaded.arch.preprocess
    assert_same(loaded, src)


@pytest.mark.parametrize(
    "name,conv_mlp", [("convnextv2_atto", True), ("convnext_atto", True), ("convnext_test", False)]
)
@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_timm_round_trip(tmp_path, name, conv_mlp, suffix):
    src = make_model(name)
    sd = to_timm_conv_mlp(plain_sd(src)) if conv_mlp else plain_sd(src)
    f = tmp_path / f"timm{suffix}"
    save_file(sd, f) if suffix == ".safetensors" else torch.save(sd, f)
    loaded = load_model(name if suffix == ".bin" else None, f)  # with and without the name
    assert loaded.source_format == "timm"
    assert loaded.arch.name == name
    assert_same(loaded, src)


def test_timm_training_checkpoint_state_dict_and_ema(tmp_path):
    src, ema = make_model("convnextv2_test", seed=0), make_model("convnextv2_test", seed=5)
    f = tmp_path / "last.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "arch": "convnextv2_test",
            "state_dict": {"module." + k: v for k, v in plain_sd(src).items()},
            "state_dict_ema": plain_sd(ema),
        },
        f,
    )
    assert_same(load_model(None, f), src)  # DistributedDataParallel's module. prefix is dropped
    assert_same(load_model(None, f, ema=True), ema)


@pytest.mark.parametrize(
    "prefix,layout", [("model.", "timm"), ("net.backbone.", "official"), ("model.", "huggingface")]
)
def test_lightning_checkpoint_with_prefixed_keys(tmp_path, prefix, layout):
    # PyTorch Lightning keeps the weights under the LightningModule's attribute (model.stem.0.weight ...),
    # beside metric/loss buffers: this was "not a ConvNeXt checkpoint"
    src = make_model("convnextv2_test")
    sd = {
        "timm": plain_sd,
        "official": lambda m: to_official(plain_sd(m)),
        "huggingface": lambda m: to_hf(plain_sd(m), v2=True),
    }[layout](src)
    weights = {prefix + k: v for k, v in sd.items()}
    weights["train_acc.tp"] = torch.zeros(7)
    f = tmp_path / "epoch=3-step=100.ckpt"
    torch.save(
        {
            "state_dict": weights,
            "epoch": 3,
            "global_step": 100,
            "optimizer_states": [],
            "hyper_parameters": {"lr": 0.1},
        },
        f,
    )
    loaded = load_model(None, f)
    assert loaded.source_format == layout
    assert any(f"'{prefix}' keys" in n and "train_acc.tp" in n for n in loaded.notes)
    assert_same(loaded, src)


@pytest.mark.parametrize("name", ["convnextv2_test", "convnext_test"])
@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.safetensors"])
def test_huggingface_file_round_trip(tmp_path, name, filename):
    src = make_model(name)
    sd = to_hf(plain_sd(src), v2=name.startswith("convnextv2"))
    f = tmp_path / filename
    save_file(sd, f) if filename.endswith(".safetensors") else torch.save(sd, f)
    loaded = load_model(None, f)
    assert loaded.source_format == "huggingface" and loaded.arch.name == name
    assert loaded.class_names is None
    assert_same(loaded, src)


def test_huggingface_folder_reads_labels_and_preprocessing(tmp_path):
    src = make_model("convnextv2_test", num_classes=3)
    d = tmp_path / "hf"
    d.mkdir()
    save_file(to_hf(plain_sd(src), v2=True), d / "model.safetensors")
    (d / "config.json").write_text(
        json.dumps({"model_type": "convnextv2", "id2label": {"1": "dog", "0": "cat", "2": "bird"}})
    )
    (d / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_pct": 0.9,
                "size": {"shortest_edge": 64},
                "resample": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    loaded = load_model("v2_test", d)
    assert loaded.source_format == "huggingface"
    assert loaded.class_names == ["cat", "dog", "bird"]
    assert loaded.preprocess == zoo.Preprocess(64, 0.9, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert loaded.source == d / "model.safetensors"
    assert_same(loaded, src)
    # transformers' default LABEL_i names are placeholders, not class names
    (d / "config.json").write_text(json.dumps({"id2label": {str(i): f"LABEL_{i}" for i in range(3)}}))
    assert load_model(None, d).class_names is None


def test_huggingface_preprocessor_config_with_nulls_and_bad_values(tmp_path):
    # a key set to null (the processor's default) was an internal TypeError
    src = make_model("convnextv2_test", num_classes=3)
    d = tmp_path / "hf"
    d.mkdir()
    save_file(to_hf(plain_sd(src), v2=True), d / "model.safetensors")
    cfg = {"crop_pct": None, "size": {"shortest_edge": 64}, "resample": None, "image_mean": None, "image_std": None}
    (d / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert load_model(None, d).preprocess == zoo.Preprocess(64, 0.875, "bicubic")
    (d / "preprocessor_config.json").write_text(json.dumps({**cfg, "image_std": "wide"}))
    with pytest.raises(CheckpointError, match="preprocessor_config.json .* unreadable value"):
        load_model(None, d)


def test_huggingface_sharded_folder(tmp_path):
    src = make_model("convnext_test")
    sd = to_hf(plain_sd(src), v2=False)
    keys = sorted(sd)
    halves = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for fname, ks in halves.items():
        save_file({k: sd[k] for k in ks}, tmp_path / fname)
    index = {"weight_map": {k: fname for fname, ks in halves.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same(load_model(None, tmp_path), src)


def test_timm_hub_folder_reads_pretrained_cfg(tmp_path):
    src = make_model("convnextv2_test", num_classes=2)
    save_file(plain_sd(src), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architecture": "convnextv2_test",
                "num_classes": 2,
                "label_names": ["no", "yes"],
                "pretrained_cfg": {
                    "input_size": [3, 64, 64],
                    "crop_pct": 1.0,
                    "interpolation": "bicubic",
                    "mean": [0.1, 0.2, 0.3],
                    "std": [0.4, 0.5, 0.6],
                },
            }
        )
    )
    loaded = load_model(None, tmp_path)
    assert loaded.source_format == "timm"
    assert loaded.class_names == ["no", "yes"]
    assert loaded.preprocess == zoo.Preprocess(64, 1.0, "bicubic", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert_same(loaded, src)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_own_checkpoint_round_trip(tmp_path, suffix):
    src = make_model("convnextv2_test", num_classes=3)
    pp = zoo.Preprocess(img_size=64, crop_pct=1.0, interpolation="bilinear")
    opt = torch.optim.AdamW(src.parameters(), lr=1e-3)
    src(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()
    src.zero_grad()
    extra = {"optimizer": opt.state_dict(), "epoch": 4, "history": [{"loss": 0.5}]} if suffix == ".pt" else None
    f = save_checkpoint(
        tmp_path / f"ft{suffix}", src, "convnextv2_test", class_names=["a", "b", "c"], preprocess=pp, extra=extra
    )
    assert f == tmp_path / f"ft{suffix}" and not list(tmp_path.glob("*.partial"))
    loaded = load_model(None, f)
    assert loaded.source_format == "edgeconvnext" and loaded.arch.name == "convnextv2_test"
    assert loaded.class_names == ["a", "b", "c"] and loaded.preprocess == pp
    assert_same(loaded, src)
    if suffix == ".pt":
        raw = torch.load(f, weights_only=True)  # only plain types: no unsafe unpickling needed
        assert raw["edgeconvnext"] == 1 and raw["arch"] == "convnextv2_test" and raw["epoch"] == 4
        assert loaded.extra["epoch"] == 4 and loaded.extra["history"] == [{"loss": 0.5}]
        opt2 = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
        opt2.load_state_dict(loaded.extra["optimizer"])
        assert opt2.state_dict()["state"][0]["step"] == 1
    # img_size overrides the stored preprocessing, the rest stays
    assert load_model(None, f, img_size=96).preprocess == zoo.Preprocess(96, 1.0, "bilinear")


# ------------------------------------------------------------------------------------------------
# EMA, unsafe pickles
# ------------------------------------------------------------------------------------------------


def test_official_ema_selection(tmp_path):
    src, ema = make_model("convnextv2_test", seed=0), make_model("convnextv2_test", seed=9)
    f = tmp_path / "ckpt.pth"
    torch.save({"model": to_official(plain_sd(src)), "model_ema": to_official(plain_sd(ema)), "epoch": 1}, f)
    plain = load_model(None, f)
    assert_same(plain, src)
    assert any("--ema" in n for n in plain.notes)
    picked = load_model("convnextv2_test", f, ema=True)
    assert_same(picked, ema)
    assert any("EMA" in n for n in picked.notes)


def test_ema_requested_but_absent(tmp_path):
    f = tmp_path / "ckpt.pth"
    torch.save({"model": to_official(plain_sd(make_model("convnext_test")))}, f)
    with pytest.raises(CheckpointError, match=r"--ema was given but .* holds no EMA weights.*drop --ema"):
        load_model(None, f, ema=True)
    g = tmp_path / "timm.safetensors"
    save_file(plain_sd(make_model("convnext_test")), g)
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        load_model(None, g, ema=True)


def test_namespace_training_checkpoint_needs_consent(tmp_path):
    src = make_model("convnext_test")
    f = tmp_path / "checkpoint-best.pth"
    torch.save(
        {"model": to_official(plain_sd(src)), "args": argparse.Namespace(lr=4e-3, model="convnext_test"), "epoch": 10},
        f,
    )
    with pytest.raises(CheckpointError) as e:
        load_model(None, f)
    msg = str(e.value)
    assert "argparse.Namespace" in msg and "--allow-unsafe-pickle only if you trust" in msg and "\n" not in msg
    loaded = load_model(None, f, allow_unsafe=True)
    assert loaded.source_format == "official"
    assert any("unpickling" in n for n in loaded.notes)
    assert_same(loaded, src)


def test_onnx_given_as_checkpoint_says_what_to_give(tmp_path):
    f = tmp_path / "m.int8.onnx"
    f.write_bytes(b"\x08\x08\x12\x07pytorch")
    with pytest.raises(CheckpointError, match="deployed model, not a checkpoint.*validate, inspect and build-engine"):
        load_model(None, f)


def test_torchscript_archive_is_named_and_read_with_consent(tmp_path):
    # it was "truncated or corrupt; download or copy it again"
    src = make_model("convnextv2_test")
    f = tmp_path / "model_scripted.pt"
    torch.jit.save(torch.jit.trace(src, torch.zeros(1, 3, 32, 32)), str(f))
    with pytest.raises(CheckpointError, match="is a TorchScript archive .*--allow-unsafe-pickle") as e:
        load_model(None, f)
    assert "corrupt" not in str(e.value)
    assert_same(load_model(None, f, allow_unsafe=True), src)


# ------------------------------------------------------------------------------------------------
# Architecture inference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(zoo.ARCHS))
def test_infer_arch_every_architecture_on_meta(name):
    sd = zoo.create_model(name, num_classes=10, device="meta").state_dict()
    assert infer_arch(sd).name == name
    # also through the foreign layouts and back (shapes only: meta tensors)
    assert infer_arch(remap_official(to_official(sd))).name == name
    assert infer_arch(remap_huggingface(to_hf(sd, v2=zoo.ARCHS[name].use_grn))).name == name
    assert infer_arch(remap_timm(to_timm_conv_mlp(sd))).name == name


def test_remaps_are_exact_inverses_on_meta():
    sd = zoo.create_model("convnextv2_nano", device="meta").state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    for back in (
        remap_official(to_official(sd)),
        remap_huggingface(to_hf(sd, v2=True)),
        remap_timm(to_timm_conv_mlp(sd)),
    ):
        assert {k: tuple(v.shape) for k, v in back.items()} == shapes
    assert detect_layout(to_official(sd)) == "official"
    assert detect_layout(to_hf(sd, v2=True)) == "huggingface"
    assert detect_layout(sd) == "timm"


def test_infer_arch_unknown_shapes():
    sd = zoo.create_model("convnextv2_nano", device="meta").state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("stages.2.blocks.7.")}
    with pytest.raises(CheckpointError, match=r"depths \(2, 2, 7, 2\).*matches no known architecture.*convnextv2_nano"):
        infer_arch(sd)


# ------------------------------------------------------------------------------------------------
# Bad input: one clear CheckpointError each
# ------------------------------------------------------------------------------------------------


def _assert_one_line(e: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth") as e:
        load_model(None, tmp_path / "nope.pth")
    _assert_one_line(e)


@pytest.mark.parametrize(
    "content", [b"hello world\n" * 20, bytes(range(7, 200)) * 3, b""], ids=["text", "bytes", "empty"]
)
def test_not_a_checkpoint(tmp_path, content):
    f = tmp_path / "model.pth"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a checkpoint: it is neither a PyTorch file") as e:
        load_model(None, f)
    _assert_one_line(e)


def test_truncated_zip_and_safetensors(tmp_path):
    sd = plain_sd(make_model("convnext_test"))
    full = tmp_path / "full.pth"
    torch.save(sd, full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*download or copy it again") as e:
        load_model(None, cut)
    _assert_one_line(e)
    st = tmp_path / "full.safetensors"
    save_file(sd, st)
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(st.read_bytes()[: st.stat().st_size - 100])
    with pytest.raises(CheckpointError, match="corrupt safetensors file") as e:
        load_model(None, cut_st)
    _assert_one_line(e)


@pytest.mark.parametrize(
    "obj,match",
    [
        ([1, 2, 3], "holds a list, not a dict of weights"),
        ({"epoch": 3, "lr": 0.1}, "holds no state dict of tensors"),
        ({"conv.weight": torch.zeros(2)}, "not a ConvNeXt checkpoint: no stem"),
    ],
)
def test_not_a_convnext_checkpoint(tmp_path, obj, match):
    f = tmp_path / "x.pt"
    torch.save(obj, f)
    with pytest.raises(CheckpointError, match=match):
        load_model(None, f)


def test_fcmae_pretraining_checkpoint(tmp_path):
    f = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    sparse = {
        "mask_token": torch.zeros(1, 320, 1, 1),
        "encoder.downsample_layers.0.0.weight": torch.zeros(40, 3, 4, 4),
        "encoder.stages.0.0.dwconv.kernel": torch.zeros(49, 40),
        "encoder.stages.0.0.pwconv1.linear.weight": torch.zeros(160, 40),
        "decoder.0.dwconv.weight": torch.zeros(512, 1, 7, 7),
        "pred.weight": torch.zeros(48, 512, 1, 1),
    }
    torch.save({"model": sparse, "epoch": 1599}, f)
    with pytest.raises(
        CheckpointError, match="FCMAE pre-training checkpoint.*no classifier and must be fine-tuned"
    ) as e:
        load_model(None, f)
    _assert_one_line(e)
    # the sparse encoder alone, prefix stripped
    g = tmp_path / "encoder.pt"
    torch.save({k.removeprefix("encoder."): v for k, v in sparse.items() if k.startswith("encoder.")}, g)
    with pytest.raises(CheckpointError, match="FCMAE pre-training checkpoint"):
        load_model(None, g)


def test_checkpoint_of_another_architecture(tmp_path):
    f = tmp_path / "v1.pth"
    torch.save({"model": to_official(plain_sd(make_model("convnext_test")))}, f)
    with pytest.raises(CheckpointError, match="is convnext_test, not convnextv2_test"):
        load_model("convnextv2_test", f)
    g = tmp_path / "atto.safetensors"
    save_file(plain_sd(make_model("convnextv2_atto")), g)
    with pytest.raises(CheckpointError, match="is convnextv2_atto, not convnextv2_nano"):
        load_model("v2_nano", g)


def test_missing_and_unexpected_keys(tmp_path):
    sd = plain_sd(make_model("convnextv2_test"))
    del sd["stages.1.blocks.0.mlp.grn.bias"]
    sd["stages.1.blocks.0.extra.weight"] = torch.zeros(3)
    f = tmp_path / "bad.pth"
    torch.save(sd, f)
    with pytest.raises(
        CheckpointError,
        match=r"does not fit convnextv2_test: missing keys stages\.1\.blocks\.0\.mlp\.grn\.bias; "
        r"unexpected keys stages\.1\.blocks\.0\.extra\.weight",
    ) as e:
        load_model(None, f)
    _assert_one_line(e)


def test_shape_mismatch_with_named_model(tmp_path):
    sd = plain_sd(make_model("convnextv2_test"))
    sd["stages.0.blocks.0.conv_dw.weight"] = torch.zeros(8, 1, 5, 5)
    f = tmp_path / "bad.pth"
    torch.save(sd, f)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches \(checkpoint vs model\) stages\.0\.blocks\.0\.conv_dw\.weight "
        r"\(8, 1, 5, 5\) vs \(8, 1, 7, 7\)",
    ):
        load_model("convnextv2_test", f)


def test_unknown_model_name_suggests_nearest(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'convnextv2_nano'"):
        load_model("convnextv2_nanoo")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="folder without model.safetensors or pytorch_model.bin"):
        load_model(None, tmp_path)


# ------------------------------------------------------------------------------------------------
# Classifier size, img_size, random init
# ------------------------------------------------------------------------------------------------


def test_num_classes_replaces_the_head(tmp_path):
    src = make_model("convnextv2_test", num_classes=1000)
    f = tmp_path / "ckpt.pth"
    save_checkpoint(f, src, "convnextv2_test", class_names=[f"c{i}" for i in range(1000)])
    loaded = load_model(None, f, num_classes=10)
    assert loaded.model.num_classes == 10 and loaded.num_classes == 10
    assert "replaced the 1000-class classifier with a new 10-class one (train it)" in loaded.notes
    assert loaded.class_names is None  # they named the old outputs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert logits(loaded.model).shape == (2, 10)
        assert torch.equal(loaded.model.forward_features(x), src.forward_features(x))
    same = load_model(None, f, num_classes=1000)
    assert not any("replaced" in n for n in same.notes) and len(same.class_names) == 1000


def test_backbone_without_classifier(tmp_path):
    src = make_model("convnext_test")
    sd = {k: v for k, v in to_hf(plain_sd(src), v2=False).items() if not k.startswith("classifier.")}
    sd = {k.removeprefix("convnext."): v for k, v in sd.items()}  # as ConvNextModel saves it
    f = tmp_path / "model.safetensors"
    save_file(sd, f)
    with pytest.raises(CheckpointError, match="has no classifier.*--num-classes N"):
        load_model(None, f)
    loaded = load_model(None, f, num_classes=4)
    assert "the checkpoint has no classifier: added a new 4-class one (train it)" in loaded.notes
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.forward_features(x), src.forward_features(x))


def test_random_init_and_img_size():
    r = load_model("v2_test")
    assert r.source_format == "random" and r.source is None and r.source_sha256 is None
    assert r.model.num_classes == 1000 and r.preprocess.img_size == 224 and r.notes
    r = load_model("convnext_test", num_classes=5, img_size=64)
    assert r.model.num_classes == 5 and r.preprocess.img_size == 64
    with pytest.raises(UsageError, match="--img-size 100 is not a positive multiple of 32.*use 96 or 128"):
        load_model("convnext_test", img_size=100)
    with pytest.raises(UsageError, match="--img-size 16 is not a positive multiple of 32.*use 32"):
        load_model("convnext_test", img_size=16)
    with pytest.raises(UsageError, match="--img-size 0 is not a positive multiple of 32.*use 32"):
        load_model("convnext_test", img_size=0)
    with pytest.raises(UsageError, match="--num-classes must be at least 1"):
        load_model("convnext_test", num_classes=0)
    with pytest.raises(UsageError, match="give --model NAME"):
        load_model(None)
    with pytest.raises(UsageError, match="--ema needs a --checkpoint"):
        load_model("convnext_test", ema=True)


def test_detected_format_is_logged(tmp_path, caplog):
    f = tmp_path / "official.pth"
    torch.save({"model": to_official(plain_sd(make_model("convnext_test")))}, f)
    with caplog.at_level(logging.INFO, logger="edgeconvnext.models.checkpoint"):
        load_model(None, f)
    assert re.search(r"official\.pth: official format", caplog.text)


def test_fp16_weights_load_as_fp32(tmp_path):
    src = make_model("convnext_test")
    src_half = {k: v.half() for k, v in plain_sd(src).items()}
    f = tmp_path / "half.safetensors"
    save_file(src_half, f)
    loaded = load_model(None, f)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert torch.equal(loaded.model.stem[0].weight, src_half["stem.0.weight"].float())


def test_loaded_weights_are_the_checkpoints_own_trainable_cpu_tensors(tmp_path):
    # load_state_dict(assign=True) on the meta-device model: every parameter a CPU float32 tensor that trains,
    # a slice of a larger saved tensor copied out of it (its storage not kept alive), nothing left on meta
    src = make_model("convnext_test")
    sd = plain_sd(src)
    big = torch.cat([sd["head.fc.weight"].flatten(), torch.zeros(100_000)])
    sd["head.fc.weight"] = big[: sd["head.fc.weight"].numel()].view_as(sd["head.fc.weight"])
    f = tmp_path / "sliced.pth"
    torch.save(sd, f)
    loaded = load_model(None, f)
    assert_same(loaded, src)
    params = dict(loaded.model.named_parameters())
    assert {p.device.type for p in params.values()} == {"cpu"} and all(p.requires_grad for p in params.values())
    fc = params["head.fc.weight"]
    assert fc.untyped_storage().nbytes() == fc.numel() * fc.element_size()
    loss = loaded.model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for p in params.values())


def test_loading_a_checkpoint_imports_no_sympy(tmp_path):
    # Module.to_empty from the meta device imported sympy (0.6 s) through torch's meta registrations
    import subprocess
    import sys

    f = tmp_path / "m.safetensors"
    save_file(plain_sd(make_model("convnext_test")), f)
    code = (
        "import sys\nfrom edgeconvnext.models.checkpoint import load_model\n"
        f"load_model(None, {str(f)!r})\nprint('sympy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------
# save_checkpoint refusals
# ------------------------------------------------------------------------------------------------


def test_save_checkpoint_refusals(tmp_path):
    m = make_model("convnext_test", num_classes=3)
    with pytest.raises(UsageError, match="argparse.Namespace|Namespace, which weights-only loading refuses"):
        save_checkpoint(tmp_path / "a.pt", m, "convnext_test", extra={"args": argparse.Namespace(lr=1)})
    with pytest.raises(UsageError, match="reserved keys state_dict"):
        save_checkpoint(tmp_path / "a.pt", m, "convnext_test", extra={"state_dict": {}})
    with pytest.raises(UsageError, match="safetensors, which holds tensors only"):
        save_checkpoint(tmp_path / "a.safetensors", m, "convnext_test", extra={"epoch": 1})
    with pytest.raises(UsageError, match="2 class names for a 3-class classifier"):
        save_checkpoint(tmp_path / "a.pt", m, "convnext_test", class_names=["x", "y"])
    with pytest.raises(UsageError, match="the model is convnext_test, not convnextv2_test"):
        save_checkpoint(tmp_path / "a.pt", m, "convnextv2_test")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_save_overwrites_atomically(tmp_path):
    f = tmp_path / "ck.pt"
    f.write_bytes(b"old")
    save_checkpoint(f, make_model("convnext_test"), zoo.resolve("convnext_test"))
    assert load_model(None, f).source_format == "edgeconvnext"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
