"""Hostile config (issue 9, hardening): YAML bombs, unsafe tags, recursive aliases, odd
names and paths leaving the project are refused with a one-line error at file:line; the
run cache's fingerprints confirm no guess of a secret parameter."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import ENV, conveyor

from conveyor.errors import ConfigError, ProjectError
from conveyor.project.cache import KEY_FILE, canonical_json, code_hash, config_hash
from conveyor.project.config import (
    MAX_ALIASES,
    MAX_DEPTH,
    load_config,
    read_config_document,
)
from conveyor.project.project import load_project
from conveyor.project.run import run_project
from conveyor.project.scaffold import new_project

BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
"""The "billion laughs": nine levels of nine aliases, 9**9 strings once expanded."""


def _config(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "config.yaml"
    file.write_text(text, encoding="utf-8")
    return file


def _refusal(file: Path, overrides: tuple[str, ...] = (), **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(file, overrides, env=env)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _project(tmp_path: Path, extra: str = "") -> Path:
    root = tmp_path / "proj"
    new_project(root)
    config = root / "src" / "pipeline" / "config.yaml"
    text = config.read_text(encoding="utf-8").replace("count: 1000", "count: 20")
    config.write_text(text + extra, encoding="utf-8")
    return root.resolve()


# --- YAML ----------------------------------------------------------------------------------


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    file = _config(tmp_path, BOMB)
    code = (
        "import sys; from pathlib import Path; from conveyor.project.config import load_config\n"
        "from conveyor.errors import ConfigError\n"
        "try:\n    load_config(Path(sys.argv[1]))\n"
        "except ConfigError as exc:\n    print(exc)\n"
    )
    # Bounded by the subprocess's timeout, not by a duration measured in the test.
    done = subprocess.run(
        [sys.executable, "-c", code, str(file)], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{file}:1:14: the document expands to more than 100,000 values (aliases repeat what "
        "they name); config.yaml is refused (an alias bomb?)"
    )


def test_alias_bomb_stalls_no_command(project: Path) -> None:
    (project / "src" / "pipeline" / "config.yaml").write_text(BOMB, encoding="utf-8")
    for args in (["run", "."], ["dlq", "list", "."], ["graph", "."], ["check", "."]):
        done = conveyor(*args, cwd=project, timeout=20)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "expands to more than 100,000 values" in done.stderr, args
        assert "Traceback" not in done.stderr


def test_too_many_aliases(tmp_path: Path) -> None:
    many = "base: &x 1\nlist: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    message = _refusal(_config(tmp_path, many))
    assert message.endswith(
        f"more than {MAX_ALIASES:,} aliases (*name); config.yaml is refused (an alias bomb?)"
    )
    assert message.startswith(f"{tmp_path / 'config.yaml'}:2:")


@pytest.mark.parametrize(
    ("text", "where", "tag"),
    [
        ("pipeline:\n  ? !!python/name:os.system\n  : 1\n", "2:5", "!!python/name:os.system"),
        (
            "pipeline:\n  name: !!python/object/apply:os.system [ls]\n",
            "2:9",
            "!!python/object/apply:os.system",
        ),
        ("pipeline: !!python/object:os.Foo {a: 1}\n", "1:11", "!!python/object:os.Foo"),
        ("stages: !!python/tuple [1]\n", "1:9", "!!python/tuple"),
    ],
)
def test_python_tags_are_refused(tmp_path: Path, text: str, where: str, tag: str) -> None:
    file = _config(tmp_path, text)
    assert _refusal(file) == (
        f"{file}:{where}: unsafe YAML tag {tag}: config.yaml never creates Python objects; "
        "write a plain value (a class or function is named as text, module:name)"
    )


@pytest.mark.parametrize("text", ["a: !foo bar\n", "a: !!binary aGVsbG8=\n", "a: !!set {x}\n"])
def test_other_tags_are_refused(tmp_path: Path, text: str) -> None:
    assert "unsupported YAML tag !" in _refusal(_config(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "where"),
    [("pipeline: &a\n  name: *a\n", "1:11"), ("stages: &a [*a]\n", "1:9")],
)
def test_self_referencing_alias_is_refused(tmp_path: Path, text: str, where: str) -> None:
    file = _config(tmp_path, text)
    assert _refusal(file) == (
        f"{file}:{where}: an alias refers to the mapping or list it is inside (a recursive "
        "structure); config.yaml cannot hold one"
    )


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    file = _config(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert _refusal(file).endswith(f"nested more than {MAX_DEPTH} levels deep")


def test_keys_must_be_short_plain_text(tmp_path: Path) -> None:
    file = _config(tmp_path, "x" * 300 + ": 1\n")
    assert _refusal(file) == f"{file}:1:1: a key of 300 characters; keys have at most 256"
    file = _config(tmp_path, "? [a, b]\n: 1\n")
    assert _refusal(file) == f"{file}:1:3: a key must be plain text, not a mapping or a list"


def test_characters_and_encodings_yaml_cannot_hold(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: a\x00b\n")
    assert _refusal(file) == (
        f"{file}:2:10: invalid YAML: special characters are not allowed (character #x0000)"
    )
    file.write_bytes(b"pipeline:\n  name: caf\xe9\n")
    assert _refusal(file) == (
        f"{file}:2:1: is not UTF-8 text (byte 0xe9 cannot be decoded); save it as UTF-8"
    )
    file.write_bytes(b"# " + b"x" * (4 << 20) + b"\n")
    assert _refusal(file).endswith(
        "is larger than 4,194,304 bytes; a config file holds settings, not data"
    )


def test_a_bad_timestamp_is_located(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: !!timestamp nope\n")
    assert _refusal(file).startswith(f"{file}:2:9: !!timestamp value cannot be read: ")


def test_plain_yaml_still_reads_merge_keys_and_equals(tmp_path: Path) -> None:
    file = _config(
        tmp_path,
        "stages:\n  a: &base {concurrency: 7, timeout: 2}\n  b:\n    <<: *base\n    timeout: 3\n"
        "pipeline:\n  name: =\n",
    )
    loaded = load_config(file)
    assert loaded.raw["stages"] == {
        "a": {"concurrency": 7, "timeout": 2},
        "b": {"concurrency": 7, "timeout": 3},
    }
    assert loaded.config.pipeline.name == "="
    assert loaded.where(("stages", "b", "timeout"))[1:] == (5, 5)


def test_a_300_character_pipeline_name(tmp_path: Path) -> None:
    file = _config(tmp_path, f"pipeline:\n  name: {'a' * 300}\n")
    message = (
        "pipeline.name: Value error, the pipeline's name must be 1 to 100 characters without "
        "control characters (this one has 300 characters)"
    )
    assert _refusal(file) == f"{file}:2:3: {message}"
    assert _refusal(_config(tmp_path, ""), (f"pipeline.name={'a' * 300}",)) == (
        f"command line: {message}"
    )
    assert _refusal(_config(tmp_path, 'pipeline:\n  name: "a\\x1b[2Jb"\n')).endswith(
        "without control characters (this one has 6 characters)"
    )


@pytest.mark.parametrize(
    ("text", "where", "what", "name"),
    [
        ("stages:\n  'Bad Name!':\n    params: {}\n", "2:3", "stage", "Bad Name!"),
        ("stages:\n  " + "s" * 65 + ":\n    params: {}\n", "2:3", "stage", "s" * 65),
        ("branches:\n  'x-y':\n    a: [s]\n", "2:3", "branch", "x-y"),
        ("branches:\n  ok:\n    'a b': [s]\n", "3:5", "branch arm", "a b"),
    ],
)
def test_stage_and_branch_names_are_identifiers(
    tmp_path: Path, text: str, where: str, what: str, name: str
) -> None:
    file = _config(tmp_path, text)
    assert _refusal(file) == (
        f"{file}:{where}: {what} name '{name}' is not a name: use a letter or '_' followed by "
        "letters, digits and '_', at most 64 characters (stage names come from stage files, "
        "NN_name.py)"
    )


def test_overrides_and_variables_are_read_within_the_same_bounds(tmp_path: Path) -> None:
    file = _config(tmp_path, "pipeline:\n  name: ${NAME}\n")
    assert _refusal(file, ("pipeline.name=&a [*a]",)) == (
        "command line: override of pipeline.name: an alias refers to the mapping or list it "
        "is inside (a recursive structure); config.yaml cannot hold one"
    )
    assert "unsafe YAML tag !!python/name:os.system" in _refusal(
        file, ("pipeline.name=!!python/name:os.system",)
    )
    # A variable's value that is no plain YAML value is kept as text, never expanded.
    loaded = load_config(file, env={"NAME": "&a [*a]"})
    assert loaded.config.pipeline.name == "&a [*a]"


def test_read_config_document_is_the_bounded_reader(tmp_path: Path) -> None:
    assert read_config_document(_config(tmp_path, "a: [1, 2]\n")) == {"a": [1, 2]}
    assert read_config_document(tmp_path / "missing.yaml") is None
    with pytest.raises(ConfigError, match="unsafe YAML tag"):
        read_config_document(_config(tmp_path, "a: !!python/name:os.system\n"))


HOSTILE = "pipeline:\n  ? !!python/name:os.system\n  : 1\n"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "."],
        ["check", "."],
        ["graph", "."],
        ["dvc", "."],
        ["dlq", "list", "."],
        ["dlq", "show", "abc", "."],
        ["dlq", "replay", "."],
    ],
)
def test_every_command_gives_one_line_for_a_hostile_config(project: Path, args: list[str]) -> None:
    config = project / "src" / "pipeline" / "config.yaml"
    config.write_text(HOSTILE, encoding="utf-8")
    done = conveyor(*args, cwd=project, timeout=60)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {config}:2:5: unsafe YAML tag !!python/name:os.system: config.yaml never "
        "creates Python objects; write a plain value (a class or function is named as text, "
        "module:name)\n"
    )


def test_new_refuses_a_300_character_project_name(tmp_path: Path) -> None:
    with pytest.raises(ProjectError) as info:
        new_project(tmp_path / ("a" * 300))
    assert str(info.value).startswith(f"the project name '{'a' * 120}…' (300 characters) is not")
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "new", "b" * 300],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert "(300 characters) is not a folder name to make: use 1 to 100 characters" in done.stderr


# --- paths ---------------------------------------------------------------------------------


def _persisted(path: str, allow: str = "") -> str:
    """A ``stages.validate`` section (appended to the scaffold's ``stages:``)."""
    return f"  validate:\n    persist: {{path: {json.dumps(path)}{allow}}}\n"


def test_a_persist_path_leaving_the_project_is_refused_at_its_line(tmp_path: Path) -> None:
    root = _project(tmp_path, _persisted("../out"))
    config = root / "src" / "pipeline" / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_project(root)
    line = config.read_text().splitlines().index("  validate:") + 2
    assert str(info.value) == (
        f"{config}:{line}:15: stages.validate.persist.path '../out' is outside the project "
        f"folder {root} (it resolves to {tmp_path.resolve() / 'out'}); use a path inside the "
        "project, or set `allow_outside_project: true` in the persist: mapping to allow this "
        "path"
    )
    assert info.value.key == "stages.validate.persist.path"


def test_an_absolute_persist_path_elsewhere_is_refused_unless_allowed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "validated"
    root = _project(tmp_path, _persisted(str(elsewhere)))
    with pytest.raises(ConfigError, match=r"stages\.validate\.persist\.path '.*' is outside"):
        load_project(root)
    root = _project(tmp_path / "b", _persisted(str(elsewhere), ", allow_outside_project: true"))
    project = load_project(root)
    assert project.stage("validate").section.persist.allow_outside_project  # type: ignore[union-attr]
    run_project(root, handle_signals=False)
    assert (elsewhere / "_manifest.json").is_file()


def test_a_symlink_out_of_the_project_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = _project(tmp_path, _persisted("data/validated"))
    (root / "data").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert (
        f"stages.validate.persist.path 'data/validated' is outside the project folder {root} "
        f"(it resolves to {outside.resolve() / 'validated'})"
    ) in str(info.value)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (".", "is the project folder itself"),
        ("..", "is a folder above the project"),
        ("src/pipeline/shared/out", "lies inside the pipeline folder (code)"),
    ],
)
def test_a_persist_path_that_would_replace_the_project_or_its_code(
    tmp_path: Path, path: str, problem: str
) -> None:
    root = _project(tmp_path, _persisted(path, ", allow_outside_project: true"))
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert f"stages.validate.persist.path '{path}' {problem}" in str(info.value)


