"""``conveyor new``: a working project, or one new stage file (of a kind: map, filter, validate,
source, sink, aggregate, batch) between its neighbours.

Two templates (``conveyor new --template NAME PROJECT``):

- ``stream`` (the default, seed 000): ``src/pipeline/`` with numbered stage files,
  ``contracts/``, ``shared/`` and ``config.yaml`` (the files of :data:`_FILES` below);
- ``dataset`` (seed 002): ``src/<package>/`` with stages by name, ``transforms/``,
  ``schemas/``, ``configs/``, ``data/``, ``dvc.yaml``, tests and a ``pyproject.toml`` with
  a pixi manifest. Its files are real files under ``templates/dataset/`` in this package
  (found through :func:`importlib.resources.files`, so they work from a wheel or a zip):
  a ``.tmpl`` suffix on every text file, with ``{{project_slug}}`` (the folder's name),
  ``{{package_name}}`` (it as a Python identifier) and ``{{conveyor_version}}`` in their
  contents and ``{{package_name}}`` in their paths; other files (the bundled sample
  data) are copied byte for byte.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import keyword
import re
import sys
from collections.abc import Iterator, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

from conveyor._version import __version__
from conveyor.core._paths import shown
from conveyor.core._render import printable
from conveyor.errors import ConfigError, ProjectError
from conveyor.project.discovery import (
    StageFile,
    discover_stage_files,
    find_pipeline_dir,
    load_stage,
)
from conveyor.project.kinds import Sink, Source

__all__ = [
    "STAGE_KINDS",
    "TEMPLATES",
    "new_project",
    "new_stage",
    "package_name",
    "template_files",
    "template_root",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_PROJECT_NAME = 100
"""The longest project (folder) name ``conveyor new`` makes."""

TEMPLATES: Final = ("stream", "dataset")
"""The project templates of ``conveyor new --template``; the first is the default."""

TEMPLATE_SUFFIX: Final = ".tmpl"
"""The suffix of a template's text files (dropped in the project it makes)."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_DISTRIBUTION = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SHADOWED: Final = frozenset(
    {
        *("conveyor", "pydantic", "pydantic_core", "typing_extensions", "annotated_types"),
        *("yaml", "typer", "click", "rich", "fastjsonschema", "httpx", "httpcore", "anyio"),
        *("pytest", "dvc"),
    }
)
"""Packages a dataset project imports (Conveyor, its dependencies, its tools): a project
package of the same name would hide them."""

