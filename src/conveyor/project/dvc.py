"""``conveyor dvc``: a ``dvc.yaml`` so that ``dvc repro`` reproduces the whole pipeline.

:func:`dvc_pipeline` turns a project into DVC stages plus the warnings of what DVC cannot
see; :func:`dvc_yaml` renders them, :func:`save_dvc_yaml` writes them and
:func:`dvc_yaml_diff` compares them with the file on disk (``conveyor dvc --check``);
:func:`configure_remote` sets up a DVC remote (``conveyor dvc --remote NAME URL``).

For a project of record stages (a Source, record stages, a Sink):

- **One DVC stage per persisted stage** (``persist:`` in ``config.yaml``), named like it,
  ``cmd: conveyor run . stage=NAME``. ``deps``: the input — the previous stage's persisted
  dataset, or for the first record stage what the Source reads (below) — the stage file,
  and the pipeline's ``shared/`` and ``contracts/`` folders when they exist (what a stage
  may import). ``params``: the keys of ``config.yaml`` that exist among
  ``stages.NAME.params`` and ``stages.NAME.persist`` (what changes a stage's output;
  runner options such as ``concurrency`` do not), the shared ``params.KEY`` its ``Config``
  declares, and for the first record stage the Source's: ``stages.SOURCE.params`` of a
  source stage file, or the whole ``source`` section of a ``source:`` connector.
  ``outs``: the persist path.
- **What the Source reads** is a dependency: the files its ``inputs()`` name; for the
  ``csv``/``jsonl``/``parquet`` connectors the folder of a glob (``data/in/*.csv`` →
  ``data/in``, so that a file added later is seen; the matched files when that folder
  holds DVC outputs) or the folder read; the database file of ``sqlite``. An ``http``
  download pinned by ``sha256`` needs none (the pin is a param: its records follow from
  it); an unpinned one becomes DVC's own URL dependency (DVC asks the server whether the
  file changed, by ETag or size), unless it needs ``headers`` or ``${VAR}`` (secrets DVC
  would not have): then a warning. A Source that reads something DVC cannot see (a
  database table, a broker stream, a source stage file declaring neither ``inputs()`` nor
  ``deterministic``) gets a warning.
- **One last DVC stage runs the rest**: the stages after the last persisted one (not
  persisted, or in a ``branches:`` group, whose stages cannot be) and the Sink, ``cmd:
  conveyor run . --after LAST`` (every stage after the persisted stage LAST, on its
  dataset, into the Sink; a Sink stage file right after LAST: ``conveyor run .
  stage=SINK``). It is named after the Sink stage file, or ``sink`` for a ``sink:``
  connector; its deps are LAST's dataset and the code of what it runs, its params theirs
  (``stages.NAME.params``, ``branches.GROUP``, the ``sink`` section), its outs what the
  Sink writes: the ``path`` of the ``jsonl``/``csv``/``parquet`` connectors, or
  :meth:`Sink.outputs() <conveyor.project.Sink.outputs>` of a Sink stage file. A Sink that
  writes no file (a table of ``sqlite``/``postgres``, a Sink without ``outputs()``) gives
  a stage without outs, with a warning: DVC still runs it whenever its deps or params
  change (and records them in ``dvc.lock``), but it cannot tell whether the table still
  holds the output and ``dvc pull`` does not restore it. (Not ``always_changed``: that
  would deliver the same records again at every ``dvc repro``, duplicating the rows of a
  table without a key. Not a marker file: it would need a run option of its own and
  claim, once pulled elsewhere, that a table was loaded there.) Without a Sink, records
  are dropped after the last persisted stage: no DVC stage, a warning names the stages.

Every stage that runs inside another DVC stage is named in a warning, as is everything else
DVC cannot represent. Values that come from ``${VAR}`` in ``config.yaml`` are tracked by
DVC as written, not as substituted.

The rules (checked, a :class:`~conveyor.errors.ProjectError` names the fix): a single-stage
run ``conveyor run . stage=NAME`` reads the previous stage's persisted output, or the
Source's records when NAME is the first record stage. So **every persisted stage must
directly follow the Source or another persisted stage**: the persisted stages form one
unbroken chain starting right after the Source (what follows the chain runs in the last
DVC stage). Further: there must be a Source (a source stage file or a ``source:``
section) and at least one persisted stage; persist paths and the Sink's files must lie
inside the project folder (a Sink file outside it is a warning, not an out), outside the
pipeline folder, and not inside one another.

For a project of task stages (seed 002's ``run(config)`` / ``validate()``, e.g. a
``conveyor new --template dataset`` project), one DVC stage per stage (see
:class:`_TaskStages`): deps its file, the code it may import and what it reads, params its
parameters, outs what it writes; DVC orders them by their files.

:func:`save_dvc_yaml` also makes sure a ``.dvcignore`` in the project folder ignores
``__pycache__/`` and ``*.pyc``: Python writes bytecode into ``shared/`` and
``contracts/`` when a stage imports them, which would otherwise change those
dependencies and re-run stages for nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

from conveyor.errors import ProjectError, UsageError
from conveyor.project.kinds import Sink as ProjectSink
from conveyor.project.kinds import TaskStage
from conveyor.project.project import LoadedStage, Project

__all__ = [
    "DVCIGNORE_PATTERNS",
    "GENERATED_HEADER",
    "GENERATED_HEADERS",
    "TASK_HEADER",
    "DvcPipeline",
    "DvcStage",
    "DvcYaml",
    "configure_remote",
    "dvc_pipeline",
    "dvc_stages",
    "dvc_yaml",
    "dvc_yaml_diff",
    "save_dvc_yaml",
    "write_dvc_yaml",
]

GENERATED_HEADER: Final = (
    "# Generated by `conveyor dvc` from the persisted stages of config.yaml: run it again\n"
    "# after changing stages or persist: (hand edits are overwritten).\n"
)
"""The first lines of a generated ``dvc.yaml`` of a stream project; only a file starting
with one of the :data:`GENERATED_HEADERS` is overwritten."""

TASK_HEADER: Final = (
    "# Generated by `conveyor dvc` from the project's stages: run it again after adding,\n"
    "# removing or renaming a stage, or changing what it reads or writes (hand edits are\n"
    "# overwritten).\n"
)
"""The first lines of a generated ``dvc.yaml`` of a project of task stages."""

GENERATED_HEADERS: Final = (GENERATED_HEADER, TASK_HEADER)

DVCIGNORE_PATTERNS: Final = ("__pycache__/", "*.pyc")
"""What the project's ``.dvcignore`` must ignore (bytecode written next to the code)."""

