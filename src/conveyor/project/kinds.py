"""The kinds of stage a project file may define besides a plain ``PipelineStage``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = ["Sink", "Source", "StageConfig", "TaskStage"]


class StageConfig(BaseModel):
    """Base configuration of seed 002's file-to-file stages (``input_dir``, ``output_dir``).

    Subclass it for a stage's ``Config``; unknown keys in ``config.yaml`` are errors.
    """

    model_config = ConfigDict(extra="forbid")

    input_dir: str
    output_dir: str


class Source(ABC):
    """The first stage of a project: ``read()`` yields the records (sync or async)."""

    name: str
    Config: ClassVar[type[BaseModel] | None] = None

    @abstractmethod
    def read(self) -> Iterable[Any] | AsyncIterable[Any]:
        """The records, in order."""


class Sink(ABC):
    """The last stage of a project: ``write(records)`` receives micro-batches."""

    name: str
    Config: ClassVar[type[BaseModel] | None] = None

    @abstractmethod
    def write(self, records: list[Any]) -> Any:
        """Store one micro-batch (may be ``async``)."""

    def outputs(self) -> list[str]:
        """Files or folders (relative to the project) that :meth:`write` produces; a Sink
        that names them becomes the last stage of ``conveyor dvc``'s ``dvc.yaml``."""
        return []

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Called once after a successful run that wrote through this sink (not after a
        failed or interrupted one): commit what the micro-batches buffered."""


class TaskStage(ABC):
    """Seed 002's stage interface: a whole-dataset step, ``run(config)`` after
    ``validate()``; a project made of task stages runs them one after another."""

    name: str
    Config: ClassVar[type[BaseModel] | None] = None

    @abstractmethod
    def run(self, config: Any) -> None:
        """Do the stage's work with its validated config."""

    @abstractmethod
    def validate(self) -> bool:
        """Whether the stage can run (inputs present, settings coherent)."""
