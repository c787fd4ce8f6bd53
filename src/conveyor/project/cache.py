"""The run cache: skip a persisted stage whose code, config and input are unchanged.

A stage's :class:`StageFingerprint` is three content hashes:

- ``code_hash``: the stage file's bytes, plus every ``.py`` / ``.json`` / ``.avsc`` file
  under the pipeline's ``shared/`` and ``contracts/`` folders (what a stage may import);
- ``config_hash``: the canonical JSON of the stage's config section, keyed with the
  project's secret (HMAC-SHA256 with :func:`project_key`, ADR 0008): the file never holds
  a plain hash of parameters, so a secret among them cannot be confirmed by hashing
  guesses;
- ``input_hash``: the :func:`~conveyor.project.datasets.dataset_fingerprint` of the
  dataset the stage reads, or ``""`` for a source.

:class:`RunCache` keeps the fingerprint each stage last ran with in ``state_dir/cache.json``;
a stage is *fresh* (and may be skipped) when its fingerprint is the recorded one and its
persisted output is still there with a valid manifest.

>>> import tempfile
>>> from pathlib import Path
>>> from conveyor.project.datasets import DatasetWriter
>>> with tempfile.TemporaryDirectory() as tmp:
...     out = Path(tmp) / "data" / "raw"
...     with DatasetWriter(out, "jsonl") as sink:
...         sink([{"n": 1}])
...     cache = RunCache(Path(tmp) / ".conveyor")
...     fp = StageFingerprint(code_hash="c", config_hash=config_hash({"size": 8}), input_hash="")
...     before = cache.is_fresh("source", fp, out)
...     cache.record("source", fp)
...     after = cache.is_fresh("source", fp, out)
...     changed = cache.stale_reason("source", dataclasses.replace(fp, code_hash="d"), out)
>>> before, after, changed
(False, True, 'code changed')
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Final, Protocol

from conveyor.project.datasets import DatasetError, dataset_fingerprint, load_manifest
from conveyor.project.discovery import layout_of

__all__ = [
    "CACHE_FILE",
    "CODE_SUFFIXES",
    "KEY_FILE",
    "RUNS_FILE",
    "RunCache",
    "RunLedger",
    "StageFingerprint",
    "canonical_json",
    "code_hash",
    "config_hash",
    "input_hash",
    "keyed_digest",
    "project_key",
]

CACHE_FILE: Final = "cache.json"
"""The file in the state directory that holds the recorded fingerprints."""

KEY_FILE: Final = "fingerprint.key"
"""The file in the state directory that holds the project's secret fingerprint key."""
_KEY_BYTES: Final = 32

CODE_SUFFIXES: Final = frozenset({".py", ".json", ".avsc", ".proto"})
"""Files under ``shared/`` and ``contracts/`` that count as a stage's code."""

CODE_FOLDERS: Final = ("shared", "contracts")
"""What stages may import in the stream layout (the dataset layout's: its ``Layout``)."""
_CACHE_VERSION: Final = 1
_FIELDS: Final = ("code_hash", "config_hash", "input_hash")

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the key


def project_key(state_dir: Path | str) -> bytes:
    """The project's secret key for fingerprints of config: 32 random bytes in
    ``state_dir/fingerprint.key``, made on first use with permissions 0600 (owner only;
    wider permissions found on it are narrowed). Losing the file costs one re-run of the
    persisted stages (their fingerprints no longer match), nothing else.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     key = project_key(tmp)
    ...     again = project_key(tmp)
    ...     mode = oct((Path(tmp) / KEY_FILE).stat().st_mode & 0o777)
    >>> len(key), key == again, mode
    (32, True, '0o600')
    """
    path = Path(state_dir) / KEY_FILE
    for _ in range(3):
        try:
            with path.open("rb") as file:
                if stat.S_IMODE(os.fstat(file.fileno()).st_mode) & 0o077:
                    os.chmod(path, 0o600)
                key = file.read(_KEY_BYTES + 1)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            _new_key(path)
            continue
        if len(key) == _KEY_BYTES:
            return key
        logger.warning("replacing the damaged fingerprint key %s", path)
        _new_key(path, replace=True)
    raise OSError(f"cannot make the fingerprint key {path}")  # pragma: no cover - a race


