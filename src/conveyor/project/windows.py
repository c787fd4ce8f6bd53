"""Window stages from config.yaml: a stage's ``window:`` key (ADR 0013).

``stages.NAME.window`` makes stage NAME a :class:`~conveyor.WindowStage`. Its aggregate
comes from exactly one place:

- ``window.aggregate`` in config.yaml, a built-in (:data:`WINDOW_AGGREGATES` of
  ``window.field``, computed by :class:`~conveyor.Stats`, which combines cheaply; ``count``
  alone counts the records): the stage file then defines no stage (a docstring is enough;
  it gives the stage its place and name);
- or the stage file's ``stage = AggregateStage(fn)`` (what ``conveyor new stage --kind
  aggregate`` writes): ``fn``, a function of the list of a window's records, aggregates
  each window.

Anything else is refused, naming both places: an ``aggregate:`` and the file's
``AggregateStage``, a file defining another kind of stage (a ``MapStage``, a ``Source`` …,
or a window stage of its own), neither giving an aggregate; and options a window stage
cannot take (``concurrency`` > 1, another executor, ``workers``, ``retry``, ``timeout``,
``params``), each at its key.
"""

from __future__ import annotations

import ast
import inspect
import operator
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.core.keyed import StatefulStage
from conveyor.core.stages import AggregateStage
from conveyor.core.windows import Count, Session, Sliding, Stats, Tumbling, Windowing, WindowStage
from conveyor.errors import PipelineDefinitionError, ProjectError
from conveyor.project.config import WINDOW_AGGREGATES, LoadedConfig, StageSection, WindowSection
from conveyor.project.discovery import StageFile, _candidates, _forget_foreign, _import

__all__ = ["WINDOW_AGGREGATES", "built_in_aggregate", "load_window_stage", "windowing"]


def windowing(section: WindowSection) -> Windowing:
    """The window kind and sizes of a validated ``window:`` section."""
    if section.tumbling is not None:
        return Tumbling(section.tumbling)
    if section.sliding is not None:
        assert section.slide is not None
        return Sliding(section.sliding, section.slide)
    if section.session is not None:
        return Session(section.session)
    assert section.count is not None
    return Count(section.count)


def built_in_aggregate(section: WindowSection) -> tuple[Callable[[list[Any]], Any], Any]:
    """``(aggregate, combine)`` of ``window.aggregate``: ``count`` alone without a field
    counts the records (``len``, combined by adding); otherwise :class:`Stats` of
    ``window.field`` (one name: its number; several: a dict by name), which combines
    itself (``combine`` is ``None``)."""
    names = section.aggregate
    assert names
    if names == ["count"] and section.field is None:
        return len, operator.add
    assert section.field is not None
    return Stats(section.field, *names), None


def load_window_stage(
    stage_file: StageFile, pipeline_dir: Path, config: LoadedConfig, section: StageSection
) -> WindowStage[Any]:
    """The window stage that ``stages.NAME.window`` and the stage file make together (see
    the module docstring); a ConfigError at the key, naming the stage file, when they
    contradict each other."""
    window = section.window
    assert window is not None
    name = stage_file.name
    where = ("stages", name, "window")
    _check_options(config, name, section)
    found = _file_stage(stage_file, pipeline_dir)
    shown = _shown(stage_file, pipeline_dir, found)
    aggregate: Callable[[list[Any]], Any]
    combine: Any = None
    if found is None:
        if window.aggregate is None:
            raise config.error(
                where,
                f"stages.{name}.window names no aggregate, and {shown} defines none: add "
                f"`aggregate:` to the window (built-in: {', '.join(WINDOW_AGGREGATES)}, of a "
                "`field:`, e.g. `aggregate: mean` and `field: value`), or define `stage = "
                f"AggregateStage(fn)` in {stage_file.path.name}",
            )
        aggregate, combine = built_in_aggregate(window)
    elif isinstance(found[1], AggregateStage):
        if window.aggregate is not None:
            raise config.error(
                (*where, "aggregate"),
                f"stage {name!r} has two aggregates: stages.{name}.window.aggregate "
                f"({', '.join(window.aggregate)}) and the AggregateStage of {shown}; keep one: "
                f"drop `aggregate:` (and `field:`) from the window, or the stage from "
                f"{stage_file.path.name} (its file may then hold only a docstring)",
            )
        aggregate = found[1].aggregator
    else:
        raise config.error(where, _not_an_aggregate(name, shown, found[1]))
    try:
        return WindowStage(
            windowing(window),
            aggregate,
            time=window.time,
            key=window.key,
            combine=combine,
            max_out_of_orderness=window.max_out_of_orderness,
            allowed_lateness=window.allowed_lateness,
            idle_timeout=window.idle_timeout,
            name=name,
        )
    except PipelineDefinitionError as exc:  # (validated already: a rule of WindowStage's own)
        raise config.error(where, f"stages.{name}.window: {exc}") from None


