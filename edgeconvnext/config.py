"""The configuration layer every stage shares: typed settings, one source of defaults, precedence
defaults < recipe < explicit overrides, unknown keys named with the nearest valid one.

A stage's config is a dataclass whose fields are declared with :func:`setting` (default, help, range) in
its own package (``quantize/config.py``, ``engine/config.py``, ...). Choices are :class:`enum.StrEnum`
members, shared by the config and the CLI's help texts; a StrEnum compares equal to its value, so
``cfg.backend == "ort"`` holds. This module reads the field types from the annotations and checks values
against them (bool is not an int here), so the recipe schema, the CLI's checks and the library's checks
are one piece of code.

Input: a config class, a recipe section (a mapping) and the overrides (None = not given). Output: the
config object and, per key, where its value came from ("default", "recipe" or "cli").

Usage::

    cfg, sources = resolve_config(QuantizeConfig, "quantize", recipe_section, {"calib_size": 256})
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from edgeconvnext.errors import UsageError, nearest

T = TypeVar("T")

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # requires-python >= 3.10: enum.StrEnum is 3.11+

    class StrEnum(str, enum.Enum):
        """enum.StrEnum for Python 3.10: members are str, and str()/format() give the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


_MISSING: Any = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    minimum: float | None = None,
    maximum: float | None = None,
    option: str | None = None,
    recipe: bool = True,
) -> Any:
    """A config field: its default (the only place it is written), help text, numeric range, the CLI
    option that sets it (for messages; default ``--key-with-dashes``) and whether a recipe may set it.
    Lists are not accepted as defaults (use tuples: configs are values)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("setting(): use an immutable default (tuple) instead of a list/dict/set")
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "option": option, "recipe": recipe}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Spec:
    """One setting of a config class, as read from its field."""

    name: str
    types: tuple[Any, ...]  # accepted Python types (type(None) for optional), Enum classes included
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    option: str | None = None
    recipe: bool = True
    sequence: bool = False  # tuple[str, ...]: a YAML list or repeated option

    @property
    def enum(self) -> type[enum.Enum] | None:
        return next((t for t in self.types if isinstance(t, type) and issubclass(t, enum.Enum)), None)

    @property
    def choices(self) -> tuple[str, ...] | None:
        e = self.enum
        return tuple(str(m.value) for m in e) if e is not None else None

    @property
    def label(self) -> str:
        return self.option or f"--{self.name.replace('_', '-')}"


def _flatten(tp: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(tp) for t in _flatten(arg))
    return (tp,)


@functools.cache
def specs(cls: type) -> dict[str, Spec]:
    """The settings of a config dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Spec] = {}
    for f in dataclasses.fields(cls):
        accepted: list[Any] = []
        sequence = False
        for t in _flatten(hints[f.name]):
            if typing.get_origin(t) is tuple:
                sequence = True
                accepted.append(tuple)
            else:
                accepted.append(t)
        default = f.default if f.default is not _MISSING else None
        m = f.metadata
        out[f.name] = Spec(
            name=f.name,
            types=tuple(accepted),
            default=default,
            help=m.get("help", ""),
            minimum=m.get("minimum"),
            maximum=m.get("maximum"),
            option=m.get("option"),
            recipe=m.get("recipe", True),
            sequence=sequence,
        )
    return out


def recipe_keys(cls: type) -> dict[str, Spec]:
    """The settings a recipe section may set."""
    return {k: s for k, s in specs(cls).items() if s.recipe}


def unknown_key(where: str, key: str, valid: list[str]) -> UsageError:
    """'unknown key' naming the nearest valid key (or listing them all)."""
    hint = nearest(key, valid)
    return UsageError(
        f"{where}: unknown key '{key}'" + (f"; did you mean '{hint}'?" if hint else f"; valid keys: {', '.join(valid)}")
    )


def _type_names(spec: Spec) -> str:
    names = []
    for t in spec.types:
        if t is type(None):
            names.append("null")
        elif t is tuple:
            names.append("list")
        elif isinstance(t, type) and issubclass(t, enum.Enum):
            names.append("str")
        else:
            names.append(getattr(t, "__name__", str(t)))
    return "/".join(dict.fromkeys(names))


def _coerce_enum(label: str, spec: Spec, value: Any) -> Any:
    e = spec.enum
    assert e is not None
    if isinstance(value, e):
        return value
    choices = spec.choices or ()
    norm = value.strip().lower()
    for m in e:
        if str(m.value) == norm:
            return m
    hint = nearest(norm, list(choices))
    did = f"; did you mean '{hint}'?" if hint else ""
    if label.startswith("--"):  # a command-line option: the form the CLI has always used
        raise UsageError(f"unknown {label} '{value}'{did} (choose from {', '.join(choices)})")
    raise UsageError(f"{label}: {value!r} is not one of {', '.join(choices)}{did}")


