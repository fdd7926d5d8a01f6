"""The device bundle: what a Jetson (or any TensorRT machine) needs to build, validate and time the engines.

Input: a finished run (:class:`~edgeconvnext.pipeline.run.Pipeline`). Output: ``RUN/bundle/``::

    onnx/NAME.{fp32,fp16,int8,int8.fp16}.onnx   the artifacts the engines are built from
    recipe.yaml                                 the resolved settings, loadable as a recipe (quantize, with an accuracy
                                                budget's reverted layers in exclude; qat; build; validate)
    images/CLASS/FILE (+ labels.txt)            with --bundle-images N: a seeded subset of the validation images
    trtexec.sh                                  the exact trtexec commands (strongly typed, the recipe's profile)
    report.json, report.md                      the workstation's report; device-check appends its section
    README.md                                   the two commands to run on the device
    manifest.json                               every file above with its sha256 and size (report.* excepted)

:func:`verify_bundle` checks a copied bundle against its manifest: a missing file or one whose sha256
differs is named with both hashes; nothing is built from a bundle that does not verify.

Usage::

    files = write_bundle(pipeline);  manifest = verify_bundle(Path("runs/nano/bundle"))
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeconvnext import __version__
from edgeconvnext.artifacts import atomic_output, sha256_file, write_json_atomic
from edgeconvnext.errors import CheckpointError, DataError, UsageError

if TYPE_CHECKING:
    from edgeconvnext.data.folders import LabelledImages
    from edgeconvnext.pipeline.run import Pipeline

BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
#: files device-check rewrites: listed, not hash-checked
MUTABLE = ("report.json", "report.md", "report.html")
IMAGES_SEED = 0

README = """# edgeconvnext device bundle: {model} ({img_size} px)

Made by `edgeconvnext run` on {machine}, {date} (edgeconvnext {version}). It holds the ONNX files
({onnx}), the resolved recipe (`recipe.yaml`: batch profile {batch}, workspace {workspace} MiB),
{images} and `manifest.json` (sha256 of every file, checked before anything is built).

On the device (TensorRT, CUDA and Python with numpy, Pillow and onnx; torch is not needed, and a plain
`pip install edgeconvnext` would pull it: install without dependencies, then what the device side uses):

```bash
pip install --no-deps edgeconvnext              # once; JetPack already ships TensorRT's Python bindings
pip install numpy pillow pyyaml 'typer>=0.29.2,<0.30' rich onnx==1.23.2 'ml_dtypes>=0.5.4,<0.7' 'cuda-python>=12.6'
edgeconvnext device-check .                     # from this folder: build, validate and time each engine
```

