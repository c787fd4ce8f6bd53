"""Split: deterministic, stratified train/val/test assignment from a seed (a barrier)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conveyor import PipelineStage, StageResult
from conveyor.core.context import PipelineContext

SPLITS = ("train", "val", "test")


def rank(seed: int, record_id: int) -> str:
    """The sort key of a record within its class: a hash of the seed and its id."""
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


class Split(PipelineStage[list[dict[str, Any]], list[dict[str, Any]]]):
    """Adds ``split`` to every record.

    Each class is ordered by ``sha256(f"{seed}:{id}")`` and cut at the configured
    fractions (rounded), so the split depends only on the seed, the fractions and the ids:
    never on the order of arrival, the batch size or the number of workers.
    """

    barrier: ClassVar[bool] = True

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        seed: int = 20261122
        train: float = Field(default=0.8, ge=0, le=1)
        val: float = Field(default=0.1, ge=0, le=1)
        test: float = Field(default=0.1, ge=0, le=1)

        @model_validator(mode="after")
        def _sum_to_one(self) -> Split.Config:
            total = self.train + self.val + self.test
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"train + val + test must be 1, got {total}")
            return self

    def __init__(self, config: Config) -> None:
        self.config = config

    def assign(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records with their split, ordered by id."""
        by_label: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            by_label[record["label"]].append(record)
        out: list[dict[str, Any]] = []
        for members in by_label.values():
            members.sort(key=lambda r: rank(self.config.seed, r["id"]))
            n = len(members)
            n_train = round(n * self.config.train)
            n_val = min(round(n * self.config.val), n - n_train)
            for index, record in enumerate(members):
                name = "train" if index < n_train else "val" if index < n_train + n_val else "test"
                out.append({**record, "split": name})
        out.sort(key=lambda r: r["id"])
        return out

    async def process(
        self, data: list[dict[str, Any]], context: PipelineContext
    ) -> StageResult[list[dict[str, Any]]]:
        return StageResult.ok(self.assign(data))
