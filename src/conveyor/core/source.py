"""Sources: where a run's records come from.

Any iterable or async iterable of records is a source. :class:`Source` is the base of the
sources that Conveyor knows more about: the connectors of :mod:`conveyor.connectors` (files,
tables, downloads, brokers) and a project's source stage. A ``Source`` has a name (its row in
the run's report), may say what it reads (:meth:`Source.inputs`), and may

- *reject* what it cannot turn into a record: it yields a :class:`Rejected` in place of the
  record (a line that does not decode, parse or fit the model), which becomes a dead letter
  of the source's row, ``FILE:LINE: reason``, while the rest flows on (``rejects = True``);
- *seek*: ``offset`` and ``seek(offset)`` (:class:`~conveyor.core.checkpoint.SeekableSource`),
  so a resumed run starts where its checkpoint says instead of re-reading;
- *acknowledge*: a broker source (:class:`AcknowledgingSource`) is told after each
  checkpoint which of the messages it delivered have left the pipeline (through the sink
  or a durable dead letter) and only then acknowledges them to the broker; a resumed run
  gets what was not acknowledged again from the broker itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["AcknowledgingSource", "Rejected", "Source"]


class Rejected:
    """What a source yields in place of a record it could not make.

    ``record`` is what it read, as the dead letter keeps it (for a file: ``{"file": ...,
    "line": ..., "raw": ...}``); ``error`` says why, and its message is the letter's (for a
    file: a :class:`~conveyor.errors.SourceRecordError` reading ``FILE:LINE: reason``).
    """

    __slots__ = ("error", "record")

    def __init__(self, record: Any, error: BaseException) -> None:
        self.record = record
        self.error = error

    def __repr__(self) -> str:
        return f"Rejected({self.record!r}, {self.error!r})"


class Source(ABC):
    """Base of the sources Conveyor knows more about than their records; see the module
    docstring.

    Subclasses implement :meth:`read` (the records, sync or async). A connector is its own
    iterable (``read()`` returns ``self``), so that its ``offset`` is read as it iterates.

    Class attributes:
        name: the source's row in the report and the stage of its dead letters.
        Config: the Pydantic model of its options (a ``source:`` section of config.yaml,
            or a project source stage's ``params``).
        deterministic: its records follow from its code and options alone (a generator, a
            download pinned by a checksum).
        rejects: it may yield :class:`Rejected` items (checked for only then).
        identity: where its records come from (a path pattern, a table, a stream): a
            checkpoint of another identity is not resumed. Empty: the class's name.
    """

    name: str = "source"
    identity: str = ""
    Config: ClassVar[type[BaseModel] | None] = None
    deterministic: ClassVar[bool] = False
    rejects: ClassVar[bool] = False

    @abstractmethod
    def read(self) -> Iterable[Any] | AsyncIterable[Any]:
        """The records, in order."""

    def inputs(self) -> list[str]:
        """Files or folders (relative to the project) that :meth:`read` reads; they become
        part of the fingerprint of what follows, and dependencies in ``conveyor dvc``."""
        return []

    def close(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Release what reading holds (files, connections); called once after the run."""


@runtime_checkable
class AcknowledgingSource(Protocol):
    """A source whose records are acknowledged to the place they came from once they have
    left the pipeline (a broker: NATS JetStream, Redis Streams).

    Such a source counts what it yields: ``offset`` is the number of records it has
    yielded and ``seek(n)`` makes it count on from ``n`` (a resumed run continues the
    positions of the run it resumes; the broker itself redelivers what was not
    acknowledged, so nothing is skipped by position). After each checkpoint the run calls
    :meth:`acknowledge` with what that checkpoint covers.

    ``pending(position, done)``, called before a checkpoint is written, returns what the
    checkpoint keeps for a resume: the ids of the covered messages not yet acknowledged
    (a crash between the checkpoint and the acknowledgement redelivers them; a resumed run
    given them by :meth:`restore` acknowledges them on redelivery without processing them
    again, so an exactly-once sink sees each message once).

    Optionally, ``bind_checkpoints(request)``: the run hands the source a callable that
    asks for a checkpoint as soon as one can be taken (a source that lets a suspect message
    through alone waits for its acknowledgement). A run from such a source also checkpoints
    while nothing reaches the sink (each interval), when records left since the last one.
    """

    @property
    def offset(self) -> Any: ...

    def seek(self, offset: Any) -> None: ...

    def pending(self, position: int, done: Sequence[tuple[int, int]]) -> Any:
        """JSON data for the checkpoint: the covered messages not yet acknowledged."""
        ...

    def restore(self, state: Any) -> None:
        """Before a resumed run reads: what :meth:`pending` gave its last checkpoint."""
        ...

    async def acknowledge(self, position: int, done: Sequence[tuple[int, int]]) -> None:
        """Acknowledge every delivered message at a position below ``position`` or inside
        a ``[first, last]`` of ``done``; forget them."""
        ...
