"""Generate a deterministic CSV of users, with planted defects and a ground-truth manifest.

The same ``seed`` always gives a byte-identical file, and row ``i`` depends only on the seed
and the rows before it, so ``rows=1000`` is a prefix of ``rows=2000`` with the same seed.
Most rows are good users (with harmless mess: mixed-case e-mails, padded names, lower-case
country codes, a blank optional age). A few percent are planted defects, each with exactly
one problem:

- ``missing_field``: a required field is empty or blank;
- ``bad_email``: an e-mail that is not an address (``ann@``, ``@example.com``, no ``@`` …);
- ``bad_date``: a signup date that is not a real ISO date (``2023-02-30``, ``yesterday``,
  ``31/12/2022``) or lies in the future;
- ``bad_age``: an age that is not a whole number from 13 to 120.

A few percent more are duplicates: an earlier good user again, verbatim or with the e-mail
differently cased and/or padded with spaces.

:func:`generate_users` returns the :class:`GroundTruth` and writes it as JSON next to the
CSV (``users.csv`` -> ``users.manifest.json``), so tests compare against what was planted.

Run it as a script::

    python examples/user_import/generate_users.py --rows 10000 --seed 42 --out users.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "DEFAULT_ROWS",
    "DEFAULT_SEED",
    "MALFORMED_KINDS",
    "GroundTruth",
    "generate_users",
    "main",
    "manifest_path",
    "read_manifest",
]

DEFAULT_ROWS = 10_000
DEFAULT_SEED = 42

COLUMNS = ("external_id", "email", "first_name", "last_name", "signup_date", "country", "age")
"""The CSV header, in order. Every column but ``age`` is required."""

MALFORMED_KINDS = ("missing_field", "bad_email", "bad_date", "bad_age")

MALFORMED_RATE = 0.04
DUPLICATE_RATE = 0.03

FIRST_NAMES = (
    "Alice", "Bob", "Carla", "Dmitri", "Emma", "Farah", "Gustavo", "Hana", "Ivan", "Jana",
    "Kofi", "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
    "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoë", "José", "Chloé", "Björn", "Łukasz",
    "Siobhán", "Mei", "Aiko", "Omar", "Ingrid", "Pedro", "Amara", "Liam", "Sofia", "Noah",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Müller", "García", "Rossi", "Nowak", "Kowalski", "Nguyen", "Kim", "Tanaka",
    "Okafor", "Silva", "Jensen", "Dubois", "Novák", "Petrov", "Andersson", "O'Brien",
    "Fernández", "Schmidt", "Costa", "Haddad", "Ivanova", "Yilmaz", "Martin", "Bianchi",
    "de Vries", "van Dijk", "Papadopoulos", "Horvat", "Lindqvist",
)  # fmt: skip
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "inbox.test")
COUNTRIES = ("US", "DE", "FR", "GB", "IN", "BR", "JP", "NG", "ES", "IT", "PL", "SE", "NL", "CA")

FIRST_SIGNUP = date(2015, 1, 1)
SIGNUP_DAYS = (date(2024, 12, 31) - FIRST_SIGNUP).days + 1

REQUIRED = ("external_id", "email", "first_name", "last_name", "signup_date", "country")
BAD_DATES = (
    "2023-02-30", "2021-04-31", "2022-13-01", "2019-00-10", "2999-01-01",
    "yesterday", "next tuesday", "31/12/2022", "12/31/2022", "2023/01/15", "20230115",
)  # fmt: skip
BAD_AGES = ("-4", "abc", "250", "12.5", "7", "forty")


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What :func:`generate_users` planted in a file.

    ``rows == unique_valid + duplicates + malformed``. ``malformed_lines`` maps the CSV line
    number of each malformed row (the header is line 1) to its kind.
    """

    seed: int
    rows: int
    unique_valid: int
    duplicates: int
    malformed_lines: Mapping[int, str]

    @property
    def malformed(self) -> int:
        """Number of planted malformed rows."""
        return len(self.malformed_lines)

    @property
    def malformed_by_kind(self) -> dict[str, int]:
        """Malformed rows per kind (every kind present, possibly 0)."""
        counts = Counter(self.malformed_lines.values())
        return {kind: counts[kind] for kind in MALFORMED_KINDS}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (line numbers become string keys)."""
        return {
            "seed": self.seed,
            "rows": self.rows,
            "unique_valid": self.unique_valid,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "malformed_by_kind": self.malformed_by_kind,
            "malformed_lines": {str(line): kind for line, kind in self.malformed_lines.items()},
            "columns": list(COLUMNS),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroundTruth:
        """Inverse of :meth:`to_json`."""
        lines = data["malformed_lines"]
        return cls(
            seed=int(data["seed"]),
            rows=int(data["rows"]),
            unique_valid=int(data["unique_valid"]),
            duplicates=int(data["duplicates"]),
            malformed_lines={int(line): str(kind) for line, kind in lines.items()},
        )


def manifest_path(csv_path: Path) -> Path:
    """Where the manifest of ``csv_path`` lives: ``users.csv`` -> ``users.manifest.json``."""
    return csv_path.with_suffix(".manifest.json")


def read_manifest(csv_path: Path) -> GroundTruth:
    """The ground truth written next to ``csv_path`` by :func:`generate_users`."""
    return GroundTruth.from_json(json.loads(manifest_path(csv_path).read_text("utf-8")))


def generate_users(
    out: Path, *, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED, manifest: bool = True
) -> GroundTruth:
    """Write ``rows`` users (plus the header) to ``out`` and return what was planted.

    With ``manifest=True`` the ground truth is also written to :func:`manifest_path`.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    out.parent.mkdir(parents=True, exist_ok=True)
    kinds: Counter[str] = Counter()
    malformed_lines: dict[int, str] = {}
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for line, (row, kind) in enumerate(_rows(rows, seed), start=2):
            writer.writerow(row)
            kinds[kind] += 1
            if kind in MALFORMED_KINDS:
                malformed_lines[line] = kind
    truth = GroundTruth(
        seed=seed,
        rows=rows,
        unique_valid=kinds["valid"],
        duplicates=kinds["duplicate"],
        malformed_lines=malformed_lines,
    )
    if manifest:
        text = json.dumps(truth.to_json(), indent=2, sort_keys=True, ensure_ascii=False)
        manifest_path(out).write_text(text + "\n", encoding="utf-8")
    return truth


