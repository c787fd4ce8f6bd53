"""Finding a project's pipeline folder and its numbered stage files (ADR 0003)."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from conveyor.core.stage import PipelineStage
from conveyor.errors import ProjectError
from conveyor.project.kinds import Sink, Source, TaskStage
from conveyor.runtime.executors import register_file_module

__all__ = [
    "StageFile",
    "discover_stage_files",
    "find_pipeline_dir",
    "load_stage",
    "project_root",
]

STAGE_FILE = re.compile(r"^(?P<number>\d{2,})_(?P<name>[a-z][a-z0-9_]*)\.py$")
_KINDS = (PipelineStage, Source, Sink, TaskStage)


@dataclass(frozen=True)
class StageFile:
    """One ``NN_name.py`` file of ``stages/``."""

    number: int
    name: str
    path: Path


def find_pipeline_dir(path: Path) -> Path:
    """The pipeline folder for ``path``: ``path/src/pipeline`` or ``path`` itself."""
    path = path.resolve()
    for candidate in (path / "src" / "pipeline", path):
        if (candidate / "stages").is_dir():
            return candidate
    raise ProjectError(
        "no pipeline project here: expected src/pipeline/stages/ (or stages/) with numbered "
        "stage files; create one with 'conveyor new PROJECT'",
        file=path,
    )


def project_root(path: Path) -> Path:
    """The project folder of ``path``: the one holding ``src/pipeline``, or the pipeline
    folder itself for a bare layout."""
    pipeline_dir = find_pipeline_dir(path)
    return pipeline_dir.parent.parent if pipeline_dir.parent.name == "src" else pipeline_dir


def discover_stage_files(pipeline_dir: Path) -> list[StageFile]:
    """The stage files in number order; wrong names and duplicate numbers are errors."""
    files: list[StageFile] = []
    problems: list[str] = []
    by_number: dict[int, StageFile] = {}
    for path in sorted((pipeline_dir / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        match = STAGE_FILE.match(path.name)
        if match is None:
            problems.append(f"{path}: not a stage file name; use NN_name.py (e.g. 10_validate.py)")
            continue
        stage_file = StageFile(int(match["number"]), match["name"], path)
        twin = by_number.get(stage_file.number)
        if twin is not None:
            problems.append(
                f"{path}: number {match['number']} is taken by {twin.path.name}; "
                "give one of them a free number"
            )
            continue
        by_number[stage_file.number] = stage_file
        files.append(stage_file)
    names = [f.name for f in files]
    for stage_file in files:
        if names.count(stage_file.name) > 1:
            problems.append(
                f"{stage_file.path}: another stage file is also named {stage_file.name!r}"
            )
    if problems:
        raise ProjectError("\n".join(problems))
    if not files:
        raise ProjectError("no stage files in stages/; add 00_source.py", file=pipeline_dir)
    return sorted(files, key=lambda f: f.number)


def _import(stage_file: StageFile, package: str) -> ModuleType:
    module_name = f"{package}.stages.{stage_file.name}"
    spec = importlib.util.spec_from_file_location(module_name, stage_file.path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    register_file_module(module_name, str(stage_file.path))  # for process workers
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ProjectError(
            f"cannot import: {type(exc).__name__}: {exc} (traceback above)", file=stage_file.path
        ) from exc
    return module


def _candidates(module: ModuleType) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        if (
            inspect.isclass(value)
            and value.__module__ == module.__name__
            and issubclass(value, _KINDS)
            and not inspect.isabstract(value)
        ) or isinstance(value, PipelineStage):
            found.append((attr, value))
    return found


def _forget_foreign(pipeline_dir: Path) -> None:
    """Drop modules named like this project's package that come from somewhere else (an
    earlier project in this process, or an unrelated ``pipeline`` module), so that
    ``import pipeline.shared…`` in a stage finds this project's code."""
    package = pipeline_dir.name
    root = pipeline_dir.resolve()
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        module = sys.modules[name]
        locations = list(getattr(module, "__path__", None) or [])
        file = getattr(module, "__file__", None)
        if file:
            locations.append(file)
        if not any(Path(loc).resolve().is_relative_to(root) for loc in locations):
            del sys.modules[name]


def load_stage(stage_file: StageFile, pipeline_dir: Path) -> tuple[Any, ModuleType]:
    """Import ``stage_file`` and return its one stage (class or instance) and module."""
    parent = str(pipeline_dir.parent)
    if parent in sys.path:
        sys.path.remove(parent)
    sys.path.insert(0, parent)
    _forget_foreign(pipeline_dir)
    module = _import(stage_file, pipeline_dir.name)
    found = _candidates(module)
    if len(found) != 1:
        what = ", ".join(attr for attr, _ in found) or "none"
        raise ProjectError(
            f"a stage file defines exactly one stage (a PipelineStage, Source, Sink or "
            f"TaskStage subclass, or one PipelineStage instance); found {len(found)}: {what}",
            file=stage_file.path,
        )
    return found[0][1], module
