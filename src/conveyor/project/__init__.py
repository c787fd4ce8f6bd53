"""Pipeline projects: numbered stage files, config.yaml, runs (ADR 0003)."""

from conveyor.project.kinds import Sink, Source, StageConfig, TaskStage

__all__ = ["Sink", "Source", "StageConfig", "TaskStage"]
