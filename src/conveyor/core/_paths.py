"""Paths from config and records stay inside the project folder.

Every file path a project's config names (persisted datasets, file sinks and sources,
download destinations, dead letters, state) is resolved — ``..`` collapsed, symlinks
followed — and refused when it leaves the project folder, unless the user allowed it for
that path (``allow_outside_project: true``). Paths that cannot name a file sensibly (empty,
with control characters, too long) are refused whatever the folder. Archives are unpacked
with the same containment (:func:`safe_extract`).
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final

from conveyor.core._render import printable

__all__ = [
    "ArchiveRefused",
    "OutsideProject",
    "PathRefused",
    "inside_project",
    "odd_path",
    "safe_extract",
    "shown",
]

MAX_PATH_CHARS: Final = 4096
"""The longest path accepted from config (Linux's ``PATH_MAX``)."""
MAX_NAME_BYTES: Final = 255
"""The longest file or folder name accepted, in UTF-8 bytes (``NAME_MAX``)."""
_SHOWN: Final = 120  # characters of a refused path quoted in a message

DEFAULT_FIX: Final = "set `allow_outside_project: true` beside it to allow this path"


def shown(path: str) -> str:
    """``path`` quoted for a message: control characters escaped, at most 120 characters.

    >>> print(shown("data/out.jsonl"), shown("a\x1b[2Jb"), len(shown("x" * 500)))
    'data/out.jsonl' 'a\\x1b[2Jb' 123
    """
    text = printable(path)
    return "'" + (text if len(text) <= _SHOWN else text[:_SHOWN] + "…") + "'"


class PathRefused(ValueError):
    """A path from config that cannot be used; ``key`` names the config key it came from
    (``sink.path``, ``stages.clean.persist.path``) so that the loader can locate it."""

    def __init__(self, key: str, path: str, message: str) -> None:
        self.key = key
        self.path = path
        super().__init__(message)


class OutsideProject(PathRefused):
    """A path that leaves the project folder; ``key`` names the config key it came from."""

    def __init__(
        self, key: str, path: str, root: Path, resolved: Path, *, fix: str = DEFAULT_FIX
    ) -> None:
        via = "" if Path(path) == resolved else f" (it resolves to {printable(resolved)})"
        super().__init__(
            key,
            path,
            f"{key} {shown(path)} is outside the project folder {printable(root)}{via}; use a "
            f"path inside the project, or {fix}",
        )
        self.root = root
        self.resolved = resolved


def odd_path(path: str) -> str | None:
    """Why ``path`` cannot name a file sensibly, or ``None`` when it can.

    >>> odd_path("data/out.jsonl") is None, odd_path(""), odd_path("a\\x00b")
    (True, 'is empty', 'contains a control character (\\\\x00)')
    """
    if not path.strip():
        return "is empty"
    if len(path) > MAX_PATH_CHARS:
        return f"is {len(path)} characters long; at most {MAX_PATH_CHARS} are accepted"
    if printable(path) != path:
        bad = next(c for c in path if c != printable(c))
        return f"contains a control character ({printable(bad)})"
    longest = max(
        (len(part.encode("utf-8", "surrogatepass")) for part in Path(path).parts), default=0
    )
    if longest > MAX_NAME_BYTES:
        return (
            f"has a file or folder name of {longest} bytes; at most {MAX_NAME_BYTES} are accepted"
        )
    return None


def inside_project(
    root: Path,
    path: str | os.PathLike[str],
    *,
    key: str,
    allow_outside: bool = False,
    fix: str = DEFAULT_FIX,
) -> Path:
    """``path`` (relative to ``root`` unless absolute) resolved, symlinks followed; an
    :class:`OutsideProject` error if it leaves ``root`` and ``allow_outside`` is false, a
    :class:`PathRefused` if it is empty, holds control characters or is too long, or cannot
    be resolved (a symlink loop). ``fix`` is the message's advice for allowing the path.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> inside_project(root, "data/out.jsonl", key="sink.path") == root.resolve() / "data/out.jsonl"
    True
    >>> inside_project(root, "../x", key="sink.path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.core._paths.OutsideProject: sink.path '../x' is outside the project folder ...
    >>> inside_project(root, "", key="sink.path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.core._paths.PathRefused: sink.path '' is empty; name a file or folder inside ...
    """
    text = os.fspath(path)
    problem = odd_path(text)
    if problem is not None:
        raise PathRefused(
            key, text, f"{key} {shown(text)} {problem}; name a file or folder inside the project"
        )
    try:
        candidate = Path(text).expanduser()
        full = candidate if candidate.is_absolute() else root / candidate
        resolved = full.resolve()
        base = root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, an unknown ~user
        raise PathRefused(key, text, f"{key} {shown(text)} cannot be resolved: {exc}") from None
    if allow_outside:
        return resolved
    if resolved != base and not resolved.is_relative_to(base):
        raise OutsideProject(key, text, root, resolved, fix=fix)
    return resolved


# -- archives ----------------------------------------------------------------------------------


class ArchiveRefused(PathRefused):
    """An archive member that would land outside the destination folder (an absolute name,
    ``..``, a link pointing out, a device file), or an archive over its size limit."""


def safe_extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    key: str = "archive",
    max_bytes: int = 4 << 30,
    max_members: int = 100_000,
) -> list[Path]:
    """Unpack the tar (any compression) or zip file ``archive`` into the folder ``dest``
    and return the files written. Nothing may land outside ``dest``: tar members pass
    tarfile's ``data`` filter (no absolute names, no ``..``, no links out, no devices, no
    set-uid bits); zip member names are checked the same way before anything is written.
    More than ``max_members`` members or ``max_bytes`` unpacked bytes (an archive bomb) is
    refused too. Raises :class:`ArchiveRefused` naming the member.

    >>> import io, tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> with zipfile.ZipFile(tmp / "ok.zip", "w") as z:
    ...     z.writestr("data/a.txt", "hi")
    >>> [p.relative_to(tmp / "out").as_posix() for p in safe_extract(tmp / "ok.zip", tmp / "out")]
    ['data/a.txt']
    >>> with zipfile.ZipFile(tmp / "evil.zip", "w") as z:
    ...     z.writestr("../../etc/evil", "x")
    >>> safe_extract(tmp / "evil.zip", tmp / "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.core._paths.ArchiveRefused: archive member '../../etc/evil' of ... would land ...
    """
    source = Path(archive)
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    base = target.resolve()
    if zipfile.is_zipfile(source):
        return _extract_zip(source, base, key, max_bytes, max_members)
    if tarfile.is_tarfile(source):
        return _extract_tar(source, base, key, max_bytes, max_members)
    raise ArchiveRefused(key, str(source), f"{key} {shown(str(source))} is not a tar or zip file")