def check_value(label: str, spec: Spec, value: Any) -> Any:
    """Type, choices and range of one value, coerced to the field's type (a str to its Enum, a list to a
    tuple, an int to a float setting); ``label`` names the setting in the message."""
    if value is None:
        if type(None) in spec.types:
            return None
        raise UsageError(f"{label} must be {_type_names(spec)}, got None")
    if spec.sequence and isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise UsageError(f"{label} must be a list of strings, got {list(value)!r}")
        return tuple(value)
    if spec.enum is not None and isinstance(value, str):
        return _coerce_enum(label, spec, value)
    # bool is an int in Python: refuse True for an int setting and 1 for a bool setting.
    ok = None
    for t in spec.types:
        if t is type(None) or t is tuple or (isinstance(t, type) and issubclass(t, enum.Enum)):
            continue
        if isinstance(value, bool) and t in (int, float):
            continue
        if isinstance(value, t):
            ok = t
            break
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = float, float(value)
            break
        if t is not str and t not in (int, float, bool) and isinstance(value, str):  # e.g. Path
            ok, value = t, t(value)
            break
    if ok is None:
        raise UsageError(f"{label} must be {_type_names(spec)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):  # nan passes every comparison below
            raise UsageError(f"{label}: {value!r} is not a finite number")
        if spec.minimum is not None and value < spec.minimum:
            raise UsageError(f"{label}: {value!r} is below the minimum {spec.minimum:g}")
        if spec.maximum is not None and value > spec.maximum:
            raise UsageError(f"{label}: {value!r} is above the maximum {spec.maximum:g}")
    return value


def check_section(cls: type, section: str, values: Any, where: str = "recipe") -> dict[str, Any]:
    """A recipe section checked against ``cls``: unknown keys name the nearest valid one, values are
    type-checked (labels ``where: 'section.key'``). Values keep their YAML form (lists stay lists)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"{where}: section '{section}' must be a mapping of settings")
    keys = recipe_keys(cls)
    out: dict[str, Any] = {}
    for k, v in values.items():
        k = str(k)
        if k not in keys:
            raise unknown_key(f"{where} [{section}]", k, list(keys))
        checked = check_value(f"{where}: '{section}.{k}'", keys[k], v)
        out[k] = list(checked) if isinstance(checked, tuple) else checked
    return out


def defaults(cls: type) -> dict[str, Any]:
    """The built-in defaults of the recipe-settable keys (tuples as lists, Enums as their values)."""
    return {k: _plain(s.default) for k, s in recipe_keys(cls).items()}


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, enum.Enum):
        return v.value
    return v


def resolve_config(
    cls: type[T],
    section: str,
    recipe_section: dict[str, Any] | None,
    overrides: dict[str, Any] | None = None,
    *,
    fixed: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[T, dict[str, str]]:
    """``cls`` built from defaults < ``recipe_section`` < ``overrides`` (None = not given).

    ``fixed`` are values that are not settings with defaults in the recipe sense (paths of this run,
    required fields): passed to the constructor as they are. ``labels``: the option that gave an override
    where the command calls it otherwise (``run``'s ``--val-batch`` for validate's ``batch``), for the
    messages. Unknown override keys are errors naming the nearest key. Returns the config and, per recipe
    key, its source ("default", "recipe" or "cli").
    """
    all_specs = specs(typing.cast(type, cls))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for k, s in all_specs.items():
        if s.recipe:
            sources[k] = "default"
    for k, v in (recipe_section or {}).items():
        if k not in all_specs or not all_specs[k].recipe:
            raise unknown_key(f"recipe [{section}]", k, list(recipe_keys(cls)))
        values[k] = check_value(f"recipe: '{section}.{k}'", all_specs[k], v)
        sources[k] = "recipe"
    for k, v in (overrides or {}).items():
        if k not in all_specs:
            raise unknown_key(f"{section} options", k, list(all_specs))
        if v is None:
            continue
        values[k] = check_value((labels or {}).get(k, all_specs[k].label), all_specs[k], v)
        if k in sources:
            sources[k] = "cli"
    return cls(**{**values, **(fixed or {})}), sources


def as_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-able values (Enums as strings, tuples as lists, paths as strings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, tuple):
            v = [_plain(x) for x in v]
        elif hasattr(v, "__fspath__"):
            v = str(v)
        out[f.name] = v
    return out


#: spellings of a dynamic batch; -1 (ONNX's convention) and an empty value are refused, not taken as dynamic:
#: ``export --batch -1`` silently exported a dynamic batch
_DYNAMIC_WORDS = ("dynamic", "dyn")


def parse_batch_spec(spec: str | int | None, *, dynamic: bool, profile: bool) -> tuple[int, int, int] | None:
    """The one ``--batch`` grammar (export: a fixed N or dynamic; build-engine: N or an engine profile).

    None -> None; ``dynamic`` (also ``dyn``) -> None where ``dynamic`` is allowed;
    ``N`` -> (N, N, N); ``MIN,OPT,MAX`` -> (MIN, OPT, MAX) where ``profile`` is allowed. Whole numbers >= 1,
    MIN <= OPT <= MAX; anything else is a UsageError naming --batch and the accepted forms.
    """
    if spec is None:
        return None
    text = str(spec).strip().lower()
    if dynamic and text in _DYNAMIC_WORDS:
        return None
    parts = [p.strip() for p in text.split(",")]
    numbers = all(re.fullmatch(r"-?\d+", p) for p in parts)
    if len(parts) == 3 and numbers and not profile:
        raise UsageError(
            f"--batch '{spec}' is a MIN,OPT,MAX engine profile (build-engine --batch); the ONNX has one batch "
            "dimension: use --batch dynamic (then build-engine --batch MIN,OPT,MAX) or --batch N"
        )
    if len(parts) not in ((1, 3) if profile else (1,)) or not numbers:
        if profile:
            raise UsageError(
                f"--batch '{spec}' is not N or MIN,OPT,MAX (positive integers, e.g. --batch 1 or --batch 1,8,32)"
            )
        raise UsageError(f"--batch '{spec}' is neither 'dynamic' nor a whole number; use --batch dynamic or --batch 8")
    vals = [int(p) for p in parts]
    if any(v < 1 for v in vals):
        fix = "; for a dynamic batch use --batch dynamic" if dynamic else ""
        raise UsageError(f"--batch '{spec}': batch sizes must be >= 1{fix}")
    if len(vals) == 1:
        return vals[0], vals[0], vals[0]
    lo, opt, hi = vals
    if not lo <= opt <= hi:
        raise UsageError(f"--batch '{spec}': need MIN <= OPT <= MAX (got {lo}, {opt}, {hi})")
    return lo, opt, hi
