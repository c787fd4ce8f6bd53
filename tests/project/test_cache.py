"""The run cache: stage fingerprints (code, config, input) and freshness of persisted outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.project.cache import (
    CACHE_FILE,
    RunCache,
    StageFingerprint,
    code_hash,
    config_hash,
    input_hash,
)
from conveyor.project.datasets import MANIFEST_NAME, DatasetWriter, dataset_fingerprint


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """A pipeline folder with a stage, shared helpers and a contract."""
    root = tmp_path / "src" / "pipeline"
    (root / "stages").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "contracts").mkdir()
    (root / "stages" / "10_enrich.py").write_text("STAGE = 1\n", encoding="utf-8")
    (root / "shared" / "helpers.py").write_text("def f(): return 1\n", encoding="utf-8")
    (root / "contracts" / "record.json").write_text('{"type": "object"}\n', encoding="utf-8")
    return root


def stage_file(pipeline: Path) -> Path:
    return pipeline / "stages" / "10_enrich.py"


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    with DatasetWriter(path, "jsonl") as sink:
        sink(rows)
    return path


# --- code hash -------------------------------------------------------------------------------


def test_code_hash_is_stable(pipeline: Path) -> None:
    first = code_hash(stage_file(pipeline))
    assert len(first) == 64
    assert code_hash(stage_file(pipeline)) == first
    assert code_hash(stage_file(pipeline), pipeline) == first  # the default pipeline folder


@pytest.mark.parametrize(
    ("change", "path", "content"),
    [
        ("edit the stage", "stages/10_enrich.py", "STAGE = 2\n"),
        ("edit a shared helper", "shared/helpers.py", "def f(): return 2\n"),
        ("add a shared module", "shared/sub/more.py", "X = 1\n"),
        ("edit a JSON contract", "contracts/record.json", '{"type": "array"}\n'),
        ("add an Avro contract", "contracts/rec.avsc", '{"type": "record"}\n'),
    ],
)
def test_code_hash_changes_with_the_code(
    pipeline: Path, change: str, path: str, content: str
) -> None:
    before = code_hash(stage_file(pipeline))
    (pipeline / path).parent.mkdir(parents=True, exist_ok=True)
    (pipeline / path).write_text(content, encoding="utf-8")
    assert code_hash(stage_file(pipeline)) != before, change


def test_code_hash_changes_when_a_helper_is_renamed_or_removed(pipeline: Path) -> None:
    before = code_hash(stage_file(pipeline))
    helper = pipeline / "shared" / "helpers.py"
    helper.rename(pipeline / "shared" / "util.py")
    renamed = code_hash(stage_file(pipeline))
    assert renamed != before
    (pipeline / "shared" / "util.py").unlink()
    assert code_hash(stage_file(pipeline)) not in {before, renamed}


@pytest.mark.parametrize(
    "path",
    [
        "shared/__pycache__/helpers.cpython-311.pyc",
        "shared/__pycache__/helpers.py",
        "shared/notes.txt",
        "stages/20_other.py",  # another stage is not this stage's code
        "config.yaml",
    ],
)
def test_code_hash_ignores_what_a_stage_does_not_import(pipeline: Path, path: str) -> None:
    before = code_hash(stage_file(pipeline))
    (pipeline / path).parent.mkdir(parents=True, exist_ok=True)
    (pipeline / path).write_text("anything\n", encoding="utf-8")
    assert code_hash(stage_file(pipeline)) == before


def test_code_hash_ignores_renumbering_the_stage(pipeline: Path) -> None:
    before = code_hash(stage_file(pipeline))
    moved = stage_file(pipeline).rename(pipeline / "stages" / "15_enrich.py")
    assert code_hash(moved) == before


def test_code_hash_without_shared_or_contracts(tmp_path: Path) -> None:
    (tmp_path / "p" / "stages").mkdir(parents=True)
    stage = tmp_path / "p" / "stages" / "00_source.py"
    stage.write_text("X = 1\n", encoding="utf-8")
    assert len(code_hash(stage)) == 64


# --- config hash -----------------------------------------------------------------------------


class Params(BaseModel):
    size: int = 8
    out: Path = Path("data/processed")


def test_config_hash_is_canonical() -> None:
    a = {"persist": {"path": "data/processed", "format": "parquet"}, "params": {"size": 8}}
    b = {"params": {"size": 8}, "persist": {"format": "parquet", "path": "data/processed"}}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "params": {"size": 9}})
    assert config_hash(None) != config_hash({})
    assert config_hash(1) != config_hash("1")


def test_config_hash_of_models_paths_and_sets() -> None:
    assert config_hash(Params()) == config_hash({"size": 8, "out": "data/processed"})
    assert config_hash(Params(size=9)) != config_hash(Params())
    assert config_hash({"p": Path("a/b")}) == config_hash({"p": "a/b"})
    assert config_hash({"s": {3, 1, 2}}) == config_hash({"s": [1, 2, 3]})


def test_config_hash_refuses_what_it_cannot_hash() -> None:
    with pytest.raises(TypeError, match="cannot be hashed"):
        config_hash({"f": object()})


# --- input hash ------------------------------------------------------------------------------


def test_input_hash(tmp_path: Path) -> None:
    assert input_hash(None) == ""
    data = write(tmp_path / "raw", [{"n": 1}])
    assert input_hash(data) == dataset_fingerprint(data)
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        input_hash(tmp_path / "missing")


def test_compute(pipeline: Path, tmp_path: Path) -> None:
    raw = write(tmp_path / "data" / "raw", [{"n": 1}])
    fp = StageFingerprint.compute(stage_file(pipeline), {"params": {"size": 8}}, raw)
    assert fp == StageFingerprint(
        code_hash=code_hash(stage_file(pipeline)),
        config_hash=config_hash({"params": {"size": 8}}),
        input_hash=dataset_fingerprint(raw),
    )
    source = StageFingerprint.compute(stage_file(pipeline), None, None, pipeline_dir=pipeline)
    assert source.input_hash == ""


# --- the cache -------------------------------------------------------------------------------


@pytest.fixture
def setup(pipeline: Path, tmp_path: Path) -> tuple[RunCache, StageFingerprint, Path, Path]:
    """A cache, the fingerprint `enrich` ran with, its input and its (recorded) output."""
    raw = write(tmp_path / "data" / "raw", [{"n": 1}, {"n": 2}])
    out = write(tmp_path / "data" / "processed", [{"n": 2}, {"n": 4}])
    cache = RunCache(tmp_path / ".conveyor")
    fp = StageFingerprint.compute(stage_file(pipeline), {"params": {"size": 8}}, raw)
    cache.record("enrich", fp)
    return cache, fp, raw, out


def test_a_stage_never_run_is_not_fresh(tmp_path: Path) -> None:
    cache = RunCache(tmp_path / ".conveyor")
    fp = StageFingerprint("c", "k", "")
    out = write(tmp_path / "out", [{"a": 1}])
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) == "never run"
    assert cache.get("enrich") is None
    assert not (tmp_path / ".conveyor").exists()  # asking writes nothing


def test_unchanged_is_fresh(setup: tuple[RunCache, StageFingerprint, Path, Path]) -> None:
    cache, fp, _, out = setup
    assert cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) is None
    assert cache.get("enrich") == fp
    assert not cache.is_fresh("other", fp, out)


def test_a_code_change_is_not_fresh(
    setup: tuple[RunCache, StageFingerprint, Path, Path], pipeline: Path
) -> None:
    cache, _, raw, out = setup
    (pipeline / "shared" / "helpers.py").write_text("def f(): return 3\n", encoding="utf-8")
    fp = StageFingerprint.compute(stage_file(pipeline), {"params": {"size": 8}}, raw)
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) == "code changed"


def test_a_config_change_is_not_fresh(
    setup: tuple[RunCache, StageFingerprint, Path, Path], pipeline: Path
) -> None:
    cache, _, raw, out = setup
    fp = StageFingerprint.compute(stage_file(pipeline), {"params": {"size": 9}}, raw)
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) == "config changed"


def test_an_input_change_is_not_fresh(
    setup: tuple[RunCache, StageFingerprint, Path, Path], pipeline: Path
) -> None:
    cache, recorded, raw, out = setup
    write(raw, [{"n": 1}, {"n": 3}])  # the previous stage re-ran with other output
    fp = StageFingerprint.compute(stage_file(pipeline), {"params": {"size": 8}}, raw)
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) == "input changed"
    write(raw, [{"n": 1}, {"n": 2}])  # ... and back to the same content: fresh again
    fp = StageFingerprint.compute(stage_file(pipeline), {"params": {"size": 8}}, raw)
    assert fp == recorded
    assert cache.is_fresh("enrich", fp, out)


def test_several_changes_are_all_named(
    setup: tuple[RunCache, StageFingerprint, Path, Path],
) -> None:
    cache, fp, _, out = setup
    other = dataclasses.replace(fp, code_hash="x", input_hash="y")
    assert cache.stale_reason("enrich", other, out) == "code changed, input changed"


def test_a_deleted_output_is_not_fresh(
    setup: tuple[RunCache, StageFingerprint, Path, Path],
) -> None:
    cache, fp, _, out = setup
    (out / MANIFEST_NAME).unlink()
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) == "output missing"
    for file in out.iterdir():
        file.unlink()
    out.rmdir()
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.stale_reason("enrich", fp, out) == "output missing"


def test_a_corrupt_output_is_not_fresh(
    setup: tuple[RunCache, StageFingerprint, Path, Path],
) -> None:
    cache, fp, _, out = setup
    (out / MANIFEST_NAME).write_text("{broken", encoding="utf-8")
    assert cache.stale_reason("enrich", fp, out) == "output invalid"
    write(out, [{"n": 1}])
    (out / "part-00000.jsonl").unlink()
    assert cache.stale_reason("enrich", fp, out) == "output invalid"


def test_a_recorded_output_hash_catches_a_replaced_output(
    setup: tuple[RunCache, StageFingerprint, Path, Path],
) -> None:
    cache, fp, _, out = setup
    cache.record("enrich", fp, out)
    assert cache.is_fresh("enrich", fp, out)
    write(out, [{"n": "something else"}])
    assert cache.stale_reason("enrich", fp, out) == "output changed"


# --- the cache file --------------------------------------------------------------------------


def test_the_cache_file_persists_and_merges(
    setup: tuple[RunCache, StageFingerprint, Path, Path], tmp_path: Path
) -> None:
    cache, fp, _, out = setup
    other = RunCache(tmp_path / ".conveyor")  # another run, later
    assert other.is_fresh("enrich", fp, out)
    source = StageFingerprint("a", "b", "")
    other.record("source", source)
    assert cache.get("source") == source  # read from disk, not from memory
    assert cache.get("enrich") == fp
    data = json.loads((tmp_path / ".conveyor" / CACHE_FILE).read_text(encoding="utf-8"))
    assert data["version"] == 1
    assert data["stages"]["source"] == {"code_hash": "a", "config_hash": "b", "input_hash": ""}
    assert sorted(p.name for p in (tmp_path / ".conveyor").iterdir()) == [CACHE_FILE]


def test_forget_and_clear(setup: tuple[RunCache, StageFingerprint, Path, Path]) -> None:
    cache, fp, _, out = setup
    cache.record("source", StageFingerprint("a", "b", ""))
    cache.forget("enrich")
    cache.forget("never-recorded")
    assert not cache.is_fresh("enrich", fp, out)
    assert cache.get("source") is not None
    cache.clear()
    assert cache.get("source") is None
    cache.clear()  # clearing twice is fine


def test_an_unreadable_cache_is_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / ".conveyor"
    state.mkdir()
    (state / CACHE_FILE).write_text("{not json", encoding="utf-8")
    cache = RunCache(state)
    with caplog.at_level(logging.WARNING, logger="conveyor.project.cache"):
        assert cache.get("enrich") is None
    assert "ignoring unreadable run cache" in caplog.text
    (state / CACHE_FILE).write_text('{"version": 99, "stages": {}}', encoding="utf-8")
    assert cache.get("enrich") is None
    (state / CACHE_FILE).write_text(
        '{"version": 1, "stages": {"enrich": {"code_hash": 1}}}', encoding="utf-8"
    )
    assert cache.get("enrich") is None
    cache.record("enrich", StageFingerprint("a", "b", "c"))  # recording repairs the file
    assert cache.get("enrich") == StageFingerprint("a", "b", "c")


def test_a_failed_save_keeps_the_old_file(
    setup: tuple[RunCache, StageFingerprint, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, *_ = setup
    before = (tmp_path / ".conveyor" / CACHE_FILE).read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("conveyor.project.cache.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.record("source", StageFingerprint("a", "b", ""))
    assert (tmp_path / ".conveyor" / CACHE_FILE).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / ".conveyor").iterdir()) == [CACHE_FILE]
