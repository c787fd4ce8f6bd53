# Conveyor's two commands: `make run` (the main job) and `make test` (every gate).
# Both create .venv with the project and its dev tools when it is missing or stale.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXAMPLE := examples/digits

# No phoning home from anything the project runs.
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export SE_AVOID_STATS := true

.PHONY: run run-user-import test lint format typecheck imports pytest browser faults bench clean help

help:
	@echo "make run   - set up .venv and run the main job (the digits dataset pipeline)"
	@echo "make run-user-import - the user-import example of the stage algebra"
	@echo "make test  - set up .venv and run every gate (format, lint, mypy, imports, pytest)"
	@echo "make faults - the fault tests (SIGKILL, SIGTERM, outages, damage) at full size (slow)"
	@echo "make bench - run the benchmarks under bench/ (slow, on demand)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Conveyor needs Python 3.11+; run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/conveyor run $(EXAMPLE)

run-user-import: $(STAMP)
	$(BIN)/python examples/user_import/run.py

format: $(STAMP)
	$(BIN)/ruff format --check src tests examples bench

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict

imports: $(STAMP)
	$(BIN)/lint-imports

# The run report's browser test drives Debian's chromium through chromedriver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium chromium-driver >/dev/null || echo "could not install chromium: the browser test will say so"; }

pytest: $(STAMP) browser
	$(BIN)/python -m pytest --cov --cov-report=term

test: format lint typecheck imports pytest

# tests/faults at full size (1,000,000-record runs, 20 kill points per sink); `make test` runs
# them at reduced size. CONVEYOR_FAULTS_REPORT=path collects their figures as JSON lines.
faults: $(STAMP)
	CONVEYOR_FAULTS=full $(BIN)/python -m pytest tests/faults tests/connectors/test_file_sources_fuzz.py -q -p no:cacheprovider

# Results go to bench/results/ (untracked); the tracked BENCHMARKS.md is rewritten only with
# `make bench BENCH_ARGS=--update-benchmarks-md`.
bench:
	bash bench/setup.sh
	bench/.venv/bin/python bench/run.py --workload all --runs 5 $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