def _member_target(base: Path, name: str, key: str, archive: Path) -> Path:
    """Where the archive member ``name`` goes under ``base``, or an ArchiveRefused."""
    pure = PurePosixPath(name.replace("\\", "/"))
    windows = PureWindowsPath(name)
    target = (base / pure).resolve()
    if (
        odd_path(name) is not None
        or pure.is_absolute()
        or windows.drive
        or ".." in pure.parts
        or not target.is_relative_to(base)
    ):
        raise ArchiveRefused(
            key,
            name,
            f"{key} member {shown(name)} of {printable(archive)} would land outside "
            f"{printable(base)}; the archive is refused (nothing of it is trusted)",
        )
    return target


def _extract_zip(
    source: Path, base: Path, key: str, max_bytes: int, max_members: int
) -> list[Path]:
    with zipfile.ZipFile(source) as archive:
        members = archive.infolist()
        if len(members) > max_members:
            raise ArchiveRefused(
                key,
                str(source),
                f"{key} {shown(str(source))} has {len(members)} members; "
                f"at most {max_members} are accepted",
            )
        targets = [(m, _member_target(base, m.filename, key, source)) for m in members]
        for member, _ in targets:  # a link stored in a zip would be written as a file: refuse
            if stat.S_ISLNK(member.external_attr >> 16):
                raise ArchiveRefused(
                    key,
                    member.filename,
                    f"{key} member {shown(member.filename)} of "
                    f"{printable(source)} is a symbolic link; the archive is refused",
                )
        written: list[Path] = []
        budget = max_bytes
        for member, target in targets:
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as data, target.open("wb") as out:
                while chunk := data.read(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:
                        raise _too_big(key, source, max_bytes)
                    out.write(chunk)
            written.append(target)
    return written


def _extract_tar(
    source: Path, base: Path, key: str, max_bytes: int, max_members: int
) -> list[Path]:
    with tarfile.open(source) as archive:
        members = []
        total = 0
        for member in archive:
            members.append(member)
            total += member.size if member.isfile() else 0
            if len(members) > max_members:
                raise ArchiveRefused(
                    key,
                    str(source),
                    f"{key} {shown(str(source))} has more than "
                    f"{max_members} members; the archive is refused",
                )
            if total > max_bytes:
                raise _too_big(key, source, max_bytes)
        for member in members:  # every member checked before anything is written
            _member_target(base, member.name, key, source)
            try:
                tarfile.data_filter(member, str(base))
            except tarfile.FilterError as exc:
                raise ArchiveRefused(
                    key,
                    member.name,
                    f"{key} member {shown(member.name)} of {printable(source)} is refused "
                    f"({exc}); the archive is refused (nothing of it is trusted)",
                ) from None
        archive.extractall(base, members=members, filter="data")
    return [base / m.name for m in members if m.isfile()]


def _too_big(key: str, source: Path, max_bytes: int) -> ArchiveRefused:
    return ArchiveRefused(
        key,
        str(source),
        f"{key} {shown(str(source))} unpacks to more than {max_bytes:,} bytes; "
        "the archive is refused (raise max_bytes if it is genuine)",
    )
