"""Recipes: YAML files with the quantize / build / validate settings for one model on one target.

Precedence is defaults < recipe < explicit CLI options. Unknown keys are errors that name the nearest
valid key; values are type-checked. A section's keys and defaults are the fields of its stage's config
class (:data:`SECTIONS`; checked by :mod:`edgeconvnext.config`): one list, nothing written twice.

A recipe file ``recipes/<model>-<target>.yaml``::

    model: convnextv2_nano
    target: orin_nano
    img_size: 224
    quantize: {backend: ort, calib_method: minmax, policy: convnext, calib_size: 512}
    build: {fp16: true, batch: "1", workspace_mib: 1024, opt_level: 3}
    validate: {max_drop: 0.5, latency_batch: 1, warmup: 50, iters: 200, cuda_graph: true}
    budget: {max_drop: 0.3}   # with --val-data: the accuracy-budget search of PTQ (quantize, run)

Input: a recipe path or name. Output: :class:`Recipe`; :func:`resolve` merges one section with CLI values.

Usage::

    recipe = load_recipe("convnextv2_nano-orin_nano")
    values, sources = resolve("build", recipe, {"batch": "1,8,32"})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edgeconvnext.config import Spec, check_section, check_value, recipe_keys, unknown_key
from edgeconvnext.config import defaults as config_defaults
from edgeconvnext.engine.config import BuildRequest
from edgeconvnext.errors import UsageError, nearest
from edgeconvnext.evaluate.config import ValidateConfig
from edgeconvnext.export.config import ExportConfig
from edgeconvnext.quantize.config import BudgetConfig, QuantizeConfig
from edgeconvnext.quantize.qat_config import QatConfig
from edgeconvnext.train.config import FinetuneConfig


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
            return Path(str(dist.locate_file(f))).resolve().parent
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

#: recipe section -> the stage's config class: its fields (and their defaults) are the section's keys
SECTIONS: dict[str, type] = {
    "export": ExportConfig,
    "quantize": QuantizeConfig,
    "budget": BudgetConfig,  # PTQ's accuracy-budget search: applied when the command is given --val-data
    "qat": QatConfig,
    "build": BuildRequest,
    "validate": ValidateConfig,
    "finetune": FinetuneConfig,
}
SCHEMA: dict[str, dict[str, Spec]] = {name: recipe_keys(cls) for name, cls in SECTIONS.items()}

TOP_LEVEL: dict[str, Key] = {
    "model": Key((str,), None, "architecture (timm name)"),
    "target": Key((str,), None, "deployment target", choices=tuple(TARGETS)),
    "description": Key((str,), "", "free text"),
    "img_size": Key((int, type(None)), None, "input size in pixels", minimum=16),
}


def defaults(section: str) -> dict[str, Any]:
    """The built-in defaults of a section (the stage config's field defaults)."""
    _check_section(section)
    return config_defaults(SECTIONS[section])


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


_unknown = unknown_key


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

    def model_to_load(self, model: str | None, checkpoint: str | Path | None) -> str | None:
        """The architecture to load with this recipe: ``--model`` (refused when the recipe is for another
        one), else the recipe's ``model:`` for random weights; with a checkpoint and no ``--model``, None:
        the checkpoint says, and :meth:`check_loaded` then compares it with ``model:`` (so a mismatch names
        the recipe, not a --model the user never gave)."""
        if self.model is None:
            return model
        if model is not None:
            from edgeconvnext.models.registry import resolve as resolve_arch

            name = resolve_arch(model).name
            if name != self.model:
                raise UsageError(
                    f"--model {model} but --recipe {self.name} is for {self.model}: its settings were made for "
                    f"another model; choose the recipe for {name} or drop --model"
                )
            return model
        return None if checkpoint is not None else self.model

    def check_loaded(self, arch: str, checkpoint: str | Path | None) -> None:
        """A checkpoint of another architecture than the recipe's ``model:`` is refused, naming both."""
        if self.model is not None and arch != self.model:
            raise UsageError(
                f"--recipe {self.name} is for {self.model} but {checkpoint} holds a {arch}: use a recipe for "
                f"{arch} (recipes/) or the {self.model} checkpoint"
            )


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
            rec.sections[key] = check_section(SECTIONS[key], key, value, where)
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
    if p.is_dir():
        raise UsageError(f"--recipe {name_or_path} is a folder; give a recipe YAML file or a recipe name")
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


def _unique_keys_loader(yaml: Any, path: Path) -> Any:
    """yaml.SafeLoader that refuses a key given twice in one mapping (``calib_size: 32`` then ``calib_size: 64``:
    SafeLoader keeps the last without a word), naming the key and its line."""

    class UniqueKeys(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges: only explicit keys repeat
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # '? [a, b]': construct_mapping says what YAML says of it
                continue
            if key in seen:
                raise UsageError(
                    f"{path}: '{key}' is given twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}; the last would win without a word): keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=deep)

    UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeys


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe file (YAML)."""
    import yaml

    path = find_recipe(name_or_path)
    try:
        data = yaml.load(path.read_text(), Loader=_unique_keys_loader(yaml, path))  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from None
    rec = validate_recipe(data, str(path))
    rec.path = path
    return rec


def resolve(
    section: str, recipe: Recipe | None, cli: dict[str, Any] | None = None, *, cli_names: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge defaults < recipe < CLI for ``section`` as plain values; CLI values of None mean "not given".

    ``cli_names`` maps a key to its option for error messages (default: the config field's option).
    Returns the values and, per key, where the value came from ("default", "recipe" or "cli"). The stages
    resolve their typed configs with their own ``resolve`` (``edgeconvnext.quantize.config.resolve`` ...).
    """
    values = defaults(section)
    sources = {k: "default" for k in values}
    if recipe is not None:
        for k, v in recipe.sections.get(section, {}).items():
            values[k] = v
            sources[k] = "recipe"
    keys = SCHEMA[section]
    for k, v in (cli or {}).items():
        if k not in keys:
            raise unknown_key(f"{section} options", k, list(keys))
        if v is None:
            continue
        label = (cli_names or {}).get(k, keys[k].label)
        checked = check_value(label, keys[k], v)
        values[k] = checked.value if isinstance(checked, Enum) else checked
        sources[k] = "cli"
    return values, sources
