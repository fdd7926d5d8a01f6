"""Recipes: YAML files with the quantize / build / validate settings for one model on one target.

Precedence is defaults < recipe < explicit CLI options. Unknown keys are errors that name the nearest
valid key; values are type-checked. The schema below is the single list of keys (data, not code).

A recipe file ``recipes/<model>-<target>.yaml``::

    model: convnextv2_nano
    target: orin_nano
    img_size: 224
    quantize: {backend: ort, calib_method: minmax, policy: convnext, calib_size: 512}
    build: {fp16: true, batch: "1", workspace_mib: 1024, opt_level: 3}
    validate: {max_drop: 0.5, latency_batch: 1, warmup: 50, iters: 200, cuda_graph: true}

Input: a recipe path or name. Output: :class:`Recipe`; :func:`resolve` merges one section with CLI values.

Usage::

    recipe = load_recipe("convnextv2_nano-orin_nano")
    values, sources = resolve("build", recipe, {"batch": "1,8,32"})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconvnext.errors import UsageError, nearest


def _recipes_dir() -> Path:
    """The repository's recipes/ folder beside the package (a checkout or an editable install), else where a
    wheel install put it (pyproject's data-files: <prefix>/share/edgeconvnext/recipes, found via the
    installed file list, so --user and venv installs work too)."""
    repo = Path(__file__).resolve().parent.parent / "recipes"
    if repo.is_dir():
        return repo
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("edgeconvnext")
    except PackageNotFoundError:
        return repo
    for f in dist.files or []:
        if f.suffix == ".yaml" and f.parent.name == "recipes" and f.parent.parent.name == "edgeconvnext":
            return Path(dist.locate_file(f)).resolve().parent
    return repo


#: where the recipe files live
RECIPES_DIR = _recipes_dir()


@dataclass(frozen=True)
class Key:
    """One setting: accepted types, default, help."""

    types: tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


TARGETS: dict[str, dict[str, Any]] = {
    # DLA cores and memory shape the defaults; ConvNeXt runs on the GPU everywhere (no DLA support).
    "orin_nano": {
        "description": "Jetson Orin Nano 8GB / Super (JetPack 6.x, TensorRT 10.3)",
        "dla_cores": 0,
        "memory_gb": 8,
    },
    "orin_nx": {"description": "Jetson Orin NX 8/16GB (JetPack 6.x)", "dla_cores": 2, "memory_gb": 16},
    "agx_orin": {"description": "Jetson AGX Orin 32/64GB (JetPack 6.x)", "dla_cores": 2, "memory_gb": 64},
    "dgpu": {"description": "x86 workstation or server GPU (TensorRT 10.x/11.x)", "dla_cores": 0, "memory_gb": None},
}

SCHEMA: dict[str, dict[str, Key]] = {
    # keys and defaults follow edgeconvnext.quantization.pipeline.QuantizeConfig
    "quantize": {
        "method": Key((str,), "ptq", "ptq (post-training quantization)", choices=("ptq",)),
        "backend": Key((str,), "ort", "quantizer: ort (onnxruntime quantize_static) or nncf", choices=("ort", "nncf")),
        "calib_method": Key(
            (str,),
            "minmax",
            "activation range estimator (ort: minmax/percentile/entropy; nncf: minmax/mse)",
            choices=("minmax", "percentile", "entropy", "mse"),
        ),
        "policy": Key(
            (str,),
            "convnext",
            "convnext: INT8 MLPs and downsample convs, stem/depthwise/classifier in float; all: every conv/matmul",
            choices=("convnext", "all"),
        ),
        "exclude": Key((list,), [], "extra layers kept out of INT8 (fnmatch patterns on module names)"),
        "calib_size": Key((int,), 512, "calibration images (>= ~500 for CNNs)", minimum=1),
        "min_calib_size": Key((int,), 32, "refuse fewer calibration images than this", minimum=1),
        "seed": Key((int,), 0, "seed choosing the calibration subset"),
        "keep_fp32": Key((bool,), True, "keep the FP32 ONNX the INT8 one was made from (validate --baseline)"),
    },
    "build": {
        "fp16": Key((bool,), False, "run the non-INT8 layers in FP16 (converts an FP32 ONNX)"),
        "batch": Key((str, int, type(None)), None, "N or MIN,OPT,MAX (None: the ONNX's batch, or 1)"),
        "workspace_mib": Key((int,), 1024, "builder workspace limit in MiB", minimum=1),
        "opt_level": Key((int,), 3, "builder optimization level", minimum=0, maximum=5),
        "timing_cache": Key((str, type(None)), None, "timing cache file reused and saved between builds"),
        "dla_core": Key((int, type(None)), None, "DLA core (always refused for ConvNeXt)"),
    },
    "validate": {
        "batch": Key((int,), 32, "images per inference batch for accuracy", minimum=1),
        "max_drop": Key(
            (int, float, type(None)), None, "fail when top-1 drops more points than this vs FP32", minimum=0
        ),
        "limit": Key((int, type(None)), None, "evaluate a seeded subset of N images (None: all)", minimum=1),
        "latency_batch": Key((int,), 1, "batch size of the latency measurement", minimum=1),
        "warmup": Key((int,), 50, "untimed warm-up iterations", minimum=0),
        "iters": Key((int,), 200, "timed iterations", minimum=1),
        "cuda_graph": Key((bool,), True, "replay the engine as a CUDA graph when timing"),
    },
}

TOP_LEVEL: dict[str, Key] = {
    "model": Key((str,), None, "architecture (timm name)"),
    "target": Key((str,), None, "deployment target", choices=tuple(TARGETS)),
    "description": Key((str,), "", "free text"),
    "img_size": Key((int, type(None)), None, "input size in pixels", minimum=16),
}


def defaults(section: str) -> dict[str, Any]:
    """The built-in defaults of a section."""
    _check_section(section)
    return {k: (list(v.default) if isinstance(v.default, list) else v.default) for k, v in SCHEMA[section].items()}


def _check_section(section: str) -> None:
    if section not in SCHEMA:
        hint = nearest(section, list(SCHEMA))
        raise UsageError(f"unknown recipe section '{section}'" + (f"; did you mean '{hint}'?" if hint else ""))


def _check_value(label: str, spec: Key, value: Any) -> Any:
    """Type, choices and range of one value; ``label`` names the setting in the message."""
    # bool is an int in Python: refuse True for an int setting and 1 for a bool setting.
    ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) for t in spec.types)
    if not ok:
        names = "/".join("null" if t is type(None) else t.__name__ for t in spec.types)
        raise UsageError(f"{label} must be {names}, got {value!r}")
    if spec.choices is not None and value is not None and value not in spec.choices:
        hint = nearest(str(value), [str(c) for c in spec.choices])
        raise UsageError(
            f"{label}: {value!r} is not one of {', '.join(map(str, spec.choices))}"
            + (f"; did you mean '{hint}'?" if hint else "")
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            raise UsageError(f"{label}: {value!r} is below the minimum {spec.minimum:g}")
        if spec.maximum is not None and value > spec.maximum:
            raise UsageError(f"{label}: {value!r} is above the maximum {spec.maximum:g}")
    return value


def _unknown(where: str, key: str, valid: list[str]) -> UsageError:
    hint = nearest(key, valid)
    return UsageError(
        f"{where}: unknown key '{key}'" + (f"; did you mean '{hint}'?" if hint else f"; valid keys: {', '.join(valid)}")
    )


@dataclass
class Recipe:
    """A validated recipe: top-level values and the keys each section sets."""

    path: Path
    model: str | None = None
    target: str | None = None
    description: str = ""
    img_size: int | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def validate_recipe(data: Any, where: str = "recipe") -> Recipe:
    """Check a parsed YAML mapping against the schema; unknown keys name the nearest valid one."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a recipe is a YAML mapping (model:, target:, quantize:, build:, validate:)")
    rec = Recipe(path=Path(where))
    valid_top = list(TOP_LEVEL) + list(SCHEMA)
    for key, value in data.items():
        key = str(key)
        if key in TOP_LEVEL:
            setattr(rec, key, _check_value(f"{where}: '{key}'", TOP_LEVEL[key], value))
        elif key in SCHEMA:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UsageError(f"{where}: section '{key}' must be a mapping of settings")
            section: dict[str, Any] = {}
            for k, v in value.items():
                k = str(k)
                if k not in SCHEMA[key]:
                    raise _unknown(f"{where} [{key}]", k, list(SCHEMA[key]))
                section[k] = _check_value(f"{where}: '{key}.{k}'", SCHEMA[key][k], v)
            rec.sections[key] = section
        else:
            raise _unknown(where, key, valid_top)
    if rec.model is not None:
        from edgeconvnext.models.registry import resolve as resolve_arch

        rec.model = resolve_arch(rec.model).name
    return rec