_FILES: dict[str, str] = {
    "src/pipeline/__init__.py": '"""The {name} pipeline."""\n',
    "src/pipeline/stages/__init__.py": "",
    "src/pipeline/contracts/__init__.py": "",
    "src/pipeline/contracts/models.py": '''"""The records passed between stages."""

from typing_extensions import TypedDict


class Reading(TypedDict):
    """A raw sensor reading, as the source emits it."""

    sensor: str
    celsius: float


class EnrichedReading(Reading):
    """A reading with its Fahrenheit value."""

    fahrenheit: float
''',
    "src/pipeline/shared/__init__.py": "",
    "src/pipeline/shared/units.py": '''"""Unit conversions shared by stages."""


def to_fahrenheit(celsius: float) -> float:
    """Celsius to Fahrenheit."""
    return celsius * 9 / 5 + 32
''',
    "src/pipeline/stages/00_source.py": '''"""Emits the readings (a stand-in source)."""

from collections.abc import Iterator

from pydantic import BaseModel

from conveyor.project import Source
from pipeline.contracts.models import Reading


class Readings(Source):
    """``count`` readings from three sensors: made from the params alone (deterministic),
    so an unchanged pipeline does not read them twice. A Source that reads files lists
    them in ``inputs()`` instead."""

    deterministic = True

    class Config(BaseModel):
        count: int = 1000

    def __init__(self, config: Config) -> None:
        self.config = config

    def read(self) -> Iterator[Reading]:
        for i in range(self.config.count):
            yield {"sensor": f"s{i % 3}", "celsius": (i % 50) - 10.0}
''',
    "src/pipeline/stages/10_validate.py": '''"""Rejects impossible temperatures."""

from conveyor import ValidateStage
from pipeline.contracts.models import Reading


def plausible(reading: Reading) -> bool | str:
    """True for a plausible reading, else the reason."""
    if -90.0 <= reading["celsius"] <= 60.0:
        return True
    return f"implausible temperature {reading['celsius']}"


stage = ValidateStage(plausible)
''',
    "src/pipeline/stages/20_enrich.py": '''"""Adds the Fahrenheit value."""

from conveyor import MapStage
from pipeline.contracts.models import EnrichedReading, Reading
from pipeline.shared.units import to_fahrenheit


def enrich(reading: Reading) -> EnrichedReading:
    """The reading with ``fahrenheit``."""
    return {**reading, "fahrenheit": to_fahrenheit(reading["celsius"])}


stage = MapStage(enrich)
''',
    "src/pipeline/stages/90_sink.py": '''"""Writes the readings as JSON lines."""

import json
import os
from pathlib import Path

from pydantic import BaseModel

from conveyor import Checkpoint, RunInfo
from conveyor.project import Sink
from pipeline.contracts.models import EnrichedReading


class JsonLines(Sink):
    """Writes every micro-batch to ``path``: a fresh file per run, which a replay of dead
    letters (``conveyor dlq replay``) extends. Exactly once across a crash: each checkpoint
    records the file's durable length, and a resumed run (``conveyor run --resume``) cuts
    the file back to it before going on. (``sink: {connector: jsonl, path: ...}`` in
    config.yaml does all this without a stage file.)"""

    exactly_once = True

    class Config(BaseModel):
        path: str = "data/readings.jsonl"

    def __init__(self, config: Config) -> None:
        self.path = Path(config.path)

    def outputs(self) -> list[str]:  # what it writes: named in summaries and dvc.yaml
        return [str(self.path)]

    def open(self, run: RunInfo) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if run.resume_from is not None:  # back to where the last checkpoint left the file
            length = (run.resume_from.sink or {}).get("length", 0)
            with self.path.open("ab") as out:
                out.truncate(length)
        elif not run.appends:
            self.path.write_text("")

    def write(self, records: list[EnrichedReading]) -> None:
        with self.path.open("a") as out:
            out.writelines(json.dumps(record) + "\\n" for record in records)

    def commit(self, checkpoint: Checkpoint) -> dict[str, int]:
        with self.path.open("ab") as out:  # make what was written durable...
            os.fsync(out.fileno())
        return {"length": self.path.stat().st_size}  # ...and say how far it goes
''',
    "src/pipeline/stages/__tests__/test_stages.py": '''"""Tests of the stages, each on its own."""

import importlib.util
import sys
from pathlib import Path

from conveyor.testing import run_stage_on

STAGES = Path(__file__).parent.parent
sys.path.insert(0, str(STAGES.parent.parent))


def load(file_name: str):
    spec = importlib.util.spec_from_file_location(file_name[:-3], STAGES / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validate_rejects_implausible_readings() -> None:
    validate = load("10_validate.py")
    run = run_stage_on(validate.stage, [{"sensor": "a", "celsius": 20.0},
                                        {"sensor": "a", "celsius": 999.0}])
    assert [r["celsius"] for r in run.outputs] == [20.0]
    assert [d.record["celsius"] for d in run.dead_letters] == [999.0]


def test_enrich_adds_fahrenheit() -> None:
    enrich = load("20_enrich.py")
    run = run_stage_on(enrich.stage, [{"sensor": "a", "celsius": 100.0}])
    assert run.outputs == [{"sensor": "a", "celsius": 100.0, "fahrenheit": 212.0}]
''',
    "src/pipeline/runner.py": '''"""Thin entry point: ``python runner.py [key=value ...]``."""

import sys
from pathlib import Path

from conveyor.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["run", str(Path(__file__).resolve().parent)]
    main()
''',
    "src/pipeline/config.yaml": """# Settings of the {name} pipeline (keys: see Conveyor's README).
pipeline:
  name: {name}
  batch_size: 500
stages:
  source:
    params:
      count: 1000
  sink:
    params:
      path: data/readings.jsonl
""",
    "README.md": """# {name}

A Conveyor pipeline project.

    conveyor run .                    # the whole pipeline
    conveyor run . stages.source.params.count=50
    conveyor check .                  # the architecture rules
    python -m pytest src/pipeline/stages/__tests__
""",
}


