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

from conveyor._version import __version__
from conveyor.contracts import (
    AvroContract,
    Contract,
    ContractCheck,
    JsonSchemaContract,
    TypeContract,
    contract_for,
)
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
from conveyor.core.options import Executor, RetryPolicy, StageOptions
from conveyor.dlq import (
    DeadLetter,
    DeadLetterStore,
    JsonlDeadLetterStore,
    MemoryDeadLetterStore,
    SqliteDeadLetterStore,
    open_dead_letter_store,
)
from conveyor.errors import (
    BranchError,
    ConservationError,
    ContractViolation,
    ConveyorError,
    DeadLetterStoreError,
    HookError,
    PipelineDefinitionError,
    RecordValidationError,
    StageTimeoutError,
    UsageError,
)
from conveyor.runtime import (
    ChannelStats,
    RunReport,
    RunStatus,
    StageStats,
    StreamRun,
    replay_dead_letters,
)

__all__ = [
    "NO_ITEM",
    "AggregateStage",
    "AvroContract",
    "BatchStage",
    "BranchError",
    "BranchStage",
    "ChainedStage",
    "ChannelStats",
    "ConservationError",
    "Contract",
    "ContractCheck",
    "ContractViolation",
    "ConveyorError",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterStoreError",
    "ErrorRecord",
    "Event",
    "EventBus",
    "EventHandler",
    "EventType",
    "Executor",
    "FilterStage",
    "FlattenStage",
    "FunctionStage",
    "Hook",
    "HookError",
    "HookName",
    "JsonSchemaContract",
    "JsonlDeadLetterStore",
    "MapStage",
    "MemoryDeadLetterStore",
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
    "RetryPolicy",
    "RunReport",
    "RunStatus",
    "SqliteDeadLetterStore",
    "StageOptions",
    "StageResult",
    "StageStats",
    "StageTimeoutError",
    "StreamRun",
    "TypeContract",
    "UsageError",
    "ValidateStage",
    "__version__",
    "contract_for",
    "create_etl_pipeline",
    "open_dead_letter_store",
    "replay_dead_letters",
]
