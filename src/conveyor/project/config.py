"""``config.yaml``: loading with positions, ``${VAR}`` interpolation, overrides, validation.

Every error names ``file:line:column``, the dotted key, and for an unknown key the valid
keys with a "did you mean" (ADR 0003). Values that came from environment variables are
never printed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from conveyor.core.checkpoint import CheckpointInterval
from conveyor.core.options import DeadLetterBudget
from conveyor.errors import ConfigError, PipelineDefinitionError

__all__ = [
    "PersistConfig",
    "PipelineSection",
    "ProjectConfig",
    "RetryConfig",
    "StageSection",
    "load_config",
    "parse_overrides",
    "validate_model",
]

Position = tuple[object, int | None, int | None]  # file, line, column


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    """``retry:`` of a stage (see :class:`~conveyor.RetryPolicy`)."""

    attempts: int = Field(1, ge=1)
    backoff: float = Field(0.05, ge=0)
    multiplier: float = Field(2.0, ge=1)
    max_backoff: float = Field(5.0, ge=0)
    jitter: float = Field(0.25, ge=0, le=1)
    retry_on: list[str] = ["ConnectionError", "TimeoutError"]


class PersistConfig(_Strict):
    """``persist:`` of a stage: where its output dataset goes, relative to the project."""

    path: str
    format: Literal["parquet", "jsonl"] = "jsonl"


class StageSection(_Strict):
    """One entry of ``stages:``: runner options, persistence and the stage's parameters."""

    concurrency: int | None = Field(None, ge=1)
    executor: Literal["inline", "thread", "process"] | None = None
    workers: int | None = Field(None, ge=1)
    ordered: bool | None = None
    retry: RetryConfig | None = None
    timeout: float | None = Field(None, gt=0)
    rate_limit: float | None = Field(None, gt=0)
    persist: PersistConfig | None = None
    params: dict[str, Any] = {}


class PipelineSection(_Strict):
    """``pipeline:``: the run's settings and every stage's defaults."""

    name: str | None = None
    batch_size: int = Field(1000, ge=1)
    capacity: int = Field(2, ge=1)
    linger: float = Field(0.05, ge=0)
    concurrency: int = Field(1, ge=1)
    executor: Literal["inline", "thread", "process"] = "inline"
    contracts: Literal["all", "sample", "off"] = "all"
    sample_rate: float = Field(0.01, ge=0, le=1)
    dead_letters: str = ".conveyor/dead_letters.db"
    state_dir: str = ".conveyor"
    grace_period: float = Field(30.0, ge=0)
    max_dead_letters: int | str = "10%"
    hooks: dict[Literal["before_stage", "after_stage", "on_error", "on_complete"], list[str]] = {}
    events: dict[Literal["item_created", "item_updated", "stage_completed"], list[str]] = {}
    checkpoints: bool = True
    checkpoint_every: float | str = 1.0

    @field_validator("checkpoint_every")
    @classmethod
    def _interval(cls, value: float | str) -> float | str:
        return _parses(CheckpointInterval.parse, value)

    @field_validator("max_dead_letters")
    @classmethod
    def _budget(cls, value: int | str) -> int | str:
        return _parses(DeadLetterBudget.parse, value)


V = TypeVar("V")


def _parses(parse: Callable[[Any], object], value: V) -> V:
    """``value`` if ``parse`` takes it; its refusal as a validation error otherwise."""
    try:
        parse(value)
    except PipelineDefinitionError as exc:
        raise ValueError(str(exc)) from None
    return value


class ProjectConfig(_Strict):
    """The whole of ``config.yaml``."""

    pipeline: PipelineSection = PipelineSection()
    stages: dict[str, StageSection] = {}
    branches: dict[str, dict[str, list[str]]] = {}
    source: dict[str, Any] | None = None
    """``source: {connector: NAME, …}``: a built-in source instead of a source stage file
    (its options are validated by the connector's own model, see :func:`connector_source`)."""
    sink: dict[str, Any] | None = None
    """``sink: {connector: NAME, …}``: a built-in sink instead of a sink stage file (its
    options are validated by the connector's own model, see :func:`connector_sink`)."""


