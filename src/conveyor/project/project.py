"""Loading a project into a runnable pipeline, and running it (whole or one stage)."""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import importlib
import inspect
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from conveyor.contracts._spec import contract_for
from conveyor.core.events import EventBus, EventType
from conveyor.core.hooks import Hook, HookName
from conveyor.core.keyed import StatefulStage
from conveyor.core.options import (
    DaskOptions,
    RetryPolicy,
    RunOptions,
    StageOptions,
    default_concurrency,
)
from conveyor.core.result import RunStatus, StageResult
from conveyor.core.sink import Sink as RunSink
from conveyor.core.stage import PipelineStage
from conveyor.core.stages import BranchStage
from conveyor.errors import ConfigError, ProjectError
from conveyor.observe.graph import Drawable, Step
from conveyor.pipeline import Pipeline
from conveyor.project.config import (
    LoadedConfig,
    StageSection,
    check_paths,
    connector_sink,
    connector_source,
    load_config,
    load_dataset_config,
    validate_model,
)
from conveyor.project.datasets import DatasetWriter, Persistable
from conveyor.project.discovery import (
    Layout,
    StageFile,
    dataset_stage_files,
    discover_stage_files,
    find_layout,
    layout_of,
    load_stage,
)
from conveyor.project.kinds import Sink, Source, TaskStage

__all__ = ["LoadedStage", "Project", "load_project", "load_project_config", "stage_files"]


