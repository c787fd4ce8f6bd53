"""Loading a project into a runnable pipeline, and running it (whole or one stage)."""

from __future__ import annotations

import builtins
import difflib
import importlib
import inspect
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from conveyor.core.options import RetryPolicy, StageOptions
from conveyor.core.pipeline import Pipeline
from conveyor.core.result import StageResult
from conveyor.core.stage import PipelineStage
from conveyor.core.stages import BranchStage
from conveyor.errors import ConfigError, ProjectError
from conveyor.project.config import LoadedConfig, StageSection, load_config, validate_model
from conveyor.project.discovery import (
    StageFile,
    discover_stage_files,
    find_pipeline_dir,
    load_stage,
    project_root,
)
from conveyor.project.kinds import Sink, Source, TaskStage

__all__ = ["LoadedStage", "Project", "load_project"]


@dataclass
class LoadedStage:
    """A stage file, its stage object and its config section."""

    file: StageFile
    stage: Any
    section: StageSection

    @property
    def name(self) -> str:
        """The stage's name (from its file name)."""
        return self.file.name


@dataclass
class Project:
    """A loaded pipeline project: its folders, validated config and stages in order."""

    root: Path
    pipeline_dir: Path
    config: LoadedConfig
    stages: list[LoadedStage] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The pipeline's name: ``pipeline.name`` or the project folder's name."""
        return self.config.config.pipeline.name or self.root.name

    def path(self, relative: str) -> Path:
        """A path of the config, relative to the project folder."""
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.root / candidate

    def stage(self, name: str) -> LoadedStage:
        """The stage called ``name``, or a ConfigError listing the stage names."""
        for loaded in self.stages:
            if loaded.name == name:
                return loaded
        raise _unknown_stage(name, [s.name for s in self.stages])

    @property
    def source(self) -> Source | None:
        """The first stage when it is a :class:`Source`."""
        first = self.stages[0].stage
        return first if isinstance(first, Source) else None

    @property
    def sink(self) -> Sink | None:
        """The last stage when it is a :class:`Sink`."""
        last = self.stages[-1].stage
        return last if isinstance(last, Sink) else None

    @property
    def middle(self) -> list[LoadedStage]:
        """The record stages between the source and the sink."""
        start = 1 if self.source is not None else 0
        end = len(self.stages) - (1 if self.sink is not None else 0)
        return self.stages[start:end]

    def stage_options(self, loaded: LoadedStage) -> StageOptions:
        """Runner options of a stage: its section over the pipeline defaults."""
        defaults = self.config.config.pipeline
        section = loaded.section
        retry = section.retry
        return StageOptions(
            concurrency=section.concurrency or defaults.concurrency,
            executor=section.executor or defaults.executor,  # type: ignore[arg-type]
            workers=section.workers,
            ordered=True if section.ordered is None else section.ordered,
            retry=RetryPolicy() if retry is None else _retry_policy(self, loaded, retry),
            timeout=section.timeout,
            rate_limit=section.rate_limit,
        )

    def pipeline(
        self,
        stages: Sequence[LoadedStage] | None = None,
        *,
        persist: Mapping[str, Callable[[list[Any]], Any]] | None = None,
    ) -> Pipeline[Any, Any]:
        """A :class:`Pipeline` of the record stages (branches of config.yaml applied);
        ``persist`` maps a stage name to a writer that receives its output micro-batches."""
        chosen = list(self.middle if stages is None else stages)
        pipeline: Pipeline[Any, Any] = Pipeline(self.name)
        grouped = self._branches(chosen)
        for item in grouped:
            if isinstance(item, LoadedStage):
                pipeline.add_stage(item.stage, options=self.stage_options(item))
                writer = (persist or {}).get(item.name)
                if writer is not None:
                    pipeline.add_stage(PersistStage(f"{item.name}.persist", writer))
            else:
                pipeline.add_stage(item)
        return pipeline

    def _branches(self, stages: list[LoadedStage]) -> list[LoadedStage | BranchStage[Any]]:
        """Replace the members of each configured branch by one BranchStage."""
        config = self.config
        member_of: dict[str, str] = {}
        for branch, arms in config.config.branches.items():
            for arm, names in arms.items():
                for name in names:
                    if name not in {s.name for s in self.stages}:
                        raise config.error(
                            ("branches", branch, arm),
                            f"branch {branch!r} names unknown stage {name!r}; stages: "
                            + ", ".join(s.name for s in self.stages),
                        )
                    member_of[name] = branch
        out: list[LoadedStage | BranchStage[Any]] = []
        placed: set[str] = set()
        for loaded in stages:
            group = member_of.get(loaded.name)
            if group is None:
                out.append(loaded)
                continue
            if group in placed:
                continue
            placed.add(group)
            chains: dict[str, PipelineStage[Any, Any]] = {
                arm: _chain([self.stage(n).stage for n in names])
                for arm, names in config.config.branches[group].items()
            }
            out.append(BranchStage(chains, name=group))
        return out


def _chain(stages: list[PipelineStage[Any, Any]]) -> PipelineStage[Any, Any]:
    chained = stages[0]
    for stage in stages[1:]:
        chained = chained >> stage
    return chained


def _retry_policy(project: Project, loaded: LoadedStage, retry: Any) -> RetryPolicy:
    kinds: list[type[BaseException]] = []
    for index, name in enumerate(retry.retry_on):
        kind = _exception_type(name)
        if kind is None:
            raise project.config.error(
                ("stages", loaded.name, "retry", "retry_on", str(index)),
                f"{name!r} is not an exception class; use a built-in name such as "
                "ConnectionError or a dotted path such as httpx.TransportError",
            )
        kinds.append(kind)
    return RetryPolicy(
        attempts=retry.attempts,
        backoff=retry.backoff,
        multiplier=retry.multiplier,
        max_backoff=retry.max_backoff,
        jitter=retry.jitter,
        retry_on=tuple(kinds),
    )


def _exception_type(name: str) -> type[BaseException] | None:
    module_name, _, attr = name.rpartition(".")
    try:
        value = getattr(importlib.import_module(module_name) if module_name else builtins, attr)
    except (ImportError, AttributeError):
        return None
    return value if isinstance(value, type) and issubclass(value, BaseException) else None


def _unknown_stage(name: str, names: list[str], config: LoadedConfig | None = None) -> ConfigError:
    """An unknown stage name, with "did you mean"; located in config.yaml when it is there."""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    message = f"unknown stage {name!r}{hint} (stages: {', '.join(names)})"
    if config is not None:
        return config.error(("stages", name), message, names)
    return ConfigError(message, key=name, valid_keys=tuple(names))


def _instantiate(
    stage_file: StageFile, found: Any, section: StageSection, config: LoadedConfig
) -> Any:
    stage: Any
    if not inspect.isclass(found):
        found.name = stage_file.name
        if section.params:
            raise config.error(
                ("stages", stage_file.name, "params"),
                f"stage {stage_file.name!r} is an instance and takes no params; "
                "make it a class with a Config model",
            )
        return found
    model: Any = getattr(found, "Config", None)
    if model is not None:
        where = ("stages", stage_file.name, "params")
        if model.model_config.get("extra") is None:
            # A plain BaseModel ignores unknown keys; a typo in params must be an error.
            strict = type(model.__name__, (model,), {"model_config": ConfigDict(extra="forbid")})
            validate_model(strict, section.params, config, where)
        params = validate_model(model, section.params, config, where)
        factory: Any = found
        stage = factory(params)
    else:
        if section.params:
            raise config.error(
                ("stages", stage_file.name, "params"),
                f"stage {stage_file.name!r} declares no Config model, so it takes no params",
            )
        stage = found()
    stage.name = stage_file.name
    return stage


def load_project(path: Path, overrides: Sequence[str] = ()) -> Project:
    """Discover, import and configure the project at ``path``."""
    pipeline_dir = find_pipeline_dir(path)
    root = project_root(path)
    config = load_config(pipeline_dir / "config.yaml", overrides)
    files = discover_stage_files(pipeline_dir)
    names = [f.name for f in files]
    for name in config.config.stages:
        if name not in names:
            raise _unknown_stage(name, names, config)
    project = Project(root, pipeline_dir, config)
    for stage_file in files:
        found, _ = load_stage(stage_file, pipeline_dir)
        section = config.config.stages.get(stage_file.name, StageSection())
        stage = _instantiate(stage_file, found, section, config)
        project.stages.append(LoadedStage(stage_file, stage, section))
    _check_shape(project)
    return project


def _check_shape(project: Project) -> None:
    kinds = [type(s.stage) for s in project.stages]
    tasks = [s for s in project.stages if isinstance(s.stage, TaskStage)]
    if tasks and len(tasks) != len(project.stages):
        raise ProjectError(
            "task stages (run(config)/validate()) cannot be mixed with record stages; "
            f"task stages: {', '.join(s.name for s in tasks)}",
            file=project.pipeline_dir,
        )
    for index, loaded in enumerate(project.stages):
        if isinstance(loaded.stage, Source | Sink) and loaded.section.persist is not None:
            raise project.config.error(
                ("stages", loaded.name, "persist"),
                f"stage {loaded.name!r} is a {type(loaded.stage).__bases__[0].__name__}: "
                "its records are not written by the run; persist the stage after it instead",
            )
        if isinstance(loaded.stage, Source) and index != 0:
            raise ProjectError("a Source must be the first stage", file=loaded.file.path)
        if isinstance(loaded.stage, Sink) and index != len(kinds) - 1:
            raise ProjectError("a Sink must be the last stage", file=loaded.file.path)


def source_records(source: Source) -> Iterable[Any] | AsyncIterable[Any]:
    """What a Source reads (checked to be iterable)."""
    records = source.read()
    if not isinstance(records, Iterable | AsyncIterable):
        raise ProjectError(
            f"{source.name}.read() returned {type(records).__name__}, not an iterable of records"
        )
    return records


class DiscardSink:
    """The sink of a project without a Sink stage: counts and drops."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, records: list[Any]) -> None:
        self.count += len(records)


def sink_function(project: Project) -> Callable[[list[Any]], Any]:
    """The project's Sink.write, or a counting sink."""
    sink = project.sink
    return sink.write if sink is not None else DiscardSink()


class PersistStage(PipelineStage[list[Any], list[Any]]):
    """Writes every micro-batch passing through to a dataset, and passes it on."""

    def __init__(self, name: str, writer: Callable[[list[Any]], Any]) -> None:
        self.name = name
        self.writer = writer

    async def process(self, data: list[Any], context: Any) -> StageResult[list[Any]]:
        self.writer(data)
        return StageResult.ok(data)
