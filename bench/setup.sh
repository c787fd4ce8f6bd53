#!/usr/bin/env bash
# Create bench/.venv: Conveyor (editable, from this repo, with the extras its SQL and file
# sinks need: `postgres` = psycopg[binary] for PostgresSink, `parquet` = pyarrow; W10's
# `metrics` = prometheus_client) plus the peers it is compared with.
# Usage: bash bench/setup.sh [PYTHON]   (default: python3; Python 3.11+)
# Idempotent: re-running upgrades nothing that is already installed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${1:-${PYTHON:-python3}}"
VENV="$HERE/.venv"

export PIP_DISABLE_PIP_VERSION_CHECK=1

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bench needs Python 3.11+")'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[postgres,parquet,metrics]"

# Peers, one at a time, so that one failing does not hide the other; run.py reports a
# missing peer as "not installed" instead of a time.
status=0
for peer in pypeln bytewax; do
    if ! "$VENV/bin/python" -m pip install --quiet "$peer"; then
        echo "bench/setup.sh: could not install $peer (see the pip error above)" >&2
        status=1
    fi
done
"$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(conveyor|psycopg|psycopg-binary|pyarrow|pypeln|bytewax) ' || true
exit "$status"
