"""The TensorRT rules checker: accepts a valid Q/DQ graph, rejects each kind of violation.

Small graphs built with onnx.helper: input -> Q -> DQ -> Conv (weight DQ per channel) -> MatMul
(weight (K, N) DQ per channel on axis 1) -> output; each test breaks one rule.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeconvnext.errors import CheckpointError, RuleViolation
from edgeconvnext.onnx.trt_rules import check_file, check_model, format_report

C_IN, C_OUT, HW, N_OUT = 4, 6, 8, 5


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


ZP0 = np.int8(0)
SCALE = np.float32(0.05)


def build(
    *,
    act_zp=ZP0,
    act_scale=SCALE,
    dq_act_scale=None,
    conv_w_axis=0,
    mm_w_axis=1,
    mm_scale_len=N_OUT,
    w_zp_dtype=np.int8,
    w_zp_value=0,
    opset=17,
    q_has_zp=True,
    q_consumer="DequantizeLinear",
    extra_nodes=(),
    extra_inits=(),
    outputs=None,
    domain_q="",
):
    """A valid INT8 Q/DQ graph unless an argument breaks it."""
    rng = np.random.default_rng(0)
    inits = [
        _init("x_scale", act_scale),
        _init("x_dq_scale", act_scale if dq_act_scale is None else dq_act_scale),
        _init("conv_w_q", rng.integers(-127, 127, (C_OUT, C_IN, 1, 1), dtype=np.int8)),
        _init("conv_w_scale", np.full((C_OUT if conv_w_axis == 0 else C_IN,), 0.01, np.float32)),
        _init("conv_w_zp", np.full((C_OUT if conv_w_axis == 0 else C_IN,), w_zp_value, w_zp_dtype)),
        _init("conv_b", np.zeros(C_OUT, np.float32)),
        _init("h_scale", np.float32(0.1)),
        _init("h_zp", np.int8(0)),
        _init("mm_w_q", rng.integers(-127, 127, (C_OUT, N_OUT), dtype=np.int8)),  # (K, N) as from nn.Linear
        _init("mm_w_scale", np.full((mm_scale_len,), 0.02, np.float32)),
        _init("mm_w_zp", np.zeros((mm_scale_len,), np.int8)),
        *extra_inits,
    ]
    if act_zp is not None:
        inits.append(_init("x_zp", act_zp))
    zp_in = ["x_zp"] if q_has_zp else []
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", *zp_in], ["x_q"], name="q_x", domain=domain_q),
        helper.make_node(
            q_consumer, ["x_q", "x_dq_scale", *(["x_zp"] if act_zp is not None else [])], ["x_dq"], name="dq_x"
        ),
        helper.make_node(
            "DequantizeLinear",
            ["conv_w_q", "conv_w_scale", "conv_w_zp"],
            ["conv_w"],
            name="dq_conv_w",
            axis=conv_w_axis,
        ),
        helper.make_node(
            "Conv", ["x_dq", "conv_w", "conv_b"], ["y"], name="/stages/stages.1/downsample/downsample.1/Conv"
        ),
        helper.make_node("Transpose", ["y"], ["y_t"], perm=[0, 2, 3, 1], name="t"),
        helper.make_node("QuantizeLinear", ["y_t", "h_scale", "h_zp"], ["h_q"], name="q_h"),
        helper.make_node("DequantizeLinear", ["h_q", "h_scale", "h_zp"], ["h_dq"], name="dq_h"),
        helper.make_node(
            "DequantizeLinear", ["mm_w_q", "mm_w_scale", "mm_w_zp"], ["mm_w"], name="dq_mm_w", axis=mm_w_axis
        ),
        helper.make_node("MatMul", ["h_dq", "mm_w"], ["out"], name="/stages/stages.1/blocks/blocks.0/mlp/fc1/MatMul"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_IN, HW, HW])],
        outputs or [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", HW, HW, N_OUT])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def rules(model) -> set[str]:
    return {v.rule for v in check_model(model).violations}


def test_valid_graph_passes_and_reports_int8_layers():
    m = build()
    onnx.checker.check_model(m)
    r = check_model(m)
    assert r.ok, r.violations
    assert [(row.layer, row.op, row.precision, row.weight_axis) for row in r.layers] == [
        ("stages.1.downsample.1", "Conv", "INT8", 0),
        ("stages.1.blocks.0.mlp.fc1", "MatMul", "INT8", 1),
    ]
    assert r.n_quantize == 2 and r.n_dequantize == 4
    # MACs at batch 1: conv 6*8*8 outputs x 4 inputs; matmul 8*8*5 outputs x K=6
    assert [row.macs for row in r.layers] == [6 * 64 * 4, 64 * 5 * 6]
    assert "OK for TensorRT" in format_report(r)
    r.raise_for_violations()  # no-op when ok


def test_float_model_says_it_has_no_int8_layers():
    w = _init("w", np.ones((C_OUT, C_IN, 1, 1), np.float32))
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="/stem/stem.0/Conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C_IN, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C_OUT, HW, HW])],
        [w],
    )
    r = check_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert r.ok and r.summary().startswith("no INT8 layers (a float model without Q/DQ: 1 layers")
    assert "OK for TensorRT" in r.summary()


def test_runs_in_onnxruntime_so_the_fixture_is_real():
    ort = pytest.importorskip("onnxruntime")
    m = build()
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    y = s.run(None, {"x": np.random.default_rng(1).standard_normal((2, C_IN, HW, HW)).astype(np.float32)})[0]
    assert y.shape == (2, HW, HW, N_OUT) and np.isfinite(y).all()


def test_nonzero_zero_point():
    assert "zero-point" in rules(build(act_zp=np.int8(3)))
    assert "zero-point" in rules(build(w_zp_value=1))


def test_uint8_zero_point_and_missing_zero_point():
    assert "uint8" in rules(build(act_zp=np.uint8(128)))
    assert "uint8" in rules(build(w_zp_dtype=np.uint8))
    # QuantizeLinear without a zero point outputs uint8 by the ONNX spec
    assert "uint8" in rules(build(q_has_zp=False, act_zp=None))


def test_per_channel_activation_scale():
    per_ch = np.full((C_IN,), 0.05, np.float32)
    assert "activation-per-channel" in rules(build(act_scale=per_ch))


@pytest.mark.parametrize("bad_scale", [np.float32(0.0), np.float32(-0.1), np.float32(np.inf), np.float32(np.nan)])
def test_scale_not_positive_finite(bad_scale):
    assert "scale" in rules(build(act_scale=bad_scale))


def test_mismatched_scale_between_q_and_dq():
    r = check_model(build(dq_act_scale=np.float32(0.07)))
    assert [v.rule for v in r.violations] == ["scale-mismatch"] and r.violations[0].node == "dq_x"


def test_wrong_conv_weight_axis():
    r = check_model(build(conv_w_axis=1))
    assert "weight-axis" in {v.rule for v in r.violations}
    assert any("axis 1" in v.message and "axis 0" in v.message for v in r.violations)


def test_wrong_matmul_weight_axis_is_caught_and_axis_minus_one_is_fine():
    r = check_model(build(mm_w_axis=0, mm_scale_len=C_OUT))
    msgs = [v.message for v in r.violations if v.rule == "weight-axis"]
    assert msgs and "(in, out)" in msgs[0]
    assert check_model(build(mm_w_axis=-1)).ok  # NNCF writes axis=-1 for a (K, N) weight


def test_scale_count_must_match_output_channels():
    assert "weight-axis" in rules(build(mm_scale_len=N_OUT - 1))


def test_q_without_following_dq():
    # QuantizeLinear feeding a Relu: TensorRT cannot fuse it
    m = build(extra_nodes=[helper.make_node("Relu", ["h_q"], ["r"], name="relu")])
    r = check_model(m)
    assert any(v.rule == "unpaired-q" and v.node == "q_h" for v in r.violations)


def test_graph_output_straight_from_q():
    m = build(
        extra_nodes=[helper.make_node("QuantizeLinear", ["out", "h_scale", "h_zp"], ["out_q"], name="q_out")],
        outputs=[helper.make_tensor_value_info("out_q", TensorProto.INT8, ["N", HW, HW, N_OUT])],
    )
    assert "unpaired-q" in rules(m)


def test_weight_dq_feeding_other_than_conv_matmul():
    m = build(extra_nodes=[helper.make_node("Add", ["out", "mm_w"], ["z"], name="add_w")])
    r = check_model(m)
    assert any(v.rule == "dq-weight-consumer" and "Add" in v.message for v in r.violations)


def test_dq_without_q():
    m = build(extra_nodes=[helper.make_node("DequantizeLinear", ["x", "h_scale"], ["bad"], name="dq_float")])
    assert "unpaired-dq" in rules(m)


def test_opset_too_low():
    assert "opset" in rules(build(opset=13))


def test_custom_domain_op():
    m = build(domain_q="com.microsoft")
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert "custom-domain" in rules(m)


def test_unsupported_op():
    m = build(extra_nodes=[helper.make_node("MatMulInteger", ["h_q", "mm_w_q"], ["mi"], name="mmi")])
    r = check_model(m)
    assert any(v.rule == "unsupported-op" and "MatMulInteger" in v.message for v in r.violations)
    assert "unpaired-q" in {v.rule for v in r.violations}  # h_q now also feeds a non-DQ


def test_weight_only_qdq_is_fp_with_a_warning():
    # Remove the activation Q/DQ in front of the MatMul: it computes in FP32 although its weight is int8.
    m = build()
    for n in m.graph.node:
        if n.name == "/stages/stages.1/blocks/blocks.0/mlp/fc1/MatMul":
            n.input[0] = "y_t"
    r = check_model(m)
    mm = [row for row in r.layers if row.op == "MatMul"][0]
    assert mm.precision == "FP32" and mm.weight_int8 and not mm.activation_int8
    assert any("only its weight" in w for w in r.warnings)


def test_raise_for_violations_and_check_file(tmp_path):
    p = tmp_path / "bad.onnx"
    onnx.save(build(act_zp=np.int8(5), opset=13), str(p))
    r = check_file(p)
    assert r.path == p and not r.ok
    with pytest.raises(RuleViolation, match=r"3 TensorRT rule violation\(s\) in .*bad.onnx"):
        r.raise_for_violations()
    assert RuleViolation.exit_code == 6
    with pytest.raises(CheckpointError, match="not found"):
        check_file(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="cannot read"):
        check_file(tmp_path / "junk.onnx")


def test_layer_names_from_torchscript_and_dynamo_exports():
    from edgeconvnext.onnx.graph import block_pattern, compress_rows, layer_name

    ts = helper.make_node("MatMul", ["a", "b"], ["c"], name="/stages/stages.0/blocks/blocks.3/mlp/fc1/MatMul")
    assert layer_name(ts) == "stages.0.blocks.3.mlp.fc1"
    assert layer_name(helper.make_node("Conv", ["a", "b"], ["c"], name="/stem/stem.0/Conv")) == "stem.0"
    assert layer_name(helper.make_node("Gemm", ["a", "b"], ["c"], name="/head/fc/Gemm")) == "head.fc"
    dyn = helper.make_node("Conv", ["a", "b"], ["c"], name="node_Conv_51")
    dyn.metadata_props.add(
        key="pkg.torch.onnx.name_scopes",
        value="['', 'stages', 'stages.2', 'stages.2.blocks', 'stages.2.blocks.0', "
        "'stages.2.blocks.0.conv_dw', 'conv2d_5']",
    )
    assert layer_name(dyn) == "stages.2.blocks.0.conv_dw"
    assert layer_name(helper.make_node("Relu", ["a"], ["c"], name="custom")) == "custom"
    assert block_pattern("stages.2.blocks.11.mlp.fc2") == "stages.2.blocks.*.mlp.fc2"
    rows = [
        {"layer": f"stages.2.blocks.{i}.mlp.fc1", "op": "MatMul", "precision": "INT8", "macs": 10} for i in range(3)
    ] + [{"layer": "head.fc", "op": "Gemm", "precision": "FP32", "macs": 1}]
    assert [(r["layer"], r["count"], r["macs"]) for r in compress_rows(rows)] == [
        ("stages.2.blocks.*.mlp.fc1", 3, 30),
        ("head.fc", 1, 1),
    ]


def test_inspect_trt_exits_6_on_a_violation(tmp_path, capsys):
    from edgeconvnext.cli import main

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(build(), str(good))
    onnx.save(build(conv_w_axis=1), str(bad))
    assert main(["inspect", "--trt", str(good)]) == 0
    assert "OK for TensorRT" in capsys.readouterr().out
    assert main(["inspect", "--trt", str(bad)]) == 6
    captured = capsys.readouterr()
    assert "weight-axis" in captured.out and captured.err.startswith("error: 1 TensorRT rule violation")


def test_inspect_trt_json_with_a_violation_prints_one_json_document(tmp_path, capsys):
    import json

    from edgeconvnext.cli import main

    bad = tmp_path / "bad.onnx"
    onnx.save(build(conv_w_axis=1), str(bad))
    assert main(["inspect", "--trt", "--json", str(bad)]) == 6
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # the report alone: no error object appended after it
    assert "weight-axis" in json.dumps(report) and captured.err.startswith("error: 1 TensorRT rule violation")