def test_persist_path_slash_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    root = _project(tmp_path)
    done = conveyor("run", ".", "stages.validate.persist.path=/", cwd=root)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: command line: stages.validate.persist.path '/' is outside the project folder "
        f"{root}; use a path inside the project, or set `allow_outside_project: true` in the "
        "persist: mapping to allow this path\n"
    )
    allowed = conveyor(
        "run",
        ".",
        "stages.validate.persist.path=/",
        "stages.validate.persist.allow_outside_project=true",
        cwd=root,
    )
    assert allowed.returncode == 1
    assert allowed.stderr == (
        "error: command line: stages.validate.persist.path '/' is a folder above the project; "
        "a dataset replaces its folder: use a folder such as data/validate\n"
    )


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ('"a\\0b"', "contains a control character (\\x00)"),
        ('"a\\e[2Jb"', "contains a control character (\\x1b)"),
        ('"' + "n" * 300 + '"', "has a file or folder name of 300 bytes; at most 255 are accepted"),
        ('"  "', "is empty"),
    ],
)
def test_odd_persist_paths(tmp_path: Path, path: str, problem: str) -> None:
    root = _project(tmp_path, f"  validate:\n    persist: {{path: {path}}}\n")
    with pytest.raises(ConfigError) as info:
        load_project(root)
    message = str(info.value)
    assert f"{problem}; name a file or folder inside the project" in message
    assert "\x00" not in message
    assert "\x1b" not in message


