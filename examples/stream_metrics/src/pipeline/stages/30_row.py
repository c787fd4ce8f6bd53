"""One table row per result: the window's start and end as UTC times, its figures as columns."""

from datetime import UTC, datetime
from typing import Any

from conveyor import MapStage


def row(result: dict[str, Any]) -> dict[str, Any]:
    """``{branch, key, start, end, value: {count, sum, mean, max}}`` -> a flat row."""
    return {
        "branch": result["branch"],
        "key": result["key"],
        "start": datetime.fromtimestamp(result["start"], UTC),
        "end": datetime.fromtimestamp(result["end"], UTC),
        **result["value"],
    }


stage = MapStage(row)
