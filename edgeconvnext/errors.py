"""Errors the CLI turns into one clear line and a distinct exit code.

Library code raises these; only the CLI prints. Each message says what failed, on which object and
how to fix it.
"""

from __future__ import annotations

from typing import Any


class EdgeError(Exception):
    """Base class: a failure the user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(EdgeError):
    """An option that cannot be honoured, an unknown name, conflicting options."""

    exit_code = 2


class CheckpointError(EdgeError):
    """Missing, unreadable or mismatched model file: a checkpoint, an ONNX or an engine (the same code in every
    command: inspect, validate and build-engine of a corrupt ONNX all exit 3)."""

    exit_code = 3


class DataError(EdgeError):
    """Missing/empty/corrupt image folders, labels, too few calibration images."""

    exit_code = 4


class ExportError(EdgeError):
    """ONNX export failed or its parity check did not pass."""

    exit_code = 5


class BuildError(ExportError):
    """TensorRT could not parse or build the ONNX (exit code 5, like a failed export)."""


class RuleViolation(EdgeError):
    """A Q/DQ ONNX breaks TensorRT's explicit-quantization rules."""

    exit_code = 6


class AccuracyError(EdgeError):
    """Accuracy drop larger than --max-drop."""

    exit_code = 7


class BackendMissing(EdgeError):
    """A library or hardware feature (TensorRT, CUDA, nncf) is absent: the message says what to install."""

    exit_code = 8


#: the pip extra that installs each optional library (pyproject.toml [project.optional-dependencies])
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "nncf": "quant", "matplotlib": "plot"}


def require(module: str, purpose: str, extra: str | None = None) -> Any:
    """Import ``module`` for ``purpose``; if it is not installed, BackendMissing naming the extra to install
    (``extra``, else the one :data:`EXTRAS` gives it)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendMissing(
            f"{purpose} needs {module}, which is not installed: pip install 'edgeconvnext[{extra or EXTRAS[module]}]'"
        ) from None


def nearest(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest valid spelling to ``name`` (for 'did you mean' hints), or None."""
    import difflib

    hits = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return hits[0] if hits else None
