"""doctor.py: parsing of Jetson files and tool outputs from sample contents; probing a sample file tree;
the report on this machine (no GPU, no TensorRT) and without torch."""

from __future__ import annotations

import json
import sys

import pytest

from edgeconvnext.env import doctor

NV_TEGRA_RELEASE = (
    "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Sep 13 04:36:44 UTC 2024\n"
    "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
DT_MODEL = b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00"
NVPMODEL = "NV Power Mode: MAXN_SUPER\n2\n"


def test_nv_tegra_release_and_jetpack():
    r = doctor.parse_nv_tegra_release(NV_TEGRA_RELEASE)
    assert r["l4t"] == "36.4.0" and r["release"] == "36" and r["revision"] == "4.0"
    assert r["board"] == "generic" and r["gcid"] == "37537400"
    assert doctor.jetpack_for_l4t(r["l4t"]) == "6.1"
    r = doctor.parse_nv_tegra_release("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic")
    assert r["l4t"] == "36.4.3" and doctor.jetpack_for_l4t(r["l4t"]) == "6.2"
    r = doctor.parse_nv_tegra_release("# R35 (release), REVISION: 6, GCID: 1, BOARD: t186ref")
    assert r["l4t"] == "35.6.0" and doctor.jetpack_for_l4t("35.6.0") == "5.1.4"
    assert doctor.jetpack_for_l4t("36.9.9") == "6.x (L4T 36.9.9 is not in the table)"
    assert doctor.jetpack_for_l4t("99.1.0") is None and doctor.jetpack_for_l4t(None) is None
    assert doctor.parse_nv_tegra_release("Ubuntu 22.04") is None


def test_device_tree_model_and_dla():
    model = doctor.parse_device_tree_model(DT_MODEL)
    assert model == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert doctor.jetson_family(model) == "orin" and doctor.jetson_dla_cores(model) == 0
    assert doctor.jetson_dla_cores("NVIDIA Jetson AGX Orin Developer Kit") == 2
    assert doctor.jetson_dla_cores("NVIDIA Jetson Orin NX Engineering Reference Developer Kit") == 2
    assert doctor.jetson_family("QEMU Virtual Machine") is None
    assert doctor.parse_device_tree_model(b"\x00") is None


def test_nvpmodel():
    assert doctor.parse_nvpmodel(NVPMODEL) == {"mode": "MAXN_SUPER", "id": 2}
    assert doctor.parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: 15W\n0\n") == {"mode": "15W", "id": 0}
    assert doctor.parse_nvpmodel("nvpmodel: command not found") is None


def test_gpu_and_cuda_outputs():
    smi = "NVIDIA H100 80GB HBM3, 550.54.15, 9.0, 81559 MiB\nNVIDIA L4, 550.54.15, 8.9, 23034 MiB\n"
    gpus = doctor.parse_nvidia_smi_csv(smi)
    assert gpus[0] == {
        "name": "NVIDIA H100 80GB HBM3",
        "driver": "550.54.15",
        "compute_capability": "9.0",
        "memory": "81559 MiB",
    }
    assert gpus[1]["compute_capability"] == "8.9" and len(gpus) == 2
    assert (
        doctor.parse_nvidia_smi_cuda("| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |")
        == "12.4"
    )
    assert doctor.parse_nvcc_version("Cuda compilation tools, release 12.6, V12.6.68\nBuild cuda_12.6.r12.6") == "12.6"
    assert doctor.parse_cuda_version_json('{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}') == "12.6.68"
    assert doctor.parse_cuda_version_json("not json") is None
    assert doctor.parse_dpkg_version("6.1+b123") == "6.1" and doctor.parse_dpkg_version("") is None


@pytest.mark.parametrize(
    "text,version",
    [
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help", (10, 3, 0)),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --help", (11, 1, 0)),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", (8, 6, 1)),
        ("[06/01/2025-10:00:00] [I] TensorRT version: 10.3.0", (10, 3, 0)),
        ("no banner here", None),
    ],
)
def test_trt_version_from_trtexec_output(text, version):
    assert doctor.parse_trt_version(text) == version


@pytest.mark.parametrize(
    "value,version",
    [
        ("10.3.0.30", (10, 3, 0, 30)),
        ("10.3", (10, 3, 0)),
        ((10, 3, 0, 26), (10, 3, 0, 26)),
        ("11.1.0.post1", (11, 1, 0)),
        ("unknown", None),
        (None, None),
    ],
)
def test_one_version_parser(value, version):
    # engine builder (bindings' __version__), plan header tuples and sidecars all go through it
    from edgeconvnext.env.probes import parse_version

    assert parse_version(value) == version


