"""Finding a project, its layout and its stage files (ADR 0003, ADR 0009).

Two layouts, read by the same loader:

- **stream** (seed 000): ``src/pipeline/`` (or a bare folder) with ``stages/NN_name.py``
  files run in number order, ``shared/`` and ``contracts/`` for the code they share, and
  ``config.yaml``;
- **dataset** (seed 002): ``configs/pipeline.yaml`` in the project folder, whose
  ``stages:`` list gives the order of ``src/<package>/stages/<name>.py``;
  ``configs/stages/<name>.yaml`` holds each stage's parameters; stages share
  ``schemas/``, ``transforms/`` and ``stages/base.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal

from conveyor.core.stage import PipelineStage
from conveyor.errors import ProjectError
from conveyor.project.kinds import Sink, Source, TaskStage
from conveyor.runtime.executors import register_file_module

__all__ = [
    "DATASET_CONFIG",
    "Layout",
    "StageFile",
    "dataset_stage_files",
    "discover_stage_files",
    "find_layout",
    "find_pipeline_dir",
    "layout_of",
    "load_stage",
    "project_root",
]

DATASET_CONFIG: Final = Path("configs") / "pipeline.yaml"
"""The file that makes a folder a dataset-layout project (relative to the project)."""

STAGE_FILE = re.compile(r"^(?P<number>\d{2,})_(?P<name>[a-z][a-z0-9_]*)\.py$")
_KINDS = (PipelineStage, Source, Sink, TaskStage)


@dataclass(frozen=True)
class StageFile:
    """One ``NN_name.py`` file of ``stages/``."""

    number: int
    name: str
    path: Path


@dataclass(frozen=True)
class Layout:
    """Where a project keeps its stages, the code they share and its configuration."""

    kind: Literal["stream", "dataset"]
    root: Path
    """The project folder (runs and ``dvc repro`` work there)."""
    package_dir: Path
    """The folder holding ``stages/`` (``src/pipeline``, or ``src/<package>``)."""

    @property
    def package(self) -> str:
        """The Python package of the stages (``pipeline``, or the dataset's package)."""
        return self.package_dir.name

    @property
    def config_file(self) -> Path:
        """The main config file: ``config.yaml`` or ``configs/pipeline.yaml``."""
        if self.kind == "dataset":
            return self.root / DATASET_CONFIG
        return self.package_dir / "config.yaml"

    @property
    def code_parts(self) -> tuple[str, ...]:
        """The sub-packages that stages may import (besides :attr:`stage_helpers`)."""
        return ("schemas", "transforms") if self.kind == "dataset" else ("shared", "contracts")

    @property
    def stage_helpers(self) -> tuple[str, ...]:
        """Modules of ``stages/`` that are not stages and that stages may import."""
        return ("base",) if self.kind == "dataset" else ()

    def stage_config(self, name: str) -> Path | None:
        """The file of a stage's own parameters (``configs/stages/NAME.yaml``), or ``None``
        in the stream layout (its parameters sit in ``config.yaml``)."""
        if self.kind == "dataset":
            return self.root / "configs" / "stages" / f"{name}.yaml"
        return None


def find_layout(path: Path) -> Layout:
    """The layout of the project at ``path`` or around it (a command run in a subfolder
    finds its project): going up from ``path``, the first folder that is

    - a dataset project: ``configs/pipeline.yaml`` (and no ``src/pipeline/config.yaml`` or
      ``stages/`` beside it), its package the one folder of ``src/`` with ``stages/`` —
      also when ``path`` is its ``configs/`` folder or that package;
    - a stream project: ``src/pipeline/stages/``;
    - a bare pipeline folder: ``stages/`` (above ``path`` itself only with a
      ``config.yaml`` beside it, so that a package's ``stages/`` is not taken for one).
    """
    start = path.resolve()
    for level in (start, *start.parents):
        found = _layout_at(level, first=level == start)
        if found is not None:
            return found
    raise ProjectError(
        "no pipeline project here or above: expected src/pipeline/stages/ (or stages/) with "
        "numbered stage files, or configs/pipeline.yaml with src/<package>/stages/; create "
        "one with 'conveyor new PROJECT' (or 'conveyor new --template dataset PROJECT')",
        file=start,
    )


def _layout_at(level: Path, *, first: bool) -> Layout | None:
    if level.name == "configs" and (level / "pipeline.yaml").is_file():
        level = level.parent  # (the configs folder of a dataset project)
    stream = (level / "src" / "pipeline" / "config.yaml").is_file() or (level / "stages").is_dir()
    if (level / DATASET_CONFIG).is_file() and not stream:
        src = level / "src"
        packages = sorted(
            p for p in (src.iterdir() if src.is_dir() else []) if (p / "stages").is_dir()
        )
        if len(packages) != 1:
            found = ", ".join(p.name for p in packages) or "none"
            raise ProjectError(
                f"a dataset project keeps its stages in src/<package>/stages/; found "
                f"{len(packages)} such packages in src/ ({found}): keep exactly one",
                file=level / DATASET_CONFIG,
            )
        return Layout("dataset", level, packages[0])
    if (level / "src" / "pipeline" / "stages").is_dir():
        return Layout("stream", level, level / "src" / "pipeline")
    if level.parent.name == "src" and (level.parent.parent / DATASET_CONFIG).is_file():
        above = _layout_at(level.parent.parent, first=False)
        if above is not None and above.package_dir == level:
            return above  # the package folder of a dataset project
    if (level / "stages").is_dir() and (first or (level / "config.yaml").is_file()):
        root = level.parent.parent if level.parent.name == "src" else level
        return Layout("stream", root, level)
    return None


def layout_of(pipeline_dir: Path) -> Layout:
    """The layout of the project whose stages live in ``pipeline_dir`` (the folder holding
    ``stages/``): the dataset layout when the project folder above ``src/`` is a dataset
    project with this package, else the stream layout (the folder itself a bare project)."""
    pipeline_dir = pipeline_dir.resolve()
    if pipeline_dir.parent.name == "src":
        root = pipeline_dir.parent.parent
        if (root / DATASET_CONFIG).is_file():
            with contextlib.suppress(ProjectError):
                layout = find_layout(root)
                if layout.package_dir == pipeline_dir:
                    return layout
        return Layout("stream", root, pipeline_dir)
    return Layout("stream", pipeline_dir, pipeline_dir)


def find_pipeline_dir(path: Path) -> Path:
    """The folder holding the project's ``stages/`` (see :func:`find_layout`)."""
    return find_layout(path).package_dir


def project_root(path: Path) -> Path:
    """The project folder of ``path``: the one holding ``src/`` (or ``configs/``), or the
    pipeline folder itself for a bare layout."""
    return find_layout(path).root


def dataset_stage_files(layout: Layout, order: list[str]) -> list[StageFile]:
    """The stage files of a dataset project, in the order of ``order`` (the ``stages:``
    list of ``configs/pipeline.yaml``): ``stages/<name>.py`` each."""
    return [
        StageFile(index, name, layout.package_dir / "stages" / f"{name}.py")
        for index, name in enumerate(order)
    ]


def discover_stage_files(pipeline_dir: Path) -> list[StageFile]:
    """The stage files of a stream project in number order; wrong names and duplicate
    numbers are errors."""
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
        file, line = _where_raised(exc, stage_file.path)
        text = _source_line(file, line)
        shown_line = f" (the line: {text})" if text else ""
        what = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise ProjectError(
            f"cannot import the stage file: {type(exc).__name__}: {what}{shown_line}; fix "
            "it, then run the command again",
            file=file,
            line=line,
        ) from exc
    return module


def _where_raised(exc: BaseException, stage_path: Path) -> tuple[Path, int | None]:
    """Where an import failed: a syntax error's file and line, else the innermost frame of
    the traceback in the project's own code (the stage file, or what it imports beside it),
    else the stage file."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return Path(exc.filename), exc.lineno
    file, line = raised_in(exc, stage_path.resolve().parent.parent)
    return (file, line) if file is not None else (stage_path, None)


def raised_in(exc: BaseException, root: Path) -> tuple[Path | None, int | None]:
    """The innermost frame of ``exc``'s traceback in files below ``root`` (the project's
    own code, not installed packages), as the place to look first; ``(None, None)`` when
    no frame is there."""
    found: tuple[Path | None, int | None] = (None, None)
    base = root.resolve()
    tb = exc.__traceback__
    while tb is not None:
        file = Path(tb.tb_frame.f_code.co_filename)
        if file.is_absolute() and file.resolve().is_relative_to(base):
            found = (file, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _source_line(file: Path, line: int | None) -> str:
    """Line ``line`` of ``file``, stripped and shortened ("" when unknown)."""
    if line is None:
        return ""
    try:
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    if not 0 < line <= len(lines):
        return ""
    text = lines[line - 1].strip()
    return text if len(text) <= 120 else text[:117] + "..."


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