@pytest.mark.parametrize("key", ["dead_letters", "state_dir"])
def test_pipeline_paths_leaving_the_project(tmp_path: Path, key: str) -> None:
    target = tmp_path / "shared" / ("dlq.db" if key == "dead_letters" else "state")
    root = _project(tmp_path)
    config = root / "src" / "pipeline" / "config.yaml"
    config.write_text(config.read_text().replace("pipeline:\n", f"pipeline:\n  {key}: {target}\n"))
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert str(info.value) == (
        f"{config}:3:3: pipeline.{key} '{target}' is outside the project folder {root}; use a "
        f"path inside the project, or list it in pipeline.allow_outside_project "
        f"(`allow_outside_project: [{key}]` in the pipeline: section) to allow this path"
    )
    allowed = load_project(root, [f"pipeline.allow_outside_project=[{key}]"])
    assert allowed.config.config.pipeline.allow_outside_project == [key]
    with pytest.raises(ConfigError, match="Input should be 'dead_letters' or 'state_dir'"):
        load_project(root, ["pipeline.allow_outside_project=[sink]"])


def test_dlq_commands_check_the_dead_letter_path_too(tmp_path: Path) -> None:
    root = _project(tmp_path)
    done = conveyor("dlq", "list", ".", cwd=root)
    assert done.returncode == 0, done.stderr
    config = root / "src" / "pipeline" / "config.yaml"
    config.write_text(
        config.read_text().replace("pipeline:\n", "pipeline:\n  dead_letters: ../x.db\n")
    )
    done = conveyor("dlq", "list", ".", cwd=root)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"error: {config}:3:3: pipeline.dead_letters '../x.db' is outside"
    )
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("sink:\n  connector: jsonl\n  path: ../out.jsonl\n", "sink.path"),
        ("sink:\n  connector: csv\n  path: ../out.csv\n", "sink.path"),
        ("sink:\n  connector: parquet\n  path: ../out\n", "sink.path"),
        ("sink:\n  connector: sqlite\n  path: ../out.db\n  table: t\n", "sink.path"),
    ],
)
def test_sink_paths_leaving_the_project(tmp_path: Path, section: str, key: str) -> None:
    root = _project(tmp_path)
    (root / "src" / "pipeline" / "stages" / "90_sink.py").unlink()
    config = root / "src" / "pipeline" / "config.yaml"
    text = config.read_text().replace("  sink:\n    params:\n      path: data/readings.jsonl\n", "")
    config.write_text(text + section)
    line = len(text.splitlines()) + 3
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert str(info.value).startswith(f"{config}:{line}:3: {key} '../out")
    assert "is outside the project folder" in str(info.value)
    assert "set `allow_outside_project: true` beside it to allow this path" in str(info.value)
    config.write_text(text + section + "  allow_outside_project: true\n")
    sink = load_project(root).configured_sink
    assert sink is not None
    assert Path(sink.path).parent == tmp_path.resolve()


