"""Running a project: the whole pipeline, or one stage (``stage=NAME``).

Both are one streaming run (:func:`conveyor.runtime.run_stream`) with the project's
:class:`~conveyor.RunOptions`, hooks and events; they differ only in their plan: which
stages run, on what input, into which sink. A whole run skips the persisted stages at its
start whose code, config and input are unchanged (``force`` runs them anyway) and reads
the last one's dataset instead; every persisted stage that ran records its fingerprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import traceback
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.core.events import EventBus
from conveyor.core.hooks import Hook, HookName
from conveyor.core.options import RunOptions
from conveyor.core.sink import RunMode
from conveyor.core.sink import Sink as RunSink
from conveyor.core.source import Source as KnownSource
from conveyor.errors import ConveyorError, ProjectError, UsageError
from conveyor.project.discovery import project_root, raised_in
from conveyor.project.kinds import TaskStage, TaskStageFailed
from conveyor.project.missing import keys_naming, missing_input, refusal_error
from conveyor.project.project import (
    DiscardSink,
    LoadedStage,
    Project,
    load_project,
    project_sink,
    source_records,
)
from conveyor.runtime import RunReport
from conveyor.runtime.runner import StreamRunner

__all__ = ["ProjectRun", "RunPlan", "run_project"]

Progress = Callable[[StreamRunner], Any]
"""Called with the live runner about every ``progress_interval`` seconds."""

Records = Iterable[Any] | AsyncIterable[Any]


@dataclass
class ProjectRun:
    """Outcome of :func:`run_project`."""

    project: Project
    report: RunReport | None = None
    stage: str | None = None
    tasks_run: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report_path: Path | None = None
    """Where the run's report was written (``report=`` of :func:`run_project`)."""


@dataclass
class RunPlan:
    """What one run of a project does: ``stages`` (a slice of the project's record stages)
    on ``records`` (read from the Source, or from the dataset at ``input_path``) into
    ``sink``; ``skipped`` lists the fresh stages it does not run."""

    stages: list[LoadedStage]
    records: Records
    input_path: Path | None
    sink: RunSink
    mode: RunMode = "run"
    skipped: list[str] = field(default_factory=list)
    append: bool = False
    """Persisted datasets gain the run's records in new shards (a replay) instead of being
    replaced."""
    notes: list[str] = field(default_factory=list)
    """What the user should know about this plan (printed by ``conveyor run``)."""
    depth: int = 0
    """How deep the records read are nested in groups (a replay after a ``BatchStage``)."""
    current_input: bool = False
    """The dataset read is known to hold everything the current Source leads to there (a
    replay's recompute of a barrier, after extending its input)."""


@dataclass(frozen=True)
class RunHooks:
    """What a caller adds to a project's own hooks and events."""

    hooks: Mapping[HookName, Sequence[Hook]] = field(default_factory=dict)
    event_bus: EventBus | None = None
    progress: Progress | None = None
    progress_interval: float = 0.25
    handle_signals: bool = True
    resume: bool | None = None
    """``--resume`` (True), ``--fresh`` (False), or neither (``None``)."""


