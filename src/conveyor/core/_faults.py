"""A test-only fault injection hook: crash the process at a named point.

``CONVEYOR_FAULT=point:n`` (read once, when Conveyor is imported) makes the ``n``-th time
the run reaches ``point`` kill the process with SIGKILL, as a power cut or the OOM killer
would. The points: ``before_sink_write``, ``after_sink_commit`` (the sink committed, the
checkpoint is not yet written) and ``checkpoint_write`` (the checkpoint row is written,
not yet committed). Unset, :func:`fault_point` is one comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["fault_point"]

_SPEC = os.environ.get("CONVEYOR_FAULT", "")
_POINT, _, _COUNT = _SPEC.partition(":")
_remaining = int(_COUNT) if _COUNT.isdigit() else 1


def fault_point(name: str) -> None:
    """SIGKILL this process if ``CONVEYOR_FAULT`` names ``name`` and its count is reached."""
    global _remaining
    if not _SPEC or name != _POINT:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