def _jetson_tree(root):
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text(NV_TEGRA_RELEASE)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(DT_MODEL)
    gpu = root / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("1020000000\n")
    for i, khz in enumerate((1728000, 1344000)):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{khz}\n")
    return root


def test_probe_jetson_reads_sample_tree(tmp_path):
    jet = doctor.probe_jetson(_jetson_tree(tmp_path))
    assert jet["model"].startswith("NVIDIA Jetson Orin Nano") and jet["family"] == "orin"
    assert jet["l4t"] == "36.4.0" and jet["jetpack"] in (
        "6.1",
        doctor.parse_dpkg_version(jet.get("jetpack_package", "")),
    )
    assert jet["dla_cores"] == 0
    assert jet["clocks_mhz"]["gpu (17000000.gpu)"] == 1020.0 and jet["clocks_mhz"]["cpu max"] == 1728.0
    assert doctor.probe_jetson(tmp_path / "empty") is None
    from edgeconvnext.env.probes import jetson_board

    assert jetson_board(tmp_path) == jet["model"]  # the engine runtime's light probe: the device tree alone
    assert jetson_board(tmp_path / "empty") is None


def test_checks_for_a_jetson_and_for_a_bare_host():
    jet = {
        "model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
        "family": "orin",
        "dla_cores": 0,
        "l4t": "36.4.0",
        "jetpack": "6.1",
        "power_mode": {"mode": "MAXN_SUPER", "id": 2},
        "clocks_mhz": {"gpu (17000000.gpu)": 1020.0},
    }
    checks = {
        c.name: c
        for c in doctor.build_checks(
            {
                "jetson": jet,
                "gpu": {"gpus": []},
                "tensorrt": {"python_version": "10.3.0"},
                "trtexec": {"path": "/usr/src/tensorrt/bin/trtexec", "version": "10.3.0"},
            }
        )
    }
    assert checks["Jetson"].value.endswith("L4T 36.4.0, JetPack 6.1")
    assert checks["power mode"].value == "MAXN_SUPER (id 2)" and checks["DLA"].status == "info"
    assert "cannot run on DLA" in checks["DLA"].value and checks["TensorRT (Python)"].status == "ok"
    assert checks["clocks"].value == "gpu (17000000.gpu) 1020 MHz"
    bare = {
        c.name: c for c in doctor.build_checks({"jetson": None, "gpu": {"gpus": []}, "tensorrt": {}, "trtexec": {}})
    }
    assert bare["GPU"].status == "missing" and bare["TensorRT (Python)"].status == "missing"
    assert "pip install tensorrt" in bare["TensorRT (Python)"].hint
    jet_hint = {c.name: c for c in doctor.build_checks({"jetson": jet, "tensorrt": {}, "trtexec": {}})}
    assert "nvidia-jetpack" in jet_hint["TensorRT (Python)"].hint


def test_gpu_summary_falls_back_to_jetson_model():
    rep = doctor.Report(sections={"gpu": {"gpus": []}, "jetson": {"model": "NVIDIA Jetson AGX Orin", "family": "orin"}})
    assert doctor.gpu_summary(rep) == {
        "name": "NVIDIA Jetson AGX Orin",
        "compute_capability": "8.7",
        "board": "NVIDIA Jetson AGX Orin",  # what tells an AGX Orin from an Orin Nano (CUDA calls both "Orin")
    }
    rep = doctor.Report(
        sections={"gpu": {"gpus": [{"name": "NVIDIA L4", "compute_capability": "8.9"}]}, "jetson": None}
    )
    assert doctor.gpu_summary(rep)["compute_capability"] == "8.9"


def test_probe_this_machine_is_json_and_works_without_torch(monkeypatch):
    rep = doctor.probe()
    data = json.loads(json.dumps(rep.to_dict(), default=str))
    assert {"host", "gpu", "cuda", "tensorrt", "trtexec", "onnxruntime", "checks"} <= set(data)
    if data["onnxruntime"]["installed"]:
        assert "CPUExecutionProvider" in data["onnxruntime"]["providers"]
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    rep = doctor.probe()
    assert rep.sections["gpu"]["torch"]["installed"] is False
    assert any(c.name == "torch" and c.status == "missing" for c in rep.checks)


def test_cli_doctor_json(capsys):
    from edgeconvnext.cli import main

    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data["checks"], list) and data["checks"][0]["name"] == "GPU"
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT (Python)" in out and "can build engines here" in out
