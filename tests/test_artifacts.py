"""Outputs: atomic writes and the early output check (a folder, a file in the way, an input, a full disk)."""

from __future__ import annotations

import errno

import pytest

from edgeconvnext.artifacts import atomic_output, check_output
from edgeconvnext.cli import main
from edgeconvnext.errors import UsageError


def test_check_output_leaves_nothing_behind_and_atomic_output_creates_the_folders(tmp_path):
    out = tmp_path / "new" / "deeper" / "m.onnx"
    assert check_output(out, suffix=".onnx") == out
    assert not list(tmp_path.iterdir())  # a command failing later leaves no empty folders
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"x")
    assert out.read_bytes() == b"x" and [p.name for p in out.parent.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(
    "case,message",
    [
        ("folder", "is a folder"),
        ("suffix", "should end in .onnx"),
        ("file_in_the_way", "is a file, not a folder"),
        ("same_as_input", "is the same file as --checkpoint"),
        ("same_via_symlink", "is the same file as --checkpoint"),
    ],
)
def test_check_output_refusals_name_the_option(tmp_path, case, message):
    ckpt = tmp_path / "model.onnx"
    ckpt.write_bytes(b"weights")
    out = {
        "folder": tmp_path,
        "suffix": tmp_path / "m.pt",
        "file_in_the_way": ckpt / "m.onnx",
        "same_as_input": ckpt,
        "same_via_symlink": tmp_path / "link.onnx",
    }[case]
    if case == "same_via_symlink":
        out.symlink_to(ckpt)
    with pytest.raises(UsageError, match=message) as e:
        check_output(out, "--output", {"--checkpoint": ckpt}, suffix=".onnx")
    assert str(e.value).startswith("--output") or "cannot write" in str(e.value)
    assert ckpt.read_bytes() == b"weights"


def test_atomic_output_full_disk_is_a_usage_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="No space left"):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(tmp_path.iterdir())


def test_atomic_output_other_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError):  # e.g. reading a missing input inside the block is not an output error
        with atomic_output(tmp_path / "m.onnx"):
            raise FileNotFoundError(errno.ENOENT, "No such file", "input.png")
    assert not list(tmp_path.iterdir())


def test_cli_output_over_the_input_is_refused_and_the_input_survives(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "m.onnx"
    assert main(["-q", "export", "--model", "convnext_test", "--img-size", "32", "-o", str(model)]) == 0
    before = model.read_bytes()
    capsys.readouterr()
    assert (
        main(
            [
                "validate",
                str(model),
                "--latency",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--latency-batch",
                "1",
                "--report",
                str(model),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --report") and "same file as MODEL" in err[-1]
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not read")
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "c.pth")]) == 2  # not .onnx
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(ckpt),
                "--train-data",
                str(tmp_path),
                "--val-data",
                str(tmp_path),
                "-o",
                str(ckpt),
            ]
        )
        == 2
    )
    assert "same file as --checkpoint" in capsys.readouterr().err
    assert model.read_bytes() == before and ckpt.read_bytes() == b"not read"


def test_cli_unwritable_output_is_one_error_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc = main(["export", "--model", "convnext_test", "--img-size", "32", "-o", str(tmp_path / "afile" / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: cannot write") and "afile is a file" in err[0]


def test_check_output_refuses_an_inputs_sidecar_a_file_inside_an_input_folder_and_artifacts_for_reports(tmp_path):
    # the review's cases: a report over the model's sidecar, over an image of the data folder, over the
    # calibration manifest; a new file inside the data folder and a report elsewhere are fine
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    (tmp_path / "m.onnx.json").write_text("{}")
    (tmp_path / "m.calib.json").write_text("{}")
    data = tmp_path / "val"
    (data / "bag").mkdir(parents=True)
    (data / "bag" / "1.png").write_bytes(b"png")
    inputs = {"MODEL": model, "--data": data}
    with pytest.raises(UsageError, match="--report .*m.onnx.json is the sidecar of MODEL"):
        check_output(tmp_path / "m.onnx.json", "--report", inputs)
    with pytest.raises(UsageError, match="--report .*1.png is a file inside --data"):
        check_output(data / "bag" / "1.png", "--report", inputs)
    with pytest.raises(UsageError, match="--markdown .*m.calib.json is an existing model, sidecar or manifest"):
        check_output(tmp_path / "m.calib.json", "--markdown", inputs, report=True)
    assert check_output(data / "new.json", "--report", inputs) == data / "new.json"
    assert check_output(tmp_path / "r.json", "--report", inputs, report=True) == tmp_path / "r.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.calib.json", "m.onnx", "m.onnx.json", "val"]