def new_project(path: Path, template: str = "stream") -> list[Path]:
    """Create a working project at ``path`` (which must not exist or be empty) from
    ``template`` (one of :data:`TEMPLATES`) and return the files written. Its name (the
    folder's) has at most 100 characters and no control characters; the ``dataset``
    template also makes it a Python package name (:func:`package_name`)."""
    if template not in TEMPLATES:
        raise ProjectError(
            f"unknown template {shown(template)}; the templates are: {', '.join(TEMPLATES)}"
        )
    folder = path.name
    if len(folder) > MAX_PROJECT_NAME or printable(folder) != folder or not folder.strip():
        raise ProjectError(
            f"the project name {shown(folder)} ({len(folder)} characters) is not a folder name "
            f"to make: use 1 to {MAX_PROJECT_NAME} characters without control characters"
        )
    values = (
        {
            "project_slug": folder,
            "package_name": package_name(folder),
            "conveyor_version": __version__,
        }
        if template == "dataset"
        else {}
    )
    try:
        if path.exists() and any(path.iterdir()):
            raise ProjectError("the folder exists and is not empty; pick a new name", file=path)
        if template == "stream":
            return _write_stream(path, folder)
        return _write_template(path, template, values)
    except OSError as exc:
        raise ProjectError(
            f"cannot create the project: {exc.strerror or exc}", file=printable(path)
        ) from None


def _write_stream(path: Path, folder: str) -> list[Path]:
    """The files of the ``stream`` template (:data:`_FILES`)."""
    name = re.sub(r"[^a-z0-9_]", "_", folder.lower()) or "pipeline"
    written = []
    for relative, text in _FILES.items():
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("{name}", name), encoding="utf-8")
        written.append(target)
    return written


def package_name(project_slug: str) -> str:
    """The Python package of a ``dataset`` project called ``project_slug``: lower case,
    ``-`` made ``_``; a ProjectError (saying why, with an example) if that is not a name to
    import (an identifier of ASCII letters, digits and ``_`` starting with a letter, not a
    keyword, not the name of a module it would hide).

    >>> package_name("My-Project")
    'my_project'
    >>> package_name("my.project")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.errors.ProjectError: the project name 'my.project' cannot become a Python package...
    """
    name = project_slug.lower().replace("-", "_")
    why = ""
    if not _DISTRIBUTION.match(project_slug):
        why = "use ASCII letters, digits, '-' and '_', starting with a letter"
    elif project_slug[-1] in "-_":
        why = "end it with a letter or a digit"
    elif keyword.iskeyword(name):
        why = f"{name!r} is a Python keyword"
    elif name in sys.stdlib_module_names or name in _SHADOWED:
        why = f"a package {name!r} would hide the module {name!r} it needs"
    if why:
        raise ProjectError(
            f"the project name {shown(project_slug)} cannot become a Python package name: "
            f"{why} (e.g. my-project, whose package is my_project)"
        )
    return name


def template_root(template: str) -> Traversable:
    """The folder of a file template, inside this package (``templates/<template>``)."""
    return resources.files("conveyor.project") / "templates" / template


def template_files(template: str) -> Iterator[tuple[tuple[str, ...], Traversable]]:
    """Every file of a file template, as (its path parts below the template, the file), in
    a stable order."""

    def walk(
        node: Traversable, parts: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], Traversable]]:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name == "__pycache__":
                continue
            if child.is_dir():
                yield from walk(child, (*parts, child.name))
            else:
                yield (*parts, child.name), child

    root = template_root(template)
    if not root.is_dir():
        raise ProjectError(f"the {template!r} template is missing from this Conveyor install")
    yield from walk(root, ())


