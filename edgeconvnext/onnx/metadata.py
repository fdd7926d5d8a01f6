"""The edgeconvnext metadata codec of an ONNX file's ``metadata_props``.

Input: an ONNX proto or file. Output: the decoded edgeconvnext keys (arch, preprocess, class names, precision,
...). Every stage that writes an ONNX (export, quantize, FP16 conversion) and every stage that reads one
(engine build, runners, inspect) goes through here, so the codec lives below all of them.

Usage::

    meta = read_metadata("nano.int8.onnx")        # {"arch": "convnextv2_nano", "preprocess": {...}, ...}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

META_PREFIX = "edgeconvnext."
# Keys whose values are plain strings; the other edgeconvnext.* values are JSON.
_STRING_KEYS = ("arch", "source_sha256", "precision", "version", "source_format", "io_dtype")
_JSON_KEYS = ("preprocess", "num_classes", "class_names")


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Write ``meta`` into ``proto.metadata_props``, replacing existing keys of the same name."""
    keep = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=str(v))


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """``{"edgeconvnext.preprocess": '{"img_size": 224, ...}', ...}`` -> ``{"preprocess": {...}, ...}``.

    Known keys always appear (None when absent); other ``edgeconvnext.*`` keys are JSON-decoded when
    they parse, else kept as strings. Keys without the prefix are left out (see onnx.info.describe).
    """
    out: dict[str, Any] = {k: None for k in _STRING_KEYS + _JSON_KEYS}
    for key, value in props.items():
        if not key.startswith(META_PREFIX):
            continue
        short = key[len(META_PREFIX) :]
        if short in _STRING_KEYS:
            out[short] = value
            continue
        try:
            out[short] = json.loads(value)
        except json.JSONDecodeError:
            out[short] = value
    return out


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """Decoded edgeconvnext metadata of an ONNX file: arch, preprocess (dict), num_classes, class_names,
    source_sha256, precision, io_dtype, source_format, version (None where absent)."""
    from edgeconvnext.onnx.info import load_proto

    proto = load_proto(onnx_path)
    return decode_metadata({p.key: p.value for p in proto.metadata_props})
