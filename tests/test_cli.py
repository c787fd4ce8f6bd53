"""The command line: ``python -m conveyor`` and the ``conveyor`` console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PY_COLORS")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="100")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture(scope="module")
def console_script() -> str:
    script = Path(sys.executable).parent / "conveyor"
    if script.exists():
        return str(script)
    found = shutil.which("conveyor")
    assert found, "the conveyor console script is not installed"
    return found


def test_module_version_flag_prints_version() -> None:
    proc = run(sys.executable, "-m", "conveyor", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"conveyor {conveyor.__version__}"


def test_console_script_version_flag_prints_version(console_script: str) -> None:
    proc = run(console_script, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"conveyor {conveyor.__version__}"


def test_version_command_prints_version(console_script: str) -> None:
    proc = run(console_script, "version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"conveyor {conveyor.__version__}"


def test_module_without_arguments_shows_help() -> None:
    proc = run(sys.executable, "-m", "conveyor")
    output = proc.stdout + proc.stderr
    assert "Usage:" in output
    assert "--version" in output
    assert "version" in output.split("Commands", 1)[-1]
    assert "Traceback" not in output


def test_unknown_command_fails() -> None:
    proc = run(sys.executable, "-m", "conveyor", "no-such-command")
    assert proc.returncode != 0
    assert "no-such-command" in proc.stdout + proc.stderr