def run_project(
    path: Path,
    overrides: Sequence[str] = (),
    *,
    progress: Progress | None = None,
    progress_interval: float = 0.25,
    handle_signals: bool = True,
    force: bool = False,
    hooks: Mapping[HookName, Sequence[Hook]] | None = None,
    event_bus: EventBus | None = None,
    resume: bool | None = None,
    after: str | None = None,
    report: str | Path | None = None,
) -> ProjectRun:
    """Load the project at ``path`` and run it; ``stage=NAME`` among ``overrides`` runs one
    stage only; ``after=NAME`` runs every stage after the persisted stage NAME, on its
    dataset, into the Sink (:func:`after_run_plan`). Unchanged persisted stages are skipped
    unless ``force``. ``hooks`` and ``event_bus`` are added to those of config.yaml. A
    whole run keeps checkpoints (``pipeline.checkpoints``): ``resume=True`` continues an
    unfinished one, ``False`` starts afresh, ``None`` stops if there is one. ``report``
    names a ``.html`` or ``.json`` file to write the run's report to when it ends (also
    when a signal stopped it; see :mod:`conveyor.observe.run_page`)."""
    from conveyor.project.run_report import report_target, write_run_report

    stage_name, rest = _split_stage(overrides)
    target = None if report is None else report_target(report)
    recorder = None
    if target is not None:
        from conveyor.observe.run_page import RunRecorder

        recorder = RunRecorder()
        progress = _also(progress, recorder)
    if after is not None and stage_name is not None:
        raise UsageError(
            f"--after {after} and stage={stage_name} exclude each other: stage=NAME runs one "
            "stage, --after NAME every stage after NAME"
        )
    extra = RunHooks(hooks or {}, event_bus, progress, progress_interval, handle_signals, resume)
    # Stages see paths relative to the project folder, as `dvc repro` runs them.
    with contextlib.chdir(project_root(path)):
        project = load_project(Path.cwd(), rest)
        if all(isinstance(s.stage, TaskStage) for s in project.stages):
            if target is not None:
                raise UsageError(
                    f"--report {report}: a project of task stages has no record flow to "
                    "report; each stage's summary line is what it did"
                )
            if after is not None:
                raise UsageError(
                    f"--after {after}: a project of task stages has no datasets to start "
                    "from; run one stage with stage=NAME"
                )
            return _run_tasks(project, stage_name)
        if after is not None:
            plan = after_run_plan(project, project.stage(after))
        elif stage_name is None:
            plan = whole_run_plan(project, force=force)
        else:
            plan = stage_run_plan(project, project.runnable(stage_name), force=force)
        run = ProjectRun(
            project, stage=stage_name, skipped=list(plan.skipped), notes=list(plan.notes)
        )
        if plan.stages or plan.sink is project.sink or plan.sink is project.sink_stage:
            try:
                run.report = asyncio.run(execute_plan(project, plan, extra))
            except (KeyboardInterrupt, SystemExit) as stop:
                stopped = getattr(stop, "report", None)  # drained after a signal: report it
                if target is not None and isinstance(stopped, RunReport):
                    write_run_report(project, stopped, recorder, target)
                raise
            except FileNotFoundError as exc:  # the Source's file is not there: say which
                located = _run_failed(project, plan, exc)
                if located is None:
                    raise
                raise located from exc
            if target is not None:
                run.report_path = write_run_report(project, run.report, recorder, target)
        return run


def _also(progress: Progress | None, recorder: Progress) -> Progress:
    """``progress`` and then ``recorder`` at each tick (only ``recorder`` without one)."""
    if progress is None:
        return recorder
    first = progress

    def both(runner: StreamRunner) -> None:
        first(runner)
        recorder(runner)

    return both


