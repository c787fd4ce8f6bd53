"""HTTP: the ``http`` source (download a file, then read it) and :class:`HttpClient`, an
async client for stages that look records up over HTTP.

Both use `httpx <https://www.python-httpx.org>`_ (``pip install 'conveyor[http]'``),
imported when a download starts or a client opens. Neither sends anything but the requests
you ask for (no telemetry; proxies and ``.netrc`` come from the environment, as in httpx).

:class:`HttpSource` (connector ``http``) downloads ``url`` to ``path`` inside the project:

- into ``path + ".part"`` first; a retry (or a later run) continues it with
  ``Range: bytes=N-`` when the server answers ``206``, starts over when it answers ``200``;
  the complete file is fsynced and renamed into place atomically;
- ``sha256`` pins the content: a present file with that sha256 is not downloaded again
  (the source is then ``deterministic``), a download with another one is deleted and
  refused with a :class:`DownloadError` naming both;
- connect errors, timeouts, ``429`` and ``5xx`` are retried ``retries`` times with
  exponential back-off and jitter, honouring ``Retry-After``; past them the run stops with
  a :class:`~conveyor.errors.SourceUnavailableError`;
- ``max_bytes`` (1 GiB by default; ``None`` lifts it) is checked against the announced
  length before a byte is written and again while streaming, so an endless body stops
  there with a :class:`DownloadError` and the partial file removed;
- it is an async iterable on :class:`httpx.AsyncClient` streaming: a SIGTERM (the run stops
  reading, i.e. cancels its reader) closes the stream at once and keeps the ``.part`` file
  for a later ``Range`` resume.

Then it yields the downloaded file's records, read by the ``csv``, ``jsonl`` or
``parquet`` source (``format``, with that source's options under ``read``), whose offsets
it passes on, or with ``format: none`` one record ``{"path", "bytes", "sha256", "url"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import os
import random
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from conveyor._version import __version__
from conveyor.core._durable import fsync_dir
from conveyor.core._paths import inside_project
from conveyor.core.source import Source
from conveyor.errors import ConveyorError, PipelineDefinitionError, SourceUnavailableError

if TYPE_CHECKING:
    import httpx

    from conveyor.runtime.limiter import RateLimiter

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DownloadError",
    "HttpClient",
    "HttpError",
    "HttpSource",
    "parse_retry_after",
]

DEFAULT_MAX_BYTES = 1 << 30
"""The default ``max_bytes`` of a download: 1 GiB."""

Format = Literal["none", "csv", "jsonl", "parquet"]

_USER_AGENT = f"conveyor/{__version__}"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$")


# -- errors ----------------------------------------------------------------------------------


class DownloadError(ConveyorError, ValueError):
    """A download's content is not what was asked for: its sha256 differs from the pinned
    one, or it is larger than ``max_bytes``. The file is deleted; retrying cannot help.

    Attributes:
        url: the URL downloaded.
    """

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.url, self.args[0]))


class HttpError(ConveyorError, OSError):
    """A request of :class:`HttpClient` failed for good: an error status (``4xx`` other
    than ``429`` at once, ``429``/``5xx`` after the retries) or a transport error (connect,
    timeout, dropped connection) after the retries.

    It is ``retryable = False`` (the client has retried already), so a stage's retry policy
    does not retry it again: the record becomes a dead letter like any failure.

    Attributes:
        method, url: the request.
        status: the last HTTP status, or ``None`` after a transport error.
        attempts: how many requests were sent.
    """

    retryable = False

    def __init__(self, method: str, url: str, status: int | None, attempts: int, detail: str):
        self.method = method
        self.url = url
        self.status = status
        self.attempts = attempts
        tries = f" after {attempts} attempt(s)" if attempts > 1 else ""
        super().__init__(f"{method} {url} failed{tries}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_http_error, (self.method, self.url, self.status, self.attempts, str(self)))


def _rebuild_http_error(
    method: str, url: str, status: int | None, attempts: int, message: str
) -> HttpError:
    error = HttpError.__new__(HttpError)
    Exception.__init__(error, message)
    error.method, error.url, error.status, error.attempts = method, url, status, attempts
    return error


class _Transient(Exception):
    """One attempt failed in a way a later attempt may not (internal)."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(detail)