def _fill(text: str, values: Mapping[str, str], where: str) -> str:
    """``text`` with each ``{{name}}`` replaced by ``values[name]``; an unknown name is an
    error (a template that would leave ``{{`` in a project is a bug)."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ProjectError(
                f"template file {where}: unknown placeholder {match.group(0)} "
                f"(known: {', '.join(sorted(values))})"
            )
        return values[key]

    return _PLACEHOLDER.sub(value, text)


def _write_template(path: Path, template: str, values: Mapping[str, str]) -> list[Path]:
    """Write every file of ``template`` below ``path``, placeholders filled in paths and in
    the contents of ``.tmpl`` files (the suffix dropped); other files are copied as they are."""
    written = []
    for parts, source in template_files(template):
        where = "/".join(parts)
        names = [_fill(part, values, where) for part in parts]
        text = names[-1].endswith(TEMPLATE_SUFFIX)
        if text:
            names[-1] = names[-1][: -len(TEMPLATE_SUFFIX)]
        target = path.joinpath(*names)
        target.parent.mkdir(parents=True, exist_ok=True)
        if text:
            content = _fill(source.read_text(encoding="utf-8"), values, where)
            target.write_text(content, encoding="utf-8", newline="")
        else:
            target.write_bytes(source.read_bytes())
        written.append(target)
    return written


STAGE_KINDS: Final = ("map", "filter", "validate", "source", "sink", "aggregate", "batch")
"""The kinds of stage ``conveyor new stage NAME --kind KIND`` writes; the first is the
default. Each is a file that imports, type-checks (``mypy --strict``), passes ``conveyor
check`` and runs as it is written:

- ``map``, ``filter``, ``validate``, ``aggregate``: a function and the built-in stage that
  calls it (:class:`~conveyor.MapStage`, :class:`~conveyor.FilterStage`,
  :class:`~conveyor.ValidateStage`, :class:`~conveyor.AggregateStage`), placed before the
  last stage (or after ``--after NN``);
- ``batch``: a :class:`~conveyor.BatchStage` whose ``size`` is a parameter in config.yaml;
- ``source``: a :class:`conveyor.project.Source` stage file, the project's first stage (a
  project reads one source: one with a source stage file or a ``source:`` section is
  refused, naming it);
- ``sink``: a :class:`conveyor.project.Sink` stage file writing JSON lines, the project's
  last stage (refused likewise when the project has a sink).
"""

_STAGE_FILES: Final = {
    "map": '''"""{title}: one job, one stage."""

from typing import Any

from conveyor import MapStage


def {fn}(record: Any) -> Any:
    """Transform one record."""
    return record


stage = MapStage({fn})
''',
    "filter": '''"""{title}: keeps the records that pass, drops the others."""

from typing import Any

from conveyor import FilterStage


def {fn}(record: Any) -> bool:
    """True passes the record on; False drops it (counted as filtered, not an error)."""
    return True


stage = FilterStage({fn})
''',
    "validate": '''"""{title}: sends the records that are not valid to the dead-letter queue."""

from typing import Any

from conveyor import ValidateStage


def {fn}(record: Any) -> bool | str:
    """True for a valid record; False, or a message saying why, makes it a dead letter
    of this stage (``conveyor dlq list``), and the run goes on."""
    return True


stage = ValidateStage({fn})
''',
    "aggregate": '''"""{title}: reduces the whole stream to one result."""

from typing import Any

from conveyor import AggregateStage


def {fn}(records: list[Any]) -> dict[str, Any]:
    """One record made of every record of the run (the stage waits for the whole stream:
    a barrier). Return a list to pass several records on."""
    return {{"records": len(records)}}


stage = AggregateStage({fn})
''',
    "batch": '''"""{title}: groups the records into lists of ``size``."""

from typing import Any

from pydantic import BaseModel, Field

from conveyor import BatchStage


class {cls}(BatchStage[Any]):
    """Cuts the stream into lists of ``size`` records (the last may be shorter), across
    micro-batch borders: the stages after it, and the sink, get one list per group."""

    class Config(BaseModel):
        size: int = Field(default=100, ge=1)

    def __init__(self, config: Config) -> None:
        super().__init__(config.size)
''',
    "source": '''"""{title}: where the run's records come from (the first stage)."""

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

from conveyor.project import Source


