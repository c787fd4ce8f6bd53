"""Export: Parquet shards per split, a manifest with counts and checksums, a contact sheet.

Micro-batches are streamed into one dataset writer per split; everything is committed in
``close(status)``, which Conveyor calls once at the end of every run (whatever its status:
records the sink was given count as delivered); a run that raised before any write leaves
the previous export untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import RunStatus
from conveyor.project import Sink
from conveyor.project.datasets import DatasetWriter
from pipeline.contracts.models import CONTRACT_VERSION, LABELS, SplitDigit

SPLITS = ("train", "val", "test")


class Export(Sink):
    """Writes ``out_dir/<split>/part-NNNNN.parquet``, ``out_dir/manifest.json`` and
    ``out_dir/contact_sheet.png`` (``samples_per_class`` digits of each class)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        out_dir: str = "data/splits"
        shard_records: int = Field(default=500, ge=1)
        samples_per_class: int = Field(default=10, ge=1, le=100)
        scale: int = Field(default=4, ge=1, le=64)
        padding: int = Field(default=2, ge=0, le=64)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.writers: dict[str, DatasetWriter] = {}
        self.counts: dict[str, Counter[int]] = {name: Counter() for name in SPLITS}
        self.samples: dict[int, list[tuple[int, int, list[float]]]] = {}

    def write(self, records: list[SplitDigit]) -> None:
        for split in SPLITS:
            chosen = [r for r in records if r["split"] == split]  # type: ignore[index]
            if not chosen:
                continue
            if split not in self.writers:
                self.writers[split] = DatasetWriter(
                    self.out_dir / split, "parquet", shard_records=self.config.shard_records
                )
            self.writers[split].write(chosen)  # type: ignore[arg-type]
            self.counts[split].update(r["label"] for r in chosen)  # type: ignore[index]
        for r in records:
            self._keep_sample(r["label"], r["id"], r["size"], r["pixels"])  # type: ignore[index]

    def _keep_sample(self, label: int, record_id: int, size: int, pixels: list[float]) -> None:
        """Keep the ``samples_per_class`` lowest ids of each class (any arrival order)."""
        kept = self.samples.setdefault(label, [])
        kept.append((record_id, size, pixels))
        kept.sort(key=lambda item: item[0])
        del kept[self.config.samples_per_class :]

    def outputs(self) -> list[str]:
        """What this sink writes, for ``conveyor dvc``."""
        return [self.out_dir.as_posix()]

    def close(self, status: RunStatus) -> None:
        if not self.writers and not status.finished:
            return  # nothing was delivered: the previous export stays as it is
        self.out_dir.mkdir(parents=True, exist_ok=True)
        splits: dict[str, Any] = {}
        for split in SPLITS:
            writer = self.writers.pop(split, None)
            shards = []
            if writer is not None:
                for shard in writer.commit().shards:
                    path = self.out_dir / split / shard.name
                    shards.append(
                        {
                            "path": path.relative_to(self.out_dir).as_posix(),
                            "records": shard.records,
                            "bytes": shard.bytes,
                            "sha256": _sha256(path),
                        }
                    )
            splits[split] = {
                "records": sum(self.counts[split].values()),
                "classes": {str(label): self.counts[split][label] for label in LABELS},
                "shards": shards,
            }
        sheet = self.out_dir / "contact_sheet.png"
        _atomic_png(sheet, self._contact_sheet())
        manifest = {
            "version": 1,
            "dataset": "UCI optical recognition of handwritten digits (scikit-learn copy)",
            "contract": f"digit_image.v{CONTRACT_VERSION}",
            "records": sum(s["records"] for s in splits.values()),
            "splits": splits,
            "contact_sheet": {"path": sheet.name, "sha256": _sha256(sheet)},
        }
        tmp = self.out_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.out_dir / "manifest.json")

    def _contact_sheet(self) -> Any:
        """One row per class (0..9), ``samples_per_class`` digits each, dark ink on white."""
        from PIL import Image

        c = self.config
        size = next((s for kept in self.samples.values() for _, s, _ in kept), 8)
        cell = size * c.scale
        width = c.padding + c.samples_per_class * (cell + c.padding)
        height = c.padding + len(LABELS) * (cell + c.padding)
        sheet = Image.new("L", (width, height), 255)
        for row, label in enumerate(LABELS):
            for column, (_, side, pixels) in enumerate(self.samples.get(label, [])):
                grey = bytes(255 - round(255 * min(max(v, 0.0), 1.0)) for v in pixels)
                tile = Image.frombytes("L", (side, side), grey)
                tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
                x = c.padding + column * (cell + c.padding)
                y = c.padding + row * (cell + c.padding)
                sheet.paste(tile, (x, y))
        return sheet


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_png(path: Path, image: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
