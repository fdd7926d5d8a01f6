"""The registry: every architecture builds, runs, and matches the published params/GMACs."""

import pytest
import torch

from edgeconvnext.errors import UsageError
from edgeconvnext.models import registry as zoo

SMALL = ("convnext_atto", "convnextv2_atto", "convnext_test", "convnextv2_test")


@pytest.mark.parametrize("name", zoo.public_names())
def test_params_and_macs_match_published(name):
    arch = zoo.ARCHS[name]
    stats = zoo.count_stats(arch)
    assert abs(stats["params_m"] / arch.published_params_m - 1) < 0.01
    assert abs(stats["gmacs"] / arch.published_gmacs - 1) < 0.03


def _traced_stats(arch, img_size: int, num_classes: int) -> dict[str, float]:
    """Params and conv/linear MACs of the built model on the meta device (parameters + forward hooks)."""
    from torch import nn

    model = zoo.create_model(arch, num_classes=num_classes, device="meta")
    params = sum(p.numel() for p in model.parameters())
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3] if isinstance(m, nn.Conv2d) else m.in_features
        macs += out.numel() * k

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(1, 3, img_size, img_size, device="meta"))
    return {"params_m": params / 1e6, "gmacs": macs / 1e9}


@pytest.mark.parametrize(
    "name,img_size,num_classes",
    [
        ("convnext_test", 32, 10),
        ("convnextv2_test", 50, 3),  # not a multiple of 32: the floors of each stride
        ("convnextv2_test", 224, 1000),
        ("convnext_atto", 224, 1000),
        ("convnextv2_atto", 97, 7),
        ("convnextv2_nano", 64, 1000),
    ],
)
def test_analytic_counts_equal_the_built_model(name, img_size, num_classes):
    got = zoo.count_stats(zoo.ARCHS[name], img_size=img_size, num_classes=num_classes)
    assert got == _traced_stats(zoo.ARCHS[name], img_size, num_classes)


@pytest.mark.parametrize("name", list(zoo.ARCHS))
def test_every_arch_builds_on_meta_and_has_flags(name):
    arch = zoo.ARCHS[name]
    m = zoo.create_model(arch, num_classes=7, device="meta")
    out = m(torch.empty(2, 3, 64, 64, device="meta"))
    assert tuple(out.shape) == (2, 7)
    keys = m.state_dict().keys()
    assert ("stages.0.blocks.0.mlp.grn.weight" in keys) == arch.use_grn
    assert ("stages.0.blocks.0.gamma" in keys) == (not arch.use_grn)


@pytest.mark.parametrize("name", SMALL)
def test_small_archs_forward(name):
    m = zoo.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 5) and torch.isfinite(y).all()


def test_grn_matches_official_definition():
    from edgeconvnext.models.convnext import GlobalResponseNorm

    grn = GlobalResponseNorm(12)
    torch.nn.init.normal_(grn.weight)
    torch.nn.init.normal_(grn.bias)
    x = torch.randn(2, 5, 5, 12)
    # facebookresearch/ConvNeXt-V2 models/utils.py GRN, with gamma/beta of shape (1, 1, 1, C)
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    ref = grn.weight.view(1, 1, 1, -1) * (x * nx) + grn.bias.view(1, 1, 1, -1) + x
    assert torch.equal(grn(x), ref)


@pytest.mark.parametrize(
    "alias,name",
    [
        ("v2_nano", "convnextv2_nano"),
        ("v1_tiny", "convnext_tiny"),
        ("ConvNeXtV2_Atto", "convnextv2_atto"),
        ("convnext-small", "convnext_small"),
    ],
)
def test_aliases(alias, name):
    assert zoo.resolve(alias).name == name


def test_unknown_name_suggests_nearest():
    with pytest.raises(UsageError, match="did you mean 'convnextv2_nano'"):
        zoo.resolve("convnextv2_nanoo")


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_test"])
def test_macs_counted_on_the_onnx_graph_equal_the_models(name, tmp_path):
    # onnx.graph.compute_macs (the placement table's MACs share) infers shapes on a skeleton of the graph: batch
    # 1, and the weights' values left out (graph inputs of their shape); the count must be the model's own
    import io

    import onnx

    from edgeconvnext.onnx.graph import _SHAPE_ONLY_ELEMENTS, compute_macs, shape_skeleton

    arch = zoo.ARCHS[name]
    model = zoo.create_model(arch, num_classes=10).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 64, 64),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    macs = compute_macs(proto)
    assert sum(macs.values()) == round(_traced_stats(arch, 64, 10)["gmacs"] * 1e9)
    skeleton = shape_skeleton(proto)
    big = [t for t in proto.graph.initializer if len(t.raw_data) > 4 * _SHAPE_ONLY_ELEMENTS]
    assert big and all(len(t.raw_data) <= 4 * _SHAPE_ONLY_ELEMENTS for t in skeleton.graph.initializer)
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in skeleton.graph.input}
    assert all(inputs[t.name] == list(t.dims) for t in big) and inputs["input"] == [1, 3, 64, 64]
    assert len(skeleton.SerializeToString()) < len(buf.getvalue()) / 4