class {cls}(Source):
    """Yields the run's records, here ``count`` records made from its params alone: that
    is why it says ``deterministic = True`` (an unchanged pipeline does not read them
    twice). A Source that reads files opens them in ``read()`` and names them in
    ``inputs()`` instead (paths relative to the project folder), and drops
    ``deterministic``. CSV, JSON lines, Parquet, SQL tables, downloads and brokers need no
    stage file: a ``source:`` section in config.yaml reads them (``conveyor connectors``).
    """

    deterministic = True

    class Config(BaseModel):
        count: int = Field(default=10, ge=0)

    def __init__(self, config: Config) -> None:
        self.config = config

    def read(self) -> Iterator[dict[str, Any]]:
        for i in range(self.config.count):
            yield {{"id": i}}
''',
    "sink": '''"""{title}: where the run's records go (the last stage)."""

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from conveyor import Checkpoint, RunInfo
from conveyor.project import Sink


class {cls}(Sink):
    """Writes each micro-batch to ``path`` as JSON lines: a fresh file per run, which a
    replay of dead letters (``conveyor dlq replay``) extends. Exactly once across a crash:
    each checkpoint records the file's durable length, and a resumed run (``conveyor run
    --resume``) cuts the file back to it. Files, SQLite and PostgreSQL need no stage file:
    a ``sink:`` section in config.yaml writes them (``conveyor connectors``)."""

    exactly_once = True

    class Config(BaseModel):
        path: str = "data/{name}.jsonl"

    def __init__(self, config: Config) -> None:
        self.path = Path(config.path)

    def outputs(self) -> list[str]:  # what it writes: named in summaries and dvc.yaml
        return [str(self.path)]

    def open(self, run: RunInfo) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if run.resume_from is not None:  # back to where the last checkpoint left the file
            length = (run.resume_from.sink or {{}}).get("length", 0)
            with self.path.open("ab") as out:
                out.truncate(length)
        elif not run.appends:
            self.path.write_text("")

    def write(self, records: list[Any]) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(record, default=str) + "\\n" for record in records)

    def commit(self, checkpoint: Checkpoint) -> dict[str, int]:
        with self.path.open("ab") as out:  # make what was written durable...
            os.fsync(out.fileno())
        return {{"length": self.path.stat().st_size}}  # ...and say how far it goes
''',
}
"""The stage file of each kind: ``{title}``, ``{name}`` (the stage), ``{fn}`` (its
function) and ``{cls}`` (its class) filled in."""

_TEST_HEAD = '''"""Tests of the {name} stage."""

import importlib.util
import json
from pathlib import Path

from conveyor import RunInfo
from conveyor.testing import run_stage_on

FILE = Path(__file__).parent.parent / "{file}"