# --- the run cache's fingerprints ---------------------------------------------------------

SECRET = "hunter2-s3cr3t"

ENRICH = '''"""Adds the Fahrenheit value; holds an API token it would use."""

from pydantic import BaseModel

from conveyor import MapStage


class Enrich(MapStage):
    class Config(BaseModel):
        token: str
        offset: float = 0.0

    def __init__(self, config: Config) -> None:
        self.offset = config.offset
        super().__init__(self.enrich)

    def enrich(self, reading):
        return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32 + self.offset}
'''

SOURCE = '''"""Readings made from the params (a token among them)."""

from pydantic import BaseModel

from conveyor.project import Source


class Readings(Source):
    deterministic = True

    class Config(BaseModel):
        count: int = 20
        token: str = ""

    def __init__(self, config: Config) -> None:
        self.count = config.count

    def read(self):
        for i in range(self.count):
            yield {"sensor": f"s{i % 3}", "celsius": float(i % 50) - 10.0}
'''

CACHED = """
  source:
    params: {count: 20, token: "${API_TOKEN}"}
  validate:
    persist: {path: data/validated}
  enrich:
    persist: {path: data/enriched}
    params: {token: "${API_TOKEN}", offset: 1.5}
"""


def _guesses(root: Path) -> list[str]:
    """Every hash a reader of the state folder could compute from a guess of the secret:
    the unkeyed fingerprints of the stages' config sections and of the source."""
    pipeline = root / "src" / "pipeline"
    enrich = {
        "params": {"token": SECRET, "offset": 1.5},
        "persist": {"path": "data/enriched", "format": "jsonl", "allow_outside_project": False},
    }
    source = {"params": {"count": 20, "token": SECRET}}
    hashes = [config_hash(enrich), config_hash(source)]
    hashes.append(hashlib.sha256(canonical_json(enrich["params"]).encode()).hexdigest())
    made_by = code_hash(pipeline / "stages" / "00_source.py", pipeline)
    hashes.append(hashlib.sha256(f"{made_by}:{config_hash(source)}".encode()).hexdigest())
    return hashes


