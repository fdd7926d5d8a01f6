"""Shared CLI pieces: the command table, console output and progress displays (the shared option types are in
:mod:`edgeconvnext.cli._options`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from edgeconvnext.artifacts import Skipped


@dataclass
class _State:
    debug: bool = False
    quiet: bool = False


STATE = _State()

# (command name, module in edgeconvnext.cli, function, summary), in pipeline order (as --help lists them). The
# summary is the first line of the function's docstring (tests/test_cli.py checks it): the root --help lists the
# commands from this table without importing their modules (edgeconvnext.cli._lazy).
COMMANDS: list[tuple[str, str, str, str]] = [
    (
        "models",
        "models",
        "models_cmd",
        "List architectures: params (M) and GMACs at 224 px computed from the model, default preprocessing.",
    ),
    (
        "demo",
        "demo",
        "demo_cmd",
        "Run checkpoint -> INT8 ONNX (TensorRT rules checked) -> validation vs FP32 on the bundled Fashion-MNIST demo.",
    ),
    (
        "run",
        "run",
        "run_cmd",
        "Checkpoint to device bundle in one command: FP32, FP16 and INT8 ONNX, TensorRT rules, engines where",
    ),
    (
        "finetune",
        "finetune",
        "finetune_cmd",
        "Fine-tune (or train) a ConvNeXt: AdamW, warm-up + cosine, label smoothing, mild augmentation.",
    ),
    (
        "export",
        "export",
        "export_cmd",
        "Export a checkpoint (or random weights) to ONNX, checked by onnx.checker and verified in onnxruntime.",
    ),
    (
        "quantize",
        "quantize",
        "quantize_cmd",
        "Quantize a checkpoint to INT8 ONNX with explicit Q/DQ that follows TensorRT's rules, calibrated on images.",
    ),
    (
        "sensitivity",
        "sensitivity",
        "sensitivity_cmd",
        "Rank the INT8 layer groups by harm on validation images (each alone in INT8; calibrated once).",
    ),
    (
        "inspect",
        "inspect",
        "inspect_cmd",
        "Describe an ONNX file: ops, opset, inputs/outputs, edgeconvnext metadata, weights, Q/DQ nodes.",
    ),
    (
        "build-engine",
        "build_engine",
        "build_engine_cmd",
        "Build a TensorRT engine (TensorRT 10.x or 11.x, strongly typed) from an ONNX model.",
    ),
    (
        "validate",
        "validate",
        "validate_cmd",
        "Top-1/top-5 of MODEL on labelled images; with a baseline (--baseline ONNX or --checkpoint) the drop,",
    ),
    (
        "doctor",
        "doctor",
        "doctor_cmd",
        "Report GPU, driver, CUDA, TensorRT (bindings and trtexec), Jetson model, JetPack, power mode, clocks,",
    ),
    (
        "device-check",
        "device_check",
        "device_check_cmd",
        "Build each engine of BUNDLE (strongly typed, the recipe's profile and workspace), validate accuracy and",
    ),
]


def console():
    from edgeconvnext.cli._console import CliConsole  # log records print through it while it draws a progress display

    # soft_wrap: a final "wrote X" line stays one line when piped (rich wraps at 80 columns otherwise).
    return CliConsole(stderr=False, highlight=False, soft_wrap=True)


def live_progress() -> bool:
    """Whether to draw progress bars and spinners: not with --quiet, and only on a terminal (piped, rich's
    transient bar left an empty line before the result or the error)."""
    return not STATE.quiet and console().is_terminal


def err(msg: str) -> None:
    """One ``error:`` line: messages that quote a library's multi-line error are joined onto it."""
    one_line = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    print(f"error: {readable(one_line)}", file=sys.stderr)


def readable(text: str) -> str:
    """A file name that is not UTF-8 (or any non-ASCII name under LC_ALL=C) holds surrogate escapes, which a
    UTF-8 terminal cannot encode: shown as '\\xe9' instead of crashing or printing '\\udce9'."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def info(msg: str) -> None:
    if not STATE.quiet:
        console().print(readable(msg))


def done(msg: str) -> None:
    """The one line each stage ends with: output path, size, time."""
    console().print(readable(msg))


def print_skipped(result: Skipped) -> None:
    """The one line of a stage that was skipped because its output's sidecar matched."""
    from rich.markup import escape

    done(escape(result.line()))


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


_P = TypeVar("_P", bound="StepProgress")


class StepProgress:
    """One rich progress line: the current step, and a bar while images load or calibrate.

    Subclasses add columns before the step (``lead_columns``) and task fields (``task_fields``).
    """

    bar_width: int | None = 40  # rich's default

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None
        self._task: Any = None
        self._desc = ""

    def lead_columns(self) -> list[Any]:
        return []

    def task_fields(self) -> dict[str, Any]:
        return {}

    def __enter__(self: _P) -> _P:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._p = Progress(
                SpinnerColumn(),
                *self.lead_columns(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=self.bar_width),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console(),
                transient=True,
            )
            self._p.__enter__()
            self._task = self._p.add_task("starting", total=None, **self.task_fields())
        return self

    def step(self, desc: str) -> None:
        from rich.markup import escape  # descriptions name folders: data, not markup

        self._desc = desc
        if self._p is not None:
            self._p.update(self._task, description=escape(desc), total=None, completed=0)

    def advance(self, done: int, total: int) -> None:
        if self._p is not None:
            self._p.update(self._task, total=total, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


class EpochProgress:
    """A training ProgressHook on one rich progress line: a bar per epoch (loss, images/s and lr beside it),
    one while validating, and ``line`` for what stays printed above it. Subclasses print their epoch's
    summary in ``end_epoch``. ``enabled=False`` draws nothing (rich's ``disable``); the bar itself is drawn
    only on a terminal."""

    def __init__(self, enabled: bool, *, epoch_label: str = "epoch", remaining: bool = False) -> None:
        from rich import progress as rp

        columns: list[Any] = [
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn("{task.fields[stats]}"),
            rp.TimeElapsedColumn(),
        ]
        if remaining:
            columns.append(rp.TimeRemainingColumn())
        out = console()
        # the bar only on a terminal (piped, its transient line left an empty line before the error); the epoch
        # summaries (``line``) print either way
        self.progress = rp.Progress(*columns, console=out, transient=True, disable=not (enabled and out.is_terminal))
        self.enabled = enabled
        self.epoch_label = epoch_label
        self.task: Any = None
        self.epochs = 0

    def __enter__(self: _E) -> _E:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _new(self, description: str, total: int | None) -> None:
        from rich.markup import escape  # descriptions may name folders: data, not markup

        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(escape(description), total=total, stats="")

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        self._new(f"{self.epoch_label} {epoch}/{epochs}", steps)

    def step(self, loss: float, images_per_s: float, lr: float) -> None:
        self.progress.update(self.task, advance=1, stats=f"loss {loss:.4f}  {images_per_s:.0f} img/s  lr {lr:.2e}")

    def validating(self, steps: int) -> None:
        self._new("  validate", steps)

    def val_step(self) -> None:
        self.progress.update(self.task, advance=1)

    def line(self, text: str) -> None:
        """``text`` printed above the bar (plain text, not markup)."""
        self.progress.console.print(text, markup=False)


_E = TypeVar("_E", bound=EpochProgress)