def load():
    spec = importlib.util.spec_from_file_location("{name}", FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
'''

_STAGE_TESTS: Final = {
    "map": """

def test_{name}_passes_records_on() -> None:
    assert run_stage_on(load().stage, [{{"id": 1}}]).outputs == [{{"id": 1}}]
""",
    "filter": """

def test_{name}_keeps_records() -> None:
    run = run_stage_on(load().stage, [{{"id": 1}}, {{"id": 2}}])
    assert run.outputs == [{{"id": 1}}, {{"id": 2}}]
    assert run.report.filtered == 0
""",
    "validate": """

def test_{name}_passes_valid_records_on() -> None:
    run = run_stage_on(load().stage, [{{"id": 1}}])
    assert run.outputs == [{{"id": 1}}]
    assert run.dead_letters == []
""",
    "aggregate": """

def test_{name}_reduces_the_stream_to_one_record() -> None:
    run = run_stage_on(load().stage, [{{"id": 1}}, {{"id": 2}}])
    assert run.outputs == [{{"records": 2}}]
""",
    "batch": """

def test_{name}_groups_records() -> None:
    module = load()
    stage = module.{cls}(module.{cls}.Config(size=2))
    assert run_stage_on(stage, [1, 2, 3]).outputs == [[1, 2], [3]]
""",
    "source": """

def test_{name}_reads_records() -> None:
    module = load()
    source = module.{cls}(module.{cls}.Config(count=3))
    assert list(source.read()) == [{{"id": 0}}, {{"id": 1}}, {{"id": 2}}]
""",
    "sink": """

def test_{name}_writes_json_lines(tmp_path: Path) -> None:
    module = load()
    sink = module.{cls}(module.{cls}.Config(path=str(tmp_path / "out.jsonl")))
    sink.open(RunInfo(run_id="test", pipeline_name="test"))
    sink.write([{{"id": 1}}, {{"id": 2}}])
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{{"id": 1}}, {{"id": 2}}]
""",
}
"""The test of each kind (after :data:`_TEST_HEAD`), for ``stages/__tests__/``."""

_CONFIG_PARAMS: Final = {
    "source": "{count: 10}",
    "sink": "{path: data/%s.jsonl}",
    "batch": "{size: 100}",
}
"""The ``params`` of a new stage's config stub (``{}`` for the kinds without a Config)."""

_TAKEN: Final = frozenset(dir(builtins)) | {"stage", "json", "os"}
"""Names a stage's function or class must not take (they would hide what its file uses)."""


def _identifiers(name: str, kind: str) -> dict[str, str]:
    """The names a stage file of ``kind`` uses for stage ``name``: its function and class,
    suffixed when they would hide a builtin or a name the file imports."""
    fn = name if name not in _TAKEN else f"{name}_{kind}"
    cls = "".join(part[:1].upper() + part[1:] for part in name.split("_")) or "Stage"
    imported = {"Any", "BaseModel", "Field", "Iterator", "Path", "Config", "Checkpoint"}
    imported |= {"RunInfo", "Source", "Sink", "BatchStage"}
    if cls in imported or cls in _TAKEN:
        cls += "Stage"
    return {"fn": fn, "cls": cls}


def _refuse_kind(kind: str) -> ProjectError:
    close = difflib.get_close_matches(kind, STAGE_KINDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ProjectError(f"unknown stage kind {shown(kind)}{hint} (kinds: {', '.join(STAGE_KINDS)})")


def new_stage(
    project: Path, name: str, *, after: int | None = None, kind: str = STAGE_KINDS[0]
) -> list[Path]:
    """Add ``NN_name.py``, a stage of ``kind`` (one of :data:`STAGE_KINDS`), with a test
    and a config stub, and return the files written. A record stage goes after stage
    number ``after`` (default: before the last stage), on a free number between its
    neighbours; a ``source`` goes before the first stage and a ``sink`` after the last."""
    if kind not in STAGE_KINDS:
        raise _refuse_kind(kind)
    if not _NAME.match(name) or keyword.iskeyword(name):
        why = (
            f"{shown(name)} is a Python keyword, which the stage's function cannot be named"
            if _NAME.match(name)
            else f"stage name {shown(name)} is not a lower-case identifier of at most 64 characters"
        )
        raise ProjectError(f"{why}; pick another name (e.g. clean_rows)")
    if (project / "configs" / "pipeline.yaml").is_file():
        raise ProjectError(
            "conveyor new stage makes numbered stage files of the stream layout; in a dataset "
            f"project add src/<package>/stages/{name}.py (one Stage with its Config), "
            f"configs/stages/{name}.yaml and {name!r} in the stages: list of "
            "configs/pipeline.yaml, then run 'conveyor dvc .' to update dvc.yaml",
            file=project / "configs" / "pipeline.yaml",
        )
    pipeline_dir = find_pipeline_dir(project)
    files = discover_stage_files(pipeline_dir)
    if any(f.name == name for f in files):
        raise ProjectError(f"a stage named {name!r} exists already", file=pipeline_dir)
    number = _stage_number(pipeline_dir, files, kind, after)
    file = f"{number:02d}_{name}.py"
    values = {"title": name.title(), "name": name, "file": file, **_identifiers(name, kind)}
    stage_path = pipeline_dir / "stages" / file
    stage_path.write_text(_STAGE_FILES[kind].format(**values), encoding="utf-8")
    test_path = pipeline_dir / "stages" / "__tests__" / f"test_{name}.py"
    test_path.parent.mkdir(exist_ok=True)
    test = _TEST_HEAD + _STAGE_TESTS[kind]
    test_path.write_text(test.format(**values), encoding="utf-8")
    config = pipeline_dir / "config.yaml"
    params = _CONFIG_PARAMS.get(kind, "{}").replace("%s", name)
    _add_config_stub(config, name, params)
    return [stage_path, test_path, config]


def _stage_number(pipeline_dir: Path, files: list[StageFile], kind: str, after: int | None) -> int:
    """The number of a new stage of ``kind``: a source before the first stage, a sink
    after the last, any other between stage ``after`` and the next one."""
    numbers = [f.number for f in files]
    if kind in ("source", "sink"):
        if after is not None:
            where = "first" if kind == "source" else "last"
            raise ProjectError(
                f"a {kind} is the {where} stage of a project, so --after does not apply to "
                f"--kind {kind}; leave it out"
            )
        _refuse_a_second(pipeline_dir, files, kind)
        if kind == "source":
            if numbers[0] == 0:
                raise ProjectError(
                    f"no free number before {files[0].path.name} for a source; renumber the "
                    "stages (leave gaps of 10)",
                    file=files[0].path,
                )
            return 0
        last = numbers[-1]
        return min(last + 10, (last + 100) // 2) if last < 99 else last + 10
    if after is None:
        after = numbers[-2] if len(numbers) > 1 else numbers[-1]
    if after not in numbers:
        raise ProjectError(f"no stage numbered {after:02d}; numbers: {numbers}")
    if after == numbers[-1] and _defines(files[-1], Sink, pipeline_dir):
        raise ProjectError(
            f"stage {files[-1].name!r} is the Sink, the last stage: --after {after:02d} "
            "would put a stage after it; pick an earlier number",
            file=files[-1].path,
        )
    following = [n for n in numbers if n > after]
    upper = following[0] if following else after + 20
    if upper - after < 2:
        raise ProjectError(
            f"no free number between {after:02d} and {upper:02d}; renumber the stages "
            "(leave gaps of 10)"
        )
    return after + (upper - after) // 2


def _refuse_a_second(pipeline_dir: Path, files: list[StageFile], kind: str) -> None:
    """A project reads from one source and writes to one sink: a ``source``/``sink`` kind
    is refused, naming what the project has (a stage file, or config.yaml's section)."""
    from conveyor.project.config import _compose, _read

    reads, method = ("reads from", "read()") if kind == "source" else ("writes to", "write()")
    config = pipeline_dir / "config.yaml"
    document, positions = _compose(_read(config), config)  # as written: no ${VAR} needed
    section = document.get(kind) if isinstance(document, dict) else None
    if section is not None:
        connector = section.get("connector") if isinstance(section, dict) else None
        _, line, column = positions.get((kind,), (config, None, None))
        raise ConfigError(
            f"config.yaml's {kind}: section (connector {connector}) is the project's {kind} "
            f"already, and a project {reads} one: delete the section first to make a {kind} "
            "stage file instead",
            file=config,
            line=line,
            column=column,
            key=kind,
        )
    existing = files[0] if kind == "source" else files[-1]
    base = Source if kind == "source" else Sink
    if _defines(existing, base, pipeline_dir):
        raise ProjectError(
            f"stage {existing.name!r} ({existing.path.name}) is the project's {kind} "
            f"already, and a project {reads} one: delete {existing.path.name} (and "
            f"{existing.name}: under stages: in config.yaml) first, or edit its {method}",
            file=existing.path,
        )


def _defines(stage_file: StageFile, base: type, pipeline_dir: Path) -> bool:
    """Whether ``stage_file`` defines a ``base`` (a Source or a Sink): imported as a run
    would import it (so a file that does not import is an error naming its line)."""
    found, _ = load_stage(stage_file, pipeline_dir)
    return isinstance(found, base) or (inspect.isclass(found) and issubclass(found, base))


def _add_config_stub(config: Path, name: str, params: str) -> None:
    """``stages.NAME.params`` in config.yaml, at the top of its ``stages:`` section (which
    is added when there is none)."""
    text = config.read_text(encoding="utf-8") if config.exists() else ""
    stub = f"  {name}:\n    params: {params}\n"
    if "\nstages:" in f"\n{text}":
        text = text.replace("stages:\n", "stages:\n" + stub, 1)
    else:
        text = text + ("" if text.endswith("\n") or not text else "\n") + "stages:\n" + stub
    config.write_text(text, encoding="utf-8")
