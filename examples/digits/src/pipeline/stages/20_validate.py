"""Validate: the DigitImage contract (shape, value range, label set); the runner checks it
on every record entering this stage and dead-letters the violations."""

from __future__ import annotations

from typing import Any, ClassVar

from conveyor import PipelineStage, StageResult
from conveyor.core.context import PipelineContext
from pipeline.contracts.models import DigitImage


class Validate(PipelineStage[list[dict[str, Any]], list[dict[str, Any]]]):
    """Passes on the records that satisfy :class:`DigitImage`; the others never reach it."""

    input_contract: ClassVar[Any] = DigitImage

    async def process(
        self, data: list[dict[str, Any]], context: PipelineContext
    ) -> StageResult[list[dict[str, Any]]]:
        return StageResult.ok(data)
