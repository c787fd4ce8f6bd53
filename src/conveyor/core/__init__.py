"""The stage algebra: stages, chaining, context, results, pipelines, events, ETL.

This layer imports nothing else of Conveyor but :mod:`conveyor.errors`.
"""

from conveyor.core.context import NO_ITEM, ErrorRecord, PipelineContext
from conveyor.core.etl import create_etl_pipeline
from conveyor.core.events import Event, EventBus, EventHandler, EventType
from conveyor.core.pipeline import Hook, HookName, Pipeline
from conveyor.core.result import PipelineResult, PipelineStatus, RecordFailure, StageResult
from conveyor.core.stage import ChainedStage, PipelineStage, run_stage
from conveyor.core.stages import (
    AggregateStage,
    BatchStage,
    BranchStage,
    FilterStage,
    FlattenStage,
    FunctionStage,
    MapStage,
    RecordOutcome,
    RecordStage,
    ValidateStage,
)

__all__ = [
    "NO_ITEM",
    "AggregateStage",
    "BatchStage",
    "BranchStage",
    "ChainedStage",
    "ErrorRecord",
    "Event",
    "EventBus",
    "EventHandler",
    "EventType",
    "FilterStage",
    "FlattenStage",
    "FunctionStage",
    "Hook",
    "HookName",
    "MapStage",
    "Pipeline",
    "PipelineContext",
    "PipelineResult",
    "PipelineStage",
    "PipelineStatus",
    "RecordFailure",
    "RecordOutcome",
    "RecordStage",
    "StageResult",
    "ValidateStage",
    "create_etl_pipeline",
    "run_stage",
]
