"""A missing input, as one error line that points at the fix: which stage (or source)
reads it, the config key that names it — at its file:line:column when the loader knows it
— and the path (as given, and where that is).

Used by the project runner (:mod:`conveyor.project.run`) before a run reads its Source
(a Source stage whose ``inputs()`` name a file that is not there), when a Source's
``read()`` or a task stage raises :class:`FileNotFoundError`, and when a task stage's
``validate()`` refuses with :meth:`~conveyor.project.TaskStage.refuse`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.core._render import printable
from conveyor.errors import ConfigError, ProjectError

if TYPE_CHECKING:
    from conveyor.project.config import LoadedConfig
    from conveyor.project.project import LoadedStage, Project

__all__ = [
    "keys_naming",
    "missing_input",
    "named_by",
    "params_naming",
    "refusal_error",
    "stage_keys",
    "stage_params",
]

Key = tuple[str, ...]


def _leaves(params: Mapping[str, Any], prefix: Key = ()) -> Iterator[tuple[Key, str]]:
    """Every string value below ``params`` with its key path."""
    for key, value in params.items():
        if isinstance(value, str):
            yield (*prefix, str(key)), value
        elif isinstance(value, Mapping):
            yield from _leaves(value, (*prefix, str(key)))


def _as_path(value: str) -> Path | None:
    """The local path a parameter's value names: itself, or a ``file:`` URL's path;
    ``None`` for another URL or an empty value."""
    text = value.strip()
    if not text:
        return None
    if text.startswith("file:"):
        parsed = urllib.parse.urlparse(text)
        local = urllib.parse.unquote(parsed.path if parsed.netloc in ("", "localhost") else "")
        return Path(local) if local else None
    if "://" in text:
        return None
    return Path(text)


def params_naming(params: Mapping[str, Any], missing: Path, root: Path) -> list[Key]:
    """The parameters (key paths below ``params``) whose value names ``missing``: the path
    itself (or a ``file:`` URL of it) first; failing that, a folder it lies in and a plain
    file name it ends with (``input_dir: data/raw`` and ``raw_file: x.csv`` for
    ``data/raw/x.csv``). Relative values are relative to ``root`` (the project folder)."""
    target = (missing if missing.is_absolute() else root / missing).resolve()
    exact: list[Key] = []
    parts: list[Key] = []
    for key, value in _leaves(params):
        path = _as_path(value)
        if path is None:
            continue
        full = (path if path.is_absolute() else root / path).resolve()
        folder = target.is_relative_to(full) and full != root.resolve()
        file_name = len(path.parts) == 1 and path.name == target.name
        if full == target:
            exact.append(key)
        elif folder or file_name:
            parts.append(key)
    return exact or parts


def stage_keys(project: Project, loaded: LoadedStage, names: Sequence[Key]) -> list[Key]:
    """``names`` (keys below a stage's parameters) as the config keys that set them: the
    stage's own (``stages.NAME.params.KEY``), or the shared one it was given
    (``params.KEY``)."""
    shared = project.config.config.params
    return [
        ("params", *name)
        if name[0] in shared and name[0] not in loaded.section.params
        else ("stages", loaded.name, "params", *name)
        for name in names
    ]


def stage_params(loaded: LoadedStage) -> dict[str, Any]:
    """The parameters a stage was built with: those the config gives, over the defaults
    of its ``Config`` (a stage keeps its validated config as ``config``)."""
    config = getattr(loaded.stage, "config", None)
    dump = getattr(config, "model_dump", None)
    defaults = dump() if callable(dump) else {}
    return {**(defaults if isinstance(defaults, dict) else {}), **loaded.params}


def keys_naming(project: Project, loaded: LoadedStage | None, missing: Path) -> list[Key]:
    """The config keys that name ``missing`` for the stage ``loaded`` (its parameters, set
    or by default), or for the ``source:`` section (``loaded`` ``None``)."""
    if loaded is not None:
        return stage_keys(
            project, loaded, params_naming(stage_params(loaded), missing, project.root)
        )
    section = project.config.config.source or {}
    named = params_naming(section, missing, project.root)
    return [("source", *key) for key in named] or (
        [("source", "path")] if "path" in section else []
    )


def _where(config: LoadedConfig, key: Key) -> str:
    file, line, column = config.where(key)
    if file is None:
        return ""
    return f"{file}:{line}:{column or 1}" if line is not None else str(file)


def named_by(config: LoadedConfig, keys: Sequence[Key]) -> str:
    """The keys as the user writes them, each after the first with its place when that
    is another (the first one's place starts the error line): ``stages.source.params.path``,
    or ``preprocess.input_dir and raw_file at configs/pipeline.yaml:24:1``."""
    shown = []
    first = config.where(keys[0])[0] if keys else None
    for index, key in enumerate(keys):
        text = config.dotted(key)
        file, line, _ = config.where(key)
        if key not in config.positions:
            text += " (by default)"  # not in the config: its Config model's default
        elif index and file == "command line":
            text += " on the command line"
        elif index and file != first:
            text += f" at {_where(config, key)}"
        elif index and line is not None:
            text += f" (line {line})"
        shown.append(text)
    return " and ".join(shown)


def missing_input(
    project: Project,
    who: str,
    path: str | Path,
    keys: Sequence[Key],
    *,
    file: object = None,
    line: int | None = None,
    opened: str = "",
    then: str = "",
) -> ProjectError:
    """The error for ``who`` (``source stage 'source'``, ``stage 'preprocess'``) reading
    ``path``, which does not exist: located at the first of ``keys`` (the config keys that
    name it) when there are any, else at ``file``:``line`` (the code that names it);
    ``opened`` says where the code tried to open it, ``then`` what to do after the fix."""
    text = printable(str(path))
    full = project.path(str(path)).resolve() if not Path(path).is_absolute() else Path(path)
    where = f"{full}; opened at {opened}" if opened else str(full)
    what = f"{who} reads {text}, which does not exist ({where})"
    if keys:
        fix = "correct" if keys[0] in project.config.positions else "set"
        message = (
            f"{what}; {named_by(project.config, keys)} {'names' if len(keys) == 1 else 'name'}"
            f" it: create it, or {fix} "
            f"{project.config.dotted(keys[0])}{then}"
        )
        error: ProjectError = project.config.error(keys[0], message)
        return error
    return ProjectError(
        f"{what}: create it, or change the path in the code that names it{then}",
        file=file,
        line=line,
    )


def refusal_error(
    project: Project, loaded: LoadedStage, problem: str, names: Sequence[str], then: str
) -> ProjectError:
    """The error of a task stage whose ``validate()`` said no through
    ``refuse(problem, *names)``: ``problem`` with the config keys of the parameters it
    named, located at the first of them (else at its stage file); ``then`` says what to
    do after the fix."""
    params = stage_params(loaded)
    keys = stage_keys(project, loaded, [(name,) for name in names if name in params])
    see = f" (see {named_by(project.config, keys)})" if keys else ""
    message = f"stage {loaded.name!r} cannot run: {problem}{see}{then}"
    if keys:
        located: ConfigError = project.config.error(keys[0], message)
        return located
    return ProjectError(message, file=loaded.file.path)
