"""``conveyor.project.lint``: seed 000's dependency rules on generated pipeline projects."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from conveyor.errors import ProjectError
from conveyor.project import lint
from conveyor.project.lint import Violation, check_project

STAGE = "from conveyor import MapStage\n\nstage = MapStage(str)\n"


def make_project(root: Path, files: dict[str, str]) -> Path:
    """A pipeline folder ``root/pipeline`` holding a clean base project plus ``files``."""
    pipeline = root / "pipeline"
    base = {
        "config.yaml": "pipeline:\n  name: demo\n",
        "runner.py": "from conveyor.project import main\n",
        "contracts/__init__.py": "",
        "contracts/records.py": "from dataclasses import dataclass\n",
        "shared/__init__.py": "",
        "shared/text.py": "import re\n\nfrom pipeline.contracts import records\n",
        "stages/__init__.py": "",
        "stages/00_source.py": STAGE,
    }
    for rel, text in {**base, **files}.items():
        path = pipeline / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pipeline


def found(violations: list[Violation], root: Path) -> list[tuple[str, int, str]]:
    return [(v.file.relative_to(root).as_posix(), v.line, v.rule) for v in violations]


def test_clean_project_has_no_violations(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_validate.py": """\
                from __future__ import annotations

                import json
                from typing import TYPE_CHECKING

                import pydantic
                import conveyor
                from pipeline.contracts.records import dataclass
                from pipeline.shared import text
                from ..shared.text import re
                from .. import contracts

                if TYPE_CHECKING:
                    from pipeline.shared import text as again


                class _Base(conveyor.PipelineStage[dict, dict]):
                    pass


                class Validate(_Base):
                    def process(self, record):
                        return importlib.import_module("json").loads(record)
                """,
            "stages/20_sink.py": """\
                from conveyor.project import Sink


                class Out(Sink):
                    def write(self, records):
                        pass
                """,
            "stages/__tests__/test_validate.py": "import pipeline.stages.validate\n",
            "shared/numbers.py": "from . import text\nfrom pipeline.shared.text import re\n",
        },
    )
    assert check_project(pipeline) == []


def test_a_project_folder_is_accepted(tmp_path: Path) -> None:
    make_project(tmp_path / "src", {"stages/10_x.py": "import pipeline.runner\n"})
    assert found(check_project(tmp_path), tmp_path) == [
        ("src/pipeline/stages/10_x.py", 1, "forbidden-import"),
        ("src/pipeline/stages/10_x.py", 1, "stages-per-file"),
    ]


def test_a_folder_without_stages_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no stages/ folder"):
        check_project(tmp_path)


def test_violation_is_frozen_and_prints_file_line_rule_message() -> None:
    violation = Violation(Path("stages/10_x.py"), 3, "stage-imports-stage", "fix it")
    assert str(violation) == "stages/10_x.py:3: stage-imports-stage: fix it"
    with pytest.raises(FrozenInstanceError):
        violation.line = 4  # type: ignore[misc]


# -- file names and stage counts -------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["helper.py", "1_one_digit.py", "10_Upper.py", "10-dash.py", "10_.py", "ab_x.py"]
)
def test_bad_stage_filename(tmp_path: Path, name: str) -> None:
    pipeline = make_project(tmp_path, {f"stages/{name}": STAGE})
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [(f"stages/{name}", 1, "bad-stage-filename")]
    assert "NN_name.py" in violations[0].message


def test_python_files_in_stage_subfolders_are_bad_stage_files(tmp_path: Path) -> None:
    pipeline = make_project(tmp_path, {"stages/helpers/util.py": "X = 1\n"})
    assert found(check_project(pipeline), pipeline) == [
        ("stages/helpers/util.py", 1, "bad-stage-filename")
    ]


def test_duplicate_stage_number_is_reported_on_both_files(tmp_path: Path) -> None:
    pipeline = make_project(tmp_path, {"stages/10_a.py": STAGE, "stages/010_b.py": STAGE})
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [
        ("stages/010_b.py", 1, "duplicate-stage-number"),
        ("stages/10_a.py", 1, "duplicate-stage-number"),
    ]
    assert "10_a.py" in violations[0].message
    assert "010_b.py" in violations[1].message


def test_duplicate_stage_name_is_reported_on_both_files(tmp_path: Path) -> None:
    pipeline = make_project(tmp_path, {"stages/10_a.py": STAGE, "stages/20_a.py": STAGE})
    assert found(check_project(pipeline), pipeline) == [
        ("stages/10_a.py", 1, "duplicate-stage-name"),
        ("stages/20_a.py", 1, "duplicate-stage-name"),
    ]


def test_a_stage_file_without_a_stage(tmp_path: Path) -> None:
    pipeline = make_project(tmp_path, {"stages/10_a.py": "def process(x):\n    return x\n"})
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("stages/10_a.py", 1, "stages-per-file")]
    assert "defines no stage" in violations[0].message


def test_a_stage_file_with_two_stages_is_reported_at_the_second(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_a.py": """\
                import conveyor
                from conveyor.project import Source


                class Read(Source):
                    pass


                double = conveyor.MapStage(lambda x: 2 * x).named("double")
                """
        },
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("stages/10_a.py", 9, "stages-per-file")]
    assert "class Read (line 5)" in violations[0].message
    assert "double = MapStage(...) (line 9)" in violations[0].message


@pytest.mark.parametrize(
    "source",
    [
        "class A(PipelineStage[int, int]):\n    pass\n",
        "class A(conveyor.core.PipelineStage):\n    pass\n",
        "class A(TaskStage):\n    pass\n",
        "class A(Sink):\n    pass\n",
        "class A(RecordStage[int, int]):\n    pass\n",
        "stage: PipelineStage[int, int] = FilterStage(bool)\n",
        "class Base(PipelineStage):\n    pass\n\n\nclass A(Base):\n    pass\n",
    ],
)
def test_stage_forms_count_as_one_stage(tmp_path: Path, source: str) -> None:
    pipeline = make_project(tmp_path, {"stages/10_a.py": source})
    assert check_project(pipeline) == []


# -- stages importing stages -----------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "import pipeline.stages.a",
        "from pipeline.stages import a",
        "from pipeline.stages.a import stage as other",
        "from pipeline import stages",
        "from . import a",
        "from .a import stage as other",
        "from ..stages import a",
        "from .. import stages",
    ],
)
def test_stage_imports_stage(tmp_path: Path, statement: str) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_a.py": STAGE,
            "stages/20_b.py": f"import json\n\n{statement}\n{STAGE}",
        },
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("stages/20_b.py", 3, "stage-imports-stage")]
    assert "shared/" in violations[0].message


@pytest.mark.parametrize(
    "call",
    [
        'importlib.import_module("pipeline.stages.a")',
        'importlib.import_module(".a", package="pipeline.stages")',
        'import_module("pipeline.stages.a")',
        '__import__("pipeline.stages.a", fromlist=["stage"])',
        'importlib.util.spec_from_file_location("a", "src/pipeline/stages/10_a.py")',
        'importlib.util.spec_from_file_location("x", Path(__file__).parent / "10_a.py")',
        'runpy.run_path(str(Path(__file__).with_name("10_a.py")))',
    ],
)
def test_dynamic_import_of_stage(tmp_path: Path, call: str) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_a.py": STAGE,
            "stages/20_b.py": textwrap.dedent(
                f"""\
                import importlib
                import runpy
                from importlib import import_module
                from pathlib import Path


                def load():
                    return {call}


                """
            )
            + STAGE,
        },
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("stages/20_b.py", 8, "dynamic-import-of-stage")]


def test_dynamic_imports_of_other_modules_are_fine(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_a.py": 'import importlib\nj = importlib.import_module("json")\n' + STAGE,
            "stages/20_b.py": 'x = __import__("pipeline.shared.text")\n' + STAGE,
        },
    )
    assert check_project(pipeline) == []


# -- forbidden imports -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "import pipeline.runner",
        "from pipeline import runner",
        "from pipeline.runner import main",
        "from .. import runner",
        "import pipeline",
        'runner = importlib.import_module("pipeline.runner")',
    ],
)
def test_stage_forbidden_import(tmp_path: Path, statement: str) -> None:
    pipeline = make_project(
        tmp_path, {"stages/10_a.py": f"import importlib\n\n{statement}\n{STAGE}"}
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("stages/10_a.py", 3, "forbidden-import")]
    assert "pipeline.contracts" in violations[0].message


@pytest.mark.parametrize(
    ("statement", "rule"),
    [
        ("from pipeline.stages import source", "forbidden-import"),
        ("from ..stages import source", "forbidden-import"),
        ("import pipeline.runner", "forbidden-import"),
        ('x = __import__("pipeline.stages.source")', "dynamic-import-of-stage"),
    ],
)
def test_shared_must_not_import_stages(tmp_path: Path, statement: str, rule: str) -> None:
    pipeline = make_project(tmp_path, {"shared/util.py": f'"""Helpers."""\n{statement}\n'})
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("shared/util.py", 2, rule)]


# -- cycles ----------------------------------------------------------------------------------


def test_import_cycle_among_shared_modules_is_reported_once(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "shared/a.py": '"""A."""\nfrom pipeline.shared import b\n',
            "shared/b.py": "import json\nfrom . import c\n",
            "shared/c.py": "import pipeline.shared.a\n",
        },
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [("shared/a.py", 2, "import-cycle")]
    assert "shared/a.py -> shared/b.py -> shared/c.py -> shared/a.py" in violations[0].message


def test_import_cycle_through_a_stage(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "shared/util.py": "import os\nfrom pipeline.stages import a\n",
            "stages/10_a.py": "from pipeline.shared import util\n" + STAGE,
        },
    )
    assert found(check_project(pipeline), pipeline) == [
        ("shared/util.py", 2, "forbidden-import"),
        ("shared/util.py", 2, "import-cycle"),
    ]


def test_import_cycle_between_stages(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_a.py": "import pipeline.stages.b\n" + STAGE,
            "stages/20_b.py": "from pipeline.stages import a\n" + STAGE,
        },
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [
        ("stages/10_a.py", 1, "import-cycle"),
        ("stages/10_a.py", 1, "stage-imports-stage"),
        ("stages/20_b.py", 1, "stage-imports-stage"),
    ]
    assert "stages/10_a.py -> stages/20_b.py -> stages/10_a.py" in violations[0].message


def test_type_checking_imports_make_no_cycle(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "shared/a.py": "from pipeline.shared import b\n",
            "shared/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from . import a\n",
        },
    )
    assert check_project(pipeline) == []


def test_grimp_builds_the_graph_and_the_ast_fallback_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "shared/a.py": "from pipeline.shared import b\n",
            "shared/b.py": "\n\nimport pipeline.shared.a\n",
            "contracts/x.py": "from pipeline.contracts import y\n",
            "contracts/y.py": "from . import x\n",
        },
    )
    # Another test may have imported a module called `pipeline` (the user-import example
    # has one); grimp must see this project's package, so forget it for this test.
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        monkeypatch.delitem(sys.modules, name)
    path, modules = list(sys.path), set(sys.modules)
    checker = lint._Checker(pipeline)
    checker.run()
    assert sys.path == path
    assert set(sys.modules) == modules
    edges = checker._grimp_edges()
    assert edges is not None
    assert edges[("pipeline.shared.b", "pipeline.shared.a")] == 3
    with_grimp = check_project(pipeline)
    assert found(with_grimp, pipeline) == [
        ("contracts/x.py", 1, "import-cycle"),
        ("shared/a.py", 1, "import-cycle"),
    ]
    monkeypatch.setattr(lint._Checker, "_grimp_edges", lambda self: None)
    assert check_project(pipeline) == with_grimp


# -- everything at once ----------------------------------------------------------------------


def test_all_violations_are_reported_at_once_sorted(tmp_path: Path) -> None:
    pipeline = make_project(
        tmp_path,
        {
            "stages/10_a.py": "import pipeline.runner\nfrom pipeline.stages import b\n" + STAGE,
            "stages/10_b.py": 'import importlib\nimportlib.import_module("pipeline.stages.a")\n',
            "stages/helper.py": "",
            "stages/30_broken.py": "def oops(:\n",
            "shared/a.py": "from . import b\n",
            "shared/b.py": "from . import a\n",
        },
    )
    violations = check_project(pipeline)
    assert found(violations, pipeline) == [
        ("shared/a.py", 1, "import-cycle"),
        ("stages/10_a.py", 1, "duplicate-stage-number"),
        ("stages/10_a.py", 1, "forbidden-import"),
        ("stages/10_a.py", 2, "stage-imports-stage"),
        ("stages/10_b.py", 1, "duplicate-stage-number"),
        ("stages/10_b.py", 1, "stages-per-file"),
        ("stages/10_b.py", 2, "dynamic-import-of-stage"),
        ("stages/30_broken.py", 1, "syntax-error"),
        ("stages/helper.py", 1, "bad-stage-filename"),
    ]
    assert all(str(v).startswith(f"{v.file}:{v.line}: {v.rule}: ") for v in violations)
