"""``input_contract`` / ``output_contract`` of a stage in config.yaml (issue 11): a model
as ``module:Name`` or a schema file of ``contracts/``; what breaks it is dead-lettered at
that stage; a bad reference is an error at its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.dlq import open_dead_letter_store
from conveyor.errors import ConfigError
from conveyor.project import load_project, run_project
from conveyor.project.scaffold import new_project

SMALL = {
    "type": "object",
    "title": "small_reading",
    "properties": {"sensor": {"type": "string"}, "celsius": {"type": "number", "maximum": 10}},
    "required": ["sensor", "celsius"],
}


def _project(tmp_path: Path, enrich: str) -> Path:
    root = tmp_path / "demo"
    new_project(root)
    (root / "src/pipeline/contracts/small_reading.json").write_text(json.dumps(SMALL))
    config = root / "src/pipeline/config.yaml"
    text = config.read_text()
    assert "\nstages:\n" in text
    config.write_text(text.replace("\nstages:\n", f"\nstages:\n  enrich:\n{enrich}", 1))
    return root


def _letters(root: Path) -> dict[str, set[float]]:
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        found: dict[str, set[float]] = {}
        for letter in store.list():
            found.setdefault(letter.stage, set()).add(letter.record["celsius"])
        return found


def test_a_schema_file_of_contracts_checks_the_records_entering_a_stage(tmp_path: Path) -> None:
    root = _project(tmp_path, "    input_contract: small_reading.json\n")
    run = run_project(root, ["pipeline.max_dead_letters=100%"], handle_signals=False)
    assert run.report is not None
    letters = _letters(root)
    assert letters["enrich"]  # warm readings broke the contract at enrich
    assert all(c > 10 for c in letters["enrich"])
    out = [json.loads(line) for line in (root / "data/readings.jsonl").read_text().splitlines()]
    assert out
    assert all(r["celsius"] <= 10 for r in out)


def test_a_model_reference_and_bad_references(tmp_path: Path) -> None:
    root = _project(tmp_path, "    output_contract: pipeline.contracts.models:EnrichedReading\n")
    project = load_project(root)
    options = project.stage_options(project.stage("enrich"))
    assert options.output_contract is not None
    for bad, message in (
        ("no_such.json", "no such schema file"),
        ("pipeline.contracts.models:Nope", "cannot be imported|has no"),
    ):
        root = _project(tmp_path / bad.replace(":", "_"), f"    input_contract: {bad}\n")
        project = load_project(root)
        with pytest.raises(ConfigError, match=message) as info:
            project.stage_options(project.stage("enrich"))
        assert info.value.key == "stages.enrich.input_contract"
        assert info.value.line is not None