def _rows(rows: int, seed: int) -> Iterator[tuple[list[str], str]]:
    """Yield ``(row, kind)``; kind is ``valid``, ``duplicate`` or a malformed kind."""
    rng = random.Random(seed)
    originals: list[list[str]] = []
    for number in range(1, rows + 1):
        roll = rng.random()
        if roll < MALFORMED_RATE:
            kind = rng.choice(MALFORMED_KINDS)
            yield _break(_new_user(rng, number), kind, rng), kind
        elif roll < MALFORMED_RATE + DUPLICATE_RATE and originals:
            yield _duplicate(rng.choice(originals), rng), "duplicate"
        else:
            row = _new_user(rng, number)
            originals.append(row)
            yield row, "valid"


def _ascii(text: str) -> str:
    """``"Zoë O'Brien"`` -> ``"zoeobrien"``: letters and digits only, for e-mail local parts."""
    folded = unicodedata.normalize("NFKD", text.replace("Ł", "L").replace("ł", "l"))
    return "".join(ch for ch in folded.encode("ascii", "ignore").decode().lower() if ch.isalnum())


def _new_user(rng: random.Random, number: int) -> list[str]:
    """A good user; ``number`` makes its external id and e-mail unique in the file."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{_ascii(first)}.{_ascii(last)}{number}@{rng.choice(DOMAINS)}"
    if rng.random() < 0.10:  # harmless: people type their address in all sorts of case
        email = email.title() if rng.random() < 0.5 else email.upper()
    if rng.random() < 0.05:  # harmless: stray spaces around names
        first, last = f" {first}", f"{last}  "
    country = rng.choice(COUNTRIES)
    if rng.random() < 0.05:
        country = country.lower()
    signup = FIRST_SIGNUP + timedelta(days=rng.randrange(SIGNUP_DAYS))
    age = "" if rng.random() < 0.10 else str(rng.randint(18, 80))
    return [f"usr-{number:07d}", email, first, last, signup.isoformat(), country, age]


def _break(row: list[str], kind: str, rng: random.Random) -> list[str]:
    """``row`` with exactly one planted defect of ``kind``."""
    broken = list(row)
    if kind == "missing_field":
        broken[COLUMNS.index(rng.choice(REQUIRED))] = rng.choice(("", "   "))
    elif kind == "bad_email":
        local, _, domain = row[1].partition("@")
        broken[1] = rng.choice(
            (
                f"{local}.{domain}",
                f"{local}@",
                f"@{domain}",
                f"{local}@@{domain}",
                f"{local} x@{domain}",
                f"{local}@localhost",
            )
        )
    elif kind == "bad_date":
        broken[4] = rng.choice(BAD_DATES)
    elif kind == "bad_age":
        broken[6] = rng.choice(BAD_AGES)
    else:  # pragma: no cover - MALFORMED_KINDS is closed
        raise ValueError(f"unknown malformed kind {kind!r}")
    return broken


def _duplicate(original: list[str], rng: random.Random) -> list[str]:
    """``original`` again: verbatim, or with its e-mail re-cased and/or padded."""
    row = list(original)
    variant = rng.randrange(3)
    if variant == 1:
        row[1] = row[1].upper() if rng.random() < 0.5 else row[1].lower().title()
    elif variant == 2:
        row[1] = f"  {row[1].lower()} "
    return row


def main(argv: list[str] | None = None) -> int:
    """Command line: write the CSV and its manifest, print what was planted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="data rows to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("users.csv"), help="CSV to write")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be >= 1")
    truth = generate_users(args.out, rows=args.rows, seed=args.seed)
    kinds = ", ".join(f"{kind} {n}" for kind, n in truth.malformed_by_kind.items())
    print(
        f"wrote {truth.rows} rows to {args.out} (seed {truth.seed}): "
        f"{truth.unique_valid} unique valid, {truth.duplicates} duplicates, "
        f"{truth.malformed} malformed ({kinds}); manifest {manifest_path(args.out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
