"""Download: fetch the digits CSV (file:, or http(s):// through Conveyor's http source) and
emit one record per row."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from conveyor.project import Source
from pipeline.contracts.models import RawDigit
from pipeline.shared.fetch import copy_local, http_download, local_path

BUNDLED_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
"""sha256 of bundled/digits.csv.gz (scikit-learn's copy of the UCI digits)."""


class Download(Source):
    """Fetches ``url`` to ``dest`` (verified, retried, resumed: ``http(s)://`` URLs by
    :class:`conveyor.connectors.HttpSource`), then reads its rows.

    Rows are emitted as parsed as possible, never dropped: a value that is not an integer
    stays a string, so the validate stage can send the row to the dead-letter queue. The
    file is pinned by its sha256, so the records follow from the params (deterministic).
    """

    deterministic = True

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        url: str = "file:bundled/digits.csv.gz"
        sha256: str | None = Field(default=BUNDLED_SHA256, pattern=r"^[0-9a-fA-F]{64}$")
        dest: str = "data/raw/digits.csv.gz"
        retries: int = Field(default=3, ge=0)
        timeout: float = Field(default=30.0, gt=0)
        backoff: float = Field(default=0.5, ge=0)

    def __init__(self, config: Config) -> None:
        self.config = config

    async def read(self) -> AsyncIterator[RawDigit]:
        c = self.config
        path = Path(c.dest)
        if local_path(c.url) is not None:  # the bundled default: no network needed
            await asyncio.to_thread(copy_local, c.url, path, sha256=c.sha256)
        else:
            download = http_download(
                c.url,
                path,
                sha256=c.sha256,
                retries=c.retries,
                timeout=c.timeout,
                backoff=c.backoff,
            )
            await download.fetch()
        with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
            for row in parse_rows(text):
                yield row


def _value(token: str) -> int | str:
    try:
        return int(token)
    except ValueError:
        return token


def parse_rows(text: io.TextIOBase | object) -> Iterator[RawDigit]:
    """One record per non-empty CSV row: the last value is the label, the others pixels."""
    for index, row in enumerate(csv.reader(text)):  # type: ignore[arg-type]
        if not row:
            continue
        values = [_value(token.strip()) for token in row]
        yield {"id": index, "pixels": values[:-1], "label": values[-1]}  # type: ignore[misc]
