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

from typing import TYPE_CHECKING

from conveyor._version import __version__
from conveyor.core import (
    NO_ITEM,
    AggregateStage,
    BatchStage,
    BranchStage,
    ChainedStage,
    Checkpoint,
    CheckpointInterval,
    CheckpointStore,
    Count,
    DaskOptions,
    DeadLetterBudget,
    ErrorRecord,
    Event,
    EventBus,
    EventHandler,
    EventType,
    Executor,
    FilterStage,
    FlattenStage,
    FunctionStage,
    Hook,
    HookName,
    KeyedStage,
    MapStage,
    PipelineContext,
    PipelineResult,
    PipelineSpec,
    PipelineStage,
    PipelineStatus,
    RecordFailure,
    RecordOutcome,
    RecordStage,
    Rejected,
    RetryPolicy,
    RunInfo,
    RunOptions,
    RunStatus,
    SeekableSource,
    Session,
    Sink,
    Sliding,
    Source,
    SqliteCheckpointStore,
    StageKind,
    StageOptions,
    StageResult,
    Stats,
    Tumbling,
    ValidateStage,
    WindowStage,
    window,
)
from conveyor.core._lazy import lazy_attributes
from conveyor.errors import (
    BranchError,
    CheckpointError,
    ConservationError,
    ContractViolation,
    ConveyorError,
    DeadLetterStoreError,
    HookError,
    LateRecordError,
    PipelineDefinitionError,
    RecordValidationError,
    ResumeRequired,
    SinkUnavailableError,
    SourceRecordError,
    SourceUnavailableError,
    StageTimeoutError,
    UsageError,
)
from conveyor.pipeline import Pipeline, create_etl_pipeline

if TYPE_CHECKING:
    from conveyor.contracts import (
        AvroContract,
        Contract,
        ContractCheck,
        JsonSchemaContract,
        TypeContract,
        contract_for,
    )
    from conveyor.dlq import (
        DeadLetter,
        DeadLetterStore,
        JsonlDeadLetterStore,
        MemoryDeadLetterStore,
        SqliteDeadLetterStore,
        open_dead_letter_store,
    )
    from conveyor.runtime import (
        ChannelStats,
        ReplayRefused,
        RunReport,
        StageStats,
        StreamRun,
        replay_dead_letters,
    )

# Names of the layers a pipeline needs only when it runs (the streaming runner and its
# event loop, the dead-letter stores, the contracts with pydantic and friends) are imported
# when first used, so that `import conveyor` stays quick.
_LAZY = {
    **dict.fromkeys(
        ("AvroContract", "Contract", "ContractCheck", "JsonSchemaContract", "TypeContract"),
        "conveyor.contracts",
    ),
    "contract_for": "conveyor.contracts",
    **dict.fromkeys(
        (
            "DeadLetter",
            "DeadLetterStore",
            "JsonlDeadLetterStore",
            "MemoryDeadLetterStore",
            "SqliteDeadLetterStore",
            "open_dead_letter_store",
        ),
        "conveyor.dlq",
    ),
    **dict.fromkeys(
        (
            "ChannelStats",
            "ReplayRefused",
            "RunReport",
            "StageStats",
            "StreamRun",
            "replay_dead_letters",
        ),
        "conveyor.runtime",
    ),
}


__getattr__ = lazy_attributes(globals(), _LAZY, "conveyor")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "NO_ITEM",
    "AggregateStage",
    "AvroContract",
    "BatchStage",
    "BranchError",
    "BranchStage",
    "ChainedStage",
    "ChannelStats",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInterval",
    "CheckpointStore",
    "ConservationError",
    "Contract",
    "ContractCheck",
    "ContractViolation",
    "ConveyorError",
    "Count",
    "DaskOptions",
    "DeadLetter",
    "DeadLetterBudget",
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
    "KeyedStage",
    "LateRecordError",
    "MapStage",
    "MemoryDeadLetterStore",
    "Pipeline",
    "PipelineContext",
    "PipelineDefinitionError",
    "PipelineResult",
    "PipelineSpec",
    "PipelineStage",
    "PipelineStatus",
    "RecordFailure",
    "RecordOutcome",
    "RecordStage",
    "RecordValidationError",
    "Rejected",
    "ReplayRefused",
    "ResumeRequired",
    "RetryPolicy",
    "RunInfo",
    "RunOptions",
    "RunReport",
    "RunStatus",
    "SeekableSource",
    "Session",
    "Sink",
    "SinkUnavailableError",
    "Sliding",
    "Source",
    "SourceRecordError",
    "SourceUnavailableError",
    "SqliteCheckpointStore",
    "SqliteDeadLetterStore",
    "StageKind",
    "StageOptions",
    "StageResult",
    "StageStats",
    "StageTimeoutError",
    "Stats",
    "StreamRun",
    "Tumbling",
    "TypeContract",
    "UsageError",
    "ValidateStage",
    "WindowStage",
    "__version__",
    "contract_for",
    "create_etl_pipeline",
    "open_dead_letter_store",
    "replay_dead_letters",
    "window",
]
