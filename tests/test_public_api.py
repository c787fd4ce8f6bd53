"""The public API: ``conveyor.__all__`` is pinned here so that any change shows in review."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import pytest

import conveyor

# Sorted with sorted(); update this list on purpose when the public API changes.
PUBLIC_API = [
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
    "NO_ITEM",
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


def test_pinned_list_is_sorted_and_unique() -> None:
    assert sorted(set(PUBLIC_API)) == PUBLIC_API


def test_all_matches_the_pinned_list() -> None:
    assert sorted(conveyor.__all__) == PUBLIC_API
    assert len(conveyor.__all__) == len(set(conveyor.__all__))


@pytest.mark.parametrize("name", PUBLIC_API)
def test_name_is_importable(name: str) -> None:
    module = importlib.import_module("conveyor")
    assert hasattr(module, name)
    namespace: dict[str, object] = {}
    exec(f"from conveyor import {name}", namespace)
    assert namespace[name] is getattr(module, name)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_classes_and_functions_have_their_own_docstring(name: str) -> None:
    obj = getattr(conveyor, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc, f"{name} has no docstring"
    assert doc.strip()
    assert not doc.startswith(f"{name}("), f"{name} only has the dataclass-generated docstring"


def test_run_changes_keys_are_the_run_options_fields() -> None:
    # RunChanges is the keyword form of RunOptions taken by Pipeline.run and its siblings.
    import dataclasses

    from conveyor.core.options import RunChanges

    fields = [f.name for f in dataclasses.fields(conveyor.RunOptions)]
    assert list(RunChanges.__annotations__) == fields


def test_star_import_exports_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from conveyor import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC_API


def test_version_matches_installed_metadata() -> None:
    assert conveyor.__version__ == importlib.metadata.version("conveyor")


def test_module_has_a_docstring() -> None:
    assert conveyor.__doc__
    assert "Conveyor" in conveyor.__doc__