device-check appends a device section (device, JetPack, TensorRT, power mode, clocks, the table) to
`report.json` and `report.md` here. Without the Python bindings, the trtexec commands in `trtexec.sh`
build the same engines (run them from this folder).
"""


def _copy(src: Path, dst: Path) -> Path:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def bundle_images_source(n: int, val_data: Path, labels: Path | None) -> LabelledImages:
    """The labelled validation images ``--bundle-images n`` copies from, refused when ``val_data`` is not labelled
    or holds fewer than ``n`` images (checked when run starts, and again by the bundle stage)."""
    from edgeconvnext.data.folders import LabelledImages

    try:
        ds = LabelledImages.discover(val_data, labels, labels_option="--labels")
    except DataError as e:
        raise DataError(f"--bundle-images {n} copies labelled validation images: {e}") from None
    if n > len(ds):
        raise UsageError(f"--bundle-images {n}: {val_data} holds {len(ds)} images; give at most {len(ds)}")
    return ds


def _images(p: Pipeline, dest: Path) -> tuple[list[Path], dict[str, Any] | None]:
    """A seeded subset of ``n`` validation images in class folders (labels travel as folder names)."""
    n = p.opts.bundle_images
    if not n:
        return [], None
    import numpy as np

    ds = bundle_images_source(n, p.opts.val_data, p.opts.labels)  # type: ignore[arg-type]
    idx = sorted(np.random.default_rng(IMAGES_SEED).choice(len(ds), size=n, replace=False).tolist())
    out = []
    used: set[str] = set()
    for i in idx:
        src = ds.paths[i]
        cls = ds.class_names[ds.labels[i]]
        name = src.name
        k = 1
        while f"{cls}/{name}" in used:  # same file name in two sub-folders of the source
            name = f"{src.stem}_{k}{src.suffix}"
            k += 1
        used.add(f"{cls}/{name}")
        out.append(_copy(src, dest / "images" / cls / name))
    return out, {"count": n, "folder": "images", "seed": IMAGES_SEED, "of": len(ds), "classes": ds.class_names}


def trtexec_commands(p: Pipeline, bundle: Path) -> list[str]:
    """The trtexec command of each engine, with paths relative to the bundle (run from inside it)."""
    from edgeconvnext.engine.build import dry_run

    lines = []
    for _, onnx in p.onnx_artifacts():
        src = bundle / "onnx" / onnx.name
        req = p.build_request(src, bundle / "engines" / (onnx.name[: -len(".onnx")] + ".engine"))
        req.trtexec = None
        res = dry_run(req)
        cmd = res["trtexec_command"]
        if cmd is None:
            lines.append(f"# {onnx.name}: {res['steps'][-1]}")
            continue
        cmd = ["trtexec"] + [c.replace(f"{bundle}/", "") for c in cmd[1:]]
        from edgeconvnext.engine.build import format_command

        lines.append(format_command(cmd))
    return lines


def write_bundle(p: Pipeline) -> list[Path]:
    from edgeconvnext.evaluate.latency import cpu_name

    dest = p.out / "bundle"
    files: list[Path] = []
    onnx = []
    for key, path in p.onnx_artifacts():
        files.append(_copy(path, dest / "onnx" / path.name))
        onnx.append({"key": key, "path": f"onnx/{path.name}"})
    with atomic_output(dest / "recipe.yaml") as tmp:
        exp = p.results.get("export") or {}
        budget = (p.results.get("quantize") or {}).get("budget")
        tmp.write_text(p.cfg.recipe_yaml(exp.get("arch"), exp.get("img_size"), budget))
    files.append(dest / "recipe.yaml")
    imgs, images = _images(p, dest)
    files += imgs
    cmds = trtexec_commands(p, dest)
    with atomic_output(dest / "trtexec.sh") as tmp:
        tmp.write_text(
            "#!/bin/sh\n# run from this folder: the engines go to engines/\nset -e\nmkdir -p engines\n"
            + "\n".join(cmds)
            + "\n"
        )
    files.append(dest / "trtexec.sh")
    rep = json.loads((p.out / "report.json").read_text())
    b = p.cfg.build
    with atomic_output(dest / "README.md") as tmp:
        tmp.write_text(
            README.format(
                model=rep.get("model"),
                img_size=rep.get("img_size"),
                machine=cpu_name(),
                date=rep.get("created", "")[:10],
                version=__version__,
                onnx=", ".join(Path(o["path"]).name for o in onnx),
                batch=b.get("batch") or "1",
                workspace=b.get("workspace_mib"),
                images=(
                    f"{images['count']} validation images (`images/`)"
                    if images
                    else "no validation images (run with --bundle-images N to carry some)"
                ),
            )
        )
    files.append(dest / "README.md")
    for name in ("report.json", "report.md"):
        _copy(p.out / name, dest / name)
    listed = [{"path": str(f.relative_to(dest)), "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files]
    manifest = {
        "kind": "edgeconvnext-bundle",
        "version": BUNDLE_VERSION,
        "edgeconvnext": __version__,
        "model": rep.get("model"),
        "img_size": rep.get("img_size"),
        "onnx": onnx,
        "baseline": "onnx/" + p.paths["fp32"].name,
        "build": dict(b),
        "validate": dict(p.cfg.validate),
        "latency_batches": p.cfg.latency_batches,
        "images": images,
        "files": listed,
        "mutable": list(MUTABLE),
    }
    write_json_atomic(dest / MANIFEST, manifest)
    return files + [dest / MANIFEST, dest / "report.json", dest / "report.md"]


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """The manifest of ``bundle`` after checking every listed file's sha256; CheckpointError (exit 3) naming
    the first missing or changed model file, DataError (exit 4) for an image."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise UsageError(f"BUNDLE {bundle}: not a folder (give the bundle/ folder that 'edgeconvnext run' wrote)")
    mpath = bundle / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(
            f"{bundle} has no {MANIFEST}: it is not an edgeconvnext bundle, or it was copied without it "
            "(copy the whole bundle/ folder that 'edgeconvnext run' wrote)"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mpath} is not readable JSON ({e}); copy the bundle again") from None
    if manifest.get("kind") != "edgeconvnext-bundle":
        raise CheckpointError(f"{mpath} is not an edgeconvnext bundle manifest")
    if manifest.get("version", 0) > BUNDLE_VERSION:
        raise UsageError(f"{bundle} was written by a newer edgeconvnext ({manifest.get('edgeconvnext')}); upgrade")
    missing, changed = [], []
    for f in manifest["files"]:
        path = bundle / f["path"]
        if not path.is_file():
            missing.append(f)
        elif sha256_file(path) != f["sha256"]:
            changed.append((f, sha256_file(path)))
    for f in missing + [c[0] for c in changed]:
        err = DataError if f["path"].startswith("images/") else CheckpointError
        n_bad = len(missing) + len(changed)
        more = f" ({n_bad - 1} more file(s) also missing or changed)" if n_bad > 1 else ""
        if f in missing:
            raise err(
                f"{bundle / f['path']} is missing from the bundle (manifest sha256 {f['sha256'][:16]}...){more}: "
                "copy the whole bundle folder again"
            )
        got = dict((c[0]["path"], c[1]) for c in changed)[f["path"]]
        raise err(
            f"{bundle / f['path']} was changed after the bundle was written: sha256 {got[:16]}... but the "
            f"manifest says {f['sha256'][:16]}...{more}; copy the bundle again or rerun 'edgeconvnext run'"
        )
    return manifest


def bundle_summary(manifest: dict[str, Any]) -> str:
    return f"{len(manifest['files'])} files verified (sha256), {len(manifest['onnx'])} ONNX"