DVC_TIMEOUT: Final = 120.0
"""Seconds each ``dvc`` command run by :func:`configure_remote` may take."""

SINK_STAGE: Final = "sink"
"""The name of the last DVC stage when the Sink is a ``sink:`` connector."""


# -- what dvc.yaml holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class DvcStage:
    """One stage of ``dvc.yaml``: paths relative to the project folder, ``params`` keys
    of the project's config file."""

    name: str
    cmd: str
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    other_params: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
    """Keys of other params files (``None``: every key of the file, as the dataset
    layout's ``configs/stages/NAME.yaml`` is tracked)."""

    def entry(self, config_file: str) -> dict[str, Any]:
        """The stage as ``dvc.yaml`` writes it (keys in DVC's usual order)."""
        stage: dict[str, Any] = {"cmd": self.cmd}
        if self.deps:
            stage["deps"] = list(self.deps)
        params: list[dict[str, list[str] | None]] = [
            {file: None if keys is None else list(keys)} for file, keys in self.other_params
        ]
        if self.params:
            params.insert(0, {config_file: list(self.params)})
        if params:
            stage["params"] = params
        if self.outs:
            stage["outs"] = list(self.outs)
        return stage


@dataclass(frozen=True)
class DvcPipeline:
    """The DVC stages of a project, in order, and what DVC cannot represent (warnings)."""

    stages: tuple[DvcStage, ...]
    config_file: str
    """The config file the ``params`` keys are read from, relative to the project."""
    warnings: tuple[str, ...] = ()
    header: str = GENERATED_HEADER
    """The comment ``dvc.yaml`` starts with (one of :data:`GENERATED_HEADERS`)."""

    def mapping(self) -> dict[str, dict[str, Any]]:
        """The ``stages:`` mapping of ``dvc.yaml``."""
        return {stage.name: stage.entry(self.config_file) for stage in self.stages}


def dvc_pipeline(project: Project) -> DvcPipeline:
    """The DVC stages of ``project`` and the warnings of what they leave to the user (see
    the module docstring). Raises :class:`~conveyor.errors.ProjectError` naming the fix
    when a rule is broken."""
    if not project.stages:
        raise ProjectError("the project has no stages", file=project.pipeline_dir)
    if all(isinstance(s.stage, TaskStage) for s in project.stages):
        built = _TaskStages(project).build()
    elif project.config.order is not None:
        raise ProjectError(
            "conveyor dvc makes DVC stages of the dataset layout's task stages (run(config) / "
            "validate()); record stages there cannot persist their output (the files of "
            "configs/stages/ hold parameters only), so there is nothing for DVC to track: "
            "make them task stages, or use the stream layout (config.yaml's persist:)",
            file=project.config.file,
        )
    else:
        built = _StreamStages(project).build()
    blind = _run_cache_blind(project, built)
    if blind:
        built = dataclasses.replace(built, warnings=(*built.warnings, *blind))
    return built


RUN_CACHE_BLIND: Final = frozenset({"size", "nfiles"})
"""Parameter names DVC's run cache leaves out of a stage's hash (its ``Meta`` fields)."""