def _not_an_aggregate(name: str, shown: str, stage: Any) -> str:
    """Why a stage file's stage cannot go with ``window:``."""
    what = stage.__name__ if inspect.isclass(stage) else type(stage).__name__
    if isinstance(stage, StatefulStage) or (
        inspect.isclass(stage) and issubclass(stage, StatefulStage)
    ):
        return (
            f"stage {name!r} is windowed twice: stages.{name}.window and the {what} of "
            f"{shown}; configure its windows in one place: drop `window:` from config.yaml, "
            f"or make the file's stage `AggregateStage(fn)` (or leave it out)"
        )
    return (
        f"stages.{name}.window makes stage {name!r} a window stage, but {shown} defines a "
        f"{what}; a window stage's file defines `stage = AggregateStage(fn)` (fn aggregates "
        "each window's records) or no stage (with a built-in `aggregate:`): drop `window:` "
        "from config.yaml, or change the stage file"
    )


def _check_options(config: LoadedConfig, name: str, section: StageSection) -> None:
    """Refuse, at its key, each option of ``stages.NAME`` a window stage cannot take: it
    keeps its windows in the run's event loop and takes one micro-batch at a time, in
    order (ADR 0011)."""
    why = "a window stage runs inline and takes one micro-batch at a time, in order"
    wrong: list[tuple[str, str]] = []
    if section.concurrency is not None and section.concurrency != 1:
        wrong.append(("concurrency", why))
    if section.executor is not None and section.executor != "inline":
        wrong.append(("executor", why))
    if section.workers is not None:
        wrong.append(("workers", why))
    if section.retry is not None and section.retry.attempts != 1:
        wrong.append(("retry", "a record a window cannot take is a dead letter at once"))
    if section.timeout is not None:
        wrong.append(("timeout", "a window's aggregate is never cut short"))
    if section.params:
        wrong.append(("params", "its settings are the keys of `window:`"))
    if wrong:
        key, reason = wrong[0]
        raise config.error(
            ("stages", name, key),
            f"stages.{name}.{key}: stage {name!r} is a window stage (stages.{name}.window), "
            f"which takes no {key}: {reason}; drop it",
        )


def _file_stage(stage_file: StageFile, pipeline_dir: Path) -> tuple[str, Any] | None:
    """The one stage the file defines, as ``(attribute, stage)``, or ``None`` for none
    (a window with a built-in aggregate); two or more are refused as everywhere."""
    parent = str(pipeline_dir.parent)
    if parent in sys.path:
        sys.path.remove(parent)
    sys.path.insert(0, parent)
    _forget_foreign(pipeline_dir)
    module = _import(stage_file, pipeline_dir.name)
    found = _candidates(module)
    if len(found) > 1:
        raise ProjectError(
            f"a stage file defines at most one stage; found {len(found)}: "
            f"{', '.join(attr for attr, _ in found)}",
            file=stage_file.path,
        )
    return found[0] if found else None


def _shown(stage_file: StageFile, pipeline_dir: Path, found: tuple[str, Any] | None) -> str:
    """The stage file as the messages name it: its path from the project folder, with
    the line of its stage when it has one."""
    root = pipeline_dir.parent.parent if pipeline_dir.parent.name == "src" else pipeline_dir
    try:
        text = stage_file.path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        text = str(stage_file.path)
    line = None if found is None else _line_of(stage_file.path, found[0])
    return text if line is None else f"{text}:{line}"


def _line_of(path: Path, attr: str) -> int | None:
    """The line where the module ``path`` binds ``attr`` at its top level."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == attr:
            return node.lineno
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
            return node.lineno
    return None
