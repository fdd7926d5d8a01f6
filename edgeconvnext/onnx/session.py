"""onnxruntime CPU sessions, and the three ways one can compute an INT8 Q/DQ graph.

- ``kernels`` (onnxruntime's default): Q/DQ node units fused into integer kernels (QLinearConv,
  MatMulIntegerToFloat). How onnxruntime serves the model on a CPU, and the fastest at 224 px; but on x86 CPUs
  without VNNI its u8s8 kernels multiply with VPMADDUBSW, whose 16-bit pair sums can saturate (onnxruntime's
  quantization docs), so its logits can differ from TensorRT's exact int32 accumulation: Fashion-MNIST V1 atto,
  policy convnext, 99.21% agreement with FP32 fused vs 99.91% exact on an AVX2 EPYC (presumably that
  saturation; the policy-all fused kernels also cost 3.4x an FP32 pass per image there at 32 px).
- ``emulated``: every other optimisation on, Q/DQ fusion off (``session.disable_quant_qdq``): weights
  dequantized once by constant folding, activations rounded by their QuantizeLinear/DequantizeLinear pair,
  Conv/MatMul in float. The arithmetic of the graph as written, i.e. TensorRT's up to float rounding (10,000
  Fashion-MNIST test images, V2 atto, policy all: 99.99% top-1 agreement with ``exact``, max logit difference
  0.06 vs 0.12 for ``kernels``), and at 32 px 2.5x faster than ``kernels`` on a 2-core Xeon with AVX-512 VNNI
  (2.55 vs 6.41 s; FP32 2.08 s); at 224 px (nano) slower than ``kernels`` (2.42 vs 1.51 s for 64 images; FP32
  2.07 s).
- ``exact``: every optimisation off: the nodes run one by one as written (parity checks; the slowest).
- ``auto`` (``validate``'s default): ``emulated`` where the kernels may saturate (:func:`kernels_may_saturate`),
  else ``kernels``; :func:`resolve_int8_math` says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

INT8_MATHS = ("auto", "kernels", "emulated", "exact")

#: /proc/cpuinfo flags of the x86 dot-product instructions onnxruntime's int8 kernels use without saturating
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def check_int8_math(int8: str, backend: str = "onnxruntime") -> str:
    """``int8`` when it names one of :data:`INT8_MATHS` that ``backend`` can honour, else UsageError naming
    ``--int8-math`` and the fix (only onnxruntime computes INT8 one of these ways)."""
    from edgeconvnext.errors import UsageError

    if int8 not in INT8_MATHS:
        raise UsageError(f"unknown --int8-math '{int8}'; use one of {', '.join(INT8_MATHS)}")
    if int8 not in ("kernels", "auto") and backend != "onnxruntime":
        raise UsageError(
            f"--int8-math {int8} applies to the onnxruntime backend (--backend {backend} computes INT8 itself): "
            "drop --int8-math"
        )
    return int8


def resolve_int8_math(int8: str) -> str:
    """``int8`` with ``auto`` resolved: ``emulated`` on a CPU whose int8 kernels may saturate (what TensorRT
    computes, which the kernels would not show there), else ``kernels`` (onnxruntime's own, the faster at 224 px)."""
    if int8 != "auto":
        return int8
    return "emulated" if kernels_may_saturate() else "kernels"


def session_options(int8: str = "kernels", threads: int | None = None) -> Any:
    """onnxruntime SessionOptions computing Q/DQ as ``int8`` says (see the module doc; irrelevant to a float
    model); ``threads``: intra-op threads (onnxruntime's default when None)."""
    import onnxruntime as ort

    if int8 not in INT8_MATHS:
        raise ValueError(f"int8 must be one of {INT8_MATHS}, got {int8!r}")
    int8 = resolve_int8_math(int8)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if int8 == "exact":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif int8 == "emulated":
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return opts


def cpu_session(model: bytes | str | onnx.ModelProto, int8: str = "kernels", threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``model`` (bytes, a path or a ModelProto), :func:`session_options`'."""
    import onnxruntime as ort

    opts = session_options(int8, threads)
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def kernels_may_saturate(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether onnxruntime's int8 CPU kernels may saturate here: an x86-64 CPU without VNNI (``cpuinfo``: the
    text of /proc/cpuinfo, read when None; False when it cannot be read). Arm CPUs use dot-product
    instructions that accumulate in 32 bits."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return not (VNNI_FLAGS & set(line.partition(":")[2].split()))
    return False
