"""config.yaml of a pipeline project: located errors, interpolation, overrides (ADR 0003)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.errors import ConfigError, ProjectError
from conveyor.project.config import load_config, parse_overrides
from conveyor.project.project import load_project

PIPELINE_KEYS = (
    "name",
    "batch_size",
    "capacity",
    "linger",
    "concurrency",
    "executor",
    "dask",
    "contracts",
    "sample_rate",
    "dead_letters",
    "state_dir",
    "grace_period",
    "max_dead_letters",
    "hooks",
    "events",
    "checkpoints",
    "checkpoint_every",
    "allow_outside_project",
)
STAGE_KEYS = (
    "concurrency",
    "executor",
    "workers",
    "ordered",
    "retry",
    "timeout",
    "rate_limit",
    "input_contract",
    "output_contract",
    "persist",
    "window",
    "params",
)
SECRET = "s3cr3t-value"


def _config(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "config.yaml"
    file.write_text(text, encoding="utf-8")
    return file


def _error(file: Path, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None):
    with pytest.raises(ConfigError) as info:
        load_config(file, overrides, env={} if env is None else env)
    return info.value


def _write_config(project: Path, text: str) -> Path:
    file = project / "src" / "pipeline" / "config.yaml"
    file.write_text(text, encoding="utf-8")
    return file


def _load_error(project: Path, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_project(project, overrides)
    return info.value


# --- loading and defaults --------------------------------------------------------------


def test_missing_file_means_all_defaults(tmp_path: Path) -> None:
    loaded = load_config(tmp_path / "config.yaml", env={})
    assert loaded.config.pipeline.batch_size == 1000
    assert loaded.config.pipeline.executor == "inline"
    assert loaded.config.stages == {}
    assert loaded.config.branches == {}


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    loaded = load_config(_config(tmp_path, "# nothing yet\n"), env={})
    assert loaded.config.pipeline.dead_letters == ".conveyor/dead_letters.db"


def test_values_and_positions_are_kept(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: demo\n  batch_size: 10\n")
    loaded = load_config(file, env={})
    assert loaded.config.pipeline.name == "demo"
    assert loaded.config.pipeline.batch_size == 10
    assert loaded.where(("pipeline", "batch_size")) == (file, 3, 3)
    assert loaded.where(("pipeline", "batch_size", "deeper")) == (file, 3, 3)
    assert loaded.where(("stages",)) == (file, None, None)


def test_a_config_that_is_not_a_mapping(tmp_path: Path) -> None:
    file = _config(tmp_path, "- a\n- b\n")
    error = _error(file)
    assert str(error) == f"{file}:1:1: config.yaml must be a mapping of sections"
    assert error.file == file
    assert error.line == 1


# --- unknown keys ----------------------------------------------------------------------


def test_unknown_key_is_located_with_valid_keys_and_suggestion(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: demo\n  batchsize: 3\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:3:3: unknown key 'batchsize' in pipeline; did you mean 'batch_size'? "
        f"(valid keys: {', '.join(PIPELINE_KEYS)})"
    )
    assert error.file == file
    assert (error.line, error.column) == (3, 3)
    assert error.key == "pipeline.batchsize"
    assert error.valid_keys == PIPELINE_KEYS
    assert isinstance(error, ProjectError)


def test_unknown_key_in_a_stage_section(tmp_path: Path) -> None:
    file = _config(tmp_path, "stages:\n  enrich:\n    concurency: 3\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:3:5: unknown key 'concurency' in stages.enrich; did you mean 'concurrency'? "
        f"(valid keys: {', '.join(STAGE_KEYS)})"
    )
    assert error.key == "stages.enrich.concurency"
    assert error.valid_keys == STAGE_KEYS
    assert (error.line, error.column) == (3, 5)


def test_unknown_key_in_a_nested_model(tmp_path: Path) -> None:
    file = _config(tmp_path, "stages:\n  enrich:\n    retry:\n      atempts: 3\n")
    error = _error(file)
    assert "unknown key 'atempts' in stages.enrich.retry; did you mean 'attempts'?" in str(error)
    assert error.key == "stages.enrich.retry.atempts"
    assert error.valid_keys == (
        "attempts",
        "backoff",
        "multiplier",
        "max_backoff",
        "jitter",
        "retry_on",
    )
    assert (error.line, error.column) == (4, 7)


def test_unknown_top_level_key_without_a_close_match(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: x\nzzz: 1\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:3:1: unknown key 'zzz' in the top level "
        "(valid keys: pipeline, params, stages, branches, source, sink)"
    )
    assert "did you mean" not in str(error)
    assert error.key == "zzz"
    assert error.valid_keys == ("pipeline", "params", "stages", "branches", "source", "sink")


def test_several_problems_are_all_reported_first_one_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batchsize: 3\n  executor: gpu\n")
    error = _error(file)
    lines = str(error).splitlines()
    assert len(lines) == 2
    # pydantic reports in field order: executor (a field) before the extra key
    assert lines[0] == (
        f"{file}:3:3: pipeline.executor: Input should be 'inline', 'thread', 'process' or 'dask'"
    )
    assert lines[1].startswith(f"{file}:2:3: unknown key 'batchsize' in pipeline; ")
    assert error.key == "pipeline.executor"
    assert (error.line, error.column) == (3, 3)


# --- wrong types and values ------------------------------------------------------------


def test_batch_size_zero_is_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: 0\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:2:3: pipeline.batch_size: Input should be greater than or equal to 1"
    )
    assert error.key == "pipeline.batch_size"
    assert (error.line, error.column) == (2, 3)


def test_unknown_executor_is_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "stages:\n  enrich:\n    executor: gpu\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:3:5: stages.enrich.executor: Input should be 'inline', 'thread', 'process' "
        "or 'dask'"
    )
    assert error.key == "stages.enrich.executor"


def test_wrong_type_is_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  linger: soon\n")
    error = _error(file)
    assert str(error).startswith(f"{file}:2:3: pipeline.linger: Input should be a valid number")
    assert error.key == "pipeline.linger"


def test_error_inside_a_flow_mapping_points_at_the_key(tmp_path: Path) -> None:
    file = _config(tmp_path, "stages:\n  enrich:\n    retry: {attempts: 0}\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:3:13: stages.enrich.retry.attempts: Input should be greater than or equal to 1"
    )


def test_invalid_yaml_is_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: demo\n  batch_size: [1\n")
    error = _error(file)
    assert str(error) == f"{file}:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'"
    assert (error.line, error.column) == (4, 1)
    assert error.__cause__ is not None


def test_invalid_yaml_indentation_is_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: demo\n   batch_size: 3\n")
    error = _error(file)
    assert str(error).startswith(f"{file}:3:")
    assert "invalid YAML: " in str(error)
    assert error.line == 3


# --- ${VAR} interpolation --------------------------------------------------------------


def test_variable_from_env_argument_is_parsed_as_yaml_scalar(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: ${SIZE}\n  name: run-${WHO}\n")
    loaded = load_config(file, env={"SIZE": "25", "WHO": "ada"})
    assert loaded.config.pipeline.batch_size == 25
    assert loaded.config.pipeline.name == "run-ada"
    assert ("pipeline", "batch_size") in loaded.secrets
    assert ("pipeline", "name") in loaded.secrets


def test_variable_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_LINGER", "0.5")
    file = _config(tmp_path, "pipeline:\n  linger: ${CONVEYOR_TEST_LINGER}\n")
    assert load_config(file).config.pipeline.linger == 0.5


def test_variable_default_when_unset(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: ${SIZE:-7}\n  name: ${NAME:-}\n")
    loaded = load_config(file, env={})
    assert loaded.config.pipeline.batch_size == 7
    assert loaded.config.pipeline.name is None  # an empty scalar is null


def test_variable_set_wins_over_default(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: ${SIZE:-7}\n")
    assert load_config(file, env={"SIZE": "9"}).config.pipeline.batch_size == 9


def test_variables_in_lists(tmp_path: Path) -> None:
    file = _config(
        tmp_path, "stages:\n  enrich:\n    retry:\n      retry_on: [ValueError, '${KIND}']\n"
    )
    loaded = load_config(file, env={"KIND": "KeyError"})
    assert loaded.config.stages["enrich"].retry.retry_on == ["ValueError", "KeyError"]


def test_missing_variable_is_named_and_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: demo\n  batch_size: ${MISSING_SIZE}\n")
    error = _error(file)
    assert str(error) == (
        f"{file}:3:3: environment variable MISSING_SIZE is not set (used by "
        "pipeline.batch_size); set it, or write ${MISSING_SIZE:-default}"
    )
    assert error.key == "pipeline.batch_size"


def test_secret_value_never_appears_in_a_type_error(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: ${SECRET}\n")
    error = _error(file, env={"SECRET": SECRET})
    assert SECRET not in str(error)
    assert str(error).startswith(f"{file}:2:3: pipeline.batch_size: ")
    assert SECRET not in repr(error.args)


def test_secret_value_never_appears_in_a_literal_error(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  executor: ${SECRET}\n")
    error = _error(file, env={"SECRET": SECRET})
    assert SECRET not in str(error)
    assert error.key == "pipeline.executor"


def test_secret_that_is_not_a_yaml_scalar_is_kept_as_text(tmp_path: Path) -> None:
    leaky = "[s3cr3t-value"
    file = _config(tmp_path, "pipeline:\n  name: ${SECRET}\n  batch_size: ${SECRET}\n")
    error = _error(file, env={"SECRET": leaky})
    assert "s3cr3t-value" not in str(error)
    assert error.key == "pipeline.batch_size"
    loaded = load_config(_config(tmp_path, "pipeline:\n  name: ${SECRET}\n"), env={"SECRET": leaky})
    assert loaded.config.pipeline.name == leaky


def test_secret_value_never_appears_in_a_stage_param_error(project: Path) -> None:
    stage = project / "src" / "pipeline" / "stages" / "00_source.py"
    stage.write_text(
        stage.read_text()
        .replace(
            "        count: int = 1000\n",
            "        count: int = 1000\n"
            "        token: str = ''\n\n"
            "        @field_validator('token')\n"
            "        @classmethod\n"
            "        def _check(cls, value: str) -> str:\n"
            "            raise ValueError(f'token {value} was revoked')\n",
        )
        .replace(
            "from pydantic import BaseModel", "from pydantic import BaseModel, field_validator"
        )
    )
    _write_config(project, "stages:\n  source:\n    params:\n      token: ${TOKEN}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKEN", SECRET)
        error = _load_error(project)
    assert SECRET not in str(error)
    assert "token *** was revoked" in str(error)
    assert error.key == "stages.source.params.token"
    assert error.line == 4


# --- overrides -------------------------------------------------------------------------


def test_parse_overrides_types_values_as_yaml_scalars() -> None:
    assert parse_overrides(
        ["a.b=1", "a.c=0.5", "d=true", "e=null", "f=text", "g=", "h=[1, 2]", "i=x=y"]
    ) == {
        ("a", "b"): 1,
        ("a", "c"): 0.5,
        ("d",): True,
        ("e",): None,
        ("f",): "text",
        ("g",): "",
        ("h",): [1, 2],
        ("i",): "x=y",
    }


def test_parse_overrides_keeps_unparsable_values_as_text() -> None:
    assert parse_overrides(["a=[1"]) == {("a",): "[1"}


@pytest.mark.parametrize("item", ["batch_size", "=3", "a..b=1", ".a=1", "a.=1"])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    key = item.partition("=")[0]
    assert str(info.value) == (
        f"command line: override {item!r} is not key=value (dotted keys for nesting, e.g. "
        "stages.enrich.concurrency=4)"
    )
    assert info.value.file == "command line"
    assert info.value.key == key


def test_overrides_replace_file_values_and_create_sections(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: 10\n")
    loaded = load_config(
        file,
        ["pipeline.batch_size=500", "stages.enrich.concurrency=4", "stages.enrich.ordered=false"],
        env={},
    )
    assert loaded.config.pipeline.batch_size == 500
    assert loaded.config.stages["enrich"].concurrency == 4
    assert loaded.config.stages["enrich"].ordered is False


def test_override_replaces_a_variable_and_is_no_secret(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: ${SIZE}\n")
    loaded = load_config(file, ["pipeline.batch_size=3"], env={})
    assert loaded.config.pipeline.batch_size == 3
    assert ("pipeline", "batch_size") not in loaded.secrets


def test_override_errors_are_located_on_the_command_line(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  batch_size: 10\n")
    error = _error(file, ("pipeline.batch_size=0",))
    assert str(error) == (
        "command line: pipeline.batch_size: Input should be greater than or equal to 1"
    )
    assert error.file == "command line"
    assert error.line is None
    assert error.column is None


def test_unknown_key_in_an_override(tmp_path: Path) -> None:
    error = _error(_config(tmp_path, ""), ("stages.enrich.concurency=3",))
    assert str(error) == (
        "command line: unknown key 'concurency' in stages.enrich; did you mean 'concurrency'? "
        f"(valid keys: {', '.join(STAGE_KEYS)})"
    )
    assert error.key == "stages.enrich.concurency"
    assert error.valid_keys == STAGE_KEYS


# --- stage names and stage params (need the project's stage files) ---------------------


def test_unknown_stage_name_under_stages(project: Path) -> None:
    file = _write_config(
        project, "pipeline:\n  name: demo\nstages:\n  enrch:\n    concurrency: 2\n"
    )
    error = _load_error(project)
    assert str(error) == (
        f"{file}:4:3: unknown stage 'enrch'; did you mean 'enrich'? "
        "(stages: source, validate, enrich, sink)"
    )
    assert error.key == "stages.enrch"
    assert error.valid_keys == ("source", "validate", "enrich", "sink")
    assert (error.line, error.column) == (4, 3)


def test_unknown_stage_name_in_an_override(project: Path) -> None:
    error = _load_error(project, ("stages.sinc.concurrency=2",))
    assert str(error) == (
        "command line: unknown stage 'sinc'; did you mean 'sink'? "
        "(stages: source, validate, enrich, sink)"
    )


def test_unknown_stage_param_is_located(project: Path) -> None:
    file = _write_config(project, "stages:\n  source:\n    params:\n      cuont: 5\n")
    error = _load_error(project)
    assert str(error) == (
        f"{file}:4:7: unknown key 'cuont' in stages.source.params; did you mean 'count'? "
        "(valid keys: count)"
    )
    assert error.key == "stages.source.params.cuont"
    assert error.valid_keys == ("count",)
    assert (error.line, error.column) == (4, 7)


def test_wrong_stage_param_type_is_located(project: Path) -> None:
    file = _write_config(project, "stages:\n  source:\n    params:\n      count: many\n")
    error = _load_error(project)
    assert str(error).startswith(
        f"{file}:4:7: stages.source.params.count: Input should be a valid integer"
    )
    assert error.key == "stages.source.params.count"


def test_wrong_stage_param_type_in_an_override(project: Path) -> None:
    error = _load_error(project, ("stages.source.params.count=many",))
    assert str(error).startswith(
        "command line: stages.source.params.count: Input should be a valid integer"
    )


def test_params_for_a_stage_without_config_model(project: Path) -> None:
    file = _write_config(project, "stages:\n  enrich:\n    params: {factor: 2}\n")
    error = _load_error(project)
    assert str(error) == (
        f"{file}:3:5: stage 'enrich' is an instance and takes no params; "
        "make it a class with a Config model"
    )
    assert error.key == "stages.enrich.params"
