"""Image transforms for square grey-level images stored row-major as flat lists.

Every function is pure and module-level, so the stages that use them pickle for the
process executor. Pixel values of the raw digits are integers 0..16 (counts of "on" pixels
in 4x4 blocks of a 32x32 bitmap).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

RAW_MAX = 16
"""The largest raw pixel value of the UCI digits."""


def side_of(pixels: Sequence[float]) -> int:
    """The side of a square image with these pixels; ValueError if it is not square."""
    side = math.isqrt(len(pixels))
    if side == 0 or side * side != len(pixels):
        raise ValueError(f"{len(pixels)} pixels do not make a square image")
    return side


def normalise(pixels: Sequence[float], maximum: float = RAW_MAX) -> list[float]:
    """Scale ``0..maximum`` to ``0.0..1.0``. Out-of-range values are kept out of range (the
    validate stage rejects them), never clipped: clipping would hide corrupt data."""
    return [value / maximum for value in pixels]


def shift(pixels: Sequence[float], dx: int, dy: int) -> list[float]:
    """The image moved ``dx`` pixels right and ``dy`` down; uncovered pixels are 0."""
    side = side_of(pixels)
    out = [0.0] * (side * side)
    for y in range(side):
        source_y = y - dy
        if not 0 <= source_y < side:
            continue
        for x in range(side):
            source_x = x - dx
            if 0 <= source_x < side:
                out[y * side + x] = float(pixels[source_y * side + source_x])
    return out


def resize(pixels: Sequence[float], size: int) -> list[float]:
    """Bilinear resize of a square image to ``size`` x ``size`` (pixel centres aligned,
    as most image libraries do); the identity when the size does not change."""
    side = side_of(pixels)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if size == side:
        return [float(value) for value in pixels]
    scale = side / size
    out: list[float] = []
    for y in range(size):
        fy = min(max((y + 0.5) * scale - 0.5, 0.0), side - 1.0)
        y0 = int(fy)
        y1 = min(y0 + 1, side - 1)
        wy = fy - y0
        for x in range(size):
            fx = min(max((x + 0.5) * scale - 0.5, 0.0), side - 1.0)
            x0 = int(fx)
            x1 = min(x0 + 1, side - 1)
            wx = fx - x0
            top = pixels[y0 * side + x0] * (1 - wx) + pixels[y0 * side + x1] * wx
            bottom = pixels[y1 * side + x0] * (1 - wx) + pixels[y1 * side + x1] * wx
            out.append(top * (1 - wy) + bottom * wy)
    return out


def augmentation_shift(seed: int, record_id: int) -> tuple[int, int]:
    """The (dx, dy) in -1..1 chosen for a record: a hash of the seed and the id, so it is
    the same on every run, in every worker process and in any order of the records."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return digest[0] % 3 - 1, digest[1] % 3 - 1


def raw_fault(record: Any) -> str | None:
    """What keeps a raw row from being an image, in the words of the file (a pixel that is
    not a number, a pixel count that is not a square, a raw value outside ``0..RAW_MAX``),
    or ``None`` when it can be transformed.

    >>> raw_fault({"pixels": [0, "x", 3, 4]})
    "pixel 1 is 'x', not a number"
    >>> raw_fault({"pixels": [0] * 63})
    '63 pixel values: not a square image (64 make 8x8)'
    >>> raw_fault({"pixels": [0, 99, 0, 0]})
    'pixel 1 is 99, outside the raw range 0..16'
    """
    pixels = record.get("pixels") if isinstance(record, dict) else None
    if not isinstance(pixels, list):
        return "no pixel values"
    for index, value in enumerate(pixels):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"pixel {index} is {value!r}, not a number"
    side = math.isqrt(len(pixels))
    if side == 0 or side * side != len(pixels):
        near = max(1, round(math.sqrt(len(pixels))))
        return f"{len(pixels)} pixel values: not a square image ({near * near} make {near}x{near})"
    for index, value in enumerate(pixels):
        if not 0 <= value <= RAW_MAX:
            return f"pixel {index} is {value:g}, outside the raw range 0..{RAW_MAX}"
    return None


def preprocess_record(
    record: dict[str, Any], size: int = 8, augment: bool = False, seed: int = 0
) -> dict[str, Any]:
    """A raw digit row as ``{"id", "label", "size", "pixels"}``: normalised, shifted by
    :func:`augmentation_shift` when ``augment``, resized to ``size`` x ``size``.

    A row that cannot be transformed (non-numeric pixels, not a square image, a raw value
    outside ``0..RAW_MAX``) is returned unchanged: judging records is the validate stage's
    job, which dead-letters it naming the fault (:func:`raw_fault`).
    """
    if raw_fault(record) is not None:
        return record
    pixels = record["pixels"]
    image = normalise(pixels)
    if augment:
        dx, dy = augmentation_shift(seed, record["id"])
        image = shift(image, dx, dy)
    return {
        "id": record["id"],
        "label": record["label"],
        "size": size,
        "pixels": resize(image, size),
    }