def _split_stage(overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    stage: str | None = None
    rest: list[str] = []
    for item in overrides:
        if item.startswith("stage="):
            stage = item.partition("=")[2]
        else:
            rest.append(item)
    return stage, rest


def _run_tasks(project: Project, only: str | None) -> ProjectRun:
    run = ProjectRun(project, stage=only)
    chosen = [project.stage(only)] if only is not None else project.stages  # (stage= too)
    options = project.run_options(handle_signals=True)
    for loaded in chosen:
        stage: TaskStage = loaded.stage
        stage.run_options = options
        again = f", then re-run it with: conveyor run {project.root} stage={loaded.name}"
        try:
            stage.refusal = ""
            if not stage.validate():
                if stage.refusal:  # said why, with refuse()
                    raise refusal_error(
                        project, loaded, stage.refusal, stage.refused_keys, then=again
                    )
                raise ProjectError(
                    f"stage {loaded.name!r}: validate() returned False; fix its inputs or "
                    f"config{again}",
                    file=loaded.file.path,
                )
            stage.run(getattr(stage, "config", None))
        except ConveyorError:
            raise
        except Exception as exc:
            raise _task_failed(project, loaded, exc, again) from exc
        run.tasks_run.append(loaded.name)
    return run


def _task_failed(project: Project, loaded: LoadedStage, exc: Exception, again: str) -> ProjectError:
    """What a task stage's exception becomes: one error naming the stage and the place in
    the project's code where it was raised; for a missing file, the path and the config
    key that names it too (located there)."""
    file, line = raised_in(exc, project.root)
    missing = _missing_file(exc)
    if missing is not None:
        keys = keys_naming(project, loaded, Path(missing))
        return missing_input(
            project,
            f"stage {loaded.name!r}",
            missing,
            keys,
            file=file or loaded.file.path,
            line=line,
            opened=_place(project, file, line),
            then=again,
        )
    return TaskStageFailed(
        f"stage {loaded.name!r} failed: {type(exc).__name__}: {exc}; fix it{again}",
        file=file or loaded.file.path,
        line=line,
    )


def _missing_file(exc: BaseException) -> str | None:
    """The path a :class:`FileNotFoundError` names, if it names one."""
    if not isinstance(exc, FileNotFoundError):
        return None
    name = exc.filename
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return str(name) if isinstance(name, str | os.PathLike) and str(name) else None


def _place(project: Project, file: Path | None, line: int | None) -> str:
    """``file:line``, relative to the project folder when inside it ("" when unknown)."""
    if file is None:
        return ""
    try:
        shown = file.resolve().relative_to(project.root.resolve()).as_posix()
    except ValueError:
        shown = str(file)
    return f"{shown}:{line}" if line else shown


def _check_source_inputs(project: Project) -> None:
    """Before a run reads its Source: what its ``inputs()`` name is there. A missing file
    is one error naming the source, the config key that names the file and the path,
    raised before anything started (no checkpoint is left to resume or discard)."""
    assert project.source is not None
    for name in project.source.inputs():
        if any(c in name for c in "*?[") or project.path(name).exists():
            continue  # (a pattern is the Source's own business)
        raise _source_missing(project, name)


def _source_missing(
    project: Project,
    name: str,
    *,
    file: Path | None = None,
    line: int | None = None,
    then: str = "",
) -> ProjectError:
    """The error for the Source reading ``name``, which is not there (``file``/``line``:
    where its code tried to open it)."""
    if project.configured_source is not None:
        connector = (project.config.config.source or {}).get("connector")
        who, loaded = f"the source ({connector} connector)", None
    else:
        loaded = project.stages[0]
        who = f"the source stage {loaded.name!r} ({loaded.file.path.name})"
    return missing_input(
        project,
        who,
        name,
        keys_naming(project, loaded, Path(name)),
        file=file or (loaded.file.path if loaded is not None else project.config.file),
        line=line,
        opened=_place(project, file, line),
        then=then,
    )


def _source_failed(project: Project, exc: FileNotFoundError, then: str = "") -> ProjectError | None:
    """What a :class:`FileNotFoundError` becomes when the Source raised it (reading a file
    that is not there): the error of :func:`_source_missing`, ending with ``then`` (how to
    go on once it is there); ``None`` when it came from elsewhere."""
    missing = _missing_file(exc)
    if missing is None or project.source is None:
        return None
    if project.source_stage is not None:
        source_file = project.stages[0].file.path.resolve()
        frames = traceback.walk_tb(exc.__traceback__)
        if not any(Path(f.f_code.co_filename).resolve() == source_file for f, _ in frames):
            return None
    file, line = raised_in(exc, project.root)
    return _source_missing(project, missing, file=file, line=line, then=then)


def _run_failed(project: Project, plan: RunPlan, exc: FileNotFoundError) -> ProjectError | None:
    """:func:`_source_failed` for a run that read its Source (not a dataset), saying how
    to go on from the checkpoint the run keeps, if it keeps one."""
    if plan.input_path is not None:
        return None
    settings = project.config.config.pipeline
    persisting = any(persist_path(project, s) is not None for s in plan.stages)
    checkpointed = settings.checkpoints and plan.mode == "run" and not persisting
    then = (
        f"; then go on from the run's checkpoint with: conveyor run {project.root} --resume"
        if checkpointed
        else ""
    )
    return _source_failed(project, exc, then)


# -- plans -----------------------------------------------------------------------------------


def persist_path(project: Project, loaded: LoadedStage) -> Path | None:
    """Where ``loaded`` persists its output, or ``None``."""
    persist = loaded.section.persist
    return None if persist is None else project.path(persist.path)


def input_of(project: Project, loaded: LoadedStage) -> tuple[bool, Path | None]:
    """Whether the input of ``loaded`` is known — a persisted dataset, or a Source that
    declares what its records depend on (``inputs()`` or ``deterministic``) — and the
    dataset it is (``None`` for the Source)."""
    index = project.middle.index(loaded)
    if index == 0:
        source = project.source
        return source is not None and (source.deterministic or bool(source.inputs())), None
    path = persist_path(project, project.middle[index - 1])
    return path is not None, path


def fingerprint_key(project: Project) -> bytes:
    """The project's secret key for fingerprints of its config (``state_dir``'s
    ``fingerprint.key``, ADR 0008): what the state folder records about parameters, the
    source's and the sink's sections (secrets among them) is keyed with it."""
    from conveyor.project.cache import project_key

    return project_key(project.path(project.config.config.pipeline.state_dir))


def fingerprint(project: Project, loaded: LoadedStage, input_path: Path | None) -> Any:
    """What the output of ``loaded`` depends on: its code, config and input."""
    from conveyor.project.cache import StageFingerprint

    # What changes the output: parameters and persistence, not runner options.
    section: dict[str, Any] = {"params": loaded.params, "persist": loaded.section.persist}
    if loaded.section.window is not None:  # a window stage's settings (ADR 0013)
        section["window"] = loaded.section.window
    found = StageFingerprint.compute(
        loaded.file.path,
        section,
        input_path,
        pipeline_dir=project.pipeline_dir,
        key=fingerprint_key(project),
    )
    if input_path is None and project.source is not None:
        # Fed by the Source itself: its input is what the Source's code, params and inputs make.
        found = dataclasses.replace(found, input_hash=f"source:{source_digest(project)}")
    return found


def source_digest(project: Project) -> str:
    """sha256 of what the Source's records follow from: its code and params, and the
    content of the files its ``inputs()`` name; keyed with the project's secret (HMAC, see
    :func:`fingerprint_key`), as it is recorded in the state folder and in checkpoints."""
    assert project.source is not None
    key = fingerprint_key(project)
    digest = _made_by(project, key)
    for name in sorted(project.source.inputs()):  # what it reads, by content
        digest.update(f"\n{name}:{_content_hash(project.path(name))}".encode())
    return str(digest.hexdigest())


def _made_by(project: Project, key: bytes) -> Any:
    """The running digest of the Source's code and params (its section, for a connector)."""
    from conveyor.project.cache import StageFingerprint, keyed_digest

    if project.configured_source is not None:  # a connector: its section says it all
        section = json.dumps(project.config.config.source, sort_keys=True, default=str)
        digest = keyed_digest(key, f"connector:{section}")
    else:
        source = project.stages[0]
        made_by = StageFingerprint.compute(
            source.file.path,
            {"params": source.params},
            None,
            pipeline_dir=project.pipeline_dir,
            key=key,
        )
        digest = keyed_digest(key, f"{made_by.code_hash}:{made_by.config_hash}")
    return digest


def source_inputs(project: Project) -> dict[str, Any] | None:
    """What the Source reads file by file — its code digest and each input file's size and
    keyed digest — for a Source whose files only grow by appending lines
    (``appends_keep_records``: the csv and jsonl connectors); else ``None``."""
    source = project.source
    if source is None or not getattr(source, "appends_keep_records", False):
        return None
    key = fingerprint_key(project)
    files: dict[str, list[Any]] = {}
    for name in sorted(source.inputs()):
        path = project.path(name)
        if not path.is_file():
            return None
        files[name] = [path.stat().st_size, _prefix_digest(key, path, None)]
    return {"code": _made_by(project, key).hexdigest(), "files": files}


def _prefix_digest(key: bytes, path: Path, size: int | None) -> str:
    """Keyed sha256 of the first ``size`` bytes of ``path`` (``None``: all of it)."""
    from conveyor.project.cache import keyed_digest

    digest = keyed_digest(key, b"input:")
    left = size
    with path.open("rb") as data:
        while left is None or left > 0:
            chunk = data.read(1 << 20 if left is None else min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def _runs_read_within(project: Project, ledger: Any, now: Mapping[str, Any] | None) -> list[str]:
    """The runs that read only records this run read too: the same Source code, and each
    of their files is still there with what they read at its start, up to the end of a
    line (rows were appended, or files added)."""
    if now is None:
        return []
    key = fingerprint_key(project)
    prefixes: dict[tuple[Path, int], str | None] = {}  # (file, size) -> its digest: once each
    found = []
    for run, then in ledger.all_inputs().items():
        files = then.get("files")
        if then.get("code") != now["code"] or not isinstance(files, dict):
            continue
        if all(
            _extends(key, project.path(n), then_file, now["files"].get(n), prefixes)
            for n, then_file in files.items()
        ):
            found.append(run)
    return found


def _extends(
    key: bytes,
    path: Path,
    then: Any,
    now: Any,
    prefixes: dict[tuple[Path, int], str | None],
) -> bool:
    """Whether the file now is the file then with whole lines appended (or the same)."""
    if not (isinstance(then, list) and len(then) == 2 and isinstance(now, list)):
        return False
    size, digest = then
    if now == then:
        return True
    if not isinstance(size, int) or now[0] <= size:
        return False
    if (path, size) not in prefixes:
        ends_a_line = True
        if size > 0:
            with path.open("rb") as data:
                data.seek(size - 1)
                ends_a_line = data.read(1) == b"\n"  # else the append changed its last line
        prefixes[(path, size)] = _prefix_digest(key, path, size) if ends_a_line else None
    return bool(prefixes[(path, size)] == digest)


def known_source(project: Project) -> str | None:
    """The Source's digest when it declares what its records depend on, else ``None``."""
    source = project.source
    if source is None or not (source.deterministic or source.inputs()):
        return None
    return source_digest(project)


def _content_hash(path: Path) -> str:
    """sha256 of a file, or of every file below a folder (by relative path and bytes);
    ``"missing"`` when it is not there."""
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
    else:
        return "missing"
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(f"{len(name)}:{name}".encode())
        with file.open("rb") as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def is_fresh(project: Project, loaded: LoadedStage) -> bool:
    """Whether ``loaded`` is persisted and unchanged since it last ran (code, config and
    input the same, its output still there as it left it)."""
    from conveyor.project.cache import RunCache

    output = persist_path(project, loaded)
    known, input_path = input_of(project, loaded)
    if output is None or not known:
        return False
    if input_path is not None and not (input_path / "_manifest.json").is_file():
        return False
    cache = RunCache(project.path(project.config.config.pipeline.state_dir))
    return cache.is_fresh(loaded.name, fingerprint(project, loaded, input_path), output)


def read_input(project: Project, loaded: LoadedStage) -> tuple[Records, Path | None]:
    """The records ``loaded`` reads: the Source's, or the previous stage's dataset (the
    Sink reads after the last record stage)."""
    middle = project.middle
    return _input_at(project, middle.index(loaded) if loaded in middle else len(middle), loaded)


def _input_at(
    project: Project, index: int, reader: LoadedStage | None = None
) -> tuple[Records, Path | None]:
    """What the stage at position ``index`` of the record stages reads (``len(middle)``:
    the Sink): the Source's records, or the dataset of the stage before it."""
    from conveyor.project.datasets import read_dataset

    if index == 0:
        if project.source is None:
            raise ProjectError(
                "the first stage must be a Source (a class with read()) that emits the "
                "records, or config.yaml needs a `source:` section (e.g. `source: "
                "{connector: csv, path: data/in.csv}`; `conveyor connectors` lists them)",
                file=project.stages[0].file.path if project.stages else project.config.file,
            )
        _check_source_inputs(project)
        try:
            return source_records(project.source), None
        except FileNotFoundError as exc:  # read() opened a file at once (nothing started)
            located = _source_failed(project, exc)
            if located is None:
                raise
            raise located from exc
    previous = project.middle[index - 1]
    name = (reader or project.stages[-1]).name
    path = persist_path(project, previous)
    if path is None:
        raise ProjectError(
            f"stage {name!r} reads the output of {previous.name!r}, which is not "
            f"persisted; add `persist: {{path: data/{previous.name}}}` to "
            f"stages.{previous.name} in config.yaml",
            file=project.config.file,
        )
    try:
        return read_dataset(path), path
    except FileNotFoundError as exc:
        raise ProjectError(
            f"stage {name!r} reads {path}, which does not exist yet; run "
            f"'conveyor run {project.root} stage={previous.name}' (or the whole pipeline) first",
        ) from exc


def whole_run_plan(project: Project, *, force: bool = False) -> RunPlan:
    """Every record stage into the Sink, after the fresh persisted stages at the start
    (when all are fresh, the Sink reads the last one's dataset)."""
    middle = project.middle
    skipped: list[str] = []
    start = 0
    while not force and start < len(middle) and is_fresh(project, middle[start]):
        skipped.append(middle[start].name)
        start += 1
    records, input_path = _input_at(project, start, middle[start] if start < len(middle) else None)
    return RunPlan(middle[start:], records, input_path, project_sink(project), skipped=skipped)


def stage_run_plan(project: Project, loaded: LoadedStage, *, force: bool = False) -> RunPlan:
    """One stage on the previous stage's persisted output (the Sink: into itself)."""
    if project.source_stage is not None and loaded is project.stages[0]:
        # (With a `source:` section the first stage is a record stage: it reads the Source.)
        raise ProjectError(
            f"stage {loaded.name!r} is the first stage (the Source); run the whole pipeline "
            "instead",
            file=loaded.file.path,
        )
    if project.sink_stage is not None and loaded is project.stages[-1]:
        records, input_path = read_input(project, loaded)
        return RunPlan([], records, input_path, project.sink_stage, mode="stage")
    if not force and is_fresh(project, loaded):
        return RunPlan([], [], None, DiscardSink(), mode="stage", skipped=[loaded.name])
    records, input_path = read_input(project, loaded)
    notes = []
    if persist_path(project, loaded) is None:
        notes.append(
            f"stage {loaded.name} is not persisted, so this run kept nothing of its output "
            f"(its dead letters only); add `persist: {{path: data/{loaded.name}}}` to "
            f"stages.{loaded.name} in config.yaml to keep it"
        )
    return RunPlan([loaded], records, input_path, DiscardSink(), mode="stage", notes=notes)


def after_run_plan(project: Project, after: LoadedStage) -> RunPlan:
    """Every record stage after the persisted stage ``after``, on its dataset, into the
    Sink (``conveyor run --after NAME``): what ``conveyor dvc``'s last DVC stage runs.

    Freshness is not consulted, before or after ``after`` (DVC decided that this part must
    run): the stages after it all run. Like a single-stage run it keeps no checkpoints and
    opens the Sink as a single-stage run does (``mode="stage"``): DVC deletes a stage's
    outputs before it runs it, so there is nothing a checkpoint could resume.
    """
    middle = project.middle
    if after not in middle:
        what = "the Source" if after is project.stages[0] else "the Sink"
        raise ProjectError(
            f"--after {after.name}: stage {after.name!r} is {what}; --after names a "
            f"persisted stage (one with persist: in config.yaml) to start after",
            file=project.config.file,
        )
    if persist_path(project, after) is None:
        raise ProjectError(
            f"--after {after.name}: stage {after.name!r} is not persisted, so there is no "
            f"dataset to start from; add `persist: {{path: data/{after.name}}}` to "
            f"stages.{after.name} in config.yaml",
            file=project.config.file,
        )
    start = middle.index(after) + 1
    sink = project_sink(project)
    if start == len(middle) and isinstance(sink, DiscardSink):
        raise ProjectError(
            f"--after {after.name}: nothing runs after stage {after.name!r} (it is the last "
            "stage and the project has no Sink)",
            file=project.config.file,
        )
    records, input_path = _input_at(project, start, middle[start] if start < len(middle) else None)
    return RunPlan(middle[start:], records, input_path, sink, mode="stage")


# -- running a plan --------------------------------------------------------------------------


async def execute_plan(
    project: Project,
    plan: RunPlan,
    extra: RunHooks,
    *,
    on_done: Callable[[Any, Any], None] | None = None,
) -> RunReport:
    """Run ``plan``: persisted datasets are committed when the flow drained without a
    signal, and the fingerprints of the persisted stages that ran are recorded."""
    from conveyor.project.datasets import DatasetWriter

    writers = {
        s.name: DatasetWriter(path, s.section.persist.format, append=plan.append)  # type: ignore[union-attr]
        for s in plan.stages
        if (path := persist_path(project, s)) is not None
    }
    pipeline = project.pipeline(
        plan.stages, persist=writers, hooks=extra.hooks, event_bus=extra.event_bus
    )
    options = project.run_options(
        handle_signals=extra.handle_signals, sink=plan.sink is project.sink_stage
    )
    options = _checkpoint_options(project, plan, options, extra.resume, persisting=bool(writers))
    spec = dataclasses.replace(pipeline.spec(), identity=_identity(project, plan))
    runner = StreamRunner(
        spec, plan.sink, options, mode=plan.mode, on_done=on_done, depth=plan.depth
    )
    ticker = asyncio.create_task(_tick(runner, extra)) if extra.progress else None
    records: Any = plan.records
    if options.checkpointing:
        if isinstance(records, KnownSource):  # seeks, rejects, acknowledges: kept as it is
            known = known_source(project) if plan.input_path is None else None
            if known is not None:
                records.identity = f"source:{known}"
        else:
            records = _identified(records, _source_identity(project, plan))
    try:
        report = await runner.run(records)
    except (KeyboardInterrupt, SystemExit) as stop:
        # Stage code stopped the run after it drained: settle like an interrupted run.
        stopped: RunReport | None = getattr(stop, "report", None)
        if stopped is None:
            _abort(writers)
        else:
            _settle_outputs(project, plan, writers, stopped)
        raise
    except BaseException:
        _abort(writers)
        raise
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    _settle_outputs(project, plan, writers, report)
    if extra.progress is not None:
        extra.progress(runner)
    return report


def _identity(project: Project, plan: RunPlan) -> dict[str, Any]:
    """What identifies a project run's results besides its stage list: each stage's
    parameters, and the sink's (a resumed run must not mix two configurations) — as a
    digest keyed with the project's secret, since checkpoints record a hash of it."""
    from conveyor.project.cache import keyed_digest

    described = {
        "params": {s.name: s.params for s in plan.stages},
        "sink": project.config.config.sink,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return {"config": keyed_digest(fingerprint_key(project), text).hexdigest()}


def _source_identity(project: Project, plan: RunPlan) -> str:
    """The Source's content digest when it declares what its records depend on (a resume
    after the input changed is refused), else where the records come from."""
    known = known_source(project) if plan.input_path is None else None
    if known is not None:
        return f"source:{known}"
    return f"dataset:{plan.input_path}" if plan.input_path else f"source:{project.name}"


class _Identified:
    """A project's records with the identity of where they come from (for checkpoints)."""

    def __init__(self, records: Any, identity: str) -> None:
        self.records = records
        self.identity = identity


class _IdentifiedIterable(_Identified):
    def __iter__(self) -> Any:
        return iter(self.records)


class _IdentifiedAsyncIterable(_Identified):
    def __aiter__(self) -> Any:
        return aiter(self.records)


def _identified(records: Any, identity: str) -> _Identified:
    if isinstance(records, AsyncIterable):
        return _IdentifiedAsyncIterable(records, identity)
    return _IdentifiedIterable(records, identity)


def _checkpoint_options(
    project: Project, plan: RunPlan, options: RunOptions, resume: bool | None, *, persisting: bool
) -> RunOptions:
    """Checkpoints for a whole run that persists no dataset (a persisting project resumes
    by skipping its fresh stages instead); ``--resume``/``--fresh`` elsewhere is an error."""
    settings = project.config.config.pipeline
    wanted = settings.checkpoints and plan.mode == "run" and not persisting
    if wanted:
        return options.merged(
            checkpoint=project.path(settings.state_dir) / "checkpoints.db",
            checkpoint_every=settings.checkpoint_every,
            resume=resume,
        )
    if resume is not None:
        flag = "--resume" if resume else "--fresh"
        why = (
            "its stages persist datasets, so a run resumes by skipping the stages whose "
            "output is fresh (conveyor run, without a flag)"
            if persisting
            else "pipeline.checkpoints is off in config.yaml"
            if not settings.checkpoints
            else "only a whole run keeps checkpoints"
        )
        raise ProjectError(f"{flag} does not apply to this run: {why}")
    return options


def _retire_earlier_letters(project: Project, plan: RunPlan, report: RunReport) -> None:
    """If this run read the same Source content as earlier runs, it processed the same
    records through its stages again: their letters at those stages are replaced by this
    run's own (marked replayed), so a later replay does not deliver records this run
    already delivered. Runs whose Source content is not known retire nothing."""
    from conveyor.dlq import open_dead_letter_store
    from conveyor.project.cache import RunLedger

    source = known_source(project)
    if source is None or not (plan.current_input or _reads_current_source(project, plan)):
        return
    settings = project.config.config.pipeline
    ledger = RunLedger(project.path(settings.state_dir))
    # The runs this one resumed (a chain of checkpoints) read the same records up to the
    # checkpoint and never again: their letters stand; the runner retired the rest.
    chain = list(report.checkpoint.runs) if report.checkpoint is not None else []
    inputs = source_inputs(project)
    # Also the runs of an earlier state of files that only grew: this run read all they did.
    earlier = [
        r
        for r in dict.fromkeys(
            [*ledger.runs_of(source), *_runs_read_within(project, ledger, inputs)]
        )
        if r != report.run_id and r not in chain
    ]
    for run in dict.fromkeys([*chain, report.run_id]):  # a later run retires the chain
        ledger.record(run, source, inputs)
    with open_dead_letter_store(project.path(settings.dead_letters)) as store:
        store.supersede(report.stage_names(), runs=earlier)


def _reads_current_source(project: Project, plan: RunPlan) -> bool:
    """Whether the records the plan reads follow from the Source as it is now: it reads
    the Source, or a dataset at the end of a chain of fresh persisted stages from it (a
    whole run, by how it is planned; a single-stage run, if it checks out)."""
    if plan.mode == "run" or plan.input_path is None:
        return True
    index = project.middle.index(plan.stages[0]) if plan.stages else len(project.middle)
    return all(is_fresh(project, s) for s in project.middle[:index])


def record_fingerprints(
    project: Project, stages: Sequence[LoadedStage], *, extended: bool = False
) -> None:
    """Record, in order, the fingerprint of each persisted stage whose input is known.

    ``extended``: the run added records to datasets made by earlier runs (a replay). Such a
    dataset matches the stage's current code and config only if they did not change since
    the dataset was recorded: then the new input and output are recorded; otherwise the
    record is dropped, so that the next run makes the dataset again with the current code.
    """
    from conveyor.project.cache import RunCache

    cache = RunCache(project.path(project.config.config.pipeline.state_dir))
    for loaded in stages:
        output = persist_path(project, loaded)
        known, input_path = input_of(project, loaded)
        if output is None or not known:
            continue
        current = fingerprint(project, loaded, input_path)
        if extended:
            before = cache.get(loaded.name)
            if before is None or (before.code_hash, before.config_hash) != (
                current.code_hash,
                current.config_hash,
            ):
                cache.forget(loaded.name)
                continue
        cache.record(loaded.name, current, output)


def _settle_outputs(
    project: Project, plan: RunPlan, writers: Mapping[str, Any], report: RunReport
) -> None:
    """Commit or drop the run's datasets; record fingerprints; retire superseded letters.

    A whole or single-stage run keeps its datasets if it read its whole input; a replay
    (appending) keeps them whenever it drained: each of its records then left all the way.
    """
    keep = report.status.drained if plan.append else report.status.finished
    if not keep:
        _abort(writers)  # a partial dataset must not look complete
        return
    for writer in writers.values():
        writer.commit()
    persisted = [s for s in plan.stages if s.name in writers]
    record_fingerprints(project, persisted, extended=plan.append)
    if plan.mode != "replay":
        _retire_earlier_letters(project, plan, report)


def _abort(writers: Mapping[str, Any]) -> None:
    for writer in writers.values():
        writer.abort()


async def _tick(runner: StreamRunner, extra: RunHooks) -> None:
    assert extra.progress is not None
    while True:
        await asyncio.sleep(extra.progress_interval)
        extra.progress(runner)
