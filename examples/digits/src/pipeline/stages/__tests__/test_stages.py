"""Unit tests of the digits transforms and stages, each on its own."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path
from types import ModuleType

STAGES = Path(__file__).parent.parent
sys.path.insert(0, str(STAGES.parent.parent))

from pipeline.shared.transforms.image import (  # noqa: E402
    augmentation_shift,
    normalise,
    resize,
    shift,
)

from conveyor.testing import run_stage_on  # noqa: E402


def load(file_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(file_name[:-3], STAGES / file_name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transforms() -> None:
    assert normalise([0, 8, 16]) == [0.0, 0.5, 1.0]
    image = [float(i) for i in range(16)]
    assert resize(image, 4) == image
    assert resize([1.0] * 16, 7) == [1.0] * 49
    assert shift([1.0, 2.0, 3.0, 4.0], 1, 0) == [0.0, 1.0, 0.0, 3.0]
    assert augmentation_shift(3, 10) == augmentation_shift(3, 10)


def test_preprocess_pickles_and_passes_unusable_rows_on() -> None:
    module = load("10_preprocess.py")
    stage = module.Preprocess(module.Preprocess.Config(size=4))
    bad = {"id": 1, "pixels": [1, "x"], "label": 3}
    good = {"id": 0, "pixels": [16] * 64, "label": 3}
    for candidate in (stage, pickle.loads(pickle.dumps(stage))):
        run = run_stage_on(candidate, [good, bad])
        assert run.outputs == [{"id": 0, "label": 3, "size": 4, "pixels": [1.0] * 16}, bad]


def test_split_is_stratified_and_deterministic() -> None:
    module = load("30_split.py")
    stage = module.Split(module.Split.Config(seed=1))
    records = [{"id": i, "label": i % 2} for i in range(40)]
    first = stage.assign(records)
    assert first == stage.assign(list(reversed(records)))
    for label in (0, 1):
        splits = [r["split"] for r in first if r["label"] == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (16, 2, 2)
