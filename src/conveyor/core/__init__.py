"""The stage algebra: stages, chaining, context, results, options, hooks, events, kinds,
sinks, the frozen pipeline spec and collection mode.

This layer imports nothing else of Conveyor but :mod:`conveyor.errors`. The ``Pipeline``
builder lives above the runners, in :mod:`conveyor.pipeline` (ADR 0004).
"""

from conveyor.core.checkpoint import (
    Checkpoint,
    CheckpointInterval,
    CheckpointStore,
    SeekableSource,
    SqliteCheckpointStore,
)
from conveyor.core.context import NO_ITEM, ErrorRecord, PipelineContext
from conveyor.core.events import Event, EventBus, EventHandler, EventType
from conveyor.core.hooks import Hook, HookName, RunEvents, StageEvent, call_hooks
from conveyor.core.keyed import KeyedStage, StatefulStage
from conveyor.core.kinds import StageKind, flatten_stages, stage_kind
from conveyor.core.options import (
    DaskOptions,
    DeadLetterBudget,
    Executor,
    RetryPolicy,
    RunChanges,
    RunOptions,
    StageOptions,
)
from conveyor.core.result import (
    PipelineResult,
    PipelineStatus,
    RecordFailure,
    RunStatus,
    StageResult,
)
from conveyor.core.sink import FunctionSink, RunInfo, RunMode, Sink, StageSink, as_sink
from conveyor.core.source import AcknowledgingSource, Rejected, Source
from conveyor.core.spec import HasSpec, PipelineSpec, spec_of
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
from conveyor.core.windows import Count, Session, Sliding, Stats, Tumbling, WindowStage, window

__all__ = [
    "NO_ITEM",
    "AcknowledgingSource",
    "AggregateStage",
    "BatchStage",
    "BranchStage",
    "ChainedStage",
    "Checkpoint",
    "CheckpointInterval",
    "CheckpointStore",
    "Count",
    "DaskOptions",
    "DeadLetterBudget",
    "ErrorRecord",
    "Event",
    "EventBus",
    "EventHandler",
    "EventType",
    "Executor",
    "FilterStage",
    "FlattenStage",
    "FunctionSink",
    "FunctionStage",
    "HasSpec",
    "Hook",
    "HookName",
    "KeyedStage",
    "MapStage",
    "PipelineContext",
    "PipelineResult",
    "PipelineSpec",
    "PipelineStage",
    "PipelineStatus",
    "RecordFailure",
    "RecordOutcome",
    "RecordStage",
    "Rejected",
    "RetryPolicy",
    "RunChanges",
    "RunEvents",
    "RunInfo",
    "RunMode",
    "RunOptions",
    "RunStatus",
    "SeekableSource",
    "Session",
    "Sink",
    "Sliding",
    "Source",
    "SqliteCheckpointStore",
    "StageEvent",
    "StageKind",
    "StageOptions",
    "StageResult",
    "StageSink",
    "StatefulStage",
    "Stats",
    "Tumbling",
    "ValidateStage",
    "WindowStage",
    "as_sink",
    "call_hooks",
    "flatten_stages",
    "run_stage",
    "spec_of",
    "stage_kind",
    "window",
]
