"""Fetching a file by URL into a local path: ``file:`` copies, ``http(s)://`` downloads
with sha256 verification, retries with exponential back-off and resume (HTTP ``Range``).

Standard library only (``urllib.request``). Relative ``file:`` URLs
(``file:bundled/digits.csv.gz``) are relative to the working directory, which is the
project folder during ``conveyor run``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download failed for good (after its retries), or its content is wrong."""


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


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.5,
) -> Path:
    """Make ``dest`` hold the file at ``url``; return ``dest``.

    Skipped when ``dest`` exists with the expected ``sha256``. A download goes to
    ``dest.part`` first and is renamed into place only once complete and verified; an
    interrupted transfer resumes from the bytes already received. A sha256 mismatch is
    an error (the partial file is deleted), never retried.
    """
    if sha256 is not None:
        sha256 = sha256.lower()
        if dest.is_file() and sha256_of(dest) == sha256:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = local_path(url)
    if source is not None:
        if not source.is_file():
            raise DownloadError(f"{url}: no such file ({source.resolve()})")
        shutil.copyfile(source, part)
    elif urllib.parse.urlparse(url).scheme in {"http", "https"}:
        _download(url, part, retries=retries, timeout=timeout, backoff=backoff)
    else:
        raise DownloadError(f"{url}: unsupported URL scheme; use file:, http:// or https://")
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {sha256}, got {actual}; the file is "
                "corrupt or not the one expected (set stages.download.params.sha256 to the "
                "right value, or to null to skip the check)"
            )
    os.replace(part, dest)
    return dest


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in {408, 425, 429} or exc.code >= 500
    return isinstance(
        exc, urllib.error.URLError | http.client.HTTPException | ConnectionError | TimeoutError
    )


def _download(url: str, part: Path, *, retries: int, timeout: float, backoff: float) -> None:
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout)
            return
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # it holds the response's socket
            if not _transient(exc) or attempt >= retries:
                raise DownloadError(
                    f"download of {url} failed after {attempt + 1} attempt(s): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        time.sleep(backoff * 2**attempt)
        attempt += 1


def _transfer(url: str, part: Path, timeout: float) -> None:
    """One request: resume ``part`` when it holds bytes, else start over."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "conveyor-digits/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the file is complete
            exc.close()
            return
        raise
    with response:
        resumed = have and response.status == 206
        expected = response.headers.get("Content-Length")
        received = 0
        with part.open("ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
        if expected is not None and received < int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - received)
