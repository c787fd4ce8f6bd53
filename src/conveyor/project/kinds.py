"""The kinds of stage a project file may define besides a plain ``PipelineStage``."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from conveyor.core.sink import Sink as RunSink
from conveyor.core.source import Source
from conveyor.errors import ProjectError

__all__ = ["Sink", "Source", "StageConfig", "TaskStage", "TaskStageFailed"]


class StageConfig(BaseModel):
    """Base configuration of seed 002's file-to-file stages (``input_dir``, ``output_dir``).

    Subclass it for a stage's ``Config``; unknown keys in ``config.yaml`` are errors.
    """

    model_config = ConfigDict(extra="forbid")

    input_dir: str
    output_dir: str


class Sink(RunSink):
    """The last stage of a project: a :class:`conveyor.Sink` (``open(run)``,
    ``write(records)`` for each micro-batch, ``close(status)`` exactly once) that may
    declare a ``Config`` model and the files it writes.

    ``open`` is told whether the run is a replay of dead letters (``run.replay``): a sink
    that starts a fresh file per run should append to it then. ``close`` is told how the
    run ended: commit what was buffered when ``status.drained``, discard it otherwise.
    """

    Config: ClassVar[type[BaseModel] | None] = None

    def outputs(self) -> list[str]:
        """Files or folders (relative to the project) that :meth:`write` produces; a Sink
        that names them becomes the last stage of ``conveyor dvc``'s ``dvc.yaml``."""
        return []

    @property
    def description(self) -> str:
        """The files it writes (:meth:`outputs`), else its class's name."""
        return ", ".join(self.outputs()) or type(self).__qualname__


class TaskStage(ABC):
    """Seed 002's stage interface: a whole-dataset step, ``run(config)`` after
    ``validate()``; a project made of task stages runs them one after another."""

    name: str
    Config: ClassVar[type[BaseModel] | None] = None
    config: Any = None
    """The validated ``Config`` (set by a subclass's ``__init__(config)``), passed to
    :meth:`run`."""
    summary: str = ""
    """One line saying what the last :meth:`run` did (``conveyor run`` prints it)."""
    run_options: Any = None
    """The project's :class:`~conveyor.RunOptions` (its ``pipeline:`` settings: the
    dead-letter store, batch size, …), set before :meth:`run`: a stage that streams its
    records through a :class:`~conveyor.Pipeline` passes them to ``run(options=...)`` so
    that its dead letters land where ``conveyor dlq`` looks."""

    refusal: str = ""
    """Why the last :meth:`validate` said no, when it said so through :meth:`refuse`."""
    refused_keys: tuple[str, ...] = ()
    """The parameters :meth:`refuse` named as the ones at fault."""

    def refuse(self, problem: str, *keys: str) -> bool:
        """Say why the stage cannot run, and return ``False`` (for :meth:`validate`:
        ``return self.refuse("data/raw/x.csv does not exist", "input_dir")``). The run's
        error line says ``problem``, and names ``keys`` — the fields of the stage's
        ``Config`` that lead to it — where the config sets them (file:line)."""
        self.refusal = problem
        self.refused_keys = keys
        return False

    def inputs(self) -> list[str]:
        """Files or folders (relative to the project) the stage reads; by default its
        config's ``input_dir``. ``conveyor dvc`` makes them the DVC stage's deps."""
        return _paths(self.config, "input_dir")

    def outputs(self) -> list[str]:
        """Files or folders (relative to the project) the stage writes; by default its
        config's ``output_dir``. ``conveyor dvc`` makes them the DVC stage's outs."""
        return _paths(self.config, "output_dir")

    @abstractmethod
    def run(self, config: Any) -> None:
        """Do the stage's work with its validated config."""

    @abstractmethod
    def validate(self) -> bool:
        """Whether the stage can run (inputs present, settings coherent)."""


class TaskStageFailed(ProjectError):
    """A task stage's ``run()`` failed: the message names the stage, what went wrong (the
    file and line in the project's code where it was raised) and the command that re-runs
    it. Raise it from a stage, with ``over_budget=True`` when its records went to the
    dead-letter queue in greater numbers than ``pipeline.max_dead_letters`` allows
    (``conveyor run`` then exits 3, as for a record-stage run over the budget); any other
    exception a stage raises is turned into one.

    Attributes:
        over_budget: the stage failed because of its dead letters.
    """

    def __init__(
        self,
        message: str,
        *,
        file: object = None,
        line: int | None = None,
        over_budget: bool = False,
    ) -> None:
        super().__init__(message, file=file, line=line)
        self.over_budget = over_budget


def _paths(config: Any, field: str) -> list[str]:
    value = getattr(config, field, None)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return [value] if isinstance(value, str) and value.strip() else []