# -- helpers ---------------------------------------------------------------------------------


def _require_httpx(needs: str) -> None:
    """Import httpx, or an ImportError saying that ``needs`` it and how to install it."""
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{needs} needs httpx, which is not installed: pip install 'conveyor[http]'"
        ) from exc


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date), or
    ``None`` when there is none or it cannot be read; never negative.

    >>> parse_retry_after("2"), parse_retry_after(None), parse_retry_after("soon")
    (2.0, None, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT",
    ...                   now=datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC))
    30.0
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _retry_delay(attempt: int, backoff: float, cap: float, retry_after: float | None) -> float:
    """Seconds before retry ``attempt + 1``: what ``Retry-After`` asked for, else
    ``backoff * 2**attempt`` with jitter (between half and all of it); at most ``cap``.

    >>> _retry_delay(0, 1.0, 60.0, 5.0), _retry_delay(3, 0.0, 60.0, None)
    (5.0, 0.0)
    >>> 2.0 <= _retry_delay(2, 1.0, 60.0, None) <= 4.0
    True
    """
    if retry_after is not None:
        return min(retry_after, cap)
    base = min(cap, backoff * 2.0**attempt)
    return base * random.uniform(0.5, 1.0)


def _transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _timeout(timeout: float, connect_timeout: float | None) -> httpx.Timeout:
    import httpx

    return httpx.Timeout(timeout, connect=connect_timeout if connect_timeout else timeout)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_url(url: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url, re.IGNORECASE):
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    return url


# -- the http source -------------------------------------------------------------------------


