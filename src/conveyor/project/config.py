"""``config.yaml``: loading with positions, ``${VAR}`` interpolation, overrides, validation.

Every error names ``file:line:column``, the dotted key, and for an unknown key the valid
keys with a "did you mean" (ADR 0003). Values that came from environment variables are
never printed.

The file is untrusted input, read with bounds: at most :data:`MAX_CONFIG_BYTES`, nesting
at most :data:`MAX_DEPTH` deep, at most :data:`MAX_ALIASES` aliases and
:data:`MAX_NODES` values once aliases are expanded (a "billion laughs" document is refused
before it costs anything), keys of at most :data:`MAX_KEY_CHARS` characters, only the
plain YAML tags (``!!python/…`` and any other tag is refused) and no alias inside what it
names (a recursive structure). Each refusal is a one-line :class:`ConfigError` at
``file:line:column``. Paths the config names stay inside the project folder
(:func:`check_paths`).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from conveyor.core.checkpoint import CheckpointInterval
from conveyor.core.keyed import duration
from conveyor.core.options import DeadLetterBudget
from conveyor.errors import ConfigError, PipelineDefinitionError

__all__ = [
    "MAX_ALIASES",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_NODES",
    "WINDOW_AGGREGATES",
    "PersistConfig",
    "PipelineSection",
    "ProjectConfig",
    "RetryConfig",
    "StageSection",
    "WindowSection",
    "check_paths",
    "load_config",
    "parse_overrides",
    "read_config_document",
    "validate_model",
]

Position = tuple[object, int | None, int | None]  # file, line, column

MAX_CONFIG_BYTES: Final = 4 << 20
"""The largest config.yaml read (4 MiB)."""
MAX_DEPTH: Final = 64
"""How deep mappings and lists may nest."""
MAX_ALIASES: Final = 1_000
"""How many aliases (``*name``) a document may use."""
MAX_NODES: Final = 100_000
"""How many values (scalars, mappings, lists) a document may hold, aliases expanded."""
MAX_KEY_CHARS: Final = 256
"""The longest mapping key."""
MAX_NAME_CHARS: Final = 100
"""The longest ``pipeline.name``; stage and branch names get at most 64 characters."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_YAML_TAGS: Final = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
)
_MERGE: Final = "tag:yaml.org,2002:merge"
_VALUE: Final = "tag:yaml.org,2002:value"  # PyYAML's tag of a plain `=`: text to us
_MAX_TEXT: Final = 4 * MAX_CONFIG_BYTES  # characters of text, aliases expanded


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
    allow_outside_project: bool = False
    """``path`` may lie outside the project folder (refused otherwise, see
    :func:`check_paths`)."""


WINDOW_KINDS: Final = ("tumbling", "sliding", "session", "count")
"""The keys of ``window:`` that say what kind of window it is (exactly one is given)."""
WINDOW_AGGREGATES: Final = ("count", "sum", "mean", "min", "max")
"""The built-in aggregates ``window.aggregate`` names (:class:`~conveyor.Stats`)."""
_KINDS_TEXT: Final = "tumbling, sliding (with slide), session or count"


def _refused(message: str) -> PydanticCustomError:
    """A validation error saying ``message`` as it is (no "Value error," before it)."""
    return PydanticCustomError("window", "{message}", {"message": message})


