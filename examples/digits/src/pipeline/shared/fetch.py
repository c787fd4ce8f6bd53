"""Fetching the digits file by URL into a local path.

``http(s)://`` URLs are downloaded by Conveyor's ``http`` source
(:class:`conveyor.connectors.HttpSource`): sha256 verification, retries with exponential
back-off and jitter (``Retry-After`` honoured), resume with HTTP ``Range`` from
``dest.part``, an atomic rename once complete, and no download at all when ``dest`` is
there with the expected sha256. ``file:`` URLs (the bundled default, which needs no
network) are copied, with the same sha256 check; relative ones
(``file:bundled/digits.csv.gz``) are relative to the working directory, which is the
project folder during ``conveyor run``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from conveyor.connectors.http import DownloadError, HttpSource

CHUNK = 1 << 16

__all__ = ["DownloadError", "copy_local", "http_download", "local_path", "sha256_of"]


def sha256_of(path: Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_path(url: str) -> Path | None:
    """The path of a ``file:`` URL (absolute or relative), else None."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    if parsed.netloc and parsed.netloc != "localhost":  # file://bundled/x: a relative path
        return Path(urllib.parse.unquote(parsed.netloc + parsed.path))
    return Path(urllib.request.url2pathname(parsed.path))


def http_download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.5,
) -> HttpSource:
    """The download of an ``http(s)://`` URL to ``dest``: ``await http_download(...).fetch()``
    (or iterate it: one record ``{"path", "bytes", "sha256", "url"}``)."""
    if urllib.parse.urlparse(url).scheme not in {"http", "https"}:
        raise DownloadError(url, f"{url}: unsupported URL scheme; use file:, http:// or https://")
    return HttpSource(url, dest, sha256=sha256, retries=retries, timeout=timeout, backoff=backoff)


def copy_local(url: str, dest: Path, *, sha256: str | None = None) -> Path:
    """Make ``dest`` a copy of the file of a ``file:`` URL, checked against ``sha256`` (a
    mismatch is a :class:`DownloadError`, the copy deleted); skipped when ``dest`` is there
    with that sha256. Returns ``dest``."""
    source = local_path(url)
    if source is None:
        raise DownloadError(url, f"{url} is not a file: URL")
    if sha256 is not None and dest.is_file() and sha256_of(dest) == sha256.lower():
        return dest
    if not source.is_file():
        raise DownloadError(url, f"{url}: no such file ({source.resolve()})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(source, part)
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(
                url,
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {actual}; the file "
                "is corrupt or not the one expected (set stages.download.params.sha256 to the "
                "right value, or to null to skip the check)",
            )
    os.replace(part, dest)
    return dest