@dataclass
class LoadedStage:
    """A stage file, its stage object and its config section."""

    file: StageFile
    stage: Any
    section: StageSection
    params: dict[str, Any] = field(default_factory=dict)
    """The parameters the stage was built with: the shared ones its ``Config`` declares
    under its own (what its output depends on, with its code and input)."""

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
    configured_sink: RunSink | None = None
    """The sink of config.yaml's ``sink:`` section (a connector), if it has one."""
    configured_source: Source | None = None
    """The source of config.yaml's ``source:`` section (a connector), if it has one."""

    @property
    def layout(self) -> Layout:
        """Where the project keeps its stages, shared code and config (stream or dataset)."""
        return find_layout(self.root)

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

    def runnable(self, name: str) -> LoadedStage:
        """What ``stage=NAME`` runs: the stage called ``name``, or for a group of
        ``branches:`` its first member (a run of a member runs its whole branch group, from
        the dataset before it); a ConfigError listing the stages and branches otherwise."""
        branches = self.config.config.branches
        if name in branches and name not in {s.name for s in self.stages}:
            members = {m for arms in branches[name].values() for m in arms}
            for loaded in self.middle:
                if loaded.name in members:
                    return loaded
        for loaded in self.stages:
            if loaded.name == name:
                return loaded
        raise _unknown_stage(name, [s.name for s in self.stages] + sorted(branches))

    @property
    def source(self) -> Source | None:
        """Where the run's records come from: the ``source:`` section's connector, or the
        first stage when it is a :class:`Source` (a source stage file)."""
        return self.configured_source or self.source_stage

    @property
    def source_stage(self) -> Source | None:
        """The first stage when it is a :class:`Source` (a source stage file)."""
        first = self.stages[0].stage if self.stages else None
        return first if isinstance(first, Source) else None

    @property
    def sink_stage(self) -> Sink | None:
        """The last stage when it is a :class:`Sink` (a sink stage file)."""
        last = self.stages[-1].stage if self.stages else None
        return last if isinstance(last, Sink) else None

    @property
    def sink(self) -> RunSink | None:
        """Where the run's records go: the ``sink:`` section's connector, or the sink
        stage file's :class:`Sink` (``None``: neither; records are counted and dropped)."""
        return self.configured_sink or self.sink_stage

    @property
    def middle(self) -> list[LoadedStage]:
        """The record stages between the source and the sink."""
        start = 1 if self.source_stage is not None else 0
        end = len(self.stages) - (1 if self.sink_stage is not None else 0)
        return self.stages[start:end]

    def stage_options(self, loaded: LoadedStage) -> StageOptions:
        """Runner options of a stage: its section over the pipeline defaults."""
        defaults = self.config.config.pipeline
        section = loaded.section
        retry = section.retry
        # A stateful stage (windows, keyed state) runs inline, one micro-batch at a time:
        # the pipeline's defaults do not reach it (its own section's options would be refused).
        inline = isinstance(loaded.stage, StatefulStage)
        executor = section.executor or ("inline" if inline else defaults.executor)
        dask = None if defaults.dask is None else DaskOptions.parse(defaults.dask.model_dump())
        return StageOptions(
            concurrency=section.concurrency
            or (1 if inline else defaults.concurrency)
            or default_concurrency(executor, section.workers, dask),
            executor=executor,  # type: ignore[arg-type]
            workers=section.workers,
            dask=dask,
            ordered=True if section.ordered is None else section.ordered,
            retry=RetryPolicy() if retry is None else _retry_policy(self, loaded, retry),
            timeout=section.timeout,
            rate_limit=section.rate_limit,
            input_contract=self._contract(loaded, "input_contract"),
            output_contract=self._contract(loaded, "output_contract"),
        )

    def _contract(self, loaded: LoadedStage, key: str) -> Any:
        """The contract ``stages.NAME.input_contract`` / ``output_contract`` names, made
        (``None``: none configured); a bad one is a ConfigError at its key."""
        from conveyor.core._imports import OptionError, import_reference, is_reference
        from conveyor.errors import PipelineDefinitionError

        ref = getattr(loaded.section, key)
        if ref is None:
            return None
        where = ("stages", loaded.name, key)
        schema_file = ref.endswith((".json", ".avsc", ".proto")) or ".proto:" in ref
        try:
            if not schema_file and is_reference(ref):
                spec: Any = import_reference(ref, self.root, key=".".join(where))
            elif not schema_file:
                raise OptionError(
                    ".".join(where),
                    f"{'.'.join(where)} {ref!r} is neither a model (package.module:Class) nor "
                    "a schema file (.json, .avsc, .proto)",
                )
            else:
                file, _, message = ref.partition(".proto:")
                name = f"{file}.proto" if message else ref
                candidates = [self.pipeline_dir / "contracts" / name, self.path(name)]
                found = next((c for c in candidates if c.is_file()), None)
                if found is None:
                    raise OptionError(
                        ".".join(where),
                        f"{'.'.join(where)} {ref!r}: no such schema file in "
                        f"{self.pipeline_dir / 'contracts'} or the project; name a model as "
                        "package.module:Class or a .json/.avsc/.proto file",
                    )
                spec = f"{found}:{message}" if message else found
            return contract_for(spec)
        except OptionError as exc:
            raise self.config.error(where, str(exc)) from None
        except (PipelineDefinitionError, FileNotFoundError) as exc:
            raise self.config.error(where, f"{'.'.join(where)} {ref!r}: {exc}") from None

    def run_options(self, *, handle_signals: bool = False, sink: bool = False) -> RunOptions:
        """The run options of config.yaml's ``pipeline:`` section (stage options come with
        :meth:`pipeline`); with ``sink``, those of the project's Sink under its name."""
        settings = self.config.config.pipeline
        project_sink = self.sink_stage
        stage_options = (
            {project_sink.name: self.stage_options(self.stages[-1])}
            if sink and project_sink is not None
            else {}
        )
        return RunOptions(
            batch_size=settings.batch_size,
            linger=settings.linger,
            capacity=settings.capacity,
            dead_letters=self.path(settings.dead_letters),
            contracts=settings.contracts,
            sample_rate=settings.sample_rate,
            grace_period=settings.grace_period,
            handle_signals=handle_signals,
            max_dead_letters=settings.max_dead_letters,
            stage_options=stage_options,
        )

    def index(self, name: str) -> int:
        """Position among :attr:`middle` of the stage, or of the first member of the branch,
        called ``name``."""
        branches = self.config.config.branches
        members = [m for arms in branches.get(name, {}).values() for m in arms]
        for index, loaded in enumerate(self.middle):
            if loaded.name == name or loaded.name in members:
                return index
        raise _unknown_stage(name, [s.name for s in self.middle])

    def pipeline(
        self,
        stages: Sequence[LoadedStage] | None = None,
        *,
        persist: Mapping[str, DatasetWriter] | None = None,
        hooks: Mapping[HookName, Sequence[Hook]] | None = None,
        event_bus: EventBus | None = None,
    ) -> Pipeline[Any, Any]:
        """A :class:`Pipeline` of the record stages (branches of config.yaml applied), with
        the hooks and event subscribers of ``pipeline.hooks`` / ``pipeline.events`` (and
        ``hooks`` / ``event_bus`` given here); ``persist`` maps a stage name to a writer
        that receives its output micro-batches."""
        chosen = list(self.middle if stages is None else stages)
        pipeline: Pipeline[Any, Any] = Pipeline(self.name, event_bus=self._event_bus(event_bus))
        for registered in (self._hooks(), hooks or {}):
            for hook, fns in registered.items():
                for fn in fns:
                    pipeline.add_hook(hook, fn)
        grouped = self._branches(chosen)
        for item in grouped:
            if isinstance(item, LoadedStage):
                writer = (persist or {}).get(item.name)
                options = self.stage_options(item)
                if writer is not None:
                    # What the dataset cannot store is a letter of this stage, replayable.
                    inner = options.output_contract or getattr(item.stage, "output_contract", None)
                    contract = Persistable(writer, None if inner is None else contract_for(inner))
                    options = dataclasses.replace(options, output_contract=contract)
                pipeline.add_stage(item.stage, options=options)
                if writer is not None:
                    pipeline.add_stage(PersistStage(f"{item.name}.persist", writer))
            else:
                pipeline.add_stage(item)
        return pipeline

    def drawable(self) -> Drawable:
        """What ``conveyor graph`` draws: :meth:`pipeline`, or for a task-stage project its
        steps with the paths they read and write."""
        if self.stages and all(isinstance(s.stage, TaskStage) for s in self.stages):
            return [
                Step(s.name, tuple(s.stage.inputs()), tuple(s.stage.outputs())) for s in self.stages
            ]
        return self.pipeline()

    def _hooks(self) -> dict[HookName, list[Hook]]:
        """The functions ``pipeline.hooks`` of config.yaml names, imported."""
        return {
            hook: [
                self._callable(("pipeline", "hooks", hook, str(i)), ref)
                for i, ref in enumerate(refs)
            ]
            for hook, refs in self.config.config.pipeline.hooks.items()
        }

    def _event_bus(self, given: EventBus | None) -> EventBus | None:
        """``given`` (or a new bus) with the subscribers of ``pipeline.events``."""
        events = self.config.config.pipeline.events
        if not events:
            return given
        bus = given if given is not None else EventBus()
        for name, refs in events.items():
            for i, ref in enumerate(refs):
                bus.subscribe(
                    EventType(name), self._callable(("pipeline", "events", name, str(i)), ref)
                )
        return bus

    def _callable(self, where: tuple[str, ...], ref: str) -> Any:
        """The function ``module:name`` (or ``module.name``) of the project, imported."""
        module_name, sep, attr = ref.partition(":")
        if not sep:
            module_name, _, attr = ref.rpartition(".")
        try:
            value = getattr(importlib.import_module(module_name), attr) if module_name else None
        except ImportError as exc:
            raise self.config.error(
                where, f"{ref!r} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        except AttributeError:
            value = None
        if not callable(value):
            raise self.config.error(
                where,
                f"{ref!r} is not a function; name one as module:function, e.g. "
                "pipeline.shared.hooks:log_batch",
            )
        return value

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
    if not name.strip():
        example = names[1] if len(names) > 1 else names[0] if names else "NAME"
        message = (
            f"stage= names no stage: write stage=NAME to run one stage, e.g. "
            f"stage={example} (stages: {', '.join(names)})"
        )
    if config is not None:
        return config.error(("stages", name), message, names)
    return ConfigError(message, key=name, valid_keys=tuple(names))


def _instantiate(
    stage_file: StageFile,
    found: Any,
    section: StageSection,
    config: LoadedConfig,
    given: dict[str, Any],
) -> Any:
    """The stage of ``found`` (a class built with its validated ``Config`` from ``given``,
    the parameters of :func:`_given`, or an instance), named after its file."""
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
            validate_model(strict, given, config, where)
        params = validate_model(model, given, config, where)
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


def load_project_config(
    path: Path, overrides: Sequence[str] = ()
) -> tuple[Path, Path, LoadedConfig]:
    """The project folder, the pipeline folder and the config of the project at ``path``
    (either layout, see :func:`~conveyor.project.discovery.find_layout`): read within its
    bounds and validated, with ``overrides``, and its paths checked to stay inside the
    project folder (:func:`~conveyor.project.config.check_paths`). Every command that
    reads a project's config loads it through here."""
    layout = find_layout(path)
    if layout.kind == "dataset":
        config = load_dataset_config(layout.config_file.parent, overrides)
    else:
        config = load_config(layout.config_file, overrides)
    check_paths(config, layout.root, layout.package_dir)
    return layout.root, layout.package_dir, config


def stage_files(pipeline_dir: Path, config: LoadedConfig) -> list[StageFile]:
    """The project's stage files in run order: numbered files (stream layout), or those of
    the ``stages:`` list of configs/pipeline.yaml (dataset layout; a missing file is an
    error at its name in the list, with a did-you-mean)."""
    if config.order is None:
        return discover_stage_files(pipeline_dir)
    layout = layout_of(pipeline_dir)
    files = dataset_stage_files(layout, config.order)
    present = sorted(
        p.stem
        for p in (pipeline_dir / "stages").glob("*.py")
        if p.stem != "__init__" and p.stem not in layout.stage_helpers
    )
    for index, stage_file in enumerate(files):
        if not stage_file.path.is_file():
            close = difflib.get_close_matches(stage_file.name, present, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise config.error(
                ("order", str(index)),
                f"stage {stage_file.name!r} has no file {_shown(stage_file.path, layout.root)}"
                f"{hint} (stage files: {', '.join(present) or 'none'})",
                present,
            )
    for stray in config.stray_files:  # after the list: a typo there is reported there
        close = difflib.get_close_matches(stray.stem, config.order, n=1)
        hint = f"; did you mean {close[0]}{stray.suffix}?" if close else ""
        raise ConfigError(
            f"{stray.name} is the parameter file of no stage of configs/pipeline.yaml's "
            f"stages: list{hint} (stages: {', '.join(config.order)}); rename it, or add the "
            "stage to the list",
            file=stray,
        )
    return files


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_project(path: Path, overrides: Sequence[str] = ()) -> Project:
    """Discover, import and configure the project at ``path``."""
    root, pipeline_dir, config = load_project_config(path, overrides)
    files = stage_files(pipeline_dir, config)
    names = [f.name for f in files]
    for name in config.config.stages:
        if name not in names:
            raise _unknown_stage(name, names, config)
    project = Project(root, pipeline_dir, config)
    declared: set[str] = set()
    for stage_file in files:
        section = config.config.stages.get(stage_file.name, StageSection())
        if section.window is not None:  # a window stage: with the file's aggregate, or none
            from conveyor.project.windows import load_window_stage

            stage = load_window_stage(stage_file, pipeline_dir, config, section)
            project.stages.append(LoadedStage(stage_file, stage, section, {}))
            continue
        found, _ = load_stage(stage_file, pipeline_dir)
        fields = _fields(found)
        declared.update(fields)
        given = _given(config, stage_file.name, fields, section)
        stage = _instantiate(stage_file, found, section, config, given)
        project.stages.append(LoadedStage(stage_file, stage, section, given))
    if not config.order_overridden:  # (a shorter order may leave a shared key unused)
        _check_shared(config, declared)
    _check_shape(project)
    _check_task_paths(project)
    if config.config.sink is not None:
        last = project.stages[-1] if project.stages else None
        if last is not None and isinstance(last.stage, Sink):
            raise config.error(
                ("sink",),
                f"both a `sink:` section and the sink stage file {last.file.path.name} define "
                "where records go; keep one: delete the `sink:` section or the stage file",
            )
        project.configured_sink = connector_sink(config, root)
    if config.config.source is not None:
        first = project.stages[0] if project.stages else None
        if first is not None and isinstance(first.stage, Source):
            raise config.error(
                ("source",),
                f"both a `source:` section and the source stage file {first.file.path.name} "
                "define where records come from; keep one: delete the `source:` section or "
                "the stage file",
            )
        project.configured_source = connector_source(config, root)
    return project


def _given(
    config: LoadedConfig, name: str, fields: set[str], section: StageSection
) -> dict[str, Any]:
    """The parameters stage ``name`` is given: the shared ones it declares under its own.
    A shared value keeps its place (file:line:column, or the command line) and its secrecy
    at the stage's key, so that its errors point there and never print a secret."""
    shared = {k: v for k, v in config.config.params.items() if k in fields}
    base = ("stages", name, "params")
    for key in shared:
        if key in section.params:
            continue
        for path, position in list(config.positions.items()):
            if path[:2] == ("params", key):
                config.positions[(*base, *path[1:])] = position
        for path in list(config.secrets):
            if path[:2] == ("params", key):
                config.secrets.add((*base, *path[1:]))
    return {**shared, **section.params}


def _fields(found: Any) -> set[str]:
    """The parameter names a stage class declares (its ``Config`` model's fields)."""
    model = getattr(found, "Config", None) if inspect.isclass(found) else None
    fields = getattr(model, "model_fields", None)
    return set(fields) if isinstance(fields, dict) else set()


def _check_shared(config: LoadedConfig, declared: set[str]) -> None:
    """Every shared parameter is declared by some stage's ``Config`` (else it is a typo)."""
    for key in config.config.params:
        if key not in declared:
            close = difflib.get_close_matches(key, sorted(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise config.error(
                ("params", key),
                f"shared parameter {key!r} is declared by no stage's Config model, so no stage "
                f"would receive it{hint} (declared: {', '.join(sorted(declared)) or 'none'})",
                sorted(declared),
            )


def _check_task_paths(project: Project) -> None:
    """What task stages read and write stays inside the project; what they write is not
    the project folder, a folder above it, or the code (as for ``persist:`` paths)."""
    from conveyor.core._paths import PathRefused, inside_project

    base = project.root.resolve()
    code = project.pipeline_dir.resolve()
    for loaded in project.stages:
        if not isinstance(loaded.stage, TaskStage):
            continue
        for kind, paths in (("input", loaded.stage.inputs()), ("output", loaded.stage.outputs())):
            for raw in paths:
                if "://" in raw or raw.startswith("file:"):
                    continue  # a URL (a download's input)
                field_ = next(
                    (k for k, v in loaded.params.items() if isinstance(v, str) and v == raw),
                    f"{kind}_dir",
                )
                where = ("stages", loaded.name, "params", field_)
                key = project.config.dotted(where)
                try:
                    target = inside_project(project.root, raw, key=key)
                except PathRefused as exc:
                    raise project.config.error(where, str(exc)) from None
                if kind == "output" and (
                    target == base or target in base.parents or target.is_relative_to(code)
                ):
                    what = (
                        "the project folder itself"
                        if target == base
                        else "a folder above the project"
                        if target in base.parents
                        else "inside the package folder (code)"
                    )
                    raise project.config.error(
                        where,
                        f"stage {loaded.name!r} would write {raw}, {what}; write its output "
                        f"to a folder of its own, such as data/{loaded.name}",
                    )


def _check_shape(project: Project) -> None:
    kinds = [type(s.stage) for s in project.stages]
    tasks = [s for s in project.stages if isinstance(s.stage, TaskStage)]
    if tasks and len(tasks) != len(project.stages):
        raise ProjectError(
            "task stages (run(config)/validate()) cannot be mixed with record stages; "
            f"task stages: {', '.join(s.name for s in tasks)}",
            file=project.pipeline_dir,
        )
    members = {
        name
        for arms in project.config.config.branches.values()
        for names in arms.values()
        for name in names
    }
    for index, loaded in enumerate(project.stages):
        if loaded.name in members and loaded.section.persist is not None:
            raise project.config.error(
                ("stages", loaded.name, "persist"),
                f"stage {loaded.name!r} is inside a branch, whose stages cannot persist their "
                "output; persist the stage before the branch instead",
            )
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


class DiscardSink(RunSink):
    """The sink of a project without a Sink stage, and of runs that stop before the Sink:
    counts and drops (the records left through the persisted dataset before it)."""

    idempotent = True
    name = "discarded"
    description = ""  # keeps nothing: no sink line in the summary

    def __init__(self) -> None:
        self.count = 0
        self.status: RunStatus | None = None

    def write(self, records: list[Any]) -> None:
        self.count += len(records)

    def close(self, status: RunStatus) -> None:
        self.status = status


def project_sink(project: Project) -> RunSink:
    """The project's sink (a connector or a Sink stage), or a counting sink."""
    sink = project.sink
    return sink if sink is not None else DiscardSink()


class PersistStage(PipelineStage[list[Any], list[Any]]):
    """Writes every micro-batch passing through to a dataset, and passes it on."""

    def __init__(self, name: str, writer: Callable[[list[Any]], Any]) -> None:
        self.name = name
        self.writer = writer

    async def process(self, data: list[Any], context: Any) -> StageResult[list[Any]]:
        self.writer(data)
        return StageResult.ok(data)