class WindowSection(_Strict):
    """``window:`` of a stage: the stage becomes a window stage (:func:`~conveyor.window`).

    One kind: ``tumbling: SIZE``, ``sliding: SIZE`` with ``slide: STEP``, ``session: GAP``
    (durations as :func:`~conveyor.core.keyed.duration` reads them: ``60``, ``"250ms"``,
    ``"10s"``, ``"5m"``, ``"2h"``, ``"1d"``; kept here in seconds) or ``count: N``;
    ``time`` (the field with each record's event time; required but for count windows),
    ``key`` (the field to group by; none: one window sequence for the whole stream),
    ``max_out_of_orderness``, ``allowed_lateness``, ``idle_timeout``; and ``aggregate``,
    one name or a list of :data:`WINDOW_AGGREGATES` of the values of ``field`` (``count``
    alone needs none), or nothing when the stage file's ``AggregateStage`` gives it.

    Each rule is checked at the key it concerns, so its error names that key's
    file:line:column (a rule about a key that is absent: the ``window:`` key's)."""

    tumbling: float | None = None
    sliding: float | None = None
    slide: float | None = Field(None, validate_default=True)
    session: float | None = None
    count: int | None = None
    time: str | None = Field(None, validate_default=True)
    key: str | None = None
    max_out_of_orderness: float = Field(0.0, validate_default=True)
    allowed_lateness: float = Field(0.0, validate_default=True)
    idle_timeout: float | None = Field(None, validate_default=True)
    aggregate: list[str] | None = None
    """The built-in aggregates, in the order written (one name: a list of one)."""
    field: str | None = Field(None, validate_default=True)

    @property
    def kind(self) -> str:
        """``tumbling``, ``sliding``, ``session`` or ``count``."""
        return next(k for k in WINDOW_KINDS if getattr(self, k) is not None)

    @field_validator("tumbling", "sliding", "slide", "session", mode="before")
    @classmethod
    def _size(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        try:
            return duration(value, str(info.field_name))
        except PipelineDefinitionError as exc:
            raise _refused(str(exc)) from None

    @field_validator("max_out_of_orderness", "allowed_lateness", "idle_timeout", mode="before")
    @classmethod
    def _bound(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        if value is None and name == "idle_timeout":
            return None
        try:
            return duration(value, name, zero=name != "idle_timeout")
        except PipelineDefinitionError as exc:
            raise _refused(str(exc)) from None

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _refused(f"count is the number of records of a window, >= 1; got {value!r}")
        return value

    @field_validator("sliding", "session", "count")
    @classmethod
    def _one_kind(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            given = [k for k in WINDOW_KINDS if info.data.get(k) is not None]
            if given:
                raise _refused(
                    f"two window kinds, {given[0]} and {info.field_name}: a window is one of "
                    f"{_KINDS_TEXT}; keep one"
                )
        return value

    @field_validator("slide")
    @classmethod
    def _slide(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "sliding" not in info.data:  # (sliding has an error of its own)
            return value
        sliding = info.data["sliding"]
        if value is not None and sliding is None:
            raise _refused(
                "slide goes with sliding (windows of SIZE starting every slide), e.g. "
                "`sliding: 60s` and `slide: 10s`; tumbling and session windows have none"
            )
        if value is None and sliding is not None:
            raise _refused(
                f"sliding windows need slide:, how often one starts (at most the size, "
                f"{sliding:g}s), e.g. `slide: 10s`"
            )
        if value is not None and value > sliding:
            raise _refused(
                f"slide ({value:g}s) must not exceed the window's size (sliding: {sliding:g}s): "
                "records between the windows would belong to none"
            )
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise _refused("time must name a field (the one with each record's event time)")
        if any(k not in info.data for k in WINDOW_KINDS):  # (a kind has an error of its own)
            return value
        given = [k for k in WINDOW_KINDS if info.data[k] is not None]
        if not given:
            return value  # (the window's own error says so)
        if given[0] == "count" and value is not None:
            raise _refused(
                "count windows close by count, not by event time: drop time (or use "
                "tumbling, sliding or session windows)"
            )
        if given[0] != "count" and value is None:
            raise _refused(
                f"{given[0]} windows need time:, the field with each record's event time (a "
                "number of seconds, a datetime or an ISO 8601 string), e.g. `time: ts`"
            )
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise _refused("key must name a field (the one to group the records by)")
        return value

    @field_validator("max_out_of_orderness", "allowed_lateness", "idle_timeout")
    @classmethod
    def _watermark(cls, value: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("count") is not None and value:
            raise _refused(
                f"count windows have no watermark: drop {info.field_name} (or use tumbling, "
                "sliding or session windows)"
            )
        return value

    @field_validator("aggregate", mode="before")
    @classmethod
    def _aggregate(cls, value: Any) -> Any:
        if value is None:
            return None
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _refused(
                f"aggregate is a name or a list of names of {', '.join(WINDOW_AGGREGATES)}, "
                f"got {value!r}"
            )
        for name in names:
            if name not in WINDOW_AGGREGATES:
                close = difflib.get_close_matches(name, WINDOW_AGGREGATES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise _refused(
                    f"unknown aggregate {name!r}{hint} (built-in: {', '.join(WINDOW_AGGREGATES)}; "
                    "for another, leave aggregate out and define it in the stage file: "
                    "stage = AggregateStage(fn))"
                )
        return list(dict.fromkeys(names))

    @field_validator("field")
    @classmethod
    def _field(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise _refused("field must name a field (the one whose values are aggregated)")
        if "aggregate" not in info.data:  # (aggregate has an error of its own)
            return value
        names = info.data["aggregate"]
        if names is None and value is not None:
            raise _refused(
                "field goes with a built-in aggregate (e.g. `aggregate: mean`); the stage "
                "file's aggregate reads the records itself"
            )
        needing = [n for n in names or () if n != "count"]
        if needing and value is None:
            raise _refused(
                f"aggregate {needing[0]} needs field:, the field whose values it takes, e.g. "
                "`field: value`"
            )
        return value

    @model_validator(mode="after")
    def _a_kind(self) -> WindowSection:
        if all(getattr(self, k) is None for k in WINDOW_KINDS):
            raise _refused(f"a window needs one of {_KINDS_TEXT}, e.g. `tumbling: 60s`")
        return self


class StageSection(_Strict):
    """One entry of ``stages:``: runner options, persistence and the stage's parameters."""

    concurrency: int | None = Field(None, ge=1)
    executor: Literal["inline", "thread", "process", "dask"] | None = None
    workers: int | None = Field(None, ge=1)
    ordered: bool | None = None
    retry: RetryConfig | None = None
    timeout: float | None = Field(None, gt=0)
    rate_limit: float | None = Field(None, gt=0)
    input_contract: str | None = None
    """What the records entering the stage must satisfy: a model or type as
    ``module:Name`` (``pipeline.contracts.models:Penguin``), or a schema file (``.json``,
    ``.avsc``, ``.proto[:Message]``) relative to the pipeline's ``contracts/`` folder or to
    the project."""
    output_contract: str | None = None
    """The same for the records the stage gives on."""
    persist: PersistConfig | None = None
    window: WindowSection | None = None
    """Makes the stage a window stage (see :class:`WindowSection`)."""
    params: dict[str, Any] = {}


class DaskSection(_Strict):
    """``pipeline.dask:``: the cluster of ``executor: dask`` (see
    :class:`~conveyor.core.options.DaskOptions`); without ``scheduler`` a ``LocalCluster``."""

    scheduler: str | None = Field(None, pattern=r"^[a-z][a-z0-9+]*://\S+$")
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str | int = "auto"
    profile: bool = False


class PipelineSection(_Strict):
    """``pipeline:``: the run's settings and every stage's defaults."""

    name: str | None = None
    batch_size: int = Field(1000, ge=1)
    capacity: int = Field(2, ge=1)
    linger: float = Field(0.05, ge=0)
    concurrency: int | None = Field(None, ge=1)
    """Every stage's micro-batches in flight; unset: what its executor can use (see
    :func:`~conveyor.core.options.default_concurrency`)."""
    executor: Literal["inline", "thread", "process", "dask"] = "inline"
    dask: DaskSection | None = None
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
    allow_outside_project: list[Literal["dead_letters", "state_dir"]] = []
    """The keys of this section whose path may lie outside the project folder, e.g.
    ``[dead_letters]`` (refused otherwise, see :func:`check_paths`)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from conveyor.core._render import printable

        if not value.strip() or len(value) > MAX_NAME_CHARS or printable(value) != value:
            raise ValueError(
                f"the pipeline's name must be 1 to {MAX_NAME_CHARS} characters without "
                f"control characters (this one has {len(value)} characters)"
            )
        return value

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
    params: dict[str, Any] = {}
    """Parameters shared by the stages: each goes to every stage whose ``Config`` model
    declares a field of its name (a stage's own ``params`` win); one that no stage
    declares is an error. In the dataset layout, the top-level keys of
    ``configs/pipeline.yaml`` other than its sections."""
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
    written: Any = None
    """The document as written in the file: no overrides, no ``${VAR}`` substitution (in
    the dataset layout, the files translated to config.yaml's shape)."""
    order: list[str] | None = None
    """The dataset layout's ``stages:`` list (the run order); ``None`` in the stream layout."""
    stage_files: dict[str, Path] = field(default_factory=dict)
    """The dataset layout's ``configs/stages/NAME.yaml`` files that exist, by stage."""
    order_overridden: bool = False
    """The dataset layout's order came from the command line (``stages=[…]``)."""
    stray_files: list[Path] = field(default_factory=list)
    """The dataset layout's ``configs/stages/*.yaml`` files that name no listed stage (an
    error once the stage files are known to match the list)."""

    def where(self, path: Sequence[str]) -> Position:
        """The best-known position of ``path`` (walking up to a parent key)."""
        key = tuple(path)
        while key:
            if key in self.positions:
                return self.positions[key]
            key = key[:-1]
        return (self.file, None, None)

    def dotted(self, path: Sequence[str]) -> str:
        """``path`` as the user writes it: config.yaml's dotted key, or in the dataset
        layout the override form (``stages.NAME.params.KEY`` -> ``NAME.KEY``, ``params.KEY``
        -> ``KEY``, a stage's whole file -> ``configs/stages/NAME.yaml``)."""
        parts = tuple(path)
        if self.order is not None:
            if parts[:1] == ("stages",) and parts[2:3] == ("params",):
                name = parts[1]
                if len(parts) == 3:
                    return f"configs/stages/{name}.yaml"
                return ".".join((name, *parts[3:]))
            if parts[:1] == ("params",):
                return ".".join(parts[1:]) or "configs/pipeline.yaml"
        return ".".join(parts)

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


class _Refused(Exception):
    """A document that the bounds of the module docstring refuse, at ``mark``."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer, counting aliases and nesting as it goes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(
                    f"more than {MAX_ALIASES:,} aliases (*name); config.yaml is refused "
                    "(an alias bomb?)",
                    event.start_mark,
                )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _tag(node: yaml.Node) -> str:
    """``!!python/object`` for ``tag:yaml.org,2002:python/object``: the tag as written."""
    return str(node.tag).replace("tag:yaml.org,2002:", "!!")


class _Builder:
    """Python values from composed nodes: aliases expanded with a count, recursion and
    unsafe tags refused, the position of every key kept."""

    def __init__(self, file: object) -> None:
        self.file = file
        self.nodes = 0
        self.text = 0
        self.active: set[int] = set()
        self.scalars: dict[int, Any] = {}  # an aliased scalar is built once
        self.positions: dict[tuple[str, ...], Position] = {}

    def at(self, mark: Any) -> Position:
        return (self.file, mark.line + 1, mark.column + 1)

    def build(self, node: yaml.Node, path: tuple[str, ...]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(
                f"the document expands to more than {MAX_NODES:,} values (aliases repeat "
                "what they name); config.yaml is refused (an alias bomb?)",
                node.start_mark,
            )
        if id(node) in self.active:
            raise _Refused(
                "an alias refers to the mapping or list it is inside (a recursive "
                "structure); config.yaml cannot hold one",
                node.start_mark,
            )
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node)
            if isinstance(value, str):
                self.text += len(value)
                if self.text > _MAX_TEXT:
                    raise _Refused(
                        f"the document expands to more than {_MAX_TEXT:,} characters of text "
                        "(aliases repeat what they name); config.yaml is refused",
                        node.start_mark,
                    )
            return value
        if node.tag not in _YAML_TAGS:
            raise self.bad_tag(node)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            items = []
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                self.positions[child] = self.at(item.start_mark)
                items.append(self.build(item, child))
            return items
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: tuple[str, ...]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        explicit: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:  # `<<: *defaults`: keys written here win
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise _Refused(
                            "a merge key (<<) takes a mapping or a list of mappings",
                            source.start_mark,
                        )
                    for key, value in self.build(source, path).items():
                        merged.setdefault(key, value)
                continue
            key = self.key(key_node)
            child = (*path, key)
            self.positions[child] = self.at(key_node.start_mark)
            explicit[key] = self.build(value_node, child)
        return {**merged, **explicit} if merged else explicit

    def key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _Refused("a key must be plain text, not a mapping or a list", node.start_mark)
        key = str(self.scalar(node))
        if len(key) > MAX_KEY_CHARS:
            raise _Refused(
                f"a key of {len(key):,} characters; keys have at most {MAX_KEY_CHARS}",
                node.start_mark,
            )
        return key

    def scalar(self, node: yaml.ScalarNode) -> Any:
        """The value of a scalar node (an empty value is ``None``, as YAML means it)."""
        if id(node) in self.scalars:
            return self.scalars[id(node)]
        if node.tag == _VALUE:
            return str(node.value)
        if node.tag not in _YAML_TAGS:
            raise self.bad_tag(node)
        try:
            value = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        except Exception as exc:  # PyYAML's constructors fail in many ways on bad text
            problem = getattr(exc, "problem", None) or str(exc)
            raise _Refused(
                f"{_tag(node)} value cannot be read: {problem}", node.start_mark
            ) from None
        self.scalars[id(node)] = value
        return value

    def bad_tag(self, node: yaml.Node) -> _Refused:
        tag = _tag(node)
        if tag.startswith("!!python"):
            return _Refused(
                f"unsafe YAML tag {tag}: config.yaml never creates Python objects; write a "
                "plain value (a class or function is named as text, module:name)",
                node.start_mark,
            )
        return _Refused(
            f"unsupported YAML tag {tag}; config.yaml takes plain values (text, numbers, "
            "booleans, null, dates, mappings and lists)",
            node.start_mark,
        )


def _parse(text: str, file: object) -> tuple[Any, dict[tuple[str, ...], Position]]:
    """The document in ``text`` and the position of every key, within the bounds of the
    module docstring. Raises ``yaml.YAMLError`` for text that is not YAML, ``_Refused``
    for a document that the bounds refuse."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    builder = _Builder(file)
    data = None if node is None else builder.build(node, ())
    return data, builder.positions


def _compose(text: str, file: Path) -> tuple[Any, dict[tuple[str, ...], Position]]:
    """Parse YAML keeping the position of every key; a ConfigError located at the problem
    for text that is not YAML or a document the bounds refuse."""
    try:
        return _parse(text, file)
    except _Refused as exc:
        mark = exc.mark
        raise ConfigError(str(exc), file=file, line=mark.line + 1, column=mark.column + 1) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        problem = getattr(exc, "problem", None)
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            problem = (
                f"{exc.reason} (character #x{exc.character:04x})"
                if isinstance(exc.character, int)
                else exc.reason
            )
        problem = problem or " ".join(str(exc).split())
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line, column=column) from exc


def _value(text: str) -> Any:
    """``text`` read as one YAML value (an override, a ``${VAR}`` substitution), within the
    same bounds as the file. Raises ``yaml.YAMLError`` or ``_Refused``."""
    return _parse(text, None)[0]


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
            f"environment variable {name} is not set (used by {loaded.dotted(path)}); "
            f"set it, or write ${{{name}:-default}}",
        )

    loaded.secrets.add(path)
    substituted = _VAR.sub(replace, value)
    if not _VAR.fullmatch(value):
        return substituted
    try:
        return _value(substituted)
    except (yaml.YAMLError, _Refused):  # not a plain YAML value: keep the text (never echo it)
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
        if len(key) > MAX_KEY_CHARS * 4:
            raise ConfigError(
                f"override key of {len(key):,} characters; keys have at most {MAX_KEY_CHARS}",
                file="command line",
            )
        try:
            parsed[tuple(key.split("."))] = _value(value) if value else ""
        except yaml.YAMLError:
            parsed[tuple(key.split("."))] = value
        except _Refused as exc:
            raise ConfigError(f"override of {key}: {exc}", file="command line", key=key) from None
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
    """Read, interpolate, override and validate ``file`` (a missing file is all defaults).

    Every command that reads a stream project's config comes here (a dataset project's:
    :func:`load_dataset_config`); the bounds of the module docstring apply to the file, to
    overrides and to ``${VAR}`` values."""
    text = _read(file)
    data, positions = _compose(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config.yaml must be a mapping of sections", file=file, line=1)
    loaded = LoadedConfig(ProjectConfig(), {}, positions, set(), file, copy.deepcopy(data))
    return _settle(loaded, data, parse_overrides(overrides), env)


def _settle(
    loaded: LoadedConfig,
    data: dict[str, Any],
    overrides: Mapping[tuple[str, ...], Any],
    env: Mapping[str, str] | None,
) -> LoadedConfig:
    """Interpolate ``data`` (in config.yaml's shape), apply ``overrides`` (paths in the same
    shape) and validate it into ``loaded``."""
    for path in overrides:  # an overridden value needs no variable, wherever it sits
        _drop(data, path)
    raw = _interpolate(data, (), loaded, os.environ if env is None else env)
    for path, value in overrides.items():
        _apply_override(raw, path, value)
        for end in range(1, len(path)):
            loaded.positions.setdefault(path[:end], ("command line", None, None))
        loaded.positions[path] = ("command line", None, None)
        loaded.secrets.discard(path)
    loaded.raw = raw
    loaded.config = validate_model(ProjectConfig, raw, loaded, ())
    _check_names(loaded)
    return loaded


DATASET_SECTIONS: Final = ("stages", "pipeline", "source", "sink", "branches")
"""The top-level keys of ``configs/pipeline.yaml`` that are not shared parameters."""


def load_dataset_config(
    configs: Path,
    overrides: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """The config of a dataset-layout project, from its ``configs/`` folder, in the shape of
    config.yaml so that the rest of Conveyor reads it as it reads a stream project's:

    - ``configs/pipeline.yaml``: ``stages:`` (the run order, a list of stage names), the
      optional sections ``pipeline:``, ``source:``, ``sink:`` and ``branches:`` as in
      config.yaml, and every other top-level key a shared parameter (``params:``);
    - ``configs/stages/NAME.yaml``: the parameters of stage NAME (``stages.NAME.params``);
      a file there that names no stage of the list is an error (a misspelt file name
      would otherwise be ignored);
    - ``overrides``: ``NAME.KEY=VALUE`` for a stage's parameter, ``pipeline.KEY=VALUE``
      (and ``source.``, ``sink.``, ``branches.``) for a section, ``stages=[a, b]`` for the
      order, any other ``KEY=VALUE`` for a shared parameter.

    Every key keeps the file, line and column it came from, for the errors of validation.
    """
    main = configs / "pipeline.yaml"
    data, positions = _compose(_read(main), main)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "configs/pipeline.yaml must be a mapping: `stages: [...]` and shared parameters",
            file=main,
            line=1,
        )
    loaded = LoadedConfig(ProjectConfig(), {}, {}, set(), main)
    parsed = parse_overrides(overrides)
    order_override = parsed.pop(("stages",), None)
    order = _order(
        data.get("stages") if order_override is None else order_override,
        positions if order_override is None else {},
        main if order_override is None else "command line",
    )
    loaded.order = order
    loaded.order_overridden = order_override is not None
    for index, _ in enumerate(order):
        loaded.positions[("order", str(index))] = positions.get(
            ("stages", str(index)), ("command line", None, None)
        )
    shape: dict[str, Any] = {}
    for key, value in data.items():
        if key == "stages":
            continue
        key_path: tuple[str, ...] = (key,) if key in DATASET_SECTIONS else ("params", key)
        _put(shape, key_path, value)
    for path, position in positions.items():
        if path[0] == "stages":
            continue
        loaded.positions[path if path[0] in DATASET_SECTIONS else ("params", *path)] = position
    stage_docs = _stage_documents(configs, order, loaded, every=order_override is None)
    for name in order:
        document, where = stage_docs.get(name, ({}, {}))
        shape.setdefault("stages", {})[name] = {"params": document}
        base = ("stages", name, "params")
        loaded.positions[("stages", name)] = loaded.positions[("order", str(order.index(name)))]
        file = loaded.stage_files.get(name)
        loaded.positions[base] = (file, 1, 1) if file else loaded.positions[("stages", name)]
        for path, position in where.items():
            loaded.positions[(*base, *path)] = position
    loaded.written = copy.deepcopy(shape)
    unified: dict[tuple[str, ...], Any] = {}
    for path, value in parsed.items():
        if path[0] == "params" and len(path) > 1:  # params.KEY: a shared parameter too
            path = path[1:]
        elif path[0] not in order and path[0] not in DATASET_SECTIONS and len(path) > 1:
            close = difflib.get_close_matches(path[0], order, n=1)
            if close:
                raise ConfigError(
                    f"override {'.'.join(path)}: {path[0]!r} is no stage; did you mean "
                    f"{close[0]}.{'.'.join(path[1:])}? (stages: {', '.join(order)})",
                    file="command line",
                    key=".".join(path),
                )
        if path[0] in order:
            if len(path) == 1:
                raise ConfigError(
                    f"override {path[0]}={value!r}: {path[0]} is a stage; set one of its "
                    f"parameters with {path[0]}.KEY=VALUE",
                    file="command line",
                    key=path[0],
                )
            unified[("stages", path[0], "params", *path[1:])] = value
        elif path[0] in DATASET_SECTIONS:
            unified[path] = value
        else:
            unified[("params", *path)] = value
    for path in [p for p in unified if p[0] == "params"]:
        for name in order:  # a shared value set on the command line wins over the files
            own = ("stages", name, "params", *path[1:])
            if own not in unified:
                _drop(shape, own)
    return _settle(loaded, shape, unified, env)


def _order(value: Any, positions: Mapping[tuple[str, ...], Position], file: object) -> list[str]:
    """The ``stages:`` list of configs/pipeline.yaml, checked: names, no repeats."""

    def error(path: tuple[str, ...], message: str) -> ConfigError:
        where = positions.get(path) or positions.get(("stages",)) or (file, None, None)
        return ConfigError(message, file=where[0], line=where[1], column=where[2], key="stages")

    if not isinstance(value, list) or not value:
        raise error(
            ("stages",),
            "configs/pipeline.yaml needs `stages:`, the list of stage names in the order they "
            "run, e.g. `stages: [download, preprocess, validate, split, export]` (each is "
            "src/<package>/stages/<name>.py)",
        )
    seen: set[str] = set()
    for index, name in enumerate(value):
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise error(
                ("stages", str(index)),
                f"stages[{index}] {name!r} is not a stage name: a letter or '_' followed by "
                "letters, digits and '_' (the name of its file in stages/, without .py)",
            )
        if name in DATASET_SECTIONS or name == "params":
            raise error(
                ("stages", str(index)),
                f"stages[{index}] {name!r} is the name of a section of configs/pipeline.yaml; "
                "give the stage another name",
            )
        if name in seen:
            raise error(("stages", str(index)), f"stage {name!r} is listed twice in stages:")
        seen.add(name)
    return list(value)


def _stage_documents(
    configs: Path, order: list[str], loaded: LoadedConfig, *, every: bool
) -> dict[str, tuple[dict[str, Any], dict[tuple[str, ...], Position]]]:
    """The parameter files of ``configs/stages/``, by stage; with ``every``, one that names
    no stage of ``order`` is noted in ``loaded.stray_files`` (an error once the stage files
    are known to match the list, see :func:`~conveyor.project.project.stage_files`), else
    left out (the order was overridden to run fewer stages)."""
    folder = configs / "stages"
    found: dict[str, tuple[dict[str, Any], dict[tuple[str, ...], Position]]] = {}
    if not folder.is_dir():
        return found
    for file in sorted(folder.iterdir()):
        if file.suffix not in (".yaml", ".yml") or not file.is_file():
            continue
        name = file.stem
        if name not in order:
            if every:
                loaded.stray_files.append(file)
            continue
        if name in found:
            raise ConfigError(
                f"stage {name!r} has two parameter files ({name}.yaml and {name}.yml); keep one",
                file=file,
            )
        document, positions = _compose(_read(file), file)
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ConfigError(
                f"{file.name} must be a mapping of stage {name!r}'s parameters "
                "(e.g. `input_dir: data/raw`)",
                file=file,
                line=1,
            )
        found[name] = (document, positions)
        loaded.stage_files[name] = file
    return found


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def read_config_document(file: Path) -> Any:
    """The document in ``file`` as written (no overrides, no ``${VAR}`` substitution, not
    validated), read within the bounds of the module docstring: what ``conveyor check``
    looks at without the run's environment. A ConfigError for what the bounds refuse."""
    return _compose(_read(file), file)[0]


def _read(file: Path) -> str:
    """The text of ``file`` ("" when it is missing), refused when over
    :data:`MAX_CONFIG_BYTES` or not UTF-8."""
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror or exc}", file=file) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"is larger than {MAX_CONFIG_BYTES:,} bytes; a config file holds settings, not data",
            file=file,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded); save it as UTF-8",
            file=file,
            line=line,
        ) from None


def _check_names(loaded: LoadedConfig) -> None:
    """Stage and branch names in config.yaml are identifiers of at most 64 characters (as
    stage file names are), each refusal located at its key."""
    config = loaded.config
    named: list[tuple[tuple[str, ...], str, str]] = [
        (("stages", name), name, "stage") for name in config.stages
    ]
    for branch, arms in config.branches.items():
        named.append((("branches", branch), branch, "branch"))
        named.extend((("branches", branch, arm), arm, "branch arm") for arm in arms)
    for where, name, what in named:
        if not _IDENTIFIER.match(name):
            from conveyor.core._paths import shown

            raise loaded.error(
                where,
                f"{what} name {shown(name)} is not a name: use a letter or '_' followed by "
                "letters, digits and '_', at most 64 characters (stage names come from "
                "stage files, NN_name.py)",
            )


def check_paths(loaded: LoadedConfig, root: Path, pipeline_dir: Path | None = None) -> None:
    """Refuse the paths of config.yaml that leave the project folder ``root`` — the
    ``pipeline:`` section's ``dead_letters`` and ``state_dir`` (the checkpoint store and the
    run cache live there) and every stage's ``persist.path`` — resolved with ``..``
    collapsed and symlinks followed; also empty paths, control characters, over-long
    names, and a persisted dataset that would be the project folder, a folder above it, or
    inside the pipeline folder (code). Each refusal is a ConfigError at the key's
    file:line:column (or its override). Allowed outside: ``persist: {path: …,
    allow_outside_project: true}`` for a stage, ``pipeline.allow_outside_project:
    [dead_letters, state_dir]`` for the pipeline's paths. The ``sink:`` and ``source:``
    sections' connectors check their own paths (their ``allow_outside_project`` option)."""
    from conveyor.core._paths import PathRefused, inside_project, shown

    settings = loaded.config.pipeline
    allowed = set(settings.allow_outside_project)

    def check(where: tuple[str, ...], value: str, allow: bool, fix: str) -> Path:
        try:
            return inside_project(root, value, key=".".join(where), allow_outside=allow, fix=fix)
        except PathRefused as exc:
            raise loaded.error(where, str(exc)) from None

    for key in ("dead_letters", "state_dir"):
        value: str = getattr(settings, key)
        if key == "dead_letters" and value.strip().lower() in {"memory", "memory:"}:
            continue
        fix = (
            f"list it in pipeline.allow_outside_project (`allow_outside_project: [{key}]` "
            "in the pipeline: section) to allow this path"
        )
        check(("pipeline", key), value, key in allowed, fix)
    base = root.resolve()
    code = None if pipeline_dir is None else pipeline_dir.resolve()
    for name, section in loaded.config.stages.items():
        persist = section.persist
        if persist is None:
            continue
        where = ("stages", name, "persist", "path")
        target = check(
            where,
            persist.path,
            persist.allow_outside_project,
            "set `allow_outside_project: true` in the persist: mapping to allow this path",
        )
        dotted = ".".join(where)
        if target == base or target in base.parents:
            raise loaded.error(
                where,
                f"{dotted} {shown(persist.path)} is "
                + ("the project folder itself" if target == base else "a folder above the project")
                + f"; a dataset replaces its folder: use a folder such as data/{name}",
            )
        if code is not None and (target == code or target.is_relative_to(code)):
            raise loaded.error(
                where,
                f"{dotted} {shown(persist.path)} lies inside the pipeline folder (code); use "
                f"a folder such as data/{name}",
            )


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
    from conveyor.core._imports import OptionError
    from conveyor.core._paths import PathRefused

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
    except (PathRefused, OptionError) as exc:  # located at its key (source.path …)
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
        dotted = loaded.dotted(path)
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
            parent = loaded.dotted(path[:-1]) or "the top level"
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