class HttpSource(Source):
    """Download ``url`` to ``path``, then yield the records of the file (see the module
    docstring): with ``format="none"`` one record ``{"path", "bytes", "sha256", "url"}``;
    with ``"csv"``, ``"jsonl"`` or ``"parquet"`` the records of that source reading
    ``path``, built with the options ``read`` (in code: keyword arguments of its class,
    e.g. ``read={"model": Penguin}``; in config.yaml: the keys of its ``source:`` section).

    In code: ``Pipeline(...).run(HttpSource(url, "data/raw/x.csv", format="csv",
    sha256=...), sink)``; a relative ``path`` is relative to the working directory. In
    config.yaml::

        source:
          connector: http
          url: https://example.org/penguins.csv
          path: data/raw/penguins.csv
          sha256: 3a5f...            # optional: pins the content
          format: csv
          read: {delimiter: ";"}     # the csv source's options (its path is `path`)

    ``offset`` is the reading source's (a resume seeks it after the download; a resumed
    run reads the file it downloaded before, unchanged, when it is still there); with
    ``format="none"`` it is 0 before the record and 1 after it.

    >>> source = HttpSource("https://example.org/d.csv", "/tmp/d.csv", sha256="ab" * 32)
    >>> source.identity == "http:https://example.org/d.csv sha256:" + "ab" * 32
    True
    >>> source.deterministic, HttpSource("https://example.org/d", "/tmp/d").deterministic
    (True, False)
    >>> HttpSource("ftp://example.org/d.csv", "/tmp/d.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.errors.PipelineDefinitionError: HttpSource: url must be an http:// or https:// URL...
    """

    rejects: ClassVar[bool] = True  # the csv/jsonl/parquet source it delegates to may reject

    class Config(BaseModel):
        """The options of an ``http`` source (``source: {connector: http, url: ..., path:
        ...}``)."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        url: str = Field(description="The http:// or https:// URL to download.")
        path: str = Field(
            description="Where the download is kept (inside the project; relative to its "
            "root); it is written to PATH.part first and renamed when complete."
        )
        format: Format = Field(
            default="none",
            description="How the downloaded file is read: csv, jsonl or parquet (by that "
            "source, with the options under `read`), or none (one record: path, bytes, "
            "sha256, url).",
        )
        read: dict[str, Any] = Field(
            default_factory=dict,
            description="Options of the csv/jsonl/parquet source that reads the file (its "
            "`path` is this source's path), e.g. {delimiter: ';'}.",
        )
        sha256: str | None = Field(
            default=None,
            description="The expected sha256 (hex) of the file: a download with another one "
            "is deleted and refused; a present file with it is not downloaded again.",
        )
        retries: int = Field(
            default=3,
            ge=0,
            description="Retries of connect errors, timeouts, 429 and 5xx answers "
            "(exponential back-off with jitter; Retry-After honoured).",
        )
        timeout: float = Field(
            default=30.0,
            gt=0,
            description="Seconds to wait for the connection and for each read of the body.",
        )
        connect_timeout: float | None = Field(
            default=None, gt=0, description="Seconds to wait for a connection (default: timeout)."
        )
        backoff: float = Field(
            default=0.5, ge=0, description="Seconds before the first retry; doubled each retry."
        )
        max_backoff: float = Field(
            default=30.0,
            ge=0,
            description="The longest wait before a retry, Retry-After included (seconds).",
        )
        max_bytes: int | None = Field(
            default=DEFAULT_MAX_BYTES,
            gt=0,
            description="The largest file accepted, in bytes (1 GiB by default); null lifts "
            "the cap. Checked against Content-Length and while streaming.",
        )
        headers: dict[str, str] = Field(
            default_factory=dict,
            description='Extra request headers, e.g. {Authorization: "Bearer ${TOKEN}"}.',
        )
        allow_outside_project: bool = Field(
            default=False, description="Allow a `path` outside the project folder."
        )

        @field_validator("url")
        @classmethod
        def _url(cls, value: str) -> str:
            return _check_url(value)

        @field_validator("sha256")
        @classmethod
        def _sha(cls, value: str | None) -> str | None:
            if value is not None and not _SHA256.match(value):
                raise ValueError("sha256 must be 64 hexadecimal digits (or null)")
            return None if value is None else value.lower()

        @field_validator("read")
        @classmethod
        def _read_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
            if "format" in info.data:  # (else `format` itself is wrong, and said so)
                _validate_read(info.data["format"], value)
            return value

    def __init__(
        self,
        url: str,
        path: str | os.PathLike[str],
        *,
        format: Format = "none",
        read: Mapping[str, Any] | None = None,
        sha256: str | None = None,
        retries: int = 3,
        timeout: float = 30.0,
        connect_timeout: float | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        headers: Mapping[str, str] | None = None,
        name: str = "source",
    ) -> None:
        try:
            _check_url(url)
            if sha256 is not None and not _SHA256.match(sha256):
                raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
            if format not in ("none", "csv", "jsonl", "parquet"):
                raise ValueError(f"format must be none, csv, jsonl or parquet, got {format!r}")
            if format == "none" and read:
                raise ValueError("`read` options need a format (csv, jsonl or parquet)")
            if retries < 0 or timeout <= 0 or backoff < 0 or max_backoff < 0:
                raise ValueError("retries and backoff must be >= 0, timeout > 0")
            if max_bytes is not None and max_bytes <= 0:
                raise ValueError(f"max_bytes must be > 0 or None, got {max_bytes}")
        except ValueError as exc:
            raise PipelineDefinitionError(f"HttpSource: {exc}") from None
        self.url = url
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.format: Format = format
        self.read_options: dict[str, Any] = dict(read or {})
        self.sha256 = sha256.lower() if sha256 else None
        self.retries = retries
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_bytes = max_bytes
        self.headers = dict(headers or {})
        self.name = name
        self.identity = f"http:{url}" + (f" sha256:{self.sha256}" if self.sha256 else "")
        if format != "none":
            self.identity += f" format:{format}"
        # Pinned by its checksum, the records follow from the options alone. `deterministic`
        # is a class attribute of Source; this instance's value depends on `sha256`.
        vars(self)["deterministic"] = self.sha256 is not None
        self._root: Path | None = None  # set by from_config: `read` holds Config keys then
        self._seek: Any = None
        self._inner: Any = None
        self._done = 0  # format "none": records yielded (0 or 1)
        self.requests = 0  # HTTP requests sent by this source (for tests and logs)

    @classmethod
    def from_config(cls, config: HttpSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes, ``path`` checked to be inside the
        project (key ``source.path``) and resolved against ``root``.

        >>> import tempfile; root = Path(tempfile.mkdtemp())
        >>> config = HttpSource.Config(url="http://127.0.0.1:1/x", path="data/x.bin")
        >>> HttpSource.from_config(config, root).path == root.resolve() / "data/x.bin"
        True
        >>> HttpSource.Config(url="http://h/x", path="x", read={"a": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for Config
        ...
        """
        path = inside_project(
            root, config.path, key="source.path", allow_outside=config.allow_outside_project
        )
        source = cls(
            config.url,
            path,
            format=config.format,
            read=config.read,
            sha256=config.sha256,
            retries=config.retries,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            backoff=config.backoff,
            max_backoff=config.max_backoff,
            max_bytes=config.max_bytes,
            headers=config.headers,
        )
        source._root = root
        return source

    def __repr__(self) -> str:
        return f"<HttpSource {self.url} -> {self.path}>"

    # -- Source -------------------------------------------------------------------------------

    def read(self) -> Self:
        """The source itself: an async iterable (see :meth:`__aiter__`)."""
        return self

    def inputs(self) -> list[str]:
        """Nothing: the download is made by this source, not read from the project (a
        ``sha256`` pin makes the source ``deterministic`` instead)."""
        return []

    @property
    def offset(self) -> Any:
        """Where the next record comes from: the reading source's offset once the file is
        downloaded (before: the offset given to :meth:`seek`); ``format="none"``: 0 or 1."""
        if self.format == "none":
            return self._done
        if self._inner is not None:
            return self._inner.offset
        return self._seek

    def seek(self, offset: Any) -> None:
        """Start at ``offset`` (a value :attr:`offset` gave), after the download."""
        if self.format == "none":
            self._done = int(offset or 0)
        else:
            self._seek = offset

    def close(self) -> None:
        """Close the reading source."""
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._records()

    async def _records(self) -> AsyncIterator[Any]:
        if self.format == "none":
            if self._done >= 1:
                return
            record = await self.fetch()
            self._done = 1
            yield record
            return
        # A resume reads the file its offsets count in: one without a pin is not fetched
        # again when it is there (a pinned one is verified, and fetched only if it changed).
        if self.sha256 is not None or self._seek is None or not self.path.is_file():
            await self.fetch()
        inner = self._open_inner()
        if self._seek is not None:
            inner.seek(self._seek)
        self._inner = inner
        if isinstance(inner, AsyncIterable):
            async for item in inner:
                yield item
        else:
            for item in cast(Iterable[Any], inner):
                yield item

    def _open_inner(self) -> Any:
        """The csv/jsonl/parquet source that reads the downloaded file."""
        from conveyor.connectors import connector

        cls = connector("source", self.format)
        if self._root is None:
            return cls(self.path, **self.read_options)
        options = {**self.read_options, "path": str(self.path)}
        if "allow_outside_project" in cls.Config.model_fields:
            options["allow_outside_project"] = True  # this source's path was checked
        return cls.from_config(cls.Config.model_validate(options), self._root)

    def _shown_path(self) -> str:
        if self._root is not None:
            with contextlib.suppress(ValueError):
                return self.path.relative_to(self._root.resolve()).as_posix()
        return str(self.path)

    # -- the download -------------------------------------------------------------------------

    async def fetch(self) -> dict[str, Any]:
        """Make ``path`` hold the file at ``url`` (see the module docstring) and return the
        record of ``format="none"``: ``{"path", "bytes", "sha256", "url"}``."""
        if self.sha256 is not None and self.path.is_file():
            present = await asyncio.to_thread(_sha256_of, self.path)
            if present == self.sha256:
                return self._record(present)
        _require_httpx("the http source")
        import httpx

        self.path.parent.mkdir(parents=True, exist_ok=True)
        headers = {"User-Agent": _USER_AGENT, **self.headers}
        async with httpx.AsyncClient(
            timeout=_timeout(self.timeout, self.connect_timeout),
            follow_redirects=True,
            headers=headers,
        ) as client:
            attempt = 0
            while True:
                try:
                    await self._transfer(client)
                    break
                except _Transient as exc:
                    if attempt >= self.retries:
                        raise SourceUnavailableError(
                            self.name,
                            f"download of {self.url} failed after {attempt + 1} attempt(s): "
                            f"{exc.detail}; the partial download {self.part.name} is kept, "
                            "so running again resumes it",
                        ) from exc.__cause__
                    delay = _retry_delay(attempt, self.backoff, self.max_backoff, exc.retry_after)
                    await asyncio.sleep(delay)
                    attempt += 1
        digest = await asyncio.to_thread(_sha256_of, self.part)
        if self.sha256 is not None and digest != self.sha256:
            self.part.unlink(missing_ok=True)
            raise DownloadError(
                self.url,
                f"sha256 mismatch for {self.url}: expected {self.sha256}, got {digest}; the "
                "download was deleted (the file changed or is corrupt: check the url, or "
                "set sha256 to the new value, or to null to skip the check)",
            )
        await asyncio.to_thread(self._commit)
        return self._record(digest)

    def _commit(self) -> None:
        """fsync ``path.part``, rename it to ``path`` and fsync the folder."""
        _fsync_file(self.part)
        os.replace(self.part, self.path)
        fsync_dir(self.path.parent)

    def _record(self, digest: str) -> dict[str, Any]:
        return {
            "path": self._shown_path(),
            "bytes": self.path.stat().st_size,
            "sha256": digest,
            "url": self.url,
        }

    def _too_large(self, size: int, announced: bool) -> DownloadError:
        self.part.unlink(missing_ok=True)
        what = f"is {size} bytes" if announced else f"went past {self.max_bytes} bytes"
        return DownloadError(
            self.url,
            f"download of {self.url} {what}, over max_bytes={self.max_bytes}; the partial "
            "file was removed (raise max_bytes, or set it to null to lift the cap)",
        )

    async def _transfer(self, client: httpx.AsyncClient) -> None:
        """One request: continue ``path.part`` from its length when the server answers
        ``206``, write it afresh on ``200``. Raises :class:`_Transient` for what a retry may
        fix."""
        import httpx

        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # Range counts the bytes as stored
        if have:
            headers["Range"] = f"bytes={have}-"
        self.requests += 1
        try:
            async with client.stream("GET", self.url, headers=headers) as response:
                await self._receive(response, have)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc

    async def _receive(self, response: httpx.Response, have: int) -> None:
        status = response.status_code
        reason = f"HTTP {status} {response.reason_phrase}".rstrip()
        if status == 416 and have:  # nothing after `have`: complete, or longer than the file
            match = _UNSATISFIED_RANGE.match(response.headers.get("content-range", ""))
            if match and int(match.group(1)) == have:
                return
            self.part.unlink(missing_ok=True)
            raise _Transient(f"{reason} for bytes={have}- (the partial download was dropped)")
        if _transient_status(status):
            raise _Transient(reason, parse_retry_after(response.headers.get("retry-after")))
        if status not in (200, 206):
            raise SourceUnavailableError(
                self.name,
                f"{self.url} answered {reason}; check the url (and the headers it needs)",
            )
        length = response.headers.get("content-length")
        expected = int(length) if length and length.isdigit() else None
        start, total = 0, expected
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != have:
                self.part.unlink(missing_ok=True)  # a range we did not ask for: start over
                raise _Transient(
                    f"the server sent the range {response.headers.get('content-range')!r} "
                    f"for bytes={have}-; starting over"
                )
            start = have
            total = int(match.group(3)) if match.group(3) != "*" else None
            if total is None and expected is not None:
                total = have + expected
        limit = self.max_bytes
        if limit is not None and total is not None and total > limit:
            raise self._too_large(total, announced=True)
        written = start
        with self.part.open("ab" if start else "wb") as out:
            async for chunk in response.aiter_raw():  # as received: a drop loses nothing
                written += len(chunk)
                if limit is not None and written > limit:
                    out.close()
                    raise self._too_large(written, announced=False)
                out.write(chunk)
        if expected is not None and written - start < expected:
            raise _Transient(f"the body ended after {written - start} of {expected} bytes")


