"""The records passed between the stages, as Pydantic models.

``RawDigit`` is what the download stage emits (a parsed CSV row, possibly corrupt, so its
fields are loose); ``DigitImage`` is the contract the validate stage enforces (also as JSON
Schema in ``digit_image.v1.json``); ``SplitDigit`` is a valid image with its split.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONTRACT_VERSION = 1
LABELS = tuple(range(10))

Pixel = Annotated[float, Field(ge=0.0, le=1.0)]


class RawDigit(BaseModel):
    """A CSV row as read: 64 pixel values 0..16, then the label (not yet checked)."""

    model_config = ConfigDict(extra="forbid")

    id: int
    pixels: list[int | str]
    label: int | str


class DigitImage(BaseModel):
    """A preprocessed digit: ``size`` x ``size`` pixels in [0, 1], a label 0..9."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[int, Field(ge=0)]
    label: Annotated[int, Field(ge=0, le=9)]
    size: Annotated[int, Field(ge=1, le=256)]
    pixels: list[Pixel]

    @model_validator(mode="before")
    @classmethod
    def _raw(cls, data: Any) -> Any:
        """A raw row the preprocess stage could not transform (it has no ``size``): its
        fault in the words of the file, not the fields an image lacks."""
        if isinstance(data, dict) and "size" not in data and "pixels" in data:
            from pipeline.shared.transforms.image import raw_fault

            fault = raw_fault(data)
            if fault is not None:
                raise ValueError(f"raw row: {fault}")
        return data

    @model_validator(mode="after")
    def _square(self) -> DigitImage:
        if len(self.pixels) != self.size * self.size:
            raise ValueError(
                f"pixels has {len(self.pixels)} values, expected size*size = "
                f"{self.size * self.size}"
            )
        return self


class SplitDigit(DigitImage):
    """A valid digit with the split it belongs to."""

    split: Literal["train", "val", "test"]
