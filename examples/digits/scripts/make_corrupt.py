"""Write bundled/digits_corrupt.csv.gz: the bundled digits with 5 planted bad rows appended.

The planted rows are copies of the first five rows, each broken in one way; their ids
(row indexes) and faults are written to bundled/digits_corrupt.planted.json. The output is
byte-for-byte reproducible (gzip mtime 0)::

    python examples/digits/scripts/make_corrupt.py
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"


def planted_rows(rows: list[list[str]]) -> list[tuple[str, list[str]]]:
    """The five corrupt rows, each with what is wrong with it."""
    a, b, c, d, e = (list(row) for row in rows[:5])
    a[-1] = "11"  # label outside 0..9
    b[10] = "99"  # pixel outside 0..16
    c = c[:-2] + c[-1:]  # one pixel missing: 63 values and the label
    d[20] = "x"  # not a number
    e[-1] = "-1"  # negative label
    return [
        ("label 11", a),
        ("pixel 99", b),
        ("63 pixel values", c),
        ("non-numeric pixel 'x'", d),
        ("label -1", e),
    ]


def main() -> None:
    with gzip.open(BUNDLED / "digits.csv.gz", "rt", encoding="utf-8") as text:
        rows = [line.strip().split(",") for line in text if line.strip()]
    planted = planted_rows(rows)
    lines = [",".join(row) for row in rows] + [",".join(row) for _, row in planted]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with (
        (BUNDLED / "digits_corrupt.csv.gz").open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out,
    ):
        out.write(data)
    listing = [{"id": len(rows) + i, "fault": fault} for i, (fault, _) in enumerate(planted)]
    (BUNDLED / "digits_corrupt.planted.json").write_text(
        json.dumps(listing, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
