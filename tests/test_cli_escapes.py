"""Text from records and errors reaches the terminal escaped: no control character or
escape sequence is obeyed, no rich markup or emoji code is read (issue 9, hardening)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

import conveyor.cli as cli
from conveyor.core._render import printable
from conveyor.dlq import DeadLetter, open_dead_letter_store
from conveyor.project.scaffold import new_project

HOSTILE = "bad \x1b[2J\x1b]0;owned\x07 [bold red]markup[/] :smile: \r\x9b31m \u202eend\nline 2"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e")
ESCAPED = "bad \\x1b[2J\\x1b]0;owned\\x07 [bold red]markup[/] :smile: \\r\\x9b31m \\u202eend"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PY_COLORS")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="400")
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _clean(text: str) -> None:
    for char in RAW:
        assert char not in text, repr(char)


# --- printable ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, café, 日本", "plain text, café, 日本"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x00\x08\x7f\x85\x9f", "\\x00\\x08\\x7f\\x85\\x9f"),
        ("tab\there\rback", "tab\\there\\rback"),
        ("\u200f\u2066x\u2069\u2028", "\\u200f\\u2066x\\u2069\\u2028"),
        ("C:\\path\\x1b", "C:\\path\\x1b"),  # backslashes stay as they are
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_keeps_line_breaks_only_when_asked() -> None:
    assert printable("a\nb\x1b") == "a\\nb\\x1b"
    assert printable("a\nb\x1b", newlines=True) == "a\nb\\x1b"
    assert printable(ValueError("x\x07")) == "x\\x07"  # any object: its str()


# --- dlq list / show ------------------------------------------------------------------------


@pytest.fixture
def hostile_project(tmp_path: Path) -> tuple[Path, DeadLetter]:
    root = tmp_path / "proj"
    new_project(root)
    try:
        raise ValueError(HOSTILE)
    except ValueError as exc:
        letter = DeadLetter.from_exception(
            {"n": "\x1b[31m", "m": "[link=x]y[/]"},
            exc,
            stage="enrich",
            attempts=1,
            run_id="run-1",
        )
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        store.write([letter])
    return root, letter


def test_dlq_list_escapes_the_message(hostile_project: tuple[Path, DeadLetter]) -> None:
    root, letter = hostile_project
    done = _cli("dlq", "list", ".", cwd=root)
    assert done.returncode == 0, done.stderr
    _clean(done.stdout)
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"{letter.id[-12:]} ")
    assert "ValueError: bad \\x1b[2J\\x1b]0;owned\\x07 [bold red]markup[/] :smile:" in first
    assert "record={'m': '[link=x]y[/]', 'n': '\\x1b[31m'}" in first  # markup as written


def test_dlq_show_escapes_every_field(hostile_project: tuple[Path, DeadLetter]) -> None:
    root, letter = hostile_project
    done = _cli("dlq", "show", letter.id[-12:], ".", cwd=root)
    assert done.returncode == 0, done.stderr
    _clean(done.stdout)
    lines = done.stdout.splitlines()
    assert f"message: {ESCAPED}" in lines
    assert "line 2" in lines  # the message's own line break is kept
    assert f"ValueError: {ESCAPED}" in lines  # the traceback's last line
    assert any(line.startswith("record: {'n': '\\x1b[31m'") for line in lines)


def test_a_failing_source_traceback_is_escaped(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    new_project(root)
    source = root / "src" / "pipeline" / "stages" / "00_source.py"
    text = source.read_text()
    source.write_text(
        text.replace(
            "        for i in range(self.config.count):",
            f"        raise OSError({HOSTILE!r})\n        for i in range(self.config.count):",
        )
    )
    done = _cli("run", ".", cwd=root)
    assert done.returncode == 1
    _clean(done.stdout + done.stderr)
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert f"OSError: {ESCAPED}\nline 2\n" in done.stderr
    assert "locals" not in done.stderr.lower()


# --- run summaries, progress tables and error messages -----------------------------------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=400, emoji=False))
    monkeypatch.setattr(cli, "errors", Console(file=err, width=400, emoji=False))
    return {"out": out, "err": err}


def _stats(name: str) -> Any:
    return SimpleNamespace(
        name=name,
        records_in=3,
        records_out=2,
        records_filtered=0,
        records_dead=1,
        retried=0,
        busy_seconds=0.5,
    )


def test_report_table_and_summary(captured: dict[str, io.StringIO]) -> None:
    report = SimpleNamespace(
        pipeline_name="[blink]p\x1b[5m",
        stages=[_stats("[red]stage\x1b[31m")],
        summary=lambda: f"p failed: {HOSTILE}",
        dead_lettered=1,
        dead_letter_store="/x/[bold]dlq\x07.db",
    )
    cli._print_report(report, Path("."))
    text = captured["out"].getvalue()
    _clean(text)
    assert "[blink]p\\x1b[5m" in text
    assert "[red]stage\\x1b[31m" in text
    assert f"p failed: {ESCAPED}\nline 2" in text
    assert "1 dead-lettered records in /x/[bold]dlq\\x07.db" in text


def test_progress_table_and_log_line(captured: dict[str, io.StringIO]) -> None:
    channel = SimpleNamespace(name="a -> [u]s\x1b[4m", buffered=1, capacity=2)
    runner = SimpleNamespace(
        name="pipe:smile:\x1b]0;t\x07",
        elapsed_seconds=1.0,
        progress=lambda: ([_stats("[u]s\x1b[4m")], [channel]),
    )
    cli.console.print(cli._stats_table(runner))
    progress = cli._Progress()
    progress(runner)  # not a terminal: a log line
    text = captured["out"].getvalue()
    _clean(text)
    assert "pipe:smile:\\x1b]0;t\\x07" in text
    assert "[u]s\\x1b[4m" in text
    assert "[u]s\\x1b[4m: 3 in, 2 out" in text


def test_error_messages_are_printed_literally(captured: dict[str, io.StringIO]) -> None:
    with pytest.raises(cli.typer.Exit):
        cli._fail(ValueError(f"boom [bold]{HOSTILE}"), "hint [i]x\x1b[3m")
    text = captured["err"].getvalue()
    _clean(text)
    assert text == f"error: boom [bold]{ESCAPED}\nline 2\nhint [i]x\\x1b[3m\n"
