"""``conveyor new``: a working project, or one new stage file between its neighbours.

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
from conveyor.errors import ProjectError
from conveyor.project.discovery import discover_stage_files, find_pipeline_dir

__all__ = [
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


_STAGE_TEMPLATE = '''"""{title}: one job, one stage."""

from typing import Any

from conveyor import MapStage


def {name}(record: Any) -> Any:
    """Transform one record."""
    return record


stage = MapStage({name})
'''

_TEST_TEMPLATE = '''"""Tests of the {name} stage."""

import importlib.util
from pathlib import Path

from conveyor.testing import run_stage_on

FILE = Path(__file__).parent.parent / "{file}"


def test_{name}_passes_records_on() -> None:
    spec = importlib.util.spec_from_file_location("{name}", FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert run_stage_on(module.stage, [{{"id": 1}}]).outputs == [{{"id": 1}}]
'''


def new_stage(project: Path, name: str, *, after: int | None = None) -> list[Path]:
    """Add ``NN_name.py`` after stage number ``after`` (default: before the last stage),
    with a test and a config stub; the number is free and between its neighbours."""
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
    numbers = [f.number for f in files]
    if after is None:
        after = numbers[-2] if len(numbers) > 1 else numbers[-1]
    if after not in numbers:
        raise ProjectError(f"no stage numbered {after:02d}; numbers: {numbers}")
    following = [n for n in numbers if n > after]
    upper = following[0] if following else after + 20
    if upper - after < 2:
        raise ProjectError(
            f"no free number between {after:02d} and {upper:02d}; renumber the stages "
            "(leave gaps of 10)"
        )
    number = after + (upper - after) // 2
    file = f"{number:02d}_{name}.py"
    stage_path = pipeline_dir / "stages" / file
    stage_path.write_text(_STAGE_TEMPLATE.format(title=name.title(), name=name), encoding="utf-8")
    test_path = pipeline_dir / "stages" / "__tests__" / f"test_{name}.py"
    test_path.parent.mkdir(exist_ok=True)
    test_path.write_text(_TEST_TEMPLATE.format(name=name, file=file), encoding="utf-8")
    config = pipeline_dir / "config.yaml"
    text = config.read_text(encoding="utf-8") if config.exists() else ""
    stub = (
        f"  {name}:\n    params: {{}}\n"
        if "\nstages:" in f"\n{text}"
        else (f"stages:\n  {name}:\n    params: {{}}\n")
    )
    if "\nstages:" in f"\n{text}":
        text = text.replace("stages:\n", "stages:\n" + stub, 1)
    else:
        text = text + ("" if text.endswith("\n") or not text else "\n") + stub
    config.write_text(text, encoding="utf-8")
    return [stage_path, test_path, config]