def _secret_project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    new_project(root)
    pipeline = root / "src" / "pipeline"
    (pipeline / "stages" / "00_source.py").write_text(SOURCE)
    (pipeline / "stages" / "20_enrich.py").write_text(ENRICH)
    config = pipeline / "config.yaml"
    text = config.read_text().replace(
        "stages:\n  source:\n    params:\n      count: 1000\n", "stages:"
    )
    config.write_text(text.replace("stages:", "stages:" + CACHED, 1))
    return root


def test_the_cache_confirms_no_guess_of_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _secret_project(tmp_path)
    monkeypatch.setenv("API_TOKEN", SECRET)
    run_project(root, handle_signals=False)

    state = root / ".conveyor"
    key = state / KEY_FILE
    assert key.stat().st_size == 32
    assert (key.stat().st_mode & 0o777) == 0o600
    cache = (state / "cache.json").read_text()
    assert {"validate", "enrich"} <= set(json.loads(cache)["stages"])
    everything = "".join(
        f.read_bytes().decode("latin-1") for f in state.rglob("*") if f.is_file() and f != key
    )
    assert SECRET not in everything
    for guess in _guesses(root):
        assert guess not in cache
        assert guess[:16] not in everything  # checkpoints keep 16 hex digits of a hash
    # Keyed with the project's secret, the cache still works: unchanged, the stages skip…
    again = run_project(root, ["stage=enrich"], handle_signals=False)
    assert again.skipped == ["enrich"]
    # … and with another secret value they run again.
    monkeypatch.setenv("API_TOKEN", SECRET + "!")
    assert run_project(root, ["stage=enrich"], handle_signals=False).skipped == []


def test_without_the_key_the_guesses_would_confirm_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the test above: with unkeyed hashes (how the cache was written
    before ADR 0008) the guesses are found, so their absence above means something."""
    import conveyor.project.run as run_module

    root = _secret_project(tmp_path)
    monkeypatch.setenv("API_TOKEN", SECRET)
    monkeypatch.setattr(run_module, "fingerprint_key", lambda project: None)
    run_project(root, handle_signals=False)
    cache = (root / ".conveyor" / "cache.json").read_text()
    guesses = _guesses(root)
    assert guesses[0] in cache  # the enrich stage's config hash
    assert guesses[3] in cache  # the source's digest, the validate stage's input hash


def test_a_lost_key_costs_one_rerun(tmp_path: Path) -> None:
    from conveyor.project.run import run_project as run

    root = _project(tmp_path, _persisted("data/validated"))
    run(root, handle_signals=False)
    assert run(root, ["stage=validate"], handle_signals=False).skipped == ["validate"]
    (root / ".conveyor" / KEY_FILE).unlink()
    assert run(root, ["stage=validate"], handle_signals=False).skipped == []
    assert run(root, ["stage=validate"], handle_signals=False).skipped == ["validate"]


def test_a_wide_key_file_is_narrowed(tmp_path: Path) -> None:
    from conveyor.project.cache import project_key

    key = project_key(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    assert project_key(tmp_path) == key
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / KEY_FILE).write_bytes(b"short")
    assert len(project_key(tmp_path)) == 32  # a damaged key is replaced
