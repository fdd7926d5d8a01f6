"""The CLI boundary: option-parsing errors are one 'error:' line with exit code 2, Ctrl-C is exit 130."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeconvnext.cli import app, main
from edgeconvnext.cli._common import COMMANDS


@pytest.mark.parametrize(
    "args,message",
    [
        (["export"], "Missing option '--output'"),
        (["export", "-o", "x.onnx", "--img-size", "abc"], "Invalid value for '--img-size'"),
        (["export", "-o", "x.onnx", "--bogus"], "No such option: --bogus"),
        (["expor"], "Did you mean 'export'?"),
        (["inspect"], "Missing argument"),
        (["validate", "--batch", "x"], "Invalid value for '--batch'"),
    ],
)
def test_usage_errors_are_one_error_line(capsys, args, message):
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "--help" in lines[0] and "╭" not in err and out == ""


def test_help_and_bare_command(capsys):
    assert main(["export", "--help"]) == 0
    assert "--output" in capsys.readouterr().out
    assert main([]) == 2  # no command: the help, as before
    assert "Commands" in capsys.readouterr().out


def test_ctrl_c_in_a_command_is_exit_130_with_one_line(capsys):
    @app.command("_interrupt_test", hidden=True)
    def _interrupt() -> None:
        raise KeyboardInterrupt

    try:
        assert main(["_interrupt_test"]) == 130
    finally:
        app.registered_commands.pop()
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_models_table_keeps_every_name_whole_in_80_columns(capsys, monkeypatch):
    # piped output is 80 columns wide: the names were cut to 'convnextv2_at…'
    from edgeconvnext.models import registry as zoo

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(zoo, "count_stats", lambda arch: {"params_m": 1.0, "gmacs": 1.0})  # the table, not the maths
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for name in zoo.public_names():
        assert f" {name} " in out


def test_a_library_error_quoting_a_multi_line_message_stays_one_line(capsys):
    from edgeconvnext.errors import ExportError

    @app.command("_multiline_test", hidden=True)
    def _fail() -> None:
        raise ExportError("torch.onnx.export failed: RuntimeError: first line\n  second line\n\n  third")

    try:
        assert main(["_multiline_test"]) == 5
    finally:
        app.registered_commands.pop()
    assert capsys.readouterr().err == "error: torch.onnx.export failed: RuntimeError: first line second line third\n"


def test_global_flags_work_after_the_command(capsys, monkeypatch):
    # 'edgeconvnext export ... --quiet' was "No such option: --quiet"
    from edgeconvnext.cli import _hoist_global_flags
    from edgeconvnext.models import registry as zoo

    monkeypatch.setattr(zoo, "count_stats", lambda arch: {"params_m": 1.0, "gmacs": 1.0})

    assert _hoist_global_flags(["export", "-o", "m.onnx", "-q", "--debug"]) == [
        "-q",
        "--debug",
        "export",
        "-o",
        "m.onnx",
    ]
    assert _hoist_global_flags(["inspect", "--", "-q"]) == ["inspect", "--", "-q"]
    rc = main(["models", "--json", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0 and out.err == "" and out.out.lstrip().startswith("[")


def test_tilde_after_equals_is_expanded(tmp_path, monkeypatch, capsys):
    # the shell leaves '--output=~/m.onnx' alone: a folder named '~' appeared in the working directory
    from edgeconvnext.cli import _expand_user

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _expand_user(["export", "--output=~/m.onnx", "--model=~x", "-o", "~/y"]) == [
        "export",
        f"--output={tmp_path}/home/m.onnx",
        "--model=~x",
        "-o",
        "~/y",
    ]  # ~x: no such user, kept
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("onnxruntime")
    assert main(["-q", "export", "--model=convnext_test", "--img-size=32", "--output=~/m.onnx"]) == 0
    assert (tmp_path / "home" / "m.onnx").is_file() and not (tmp_path / "~").exists()


def test_paths_with_brackets_are_printed_as_they_are(tmp_path, capsys):
    # rich read 'm[bold].onnx' as markup and printed 'm.onnx': the path shown was not the file written
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m[bold].onnx"
    assert main(["-q", "export", "--model", "convnext_test", "--img-size", "32", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    report = tmp_path / "r[x].json"
    assert (
        main(
            [
                "-q",
                "validate",
                str(out),
                "--latency",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--latency-batch",
                "1",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    line = capsys.readouterr().out
    assert "m[bold].onnx" in line and str(report) in line and report.is_file()


def test_version(capsys):
    from edgeconvnext import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"edgeconvnext {__version__}\n"


def test_quiet_shows_no_warnings_only_the_final_line(tmp_path, capsys):
    # --quiet is "only errors and the final line": every skipped image was still a WARNING line
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    pytest.importorskip("onnxruntime")
    model = tmp_path / "m.onnx"
    assert (
        main(["-q", "export", "--model", "convnext_test", "--img-size", "32", "--num-classes", "2", "-o", str(model)])
        == 0
    )
    for c in ("0", "1"):
        (tmp_path / "val" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / c / "ok.png")
    (tmp_path / "val" / "0" / "broken.jpg").write_bytes(b"junk")
    r = subprocess.run(
        [sys.executable, "-m", "edgeconvnext", "validate", str(model), "-d", str(tmp_path / "val"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.count("\n") == 1 and "1 unreadable skipped" in r.stdout


def _fresh_cli(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """``main(ARGS)`` in a fresh interpreter; ``code`` runs after it, with ``rc`` its exit code (main() itself: the
    console script's entry() ends the process when main() returns, exit_now)."""
    script = f"import sys\nfrom edgeconvnext.cli import main\nrc = main({list(args)!r})\n" + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_the_console_entry_exits_with_the_code_after_its_output_and_logs_are_out(tmp_path):
    # entry() skips the interpreter's teardown (os._exit): what was printed, logged to a file and buffered in a
    # pipe must still all arrive, with main()'s exit code
    done = subprocess.run(
        [sys.executable, "-m", "edgeconvnext", "models", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)  # the whole table, to its closing bracket
    assert len(rows) == 17 and rows[0]["name"] == "convnext_atto"
    done = subprocess.run([sys.executable, "-m", "edgeconvnext", "no-such-command"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no-such-command" in done.stderr
    log = tmp_path / "log.txt"
    script = (
        "import logging, sys, tempfile\n"
        "from edgeconvnext.cli import exit_now\n"
        f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
        "logging.getLogger('x').info('the last record')\n"
        f"d = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})\n"
        "sys.stdout.write('no newline at the end')\n"
        "exit_now(4)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (4, "no newline at the end")
    assert "the last record" in log.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt"]  # the finalizers ran (atexit)


def test_the_console_entry_waits_for_a_thread_that_is_still_running(tmp_path):
    # a non-daemon thread still writing: the normal exit (SystemExit), which waits for it, not os._exit
    out = tmp_path / "late.txt"
    script = (
        "import threading, time\n"
        "from pathlib import Path\n"
        "from edgeconvnext.cli import exit_now\n"
        f"threading.Thread(target=lambda: (time.sleep(0.5), Path({str(out)!r}).write_text('done'))).start()\n"
        "exit_now(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert out.read_text() == "done"


def test_root_help_lists_every_command_without_importing_any(monkeypatch):
    # the root --help imported every command module (and typer built all of them): ~0.3 s before any output
    monkeypatch.setenv("COLUMNS", "80")
    done = _fresh_cli("--help", code="print(*sorted(sys.modules), sep='\\n', file=sys.stderr)\nsys.exit(rc)")
    assert done.returncode == 0, done.stderr
    modules = set(done.stderr.split())
    assert not {"torch", "onnx", "onnxruntime"} & modules
    assert {m for m in modules if m.startswith("edgeconvnext.cli.")} == {
        "edgeconvnext.cli._common",
        "edgeconvnext.cli._lazy",
    }
    listing = done.stdout.split("\nCommands:\n")[1].splitlines()
    assert [line.split()[0] for line in listing] == [row[0] for row in COMMANDS]
    for line, (name, _, _, summary) in zip(listing, COMMANDS, strict=True):
        shown = line.split(None, 1)[1].removesuffix("...")
        assert len(shown) > 20 and summary.startswith(shown), (name, line)


def test_a_subcommand_help_imports_no_pydantic():
    # typer built a pydantic TypeAdapter for the unset --help flag's None: importing pydantic was a third of
    # 'quantize --help'
    done = _fresh_cli("quantize", "--help", code="print('pydantic' in sys.modules, file=sys.stderr)\nsys.exit(rc)")
    assert done.returncode == 0 and "--calib-data" in done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("name,module,function,summary", COMMANDS, ids=[row[0] for row in COMMANDS])
def test_the_command_table_says_what_each_command_does(name, module, function, summary):
    # the root --help shows the table's summaries: they must be the commands' own, at any terminal width
    import importlib
    import inspect

    from typer._click.utils import make_default_short_help

    from edgeconvnext.cli import _click_exceptions, _command

    callback = getattr(importlib.import_module(f"edgeconvnext.cli.{module}"), function)
    assert summary == inspect.getdoc(callback).splitlines()[0]
    built = _command(_click_exceptions()).get_command(None, name)
    assert built is not None and built.callback.__wrapped__ is callback
    for limit in range(30, 75):
        assert make_default_short_help(summary, limit).strip() == built.get_short_help_str(limit)


def test_an_unknown_command_is_one_error_line():
    done = _fresh_cli("nosuch", code="sys.exit(rc)")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "error: No such command 'nosuch'. (see 'edgeconvnext --help')\n"
    done = _fresh_cli("quantiz", code="sys.exit(rc)")  # a name of the table, none of whose commands is built yet
    assert done.returncode == 2
    assert done.stderr == "error: No such command 'quantiz'. Did you mean 'quantize'? (see 'edgeconvnext --help')\n"


PTQ_COMMANDS = ["quantize", "sensitivity", "run"]


@pytest.mark.parametrize("name", PTQ_COMMANDS)
def test_the_ptq_options_are_the_shared_declarations(name):
    # cli/_options.py declares the PTQ options once; each command takes all of them (ptq_values reads every key)
    from dataclasses import fields

    from edgeconvnext.cli import _click_exceptions, _command
    from edgeconvnext.cli._options import PTQ_KEYS
    from edgeconvnext.quantize.config import QuantizeConfig

    assert set(PTQ_KEYS) <= {f.name for f in fields(QuantizeConfig)}
    group = _command(_click_exceptions())

    def declared(cmd: str) -> dict[str, tuple[list[str], list[str], str | None]]:
        return {p.name: (p.opts, p.secondary_opts, p.help) for p in group.get_command(None, cmd).params}

    mine, quantize = declared(name), declared("quantize")
    assert {k: mine[k] for k in PTQ_KEYS} == {k: quantize[k] for k in PTQ_KEYS}


def test_ptq_values_are_quantize_config_overrides():
    from edgeconvnext.cli._options import PTQ_KEYS, ptq_values

    params = dict.fromkeys(PTQ_KEYS) | {"exclude": ("stem.*", "head.*"), "seed": 0, "smooth": False, "other": 1}
    values = ptq_values(params)
    assert list(values) == list(PTQ_KEYS)  # the command's other parameters stay out
    assert values["exclude"] == ["stem.*", "head.*"] and values["seed"] == 0 and values["smooth"] is False
    assert ptq_values(dict.fromkeys(PTQ_KEYS) | {"exclude": ()})["exclude"] is None  # not given


@pytest.mark.parametrize("name", PTQ_COMMANDS)
def test_each_ptq_command_passes_the_options_to_the_config(name, tmp_path, capsys):
    from pathlib import Path

    import edgeconvnext

    demo = Path(edgeconvnext.__file__).parent / "demo" / "convnextv2_atto_fmnist.safetensors"
    args = {
        "quantize": ["quantize", "-o", str(tmp_path / "q.onnx"), "-m", "convnextv2_test"],
        "sensitivity": ["sensitivity", "--val-data", str(tmp_path), "-m", "convnextv2_test"],
        "run": ["run", "-o", str(tmp_path / "run"), "-c", str(demo)],
    }[name]
    rc = main([*args, "--calib-data", str(tmp_path), "--policy", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: unknown --policy 'nope' (choose from convnext, all)"]


@pytest.mark.parametrize("debug", [False, True])
def test_a_library_warning_is_one_log_line(capsys, caplog, debug):
    # torch's notices (a FutureWarning with a multi-line text) go through the hook that tests/test_hardening.py
    # checks with Pillow's DecompressionBombWarning: one py.warnings record, the first line; --debug: all of it
    # and where it was raised
    import logging
    import warnings

    previous = warnings.showwarning

    @app.command("_warn_test", hidden=True)
    def _warn() -> None:
        warnings.warn("TorchScript is deprecated.\nUse torch.export instead.", FutureWarning, stacklevel=1)

    try:
        with caplog.at_level(logging.WARNING), warnings.catch_warnings():
            warnings.simplefilter("always")  # the registry of the first run would hide the second's
            assert main([*(["--debug"] if debug else []), "_warn_test"]) == 0
    finally:
        app.registered_commands.pop()
    (rec,) = [r for r in caplog.records if r.name == "py.warnings"]
    if debug:
        text, where = rec.getMessage().rsplit(" (", 1)
        assert text == "FutureWarning: TorchScript is deprecated.\nUse torch.export instead."
        assert where.startswith(__file__) and where.endswith(")")
    else:
        assert rec.getMessage() == "FutureWarning: TorchScript is deprecated."
    assert "warnings.warn" not in capsys.readouterr().err  # not Python's two lines ending in the source line
    assert warnings.showwarning is previous  # the hook is undone on return


def test_every_qat_option_of_quantize_is_in_the_qat_table():
    # quantize hands run_qat the values of QAT_FLAGS' parameters and refuses them by those flags with --method ptq
    from edgeconvnext.cli import _click_exceptions, _command
    from edgeconvnext.cli.qat import QAT_FLAGS

    params = {p.name: p for p in _command(_click_exceptions()).get_command(None, "quantize").params}
    for name, flag in QAT_FLAGS.items():
        p = params[name]
        assert flag == "/".join(p.opts + p.secondary_opts), (name, flag)
    qat_only = {n for n, p in params.items() if (p.help or "").startswith("qat:")}
    assert qat_only == set(QAT_FLAGS)  # an option added with a "qat:" help is in the table


def test_library_info_lines_only_with_debug(capsys):
    import logging

    from edgeconvnext.cli._live import ours_or_warning

    def rec(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    # torch's fake-tensor cache statistics are INFO, logged at exit: not one of our lines
    assert not ours_or_warning(rec("torch._subclasses.fake_tensor", logging.INFO))
    assert ours_or_warning(rec("torch._subclasses.fake_tensor", logging.WARNING))
    assert ours_or_warning(rec("edgeconvnext.quantize.ptq", logging.INFO))
    assert ours_or_warning(rec("py.warnings", logging.WARNING))


def test_interrupted_line_points_at_the_resumable_state(tmp_path, capsys):
    import edgeconvnext.cli as cli
    from edgeconvnext.signals import clear_resumable, note_resumable

    state = tmp_path / "q.qat.last.pt"
    state.write_bytes(b"x")
    note_resumable(state, 2)
    try:
        assert cli._interrupted([15]) == 143
        err = capsys.readouterr().err
        assert "terminated by SIGTERM; nothing half-written was kept;" in err
        assert f"{state} holds the state after epoch 2: rerun the command with --resume to continue" in err
        assert cli._interrupted([]) == 130 and "interrupted;" in capsys.readouterr().err  # Ctrl-C: the same hint
        state.unlink()  # the run removed it (finished, or cleaned up): no hint
        assert cli._interrupted([]) == 130 and capsys.readouterr().err.strip() == "error: interrupted"
    finally:
        clear_resumable()


def test_a_torchrun_rank_stopped_by_sigterm_says_so(capsys, monkeypatch):
    import edgeconvnext.cli as cli

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli._interrupted([15]) == 143
    err = capsys.readouterr().err
    assert err.startswith("error: rank 1: stopped by SIGTERM, as torchrun stops every process when one fails")
    monkeypatch.setenv("RANK", "0")  # rank 0 (or a single process) keeps the usual line
    assert cli._interrupted([15]) == 143
    assert capsys.readouterr().err.startswith("error: terminated by SIGTERM; nothing half-written was kept")