def _new_key(path: Path, *, replace: bool = False) -> None:
    """Write a new random key at ``path`` (0600); another process's new key wins a race."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_bytes(_KEY_BYTES))
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if another process made one meanwhile
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not path.exists():
                    os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Digest(Protocol):
    """What :func:`keyed_digest` returns: a running hash."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def keyed_digest(key: bytes | None, text: str | bytes) -> Digest:
    """A running SHA-256 digest of ``text``: HMAC-SHA256 keyed with ``key`` (the project's
    secret), or plain SHA-256 without one. More may be fed with ``update``."""
    data = text.encode() if isinstance(text, str) else text
    return hmac.new(key, data, hashlib.sha256) if key is not None else hashlib.sha256(data)


# --------------------------------------------------------------------------- hashes


def _update_framed(digest: Any, label: str, data: bytes) -> None:
    """Feed ``label`` and ``data`` length-prefixed, so no two inputs run together."""
    encoded = label.encode()
    digest.update(f"{len(encoded)}:".encode() + encoded + f"{len(data)}:".encode())
    digest.update(data)


def _code_files(pipeline_dir: Path) -> Iterable[tuple[str, Path]]:
    layout = layout_of(pipeline_dir)
    folders: tuple[str, ...] = layout.code_parts
    if layout.kind == "dataset":
        for name in layout.stage_helpers:
            helper = pipeline_dir / "stages" / f"{name}.py"
            if helper.is_file():
                yield helper.relative_to(pipeline_dir).as_posix(), helper
    for folder in folders:
        root = pipeline_dir / folder
        if not root.is_dir():
            continue
        found = [
            file
            for file in root.rglob("*")
            if file.suffix in CODE_SUFFIXES
            and file.is_file()
            and "__pycache__" not in file.relative_to(root).parts
        ]
        for file in sorted(found, key=lambda f: f.relative_to(pipeline_dir).as_posix()):
            yield file.relative_to(pipeline_dir).as_posix(), file


def code_hash(stage_file: Path | str, pipeline_dir: Path | str | None = None) -> str:
    """sha256 of the stage file's bytes and of the code the stage may import.

    ``pipeline_dir`` is the pipeline folder holding ``shared/`` and ``contracts/``; by
    default the parent of the stage file's folder (``pipeline/stages/10_x.py`` →
    ``pipeline``). Every ``.py`` / ``.json`` / ``.avsc`` file below those two folders
    counts, by its relative path and bytes, so adding, removing, renaming or editing one
    changes the hash. The stage file counts by its bytes only: renumbering it does not.
    """
    stage_file = Path(stage_file)
    root = Path(pipeline_dir) if pipeline_dir is not None else stage_file.parent.parent
    digest = hashlib.sha256(b"conveyor-code-v1\n")
    _update_framed(digest, "<stage>", stage_file.read_bytes())
    for relative, file in _code_files(root):
        _update_framed(digest, relative, file.read_bytes())
    return digest.hexdigest()


def _json_default(value: object) -> object:
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # a Pydantic model
        return model_dump(mode="json")
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=canonical_json)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):  # pragma: no cover - json encodes tuples as lists itself
        return list(value)
    raise TypeError(
        f"config value of type {type(value).__name__} cannot be hashed; "
        "use JSON-able values (str, numbers, bools, None, lists, dicts)"
    )


