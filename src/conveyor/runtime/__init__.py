"""The streaming runner: concurrent stages over bounded channels (see ADR 0002, 0004)."""

from conveyor.core.kinds import StageKind, flatten_stages
from conveyor.core.result import RunStatus
from conveyor.runtime.channel import Channel, ChannelClosed, ChannelStats, EndOfStream
from conveyor.runtime.executors import ChunkOutcome, FailedRecord, RemoteError
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.replay import ReplayRefused, plan_replay, replay_dead_letters
from conveyor.runtime.report import RunReport, StageStats
from conveyor.runtime.runner import DEFAULT_DEAD_LETTERS, StreamRunner, run_stream
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
    "ReplayRefused",
    "RunReport",
    "RunStatus",
    "StageKind",
    "StageStats",
    "StreamRun",
    "StreamRunner",
    "flatten_stages",
    "plan_replay",
    "replay_dead_letters",
    "run_stream",
]
