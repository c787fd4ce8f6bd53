"""Pipeline projects: stage files in the stream (seed 000) or dataset (seed 002) layout,
their config, runs (ADR 0003, ADR 0009).

``run_project`` and ``load_project`` are imported on first use (they bring the runner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.project.kinds import Sink, Source, StageConfig, TaskStage, TaskStageFailed

if TYPE_CHECKING:
    from conveyor.project.project import load_project
    from conveyor.project.run import run_project

__all__ = [
    "Sink",
    "Source",
    "StageConfig",
    "TaskStage",
    "TaskStageFailed",
    "load_project",
    "run_project",
]


def __getattr__(name: str) -> Any:
    if name == "run_project":
        from conveyor.project.run import run_project

        return run_project
    if name == "load_project":
        from conveyor.project.project import load_project

        return load_project
    raise AttributeError(f"module 'conveyor.project' has no attribute {name!r}")