@dataclass
class LoadedConfig:
    """A validated config with where each key came from (for later errors)."""

    config: ProjectConfig
    raw: dict[str, Any]
    positions: dict[tuple[str, ...], Position] = field(default_factory=dict)
    secrets: set[tuple[str, ...]] = field(default_factory=set)
    file: Path | None = None

    def where(self, path: Sequence[str]) -> Position:
        """The best-known position of ``path`` (walking up to a parent key)."""
        key = tuple(path)
        while key:
            if key in self.positions:
                return self.positions[key]
            key = key[:-1]
        return (self.file, None, None)

    def error(self, path: Sequence[str], message: str, valid: Sequence[str] = ()) -> ConfigError:
        """A :class:`ConfigError` located at ``path``."""
        file, line, column = self.where(path)
        return ConfigError(
            message,
            file=file,
            line=line,
            column=column,
            key=".".join(path),
            valid_keys=tuple(valid),
        )


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _scalar(node: yaml.Node) -> Any:
    """The value of a scalar node (an empty value is ``None``, as YAML means it)."""
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _compose(text: str, file: Path) -> tuple[Any, dict[tuple[str, ...], Position]]:
    """Parse YAML keeping the position of every key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line, column=column) from exc
    positions: dict[tuple[str, ...], Position] = {}

    def build(n: yaml.Node | None, path: tuple[str, ...]) -> Any:
        if n is None:
            return None
        if isinstance(n, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in n.value:
                key = str(_scalar(key_node))
                child = (*path, key)
                positions[child] = (
                    file,
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                out[key] = build(value_node, child)
            return out
        if isinstance(n, yaml.SequenceNode):
            items = []
            for index, item in enumerate(n.value):
                child = (*path, str(index))
                positions[child] = (file, item.start_mark.line + 1, item.start_mark.column + 1)
                items.append(build(item, child))
            return items
        return _scalar(n)

    return build(node, ()), positions


def _interpolate(
    value: Any, path: tuple[str, ...], loaded: LoadedConfig, env: Mapping[str, str]
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), loaded, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, str(i)), loaded, env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise loaded.error(
            path,
            f"environment variable {name} is not set (used by {'.'.join(path)}); "
            f"set it, or write ${{{name}:-default}}",
        )

    loaded.secrets.add(path)
    substituted = _VAR.sub(replace, value)
    if not _VAR.fullmatch(value):
        return substituted
    try:
        return yaml.safe_load(substituted)
    except yaml.YAMLError:  # not a YAML scalar: keep the text (and never echo it)
        return substituted


def parse_overrides(overrides: Sequence[str]) -> dict[tuple[str, ...], Any]:
    """``["a.b=1", "c=x"]`` -> ``{("a", "b"): 1, ("c",): "x"}`` (values as YAML scalars).

    >>> parse_overrides(["stages.enrich.concurrency=4", "pipeline.name=demo"])
    {('stages', 'enrich', 'concurrency'): 4, ('pipeline', 'name'): 'demo'}
    """
    parsed: dict[tuple[str, ...], Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override {item!r} is not key=value (dotted keys for nesting, e.g. "
                "stages.enrich.concurrency=4)",
                file="command line",
                key=key,
            )
        try:
            parsed[tuple(key.split("."))] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed[tuple(key.split("."))] = value
    return parsed


def _apply_override(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = raw
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[path[-1]] = value


def _drop(data: Any, path: tuple[str, ...]) -> None:
    """Remove ``path`` from the parsed file (an override replaces it)."""
    for part in path[:-1]:
        if not isinstance(data, dict):
            return
        data = data.get(part)
    if isinstance(data, dict):
        data.pop(path[-1], None)


def load_config(
    file: Path,
    overrides: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read, interpolate, override and validate ``file`` (a missing file is all defaults)."""
    text = file.read_text(encoding="utf-8") if file.exists() else ""
    data, positions = _compose(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config.yaml must be a mapping of sections", file=file, line=1)
    loaded = LoadedConfig(ProjectConfig(), {}, positions, set(), file)
    parsed = parse_overrides(overrides)
    for path in parsed:  # an overridden value needs no variable, wherever it sits
        _drop(data, path)
    raw = _interpolate(data, (), loaded, os.environ if env is None else env)
    for path, value in parsed.items():
        _apply_override(raw, path, value)
        for end in range(1, len(path)):
            loaded.positions.setdefault(path[:end], ("command line", None, None))
        loaded.positions[path] = ("command line", None, None)
        loaded.secrets.discard(path)
    loaded.raw = raw
    loaded.config = validate_model(ProjectConfig, raw, loaded, ())
    return loaded


def connector_sink(loaded: LoadedConfig, root: Path) -> Any:
    """The sink that config.yaml's ``sink:`` section describes, or ``None``."""
    return _connector(loaded, root, "sink", loaded.config.sink)


def connector_source(loaded: LoadedConfig, root: Path) -> Any:
    """The source that config.yaml's ``source:`` section describes, or ``None``."""
    return _connector(loaded, root, "source", loaded.config.source)


def _connector(loaded: LoadedConfig, root: Path, kind: str, section: Any) -> Any:
    """The connector a ``source:`` or ``sink:`` section describes, or ``None``: its
    ``connector`` picks the class, whose ``Config`` model validates the other keys (errors
    located at file:line:column, with the valid keys and a did-you-mean); a path that
    leaves the project is refused at its key."""
    if section is None:
        return None
    from conveyor.connectors import connector, connector_names
    from conveyor.core._paths import OutsideProject

    sources, sinks = connector_names()
    names = sources if kind == "source" else sinks
    name = section.get("connector")
    if not isinstance(name, str) or name not in names:
        close = difflib.get_close_matches(str(name), names, n=1) if name else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = "is missing" if name is None else f"{name!r} is not a {kind} connector"
        raise loaded.error(
            (kind, "connector") if name is not None else (kind,),
            f"{kind}.connector {what}{hint} (connectors: {', '.join(names)}; "
            "`conveyor connectors` lists their options)",
            names,
        )
    cls = connector(kind, name)
    options = {k: v for k, v in section.items() if k != "connector"}
    config = validate_model(cls.Config, options, loaded, (kind,))
    try:
        return cls.from_config(config, root)
    except OutsideProject as exc:
        parts = exc.key.split(".")
        raise loaded.error((kind, *parts[parts[0] == kind :]), str(exc)) from None


def validate_model(
    model: type[BaseModel], data: Any, loaded: LoadedConfig, prefix: tuple[str, ...]
) -> Any:
    """Validate ``data`` (found at ``prefix``) against ``model``; errors located and explained."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, model, loaded, prefix) from None


def _explain(
    exc: ValidationError, model: type[BaseModel], loaded: LoadedConfig, prefix: tuple[str, ...]
) -> ConfigError:
    messages: list[str] = []
    first: ConfigError | None = None
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        path = (*prefix, *loc)
        dotted = ".".join(path)
        if error["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1)
            elsewhere = _elsewhere(loc[-1], path[:-1])
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; it belongs in {elsewhere} (e.g. {elsewhere}.{loc[-1]})"
                if elsewhere
                else ""
            )
            parent = ".".join(path[:-1]) or "the top level"
            text = f"unknown key {loc[-1]!r} in {parent}{hint} (valid keys: {', '.join(valid)})"
        else:
            text = f"{dotted}: {error['msg']}"
            secret = error.get("input")
            if _is_secret(path, loaded) and isinstance(secret, str | int | float) and str(secret):
                text = text.replace(str(secret), "***")
        problem = loaded.error(path, text, _fields_at(model, loc[:-1]))
        first = first or problem
        messages.append(str(problem))
    assert first is not None
    if len(messages) > 1:
        first.args = ("\n".join(messages),)
    return first


def _elsewhere(key: str, parent: tuple[str, ...]) -> str:
    """The section where ``key`` is valid, when it is not the one it was written in."""
    if key in PipelineSection.model_fields and parent != ("pipeline",):
        return "pipeline"
    if key in StageSection.model_fields and parent[:1] != ("stages",):
        return "stages.NAME"
    return ""


def _is_secret(path: tuple[str, ...], loaded: LoadedConfig) -> bool:
    """Whether the value at ``path`` (or a parent of it) came from an environment variable."""
    return any(path[:end] in loaded.secrets for end in range(1, len(path) + 1))


def _fields_at(model: type[BaseModel], loc: Sequence[str]) -> list[str]:
    """Field names of the model reached by ``loc`` (the keys of dict levels skipped)."""
    current: Any = model
    skip_key = False
    for part in loc:
        if skip_key:
            skip_key = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part)
        if info is None:
            return []
        skip_key = getattr(info.annotation, "__origin__", None) is dict
        current = _inner_model(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` or ``dict[str, X]``, else the annotation."""
    args = getattr(annotation, "__args__", ())
    for arg in reversed(args):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
