"""The streaming runner: concurrent stages over bounded channels (see ADR 0002)."""

from conveyor.runtime.channel import Channel, ChannelClosed, ChannelStats, EndOfStream
from conveyor.runtime.executors import ChunkOutcome, FailedRecord, RemoteError
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.replay import replay_dead_letters
from conveyor.runtime.report import RunReport, RunStatus, StageKind, StageStats
from conveyor.runtime.runner import DEFAULT_DEAD_LETTERS, Sink, StreamRunner, flatten_stages
from conveyor.runtime.stream import StreamRun

__all__ = [
    "DEFAULT_DEAD_LETTERS",
    "Channel",
    "ChannelClosed",
    "ChannelStats",
    "ChunkOutcome",
    "EndOfStream",
    "FailedRecord",
    "OffsetTracker",
    "RemoteError",
    "RunReport",
    "RunStatus",
    "Sink",
    "StageKind",
    "StageStats",
    "StreamRun",
    "StreamRunner",
    "flatten_stages",
    "replay_dead_letters",
]