def find_recipe(name_or_path: str | Path) -> Path:
    """A path to an existing file, or a recipe name in recipes/ (``convnextv2_nano-orin_nano``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (RECIPES_DIR / f"{name_or_path}.yaml", RECIPES_DIR / f"{name_or_path}.yml"):
        if cand.is_file():
            return cand
    names = [q.stem for q in list_recipes()]
    hint = nearest(str(name_or_path), names)
    raise UsageError(
        f"recipe '{name_or_path}' not found (neither a file nor a name in {RECIPES_DIR})"
        + (f"; did you mean '{hint}'?" if hint else f"; available: {', '.join(names) or 'none'}")
    )


def list_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe file (YAML)."""
    import yaml

    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from None
    rec = validate_recipe(data, str(path))
    rec.path = path
    return rec


def resolve(
    section: str, recipe: Recipe | None, cli: dict[str, Any] | None = None, *, cli_names: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge defaults < recipe < CLI for ``section``; CLI values of None mean "not given".

    ``cli_names`` maps a key to its option (``{"workspace_mib": "--workspace"}``) for error messages.
    Returns the values and, per key, where the value came from ("default", "recipe" or "cli").
    """
    values = defaults(section)
    sources = {k: "default" for k in values}
    if recipe is not None:
        for k, v in recipe.sections.get(section, {}).items():
            values[k] = v
            sources[k] = "recipe"
    for k, v in (cli or {}).items():
        if k not in SCHEMA[section]:
            raise _unknown(f"{section} options", k, list(SCHEMA[section]))
        if v is None:
            continue
        label = (cli_names or {}).get(k, f"--{k.replace('_', '-')}")
        values[k] = _check_value(label, SCHEMA[section][k], v)
        sources[k] = "cli"
    return values, sources
