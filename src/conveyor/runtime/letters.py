"""Making dead letters and writing them: durably, before their records count as gone."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from conveyor.core._render import error_message, format_traceback
from conveyor.core.context import PipelineContext
from conveyor.core.hooks import RunEvents
from conveyor.dlq import DeadLetter, DeadLetterStore
from conveyor.dlq._letter import qualified_name
from conveyor.runtime.executors import RemoteError
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.parts import Part

__all__ = ["LetterBox", "LetterError"]


class LetterError(Exception):
    """The error handed to ``on_error`` hooks in streaming mode (the dead letter's error)."""

    def __init__(self, letter: DeadLetter) -> None:
        self.dead_letter = letter
        super().__init__(f"{letter.error_type}: {letter.message}")


class LetterBox:
    """Turns failures into dead letters and writes them to the run's store.

    Rendering an exception or a record never raises here (hostile ``__str__`` and
    ``__repr__`` fall back to placeholders), so one record cannot take the run down.
    """

    def __init__(
        self,
        store: DeadLetterStore,
        run_id: str,
        events: RunEvents,
        context: PipelineContext,
        tracker: OffsetTracker | None = None,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.run_id = run_id
        self.events = events
        self.context = context
        self._type_names: dict[type[BaseException], str] = {}
        self._tick = 0.0
        self._time = datetime.now(UTC)

    def letter(
        self,
        part: Part,
        record: Any,
        error: BaseException,
        tb: str,
        attempts: int,
        *,
        output: Any = None,
    ) -> DeadLetter:
        """A letter for ``record`` (as it entered ``part``), which failed with ``error``."""
        kind = type(error)
        if kind is RemoteError:
            type_name = error.type_name  # type: ignore[attr-defined]
        else:
            type_name = self._type_names.get(kind) or self._type_name(kind)
        return DeadLetter(
            record=record,
            stage=part.name,
            attempts=attempts,
            error_type=type_name,
            message=error_message(error),
            traceback=tb or format_traceback(error),
            run_id=self.run_id,
            records=1 if part.depth_in == 0 else max(part.weigh_in([record]), 1),
            output=output,
            created_at=self._now(),
        )

    def _now(self) -> datetime:
        """The time, read at most once a millisecond: the letters of one micro-batch share
        it (and its text, when they are stored)."""
        tick = time.monotonic()
        if tick - self._tick > 0.001:
            self._tick, self._time = tick, datetime.now(UTC)
        return self._time

    def _type_name(self, kind: type[BaseException]) -> str:
        name = self._type_names[kind] = qualified_name(kind)
        return name

    async def send(
        self, part: Part, letters: list[DeadLetter], lineage: tuple[int, ...] = ()
    ) -> None:
        """Write ``letters`` durably; a store that cannot be written stops the run (and
        holds the checkpoint back: their records are not released). ``lineage`` gives each
        letter the source positions its records came from (``source_offset``), which tell
        a resumed run whether the checkpoint covers the letter."""
        if lineage and self.tracker is not None and self.tracker.checkpointing:
            ranges = self.tracker.ranges(lineage)
            for letter in letters:
                if letter.source_offset is None:
                    object.__setattr__(letter, "source_offset", ranges)
        await asyncio.to_thread(self.store.write, letters)
        stats = part.stats
        stats.dead_lettered += len(letters)
        stats.records_dead += sum(letter.records for letter in letters)
        if not self.events.has("on_error"):
            return
        for letter in letters:
            await self.events.hook(
                "on_error",
                part.name,
                stage_name=part.name,
                error=LetterError(letter),
                context=self.context,
                result=None,
                dead_letter=letter,
            )
