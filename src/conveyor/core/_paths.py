"""Paths from config and records stay inside the project folder.

Every file path a project's config names (persisted datasets, file sinks and sources,
download destinations, dead letters, state) is resolved — ``..`` collapsed, symlinks
followed — and refused when it leaves the project folder, unless the user allowed it for
that path (``allow_outside_project: true``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["OutsideProject", "inside_project"]


class OutsideProject(ValueError):
    """A path that leaves the project folder; ``key`` names the config key it came from."""

    def __init__(self, key: str, path: str, root: Path, resolved: Path) -> None:
        self.key = key
        self.path = path
        via = "" if Path(path) == resolved else f" (it resolves to {resolved})"
        super().__init__(
            f"{key} {path!r} is outside the project folder {root}{via}; use a path inside "
            "the project, or set `allow_outside_project: true` beside it to allow this path"
        )


def inside_project(
    root: Path, path: str | os.PathLike[str], *, key: str, allow_outside: bool = False
) -> Path:
    """``path`` (relative to ``root`` unless absolute) resolved, symlinks followed; an
    :class:`OutsideProject` error if it leaves ``root`` and ``allow_outside`` is false.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> inside_project(root, "data/out.jsonl", key="sink.path") == root.resolve() / "data/out.jsonl"
    True
    >>> inside_project(root, "../x", key="sink.path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.core._paths.OutsideProject: sink.path '../x' is outside the project folder ...
    """
    text = os.fspath(path)
    candidate = Path(text).expanduser()
    full = candidate if candidate.is_absolute() else root / candidate
    resolved = full.resolve()
    if allow_outside:
        return resolved
    base = root.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise OutsideProject(key, text, root, resolved)
    return resolved
