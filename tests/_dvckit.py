"""Running DVC for real in tests: its environment (no analytics, no global config, the
venv's ``conveyor`` first on PATH), a bounded ``dvc`` call, the stages a repro ran."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 180  # seconds, for each command run here
BIN = Path(sys.executable).parent


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode must not make stages re-run
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_GLOBAL_CONFIG_DIR"] = str(tmp_path / "dvc-global")
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "dvc-site-cache")
    env.update(COLUMNS="300", NO_COLOR="1", TERM="dumb")
    return env


HAVE_DVC = importlib.util.find_spec("dvc") is not None
needs_dvc = pytest.mark.skipif(
    not HAVE_DVC and os.environ.get("CI") != "true",
    reason="DVC is not installed (pip install 'dvc>=3'); these tests run it for real and "
    "are required in CI",
)


def dvc(root: Path, *args: str, env: dict[str, str]) -> str:
    """``dvc ARGS`` in ``root`` (bounded); its stdout and stderr together."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{output}"
    return output


def ran(output: str) -> set[str]:
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }
