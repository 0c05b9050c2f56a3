"""Habits both command lines share: --version, -v anywhere, journald priorities, missing extras."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_runtime import cli as runtime_cli
from edge_runtime import cliutil
from exporter import cli as export_cli


@pytest.mark.parametrize(("main", "prog"), [(runtime_cli.main, "edge-runtime"), (export_cli.main, "edge-export")])
def test_version_is_the_installed_distribution(main, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"{prog} (akida-edge) {importlib.metadata.version('akida-edge')}\n"


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["-v", "simulate", "m.fbz", "f.npy", "--out", "o.npz"], True),
        (["simulate", "m.fbz", "f.npy", "--out", "o.npz", "-v"], True),
        (["simulate", "-v", "m.fbz", "f.npy", "--out", "o.npz"], True),
        (["simulate", "m.fbz", "f.npy", "--out", "o.npz"], False),
    ],
)
def test_verbose_is_accepted_before_and_after_the_command(argv: list[str], verbose: bool) -> None:
    parser = cliutil.build_parser("edge-runtime", "", runtime_cli.REGISTRARS)
    assert parser.parse_args(argv).verbose is verbose


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2)],
)
def test_syslog_priorities_are_those_of_syslog_3(level: int, priority: int) -> None:
    # syslog(3): LOG_CRIT 2, LOG_ERR 3, LOG_WARNING 4, LOG_INFO 6, LOG_DEBUG 7.
    assert cliutil.syslog_priority(level) == priority


def _run_python(code: str, journal: bool) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120, check=False
    )


LOGS = """
    import logging, threading
    from edge_runtime import cliutil
    cliutil.configure_logging(verbose=False)
    log = logging.getLogger("edge_runtime.test")
    log.info("port opened")
    log.warning("sensor lost")
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("inference loop failed")
    def crash():
        raise RuntimeError("thread died")
    thread = threading.Thread(target=crash)
    thread.start()
    thread.join()
    raise KeyError("main died")
"""


def test_under_journald_every_record_is_one_line_with_its_priority() -> None:
    result = _run_python(LOGS, journal=True)
    lines = result.stderr.splitlines()
    assert result.returncode == 1
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<2>", "<2>"], result.stderr
    assert lines[0] == "<6>INFO edge_runtime.test: port opened"  # no timestamp: journald adds its own
    # The traceback stays in its record's entry (newlines written as \n), with the exception at its end.
    assert "Traceback (most recent call last):\\n" in lines[2] and lines[2].endswith("ValueError: bad frame")
    assert lines[3].endswith("RuntimeError: thread died") and lines[4].endswith("KeyError: 'main died'")


def test_outside_journald_logs_keep_timestamps_and_tracebacks() -> None:
    result = _run_python(LOGS, journal=False)
    assert "<" not in result.stderr.splitlines()[0] and " INFO edge_runtime.test: port opened" in result.stderr
    assert "\nTraceback (most recent call last):\n" in result.stderr  # Python's own, several lines


def test_a_user_error_under_journald_is_an_err_entry(tmp_path) -> None:
    result = _run_python(
        f"""
        import sys
        from edge_runtime import cli
        sys.exit(cli.main(["serve", "--config", {str(tmp_path / "missing.toml")!r}]))
    """,
        journal=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("<3>edge-runtime: error: ") and result.stderr.count("\n") == 1, result.stderr


def test_a_command_whose_extra_is_missing_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """As on a host installed without [train]: torch cannot be imported (None in sys.modules)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "exporter.train", raising=False)
    config = tmp_path / "c.toml"
    config.write_text("")
    code = export_cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "edge-export: error: `edge-export train` needs the train extra (no module 'torch'): "
        "pip install 'akida-edge[train]'\n"
    )


def _parsers(main_parser):
    """The top-level parser and every sub(sub)command parser under it."""
    yield main_parser
    for action in main_parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action.choices, dict):  # a subcommand action: {name: parser}
            for child in action.choices.values():
                yield from _parsers(child)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("prog", "registrars"), [("edge-runtime", runtime_cli.REGISTRARS), ("edge-export", export_cli.REGISTRARS)]
)
def test_help_texts_have_no_developer_markup_and_their_examples_exist(prog: str, registrars) -> None:
    for parser in _parsers(cliutil.build_parser(prog, "", registrars)):
        text = parser.format_help()
        for markup in ("``", ":class:", ":mod:", ":func:", ":meth:", "`"):
            assert markup not in text, f"{parser.prog}: {markup} in --help"
        # Paths in examples (--model DIR, --config FILE) are files of this repository.
        for match in re.finditer(r"--(?:model|config) ((?:models|config)/\S+)", text):
            assert (ROOT / match.group(1)).exists(), f"{parser.prog}: example {match.group(1)} does not exist"
