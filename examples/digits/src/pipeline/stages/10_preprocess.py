"""Preprocess: normalise 0..16 to 0..1, optional seeded shift, resize (process executor)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import MapStage
from pipeline.shared.transforms.image import preprocess_record


class Preprocess(MapStage[dict[str, Any], dict[str, Any]]):
    """Maps every raw row through :func:`preprocess_record` with this stage's params.

    Rows it cannot transform pass on unchanged; the validate stage dead-letters them.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        size: int = Field(default=8, ge=1, le=256)
        augment: bool = False
        seed: int = 0

    def __init__(self, config: Config) -> None:
        transform = functools.partial(
            preprocess_record, size=config.size, augment=config.augment, seed=config.seed
        )
        super().__init__(transform, name="preprocess")
        self.config = config

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes started by forkserver or spawn cannot import this file (its name
        # starts with a digit), so the stage travels as the plain MapStage it is made of.
        state = {k: v for k, v in vars(self).items() if k != "config"}
        return (object.__new__, (MapStage,), state)
