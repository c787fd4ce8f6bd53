"""Conveyor: typed, concurrent, back-pressured data pipelines. Do one thing, pass it on.

The public API lives here; everything in submodules not re-exported here is internal.

>>> from conveyor import Pipeline, MapStage, FilterStage
>>> result = (
...     Pipeline[list[int], list[int]]("demo")
...     .add_stage(MapStage(lambda x: x + 1))
...     .add_stage(FilterStage(lambda x: x > 2))
...     .execute_sync([1, 2, 3])
... )
>>> result.data
[3, 4]
"""

from importlib.metadata import PackageNotFoundError, version

from conveyor.core import (
    NO_ITEM,
    AggregateStage,
    BatchStage,
    BranchStage,
    ChainedStage,
    ErrorRecord,
    Event,
    EventBus,
    EventHandler,
    EventType,
    FilterStage,
    FlattenStage,
    FunctionStage,
    Hook,
    HookName,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineResult,
    PipelineStage,
    PipelineStatus,
    RecordFailure,
    RecordOutcome,
    RecordStage,
    StageResult,
    ValidateStage,
    create_etl_pipeline,
)
from conveyor.errors import (
    BranchError,
    ConveyorError,
    HookError,
    PipelineDefinitionError,
    RecordValidationError,
    UsageError,
)

try:
    __version__ = version("conveyor")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "NO_ITEM",
    "AggregateStage",
    "BatchStage",
    "BranchError",
    "BranchStage",
    "ChainedStage",
    "ConveyorError",
    "ErrorRecord",
    "Event",
    "EventBus",
    "EventHandler",
    "EventType",
    "FilterStage",
    "FlattenStage",
    "FunctionStage",
    "Hook",
    "HookError",
    "HookName",
    "MapStage",
    "Pipeline",
    "PipelineContext",
    "PipelineDefinitionError",
    "PipelineResult",
    "PipelineStage",
    "PipelineStatus",
    "RecordFailure",
    "RecordOutcome",
    "RecordStage",
    "RecordValidationError",
    "StageResult",
    "UsageError",
    "ValidateStage",
    "__version__",
    "create_etl_pipeline",
]