def canonical_json(value: object) -> str:
    """``value`` as JSON with sorted keys and no whitespace: equal configs, equal text.

    >>> canonical_json({"b": [1, 2], "a": {"y": None, "x": 1.5}})
    '{"a":{"x":1.5,"y":null},"b":[1,2]}'
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=True,
        default=_json_default,
    )


def config_hash(config: object, key: bytes | None = None) -> str:
    """sha256 of the canonical JSON of a stage's config section (a mapping, a Pydantic
    model or ``None``); the order of keys does not matter. With ``key`` (the project's
    :func:`project_key`), HMAC-SHA256: without the key, the hash confirms no guess.

    >>> config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    True
    >>> config_hash({"a": 1}) == config_hash({"a": 2})
    False
    >>> config_hash({"a": 1}, key=b"k" * 32) == config_hash({"a": 1})
    False
    """
    return keyed_digest(key, canonical_json(config)).hexdigest()


def input_hash(input_path: Path | str | None) -> str:
    """The fingerprint of the input dataset, or ``""`` for a stage without one (a source).

    Raises :class:`FileNotFoundError` naming the path when the dataset is not there.
    """
    return "" if input_path is None else dataset_fingerprint(input_path)


@dataclasses.dataclass(frozen=True)
class StageFingerprint:
    """What a stage's output depends on: its code, its config and its input's content."""

    code_hash: str
    config_hash: str
    input_hash: str

    @classmethod
    def compute(
        cls,
        stage_file: Path | str,
        config: object,
        input_path: Path | str | None,
        *,
        pipeline_dir: Path | str | None = None,
        key: bytes | None = None,
    ) -> StageFingerprint:
        """Fingerprint a stage from its file, its config section and its input dataset
        (``None`` for a source); see :func:`code_hash`, :func:`config_hash` (keyed with
        ``key``, the project's secret), :func:`input_hash`.
        """
        return cls(
            code_hash=code_hash(stage_file, pipeline_dir),
            config_hash=config_hash(config, key),
            input_hash=input_hash(input_path),
        )

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> StageFingerprint | None:
        """The fingerprint stored in ``data``, or ``None`` if ``data`` is not one."""
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in _FIELDS):
            return None
        return cls(**{k: data[k] for k in _FIELDS})


# --------------------------------------------------------------------------- the cache


class RunCache:
    """The fingerprints each persisted stage last ran with, in ``state_dir/cache.json``.

    Every :meth:`record` rewrites the file atomically (temporary file and rename), merging
    with what is on disk. An unreadable cache file is treated as empty, with a warning in
    the log: the cache only ever saves work, it never decides a result.
    """

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / CACHE_FILE

    @property
    def key(self) -> bytes:
        """The project's secret fingerprint key (:func:`project_key`), made on first use."""
        return project_key(self.state_dir)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable run cache %s: %s", self.path, exc)
            return {}
        if (
            not isinstance(data, dict)
            or data.get("version") != _CACHE_VERSION
            or not isinstance(data.get("stages"), dict)
        ):
            logger.warning("ignoring run cache %s in an unknown layout", self.path)
            return {}
        return {k: v for k, v in data["stages"].items() if isinstance(v, dict)}

    def _save(self, stages: Mapping[str, Mapping[str, Any]]) -> None:
        payload = {"version": _CACHE_VERSION, "stages": dict(sorted(stages.items()))}
        _write_json(self.path, payload)

    def get(self, stage: str) -> StageFingerprint | None:
        """The fingerprint recorded for ``stage``, or ``None``."""
        return StageFingerprint.from_json(self._load().get(stage))

    def record(
        self,
        stage: str,
        fingerprint: StageFingerprint,
        output_path: Path | str | None = None,
    ) -> None:
        """Record that ``stage`` ran with ``fingerprint``; call it after its output was
        committed. With ``output_path``, the output dataset's fingerprint is kept too, and
        :meth:`is_fresh` then also requires the output to be that same dataset.
        """
        stages = self._load()
        entry: dict[str, Any] = fingerprint.to_json()
        if output_path is not None:
            entry["output_hash"] = dataset_fingerprint(output_path)
        stages[stage] = entry
        self._save(stages)

    def forget(self, stage: str) -> None:
        """Drop what is recorded for ``stage`` (its next run is never skipped)."""
        stages = self._load()
        if stages.pop(stage, None) is not None:
            self._save(stages)

    def clear(self) -> None:
        """Drop every recorded fingerprint."""
        self.path.unlink(missing_ok=True)

    def stale_reason(
        self, stage: str, fingerprint: StageFingerprint, output_path: Path | str
    ) -> str | None:
        """Why ``stage`` must run, or ``None`` when it may be skipped.

        The reasons: ``"never run"``, ``"code changed"``, ``"config changed"``,
        ``"input changed"`` (joined with ``", "`` when several), ``"output missing"``,
        ``"output invalid"``, ``"output changed"``.
        """
        entry = self._load().get(stage)
        recorded = StageFingerprint.from_json(entry)
        if recorded is None or entry is None:
            return "never run"
        changed = [
            f"{name.removesuffix('_hash')} changed"
            for name in _FIELDS
            if getattr(recorded, name) != getattr(fingerprint, name)
        ]
        if changed:
            return ", ".join(changed)
        try:
            load_manifest(output_path)
        except FileNotFoundError:
            return "output missing"
        except DatasetError:
            return "output invalid"
        expected_output = entry.get("output_hash")
        if isinstance(expected_output, str) and dataset_fingerprint(output_path) != (
            expected_output
        ):
            return "output changed"
        return None

    def is_fresh(self, stage: str, fingerprint: StageFingerprint, output_path: Path | str) -> bool:
        """``True`` when ``stage`` may be skipped: it was recorded with this same fingerprint
        and its output dataset exists with a valid manifest (see :meth:`stale_reason`).
        """
        return self.stale_reason(stage, fingerprint, output_path) is None

    def __repr__(self) -> str:
        return f"<RunCache {str(self.path)!r}>"


RUNS_FILE: Final = "runs.json"
"""The file in the state directory that says which source each run read."""

_RUNS_KEPT: Final = 500


class RunLedger:
    """For each run, the fingerprint of the Source content it read (``state_dir/runs.json``,
    the last 500 runs): which earlier runs a run processed the same records as.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ledger = RunLedger(tmp)
    ...     ledger.record("r1", "source-a"); ledger.record("r2", "source-a")
    ...     ledger.record("r3", "source-b")
    ...     ledger.runs_of("source-a"), ledger.get("r3")
    (['r1', 'r2'], 'source-b')
    """

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / RUNS_FILE

    def _load(self) -> dict[str, str]:
        return self._load_all()[0]

    def _load_all(self) -> tuple[dict[str, str], dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable run ledger %s: %s", self.path, exc)
            return {}, {}
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, dict):
            return {}, {}
        inputs = data.get("inputs")
        kept = {k: v for k, v in runs.items() if isinstance(k, str) and isinstance(v, str)}
        files = {k: v for k, v in inputs.items() if k in kept} if isinstance(inputs, dict) else {}
        return kept, files

    def inputs_of(self, run_id: str) -> dict[str, Any] | None:
        """What ``run_id`` read file by file (``{"code": …, "files": {name: [size,
        digest]}}``), when its Source grows by appending; else ``None``."""
        found = self._load_all()[1].get(run_id)
        return found if isinstance(found, dict) else None

    def all_inputs(self) -> dict[str, dict[str, Any]]:
        """:meth:`inputs_of` of every run that has them, oldest first."""
        return {k: v for k, v in self._load_all()[1].items() if isinstance(v, dict)}

    def get(self, run_id: str) -> str | None:
        """The source fingerprint ``run_id`` read, if known."""
        return self._load().get(run_id)

    def runs_of(self, source: str) -> list[str]:
        """The runs that read the source with this fingerprint, oldest first."""
        return [run for run, seen in self._load().items() if seen == source]

    def record(self, run_id: str, source: str, inputs: Mapping[str, Any] | None = None) -> None:
        """Remember that ``run_id`` read the source with fingerprint ``source`` (and, for a
        Source that grows by appending, ``inputs``: what it read file by file)."""
        runs, files = self._load_all()
        runs.pop(run_id, None)
        runs[run_id] = source
        if inputs is not None:
            files[run_id] = dict(inputs)
        kept = dict(list(runs.items())[-_RUNS_KEPT:])
        payload: dict[str, Any] = {"version": 1, "runs": kept}
        if any(run in kept for run in files):
            payload["inputs"] = {run: v for run, v in files.items() if run in kept}
        _write_json(self.path, payload)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``payload`` as JSON atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(payload, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
