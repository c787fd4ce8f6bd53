"""Making file-system changes durable."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(path: Path, *, best_effort: bool = False) -> None:
    """Make the entries of directory ``path`` durable (a created file, a rename). Where a
    directory cannot be opened (Windows) there is nothing to do; with ``best_effort`` a
    failing fsync is ignored too.

    >>> import tempfile
    >>> fsync_dir(Path(tempfile.mkdtemp()))
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)