def _run_cache_blind(project: Project, built: DvcPipeline) -> list[str]:
    """A warning per tracked parameter named like :data:`RUN_CACHE_BLIND`: after changing
    it, ``dvc repro`` may restore an old output from the run cache instead of running."""
    written = _written(project)
    dataset = project.config.order is not None
    found: list[str] = []

    def scan(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                path = f"{where}.{key}" if where else str(key)
                if key in RUN_CACHE_BLIND:
                    found.append(path)
                scan(inner, path)
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                scan(inner, f"{where}.{index}")

    def at(dotted: str) -> Any:
        value: Any = written
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    for stage in built.stages:
        for key in stage.params:
            if dataset:
                scan({key: at(f"params.{key}")}, "")
            else:
                scan(at(key), key)
        for _, keys in stage.other_params:
            if keys is None and dataset:
                scan(at(f"stages.{stage.name}.params"), f"{stage.name}")
    return [
        f"parameter {path}: DVC's run cache leaves parameters named "
        f"{' or '.join(sorted(RUN_CACHE_BLIND))} out of a stage's hash, so after changing it "
        "`dvc repro` may restore an old output instead of running the stage; rename it "
        "(or run `dvc repro --no-run-cache`)"
        for path in dict.fromkeys(found)
    ]


def dvc_stages(project: Project) -> dict[str, dict[str, Any]]:
    """The ``stages:`` mapping of ``dvc.yaml`` for ``project`` (paths relative to the
    project folder), in pipeline order; :func:`dvc_pipeline` also gives the warnings."""
    return dvc_pipeline(project).mapping()


# -- record-stage projects ---------------------------------------------------------------------


def _posix(project: Project, path: Path) -> str | None:
    """``path`` relative to the project folder in POSIX form, or ``None`` outside it."""
    target = Path(os.path.normpath(path if path.is_absolute() else project.root / path))
    for root in (project.root, project.root.resolve()):
        try:
            return target.relative_to(root).as_posix()
        except ValueError:
            continue
    return None


def _relative(project: Project, path: Path) -> str:
    """A path of the project (a stage file, the config), relative to its folder."""
    relative = _posix(project, path)
    return relative if relative is not None else path.as_posix()


def _overlap(a: str, b: str) -> bool:
    first, second = PurePosixPath(a), PurePosixPath(b)
    return first == second or first in second.parents or second in first.parents


def _persist_out(project: Project, loaded: LoadedStage) -> str:
    persist = loaded.section.persist
    assert persist is not None
    target = Path(os.path.normpath(project.path(persist.path)))
    where = f"stages.{loaded.name}.persist.path"
    relative = _posix(project, target)
    if relative is None:
        raise ProjectError(
            f"{where} {persist.path!r} is outside the project folder {project.root}; "
            "DVC tracks outputs inside its repository only: use a relative path such as "
            f"data/{loaded.name}",
            file=project.config.file,
        )
    if relative == ".":
        raise ProjectError(
            f"{where} is the project folder itself; use a folder such as data/{loaded.name}",
            file=project.config.file,
        )
    if target == project.pipeline_dir or project.pipeline_dir in target.parents:
        raise ProjectError(
            f"{where} {persist.path!r} lies inside the pipeline folder (code); use a folder "
            f"such as data/{loaded.name}",
            file=project.config.file,
        )
    return relative


def _written(project: Project) -> dict[str, Any]:
    """config.yaml as written (no overrides, no substitution), as its loader read it."""
    data = project.config.written
    return data if isinstance(data, dict) else {}


@dataclass
class _StreamStages:
    """The DVC stages of a project of record stages (see the module docstring)."""

    project: Project
    warnings: list[str] = field(default_factory=list)

    def build(self) -> DvcPipeline:
        project = self.project
        persisted = self._check()
        middle = project.middle
        outs = {s.name: _persist_out(project, s) for s in persisted}
        final = self._final(persisted[-1], set(outs))
        every_out = [*outs.values(), *(final.outs if final is not None else ())]
        self._check_overlaps(outs, final)
        after = len(self.warnings)
        source_deps, source_keys = self._source(every_out)
        # (The Source's warnings first: in pipeline order.)
        self.warnings[:] = self.warnings[after:] + self.warnings[:after]
        stages: list[DvcStage] = []
        for loaded in persisted:
            index = middle.index(loaded)
            if index == 0:
                deps, keys = list(source_deps), list(source_keys)
            else:
                deps, keys = [outs[middle[index - 1].name]], []
            deps += [_relative(project, loaded.file.path), *self._code()]
            keys += self._stage_keys(loaded, ("params", "persist", "window"))
            stages.append(
                DvcStage(
                    loaded.name,
                    f"conveyor run . stage={loaded.name}",
                    tuple(dict.fromkeys(deps)),
                    tuple(keys),
                    (outs[loaded.name],),
                )
            )
        if final is not None:
            stages.append(final)
        return DvcPipeline(tuple(stages), self._config_file(), tuple(self.warnings))

    # -- the rules -----------------------------------------------------------------------

    def _check(self) -> list[LoadedStage]:
        """The persisted stages, after checking the rules of the module docstring."""
        project = self.project
        where = project.config.file
        middle = project.middle
        persisted = [s for s in middle if s.section.persist is not None]
        if not persisted:
            raise ProjectError(
                "no stage has persist:, so there is nothing for DVC to track; add e.g. "
                f"`persist: {{path: data/{middle[0].name if middle else 'x'}}}` "
                "to the first stage after the Source in config.yaml",
                file=where,
            )
        if project.source is None:
            raise ProjectError(
                "the pipeline has no Source: the first persisted stage reads its records; "
                "make the first stage a Source (a class with read()) or add a `source:` "
                "section to config.yaml (e.g. `source: {connector: csv, path: "
                "data/in.csv}`)",
                file=project.stages[0].file.path,
            )
        members = self._branch_of()
        for loaded in persisted:
            index = middle.index(loaded)
            if index == 0:
                continue
            previous = middle[index - 1]
            if previous.section.persist is not None:
                continue
            group = members.get(previous.name)
            fix = (
                f"{previous.name!r} is in branch {group!r}, whose stages cannot be "
                f"persisted: remove persist: from stages.{loaded.name} (and the persisted "
                "stages after it), then it runs in the last DVC stage with the branch"
                if group is not None
                else f"add `persist: {{path: data/{previous.name}}}` to "
                f"stages.{previous.name} in config.yaml (every stage between the Source "
                "and a persisted stage must be persisted)"
            )
            raise ProjectError(
                f"stage {loaded.name!r} is persisted but the stage before it, "
                f"{previous.name!r}, is not: `conveyor run . stage={loaded.name}` reads the "
                f"previous stage's persisted output; {fix}",
                file=where,
            )
        return persisted

    def _check_overlaps(self, outs: dict[str, str], final: DvcStage | None) -> None:
        named = list(outs.items())
        if final is not None:
            named += [(final.name, out) for out in final.outs]
        for i, (name, out) in enumerate(named):
            for other, other_out in named[i + 1 :]:
                if _overlap(out, other_out):
                    raise ProjectError(
                        f"the outputs of {other!r} ({other_out}) and {name!r} ({out}) "
                        "overlap; give every persisted stage and the sink a path of its own",
                        file=self.project.config.file,
                    )

    # -- pieces --------------------------------------------------------------------------

    def _config_file(self) -> str:
        project = self.project
        file = project.config.file or project.pipeline_dir / "config.yaml"
        return _relative(project, file)

    def _code(self) -> list[str]:
        return _code(self.project)

    def _branch_of(self) -> dict[str, str]:
        """Stage name -> the ``branches:`` group it belongs to."""
        return {
            name: group
            for group, arms in self.project.config.config.branches.items()
            for names in arms.values()
            for name in names
        }

    def _stage_keys(self, loaded: LoadedStage, keys: tuple[str, ...]) -> list[str]:
        """The params keys of a stage that exist in the file: ``stages.NAME.KEY``, and the
        shared ``params.KEY`` its ``Config`` declares."""
        written = _written(self.project)
        stages = written.get("stages")
        section = stages.get(loaded.name) if isinstance(stages, dict) else None
        found = (
            [f"stages.{loaded.name}.{key}" for key in keys if key in section]
            if isinstance(section, dict)
            else []
        )
        shared = written.get("params")
        fields = getattr(getattr(loaded.stage, "Config", None), "model_fields", None)
        if isinstance(shared, dict) and isinstance(fields, dict):
            found += [f"params.{key}" for key in shared if key in fields]
        return found

    def _path_dep(self, raw: str, what: str) -> str:
        """A dependency of the project's files; one outside the project stays absolute
        (DVC hashes it, but ``dvc push`` does not store it): a warning says so."""
        relative = _posix(self.project, Path(raw))
        if relative is not None:
            return relative
        self.warnings.append(
            f"{what} {raw} is outside the project: it is a dependency by its absolute path, "
            "which dvc push does not store; another copy of the project needs the same "
            "file there"
        )
        return Path(raw).as_posix()

    # -- the Source ----------------------------------------------------------------------

    def _source(self, outs: Sequence[str]) -> tuple[list[str], list[str]]:
        """What the first record stage depends on besides its code: the Source's inputs
        and config keys."""
        project = self.project
        source = project.source
        assert source is not None
        first = next((s for s in project.middle if s.section.persist is not None), None)
        runs_in = first.name if first is not None else "?"
        if project.configured_source is not None:
            keys = ["source"] if "source" in _written(project) else []
            return self._connector_inputs(source, outs, runs_in), keys
        stage = project.stages[0]
        deps = [_relative(project, stage.file.path)]
        inputs = source.inputs()
        deps += [self._path_dep(name, f"source input ({stage.name}.inputs())") for name in inputs]
        if not inputs and not source.deterministic:
            self.warnings.append(
                f"stage {stage.name}: the Source declares neither inputs() nor "
                "`deterministic = True`, so DVC cannot see when its records change: DVC "
                f"stage {runs_in!r} re-runs only when its code or params change; list the "
                "files it reads in inputs() (or set deterministic if its records follow "
                f"from its code and params alone), or read it again with: dvc repro "
                f"--force --single-item {runs_in}"
            )
        return deps, self._stage_keys(stage, ("params",))

    def _connector_inputs(self, source: Any, outs: Sequence[str], runs_in: str) -> list[str]:
        from conveyor.connectors.file_sources import CsvSource, JsonlSource, ParquetSource
        from conveyor.connectors.http import HttpSource

        if isinstance(source, HttpSource):
            return self._http(source, runs_in)
        if isinstance(source, CsvSource | JsonlSource | ParquetSource):
            return self._file_inputs(source, outs)
        inputs = source.inputs()
        if inputs:
            return [self._path_dep(name, "source input") for name in inputs]
        if not source.deterministic:
            connector = (self.project.config.config.source or {}).get("connector", "?")
            where = source.identity or type(source).__name__
            self.warnings.append(
                f"source: the {connector} source reads {where}, which is not a file DVC "
                f"could track: DVC stage {runs_in!r} re-runs only when its code or params "
                f"change, not when the data there changes; read it again with: dvc repro "
                f"--force --single-item {runs_in} (then dvc repro)"
            )
        return []

    def _http(self, source: Any, runs_in: str) -> list[str]:
        """An ``http`` download: nothing when pinned by sha256 (the pin is a param), else
        DVC's URL dependency, or a warning when DVC could not fetch what Conveyor does."""
        if source.sha256 is not None:
            return []
        written = _written(self.project).get("source")
        url = written.get("url") if isinstance(written, dict) else None
        needs = (
            "request headers"
            if source.headers
            else "${VAR} substitution"
            if "${" in str(url)
            else None
        )
        if needs is None:
            return [str(source.url)]
        self.warnings.append(
            f"source: the http download of {url} is not pinned by sha256 and needs {needs}, "
            "which a DVC URL dependency would not have: DVC cannot see when the file behind "
            f"the URL changes (DVC stage {runs_in!r} re-runs only when its code or params "
            "change); pin its content with `sha256:` in the source: section, or download it "
            "with `dvc import-url URL PATH` (DVC then tracks the file) and read PATH with a "
            "csv, jsonl or parquet source"
        )
        return []

    def _file_inputs(self, source: Any, outs: Sequence[str]) -> list[str]:
        """The files of a csv/jsonl/parquet source: the folder it reads, or the folder of
        its glob (so that a file added later is seen), else the files themselves."""
        project = self.project
        pattern = os.path.expanduser(str(source.pattern))
        full = Path(os.path.normpath(project.path(pattern)))
        if full.is_dir():
            folder: Path | None = full
        elif glob.has_magic(pattern) and not full.is_file():
            fixed: list[str] = []
            for part in Path(pattern).parts:
                if glob.has_magic(part):
                    break
                fixed.append(part)
            folder = Path(os.path.normpath(project.path(os.path.join(*fixed)))) if fixed else None
        else:
            return [self._path_dep(name, "source input") for name in source.inputs()]
        relative = None if folder is None else _posix(project, folder)
        if folder is not None and relative is None:
            return [self._path_dep(str(folder), "source folder")]
        if relative is not None and relative != ".":
            clash = [out for out in outs if _overlap(relative, out)]
            if not clash:
                return [relative]
        else:
            clash = ["the project folder"]
        files = [self._path_dep(name, "source input") for name in source.inputs()]
        self.warnings.append(
            f"source: the folder of source.path {source.pattern} holds DVC outputs too "
            f"({', '.join(clash)}), so the {len(files)} file(s) it matches now are the "
            "dependencies: a file added later becomes one when conveyor dvc runs again "
            "(conveyor dvc --check tells); keep the input files in a folder of their own, "
            "e.g. data/in/*.csv"
        )
        return files

    # -- after the last persisted stage --------------------------------------------------

    def _final(self, last: LoadedStage, taken: set[str]) -> DvcStage | None:
        """The DVC stage of what follows the last persisted stage, or ``None`` (nothing
        follows, or no Sink: the records are dropped)."""
        project = self.project
        middle = project.middle
        trailing = middle[middle.index(last) + 1 :]
        sink_file = project.stages[-1] if project.sink_stage is not None else None
        if project.sink is None:
            if trailing:
                self.warnings.append(
                    f"stages {', '.join(s.name for s in trailing)}: not persisted and no "
                    "Sink follows, so every run drops their records: no DVC stage runs "
                    "them; persist the last one, or add a Sink"
                )
            return None
        name = sink_file.name if sink_file is not None else SINK_STAGE
        for suffix in range(len(project.stages) + 1):  # (a record stage called "sink")
            if name not in taken:
                break
            name = f"{SINK_STAGE}_{suffix + 1}"
        if sink_file is not None and not trailing:
            cmd = f"conveyor run . stage={sink_file.name}"
        else:
            cmd = f"conveyor run . --after {last.name}"
        deps = [_persist_out(project, last)]
        keys: list[str] = []
        members = self._branch_of()
        written_branches = _written(project).get("branches")
        seen: set[str] = set()
        for loaded in trailing:
            deps.append(_relative(project, loaded.file.path))
            keys += self._stage_keys(loaded, ("params", "window"))
            group = members.get(loaded.name)
            if group is None:
                self.warnings.append(
                    f"stage {loaded.name}: not persisted, runs inside DVC stage {name!r} "
                    f"(add persist: to stages.{loaded.name} to give it a DVC stage of its own)"
                )
            elif group not in seen:
                seen.add(group)
                if isinstance(written_branches, dict) and group in written_branches:
                    keys.append(f"branches.{group}")
                arms = [m for ms in project.config.config.branches[group].values() for m in ms]
                self.warnings.append(
                    f"branch {group} (stages {', '.join(arms)}): runs inside DVC stage "
                    f"{name!r} (the stages of a branch cannot be persisted)"
                )
        if sink_file is not None:
            deps.append(_relative(project, sink_file.file.path))
            keys += self._stage_keys(sink_file, ("params",))
        elif "sink" in _written(project):
            keys.append("sink")
        deps += self._code()
        outs = self._sink_outs(name)
        return DvcStage(name, cmd, tuple(dict.fromkeys(deps)), tuple(keys), tuple(outs))

    def _sink_outs(self, name: str) -> list[str]:
        """What the Sink writes, as DVC outs (warnings for what cannot be one)."""
        from conveyor.connectors.files import CsvSink, JsonlSink, ParquetSink

        project = self.project
        sink = project.sink
        raw: list[str]
        if isinstance(sink, ProjectSink):
            raw = [str(p) for p in sink.outputs()]
            if not raw:
                self.warnings.append(
                    f"stage {name}: the Sink names no files (no outputs()), so DVC stage "
                    f"{name!r} has no outs: DVC runs it when its deps or params change, but "
                    "does not store what it writes (dvc push/pull) nor notice when that is "
                    "deleted; return the files or folders it writes from outputs()"
                )
        elif isinstance(sink, JsonlSink | CsvSink | ParquetSink):
            raw = [str(sink.path)]
        else:
            outputs = getattr(sink, "outputs", None)
            raw = [str(p) for p in outputs()] if callable(outputs) else []
            if not raw:
                connector = (project.config.config.sink or {}).get("connector", "?")
                table = getattr(sink, "table", None)
                what = f"table {table}" if table else "somewhere that is not a file"
                self.warnings.append(
                    f"sink: the {connector} sink writes {what}, which cannot be a DVC out: "
                    f"DVC stage {name!r} has no outs; DVC runs it whenever its deps or "
                    "params change (dvc.lock records them), but cannot tell whether the "
                    f"{'table' if table else 'place'} still holds the output, and dvc pull "
                    f"does not restore it; deliver again with: dvc repro --force "
                    f"--single-item {name}"
                )
        return _outs(project, raw, "the sink", name, self.warnings)


def _outs(
    project: Project, raw: Sequence[str], who: str, stage: str, warnings: list[str]
) -> list[str]:
    """The files or folders ``who`` writes, as the outs of DVC stage ``stage`` (relative,
    once each); one outside the project is a warning, one inside the code an error."""
    outs: list[str] = []
    for path in raw:
        target = Path(os.path.normpath(project.path(path)))
        relative = _posix(project, target)
        if relative is None or relative == ".":
            warnings.append(
                f"{who}: writes {path}, "
                + ("outside the project" if relative is None else "the project folder")
                + f", which cannot be an out of DVC stage {stage!r}: DVC does not track it"
            )
        elif target == project.pipeline_dir or project.pipeline_dir in target.parents:
            raise ProjectError(
                f"{who} writes {path}, inside the pipeline's package folder (code); write "
                "outputs to a folder such as data/",
                file=project.config.file,
            )
        else:
            outs.append(relative)
    return list(dict.fromkeys(outs))


def _code(project: Project) -> list[str]:
    """The code stages may import, as deps: the layout's shared folders (``shared/``,
    ``contracts/``; ``schemas/``, ``transforms/``) and helper modules (``stages/base.py``)
    that exist."""
    layout = project.layout
    found = [
        project.pipeline_dir / folder
        for folder in layout.code_parts
        if (project.pipeline_dir / folder).is_dir()
    ]
    found += [
        file
        for name in layout.stage_helpers
        if (file := project.pipeline_dir / "stages" / f"{name}.py").is_file()
    ]
    return [_relative(project, path) for path in found]


# -- task-stage projects -----------------------------------------------------------------------


@dataclass
class _TaskStages:
    """The DVC stages of a project of task stages (seed 002's ``run(config)`` /
    ``validate()``): one per stage, ``cmd: conveyor run . stage=NAME``; deps its file, the
    code it may import and :meth:`~conveyor.project.TaskStage.inputs` (files or folders;
    an ``http(s)`` URL as DVC's URL dependency, a ``file:`` URL as its path); params its
    parameters as written (``configs/stages/NAME.yaml``'s keys, or ``stages.NAME.params``)
    and the shared ones its ``Config`` declares; outs
    :meth:`~conveyor.project.TaskStage.outputs`. DVC orders the stages by which one writes
    what another reads."""

    project: Project
    warnings: list[str] = field(default_factory=list)

    def build(self) -> DvcPipeline:
        project = self.project
        code = _code(project)
        written: dict[str, str] = {}  # out -> the stage writing it
        stages: list[DvcStage] = []
        for loaded in project.stages:
            task: TaskStage = loaded.stage
            outs = self._outs(loaded.name, task.outputs())
            deps = [_relative(project, loaded.file.path), *code]
            for raw in task.inputs():
                dep = self._input(loaded.name, raw)
                if dep is None:
                    continue
                if any(_overlap(dep, out) for out in outs):
                    raise ProjectError(
                        f"stage {loaded.name!r} reads {dep} and writes {', '.join(outs)}, "
                        "which overlap: DVC cannot reproduce a stage that changes its own "
                        "input; write the output to a folder of its own (output_dir)",
                        file=loaded.file.path,
                    )
                if (
                    "://" not in dep
                    and not any(_overlap(dep, o) for o in written)
                    and not (project.root / dep).exists()
                ):
                    self.warnings.append(
                        f"stage {loaded.name}: reads {dep}, which no stage before it "
                        "writes and which does not exist yet: dvc repro stops there "
                        "until it does (add it with dvc add, or fix input_dir)"
                    )
                deps.append(dep)
            for out in outs:
                for other_out, other in written.items():
                    if _overlap(out, other_out):
                        raise ProjectError(
                            f"the outputs of stages {other!r} ({other_out}) and "
                            f"{loaded.name!r} ({out}) overlap; give every stage an output "
                            "folder of its own (output_dir)",
                            file=loaded.file.path,
                        )
                written[out] = loaded.name
            if not outs:
                self.warnings.append(
                    f"stage {loaded.name}: declares no outputs (outputs(), or output_dir in "
                    "its config), so DVC runs it whenever its deps change but cannot tell "
                    "whether its results still exist"
                )
            keys, own_params = self._params(loaded)
            stages.append(
                DvcStage(
                    loaded.name,
                    f"conveyor run . stage={loaded.name}",
                    deps=tuple(dict.fromkeys(deps)),
                    params=tuple(keys),
                    outs=tuple(outs),
                    other_params=own_params,
                )
            )
        config_file = _relative(project, project.config.file or project.layout.config_file)
        return DvcPipeline(tuple(stages), config_file, tuple(self.warnings), TASK_HEADER)

    def _input(self, stage: str, raw: str) -> str | None:
        if raw.startswith(("http://", "https://")):
            return raw
        if raw.startswith("file:"):
            raw = raw.removeprefix("file://") if raw.startswith("file://") else raw[5:]
        if "://" in raw:
            self.warnings.append(
                f"stage {stage}: reads {raw}, which DVC cannot watch (only files, folders "
                "and http(s) URLs); track it with dvc import-url or list a local copy"
            )
            return None
        relative = _posix(self.project, Path(raw))
        if relative is None:
            self.warnings.append(
                f"stage {stage}: reads {raw}, outside the project: it is a dependency by its "
                "absolute path, which dvc push does not store"
            )
            return Path(raw).as_posix()
        return relative

    def _outs(self, stage: str, raw: Sequence[str]) -> list[str]:
        return _outs(self.project, raw, f"stage {stage}", stage, self.warnings)

    def _params(
        self, loaded: LoadedStage
    ) -> tuple[list[str], tuple[tuple[str, tuple[str, ...] | None], ...]]:
        """The keys of the main config file, and of the stage's own parameter file."""
        project = self.project
        written = _written(project)
        fields = getattr(getattr(loaded.stage, "Config", None), "model_fields", None)
        declared = set(fields) if isinstance(fields, dict) else set()
        shared = written.get("params")
        stages = written.get("stages")
        section = stages.get(loaded.name) if isinstance(stages, dict) else None
        own = section.get("params") if isinstance(section, dict) else None
        own_keys = list(own) if isinstance(own, dict) else []
        own_file = project.config.stage_files.get(loaded.name)
        if project.config.order is not None:  # the dataset layout: keys of each file
            keys = [k for k in (shared or {}) if k in declared] if isinstance(shared, dict) else []
            # The stage's own file is tracked whole: a key added there is seen without
            # regenerating dvc.yaml (shared keys are listed: the file holds other stages').
            return keys, (() if own_file is None else ((_relative(project, own_file), None),))
        keys = [f"stages.{loaded.name}.params"] if own_keys else []
        if isinstance(shared, dict):
            keys += [f"params.{k}" for k in shared if k in declared]
        return keys, ()


# -- dvc.yaml on disk -----------------------------------------------------------------------


@dataclass(frozen=True)
class DvcYaml:
    """A rendered ``dvc.yaml``: where it goes, its text, and the warnings of its
    pipeline."""

    path: Path
    text: str
    root: Path
    """The project folder (its ``.dvcignore`` is kept by :func:`save_dvc_yaml`)."""
    warnings: tuple[str, ...] = ()


def dvc_yaml(project: Project, path: Path | None = None) -> DvcYaml:
    """Render ``dvc.yaml`` for ``project`` (default: in the project folder); writes nothing.

    ``path`` may be a file or an existing folder (``dvc.yaml`` in it); when it is not in
    the project folder, the stages get a ``wdir`` pointing there.
    """
    target = project.root / "dvc.yaml" if path is None else Path(path)
    if target.is_dir():
        target = target / "dvc.yaml"
    target = target.absolute()
    pipeline = dvc_pipeline(project)
    stages = pipeline.mapping()
    wdir = os.path.relpath(project.root.absolute(), target.parent)
    if wdir != ".":
        posix = Path(wdir).as_posix()
        stages = {name: {**stage, "wdir": posix} for name, stage in stages.items()}
    text = yaml.safe_dump({"stages": stages}, sort_keys=False, default_flow_style=False)
    return DvcYaml(target, pipeline.header + text, project.root, pipeline.warnings)


def save_dvc_yaml(generated: DvcYaml, *, force: bool = False) -> Path:
    """Write a rendered ``dvc.yaml`` and return its path. An existing file is overwritten
    only if ``conveyor dvc`` wrote it (or with ``force``). The project's ``.dvcignore`` is
    made to ignore Python bytecode (see the module docstring)."""
    target = generated.path
    if target.exists() and not force:
        existing = target.read_text(encoding="utf-8")
        if not existing.startswith(GENERATED_HEADERS):
            raise ProjectError(
                "exists and was not written by conveyor dvc; move it away (or merge its "
                "stages by hand) and run conveyor dvc again",
                file=target,
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(generated.text, encoding="utf-8")
    _ensure_dvcignore(generated.root)
    return target


def write_dvc_yaml(project: Project, path: Path | None = None, *, force: bool = False) -> Path:
    """Render and write ``dvc.yaml`` (:func:`dvc_yaml`, :func:`save_dvc_yaml`); its path."""
    return save_dvc_yaml(dvc_yaml(project, path), force=force)


def dvc_yaml_diff(generated: DvcYaml) -> str:
    """How the ``dvc.yaml`` on disk differs from ``generated`` (a unified diff, from the
    file to what ``conveyor dvc`` would write; the whole file when it is missing), or
    ``""`` when it matches. Reads only."""
    target = generated.path
    try:
        existing = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing, before = "", f"{target.name} (missing)"
    else:
        before = f"{target.name} (on disk)"
    if existing == generated.text:
        return ""
    lines = difflib.unified_diff(
        existing.splitlines(keepends=True),
        generated.text.splitlines(keepends=True),
        fromfile=before,
        tofile=f"{target.name} (conveyor dvc)",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _ensure_dvcignore(root: Path) -> None:
    path = root / ".dvcignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing = [p for p in DVCIGNORE_PATTERNS if p not in present]
    if not missing:
        return
    if text and not text.endswith("\n"):
        text += "\n"
    text += "# Python bytecode (written by `conveyor dvc`)\n" + "".join(f"{p}\n" for p in missing)
    path.write_text(text, encoding="utf-8")


# -- DVC remotes ---------------------------------------------------------------------------


def _dvc_command() -> list[str]:
    """How to run DVC: the ``dvc`` package of this interpreter, else ``dvc`` on PATH."""
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    found = shutil.which("dvc")
    if found is None:
        raise UsageError(
            "DVC is not installed: pip install 'dvc>=3' (for an S3, GCS or SSH remote: "
            "'dvc[s3]', 'dvc[gs]' or 'dvc[ssh]')"
        )
    return [found]


def _run_dvc(root: Path, *args: str) -> str:
    """``dvc ARGS`` in ``root`` (bounded in time, no analytics); its output."""
    command = [*_dvc_command(), *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        done = subprocess.run(
            command,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=DVC_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProjectError(
            f"dvc {' '.join(args)} did not finish within {DVC_TIMEOUT:.0f} s", file=root
        ) from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise ProjectError(f"dvc {' '.join(args)} failed: {output}", file=root)
    return output


def _above(root: Path, name: str) -> Path | None:
    """The nearest of ``root`` and its parents that holds ``name`` (``.dvc``, ``.git``)."""
    for folder in (root, *root.parents):  # bounded by the path's depth
        if (folder / name).is_dir() or (name == ".git" and (folder / name).is_file()):
            return folder  # (a worktree's or submodule's .git is a file)
    return None


def configure_remote(root: Path, name: str, url: str, *, default: bool = False) -> list[str]:
    """Make the project at ``root`` a DVC repository if it is not inside one (``dvc init``;
    ``--no-scm`` outside a git repository, ``--subdir`` below a git repository's top), then
    add the DVC remote ``name`` at ``url`` (``dvc remote add``), or point the existing one
    there (``dvc remote modify NAME url URL``: its other options stay); ``default`` makes it
    the default remote. A local ``url`` is made absolute (from the working directory). Returns
    what was done, one line each."""
    root = root.absolute()
    done: list[str] = []
    if _above(root, ".dvc") is None:
        git = _above(root, ".git")
        init = (
            ["init", "--no-scm"]
            if git is None
            else ["init"]
            if git == root
            else ["init", "--subdir"]
        )
        _run_dvc(root, *init)
        done.append(f"dvc {' '.join(init)} in {root}")
    if "://" not in url:  # a local folder: as the user meant it, from where they are
        url = os.path.abspath(os.path.expanduser(url))
    listed = _run_dvc(root, "remote", "list")
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    if name in names:
        _run_dvc(root, "remote", "modify", name, "url", url)
        done.append(f"DVC remote {name} now points to {url}")
    else:
        _run_dvc(root, "remote", "add", name, url)
        done.append(f"added DVC remote {name}: {url}")
    if default:
        _run_dvc(root, "remote", "default", name)
        done.append(f"DVC remote {name} is the default (dvc push / dvc pull use it)")
    return done