def _validate_read(format: str, read: Mapping[str, Any]) -> None:
    """Check ``read`` against the ``Config`` of the source of ``format`` (a ValueError
    naming each wrong key as ``read.KEY``)."""
    if format == "none":
        if read:
            raise ValueError(
                "`read` holds the options of the csv, jsonl or parquet source that reads the "
                "download; set `format` to one of them (or drop `read`)"
            )
        return
    if "path" in read:
        raise ValueError("read.path: the file read is the http source's `path`; drop read.path")
    from conveyor.connectors import connector

    cls = connector("source", format)
    try:
        cls.Config.model_validate({**read, "path": "download"})
    except ValidationError as exc:
        problems = "; ".join(
            f"read.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"options of the {format} source: {problems}") from None


# -- the client for stages -------------------------------------------------------------------


@dataclass
class _Host:
    """What the client keeps per host: its concurrency slots, its rate limit, and until
    when a ``Retry-After`` of it holds every request back."""

    slots: asyncio.Semaphore
    limiter: RateLimiter | None
    not_before: float = 0.0

    async def turn(self) -> None:
        """Wait for the host's ``Retry-After`` pause and a token of its rate limit."""
        pause = self.not_before - time.monotonic()
        while pause > 0:  # another answer may have pushed the pause further meanwhile
            await asyncio.sleep(pause)
            pause = self.not_before - time.monotonic()
        if self.limiter is not None:
            await self.limiter.acquire()


class HttpClient:
    """An async HTTP client for stages that look records up: at most ``per_host``
    requests in flight per host, at most ``rate`` requests per second per host (a token
    bucket, :class:`~conveyor.runtime.limiter.RateLimiter`, starting empty, ``burst``
    tokens at most), retries of transport errors (connect, timeout, dropped connection),
    ``429`` and ``5xx`` answers with exponential back-off and jitter, honouring
    ``Retry-After`` (seconds or an HTTP date; it also holds back the host's other requests
    until then), and ``timeout`` seconds for the connection and for each read.

    Past its retries, or on another error status, a request raises :class:`HttpError`
    (not retryable again by the stage): in a :class:`~conveyor.MapStage` the record becomes
    a dead letter, and the run goes on.

    Use it inside one event loop, the run's::

        async def main() -> None:
            async with HttpClient(per_host=4, rate=20.0) as client:

                async def enrich(record: dict) -> dict:
                    user = await client.get_json(f"https://api.example.org/users/{record['user']}")
                    return {**record, "country": user["country"]}

                pipeline = Pipeline("enrich").add_stage(MapStage(enrich, concurrency=16))
                await pipeline.arun(source, sink)

        asyncio.run(main())

    Without ``async with``, the client opens on its first request (in the running loop)
    and :meth:`aclose` closes it.

    >>> client = HttpClient(per_host=2, rate=5.0)
    >>> client.per_host, client.rate
    (2, 5.0)
    """

    def __init__(
        self,
        *,
        per_host: int = 8,
        rate: float | None = None,
        burst: float | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        base_url: str = "",
        follow_redirects: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if per_host < 1:
            raise PipelineDefinitionError(f"HttpClient: per_host must be >= 1, got {per_host}")
        if rate is not None and rate <= 0:
            raise PipelineDefinitionError(f"HttpClient: rate must be > 0 or None, got {rate}")
        if retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise PipelineDefinitionError(
                "HttpClient: retries, backoff and max_backoff must be >= 0, timeout > 0"
            )
        self.per_host = per_host
        self.rate = rate
        self.burst = burst
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.headers = {"User-Agent": _USER_AGENT, **(headers or {})}
        self.base_url = base_url
        self.follow_redirects = follow_redirects
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hosts: dict[tuple[str, str, int | None], _Host] = {}

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (the client opens again on its next request)."""
        client, self._client = self._client, None
        self._hosts.clear()
        self._loop = None
        if client is not None:
            await client.aclose()

    def _open(self) -> httpx.AsyncClient:
        """The httpx client of the running loop (a client of another, finished loop is
        dropped: httpx connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            _require_httpx("HttpClient")
            import httpx

            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self.headers,
                timeout=_timeout(self.timeout, self.connect_timeout),
                follow_redirects=self.follow_redirects,
                transport=self._transport,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            )
            self._loop = loop
            self._hosts = {}
        return self._client

    def _host(self, url: httpx.URL) -> _Host:
        key = (url.scheme, url.host, url.port)
        host = self._hosts.get(key)
        if host is None:
            from conveyor.runtime.limiter import RateLimiter

            limiter = RateLimiter(self.rate, self.burst) if self.rate is not None else None
            host = self._hosts[key] = _Host(asyncio.Semaphore(self.per_host), limiter)
        return host

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request (``kwargs`` as :meth:`httpx.AsyncClient.request` takes them:
        ``params``, ``json``, ``content``, ``headers`` …) and return its response, read; see
        the class docstring for the limits and retries. An error status raises
        :class:`HttpError`."""
        import httpx

        client = self._open()
        method = method.upper()
        attempt = 0
        while True:
            request = client.build_request(method, url, **kwargs)
            host = self._host(request.url)
            retry_after: float | None = None
            status: int | None = None
            async with host.slots:
                await host.turn()
                try:
                    response = await client.send(request)
                except httpx.TransportError as exc:
                    detail = f"{type(exc).__name__}: {exc or 'connection failed'}"
                else:
                    status = response.status_code
                    if status < 400:
                        return response
                    detail = f"HTTP {status} {response.reason_phrase}".rstrip()
                    if not _transient_status(status):
                        raise HttpError(method, str(request.url), status, attempt + 1, detail)
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    if retry_after is not None:  # the host asked for a pause: all wait
                        until = time.monotonic() + min(retry_after, self.max_backoff)
                        host.not_before = max(host.not_before, until)
            if attempt >= self.retries:
                raise HttpError(method, str(request.url), status, attempt + 1, detail)
            await asyncio.sleep(_retry_delay(attempt, self.backoff, self.max_backoff, retry_after))
            attempt += 1

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """``GET url``: :meth:`request`."""
        return await self.request("GET", url, **kwargs)

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """``GET url`` and its body decoded as JSON."""
        return (await self.request("GET", url, **kwargs)).json()

    async def post_json(self, url: str, payload: Any, **kwargs: Any) -> Any:
        """``POST url`` with ``payload`` as JSON, and the answer decoded as JSON."""
        return (await self.request("POST", url, json=payload, **kwargs)).json()
