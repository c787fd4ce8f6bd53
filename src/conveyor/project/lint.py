"""``conveyor check``: the dependency and layout rules of a pipeline project (seed 000, ADR 0003).

:func:`check_project` reads a pipeline folder (the one holding ``stages/``, ``contracts/``,
``shared/`` and ``config.yaml``) and returns *every* :class:`Violation` it finds, sorted by
file and line. User code is never imported: stage files are parsed with :mod:`ast`, and the
import graph of ``shared/``, ``contracts/`` and the other non-stage modules comes from grimp
(falling back to the same AST scan if grimp cannot build it).

Rules (the ``rule`` field of a violation):

``bad-stage-filename``
    a ``.py`` file in ``stages/`` is neither ``__init__.py`` nor ``NN_name.py`` (two or more
    digits, a lower-case identifier); ``stages/__tests__/`` is ignored.
``duplicate-stage-number`` / ``duplicate-stage-name``
    two stage files share one number (or one name); reported on each of them.
``stages-per-file``
    a stage file does not define exactly one stage: module-level classes whose bases name
    ``PipelineStage``, ``Source``, ``Sink``, ``TaskStage`` or any ``*Stage`` (also as
    ``conveyor.PipelineStage`` or ``PipelineStage[A, B]``), plus module-level assignments of a
    ``*Stage(...)`` call. A local base class that another stage class extends is not counted.
``stage-imports-stage``
    a stage imports another stage or the ``stages`` package (``import pipeline.stages.x``,
    ``from pipeline.stages import x``, ``from . import x``, ``from ..stages import x``).
``dynamic-import-of-stage``
    ``importlib.import_module``, ``__import__``, ``importlib.util.spec_from_file_location``,
    ``SourceFileLoader``, ``runpy.run_path``/``run_module`` called with a string literal that
    names a stages module or a stage file (from a stage, or from shared/contracts code).
``forbidden-import``
    a stage, shared or contracts module imports a part of the pipeline package other than
    ``contracts/`` and ``shared/`` (e.g. ``pipeline.runner``), or shared/contracts code imports
    a stage.
``import-cycle``
    a cycle of static imports among stage, shared, contracts and other pipeline modules
    (imports under ``if TYPE_CHECKING:`` excluded); each cycle reported once, at one import
    in it.
``syntax-error``
    a file cannot be parsed, so its imports could not be checked.

Example (a tiny project in a temporary folder)::

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> stages = Path(tmp.name) / "pipeline" / "stages"
    >>> stages.mkdir(parents=True)
    >>> _ = (stages / "10_double.py").write_text(
    ...     "from conveyor import MapStage\\nstage = MapStage(lambda x: 2 * x)\\n"
    ... )
    >>> _ = (stages / "20_peek.py").write_text("import pipeline.stages.double\\n")
    >>> for violation in check_project(stages.parent):
    ...     print(violation.file.name, violation.line, violation.rule)
    20_peek.py 1 stage-imports-stage
    20_peek.py 1 stages-per-file
    >>> tmp.cleanup()
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.errors import ProjectError
from conveyor.project.discovery import Layout, find_layout, layout_of

__all__ = ["Violation", "check_project"]

STAGE_FILE = re.compile(r"^(?P<number>\d{2,})_(?P<name>[a-z][a-z0-9_]*)\.py$")
DATASET_STAGE_FILE = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)\.py$")
_STAGE_BASES = frozenset({"PipelineStage", "Source", "Sink", "TaskStage"})
_IGNORED_DIRS = frozenset({"__tests__", "__pycache__"})
# Calls that import a module named by their first argument.
_IMPORT_BY_NAME = frozenset({"import_module", "__import__", "run_module"})
# Calls that load code from a name or a path somewhere in their arguments.
_DYNAMIC_CALLS = _IMPORT_BY_NAME | {"spec_from_file_location", "SourceFileLoader", "run_path"}
_SYS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (``file``, 1-based ``line``), which ``rule``, and the fix."""

    file: Path
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"


@dataclass
class _Module:
    """One ``.py`` file of the pipeline package."""

    path: Path
    name: str  # dotted module name, file-based (``pipeline.stages.10_validate``)
    role: str  # "stage" | "stages-init" | "shared" | "contracts" | "other"
    package: str  # the package relative imports are resolved against
    tree: ast.Module | None = None
    imports: list[_Import] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)


@dataclass(frozen=True)
class _Import:
    line: int
    targets: tuple[str, ...]  # absolute dotted names; ``from a import b`` gives ``a.b``
    type_checking: bool
    bare: bool  # ``import pkg`` of the pipeline package itself


@dataclass(frozen=True)
class _Call:
    line: int
    function: str
    module: str | None  # the resolved literal module name for import_module & co.
    literals: tuple[str, ...]  # every string literal in the arguments


def check_project(pipeline_dir: Path) -> list[Violation]:
    """Check a pipeline folder against seed 000's dependency rules and ADR 0003's layout.

    ``pipeline_dir`` holds ``stages/`` (a project folder holding ``src/pipeline/`` is accepted
    too). Returns every violation, sorted by file and line; ``[]`` means the project is clean.
    Raises :class:`~conveyor.errors.ProjectError` when there is no ``stages/`` folder.
    """
    pipeline_dir = Path(pipeline_dir)
    if not (pipeline_dir / "stages").is_dir():
        try:
            pipeline_dir = find_layout(pipeline_dir).package_dir
        except ProjectError:
            raise ProjectError(
                "no stages/ folder: pass the pipeline folder (holding stages/, contracts/, "
                "shared/ and config.yaml) or the project folder holding src/pipeline/ (or "
                "configs/pipeline.yaml and src/<package>/stages/)",
                file=pipeline_dir,
            ) from None
    checker = _Checker(pipeline_dir, layout_of(pipeline_dir))
    checker.run()
    return sorted(checker.violations, key=lambda v: (str(v.file), v.line, v.rule, v.message))


class _Checker:
    def __init__(self, pipeline_dir: Path, layout: Layout | None = None) -> None:
        layout = layout or Layout("stream", pipeline_dir, pipeline_dir)
        self.root = pipeline_dir
        self.package = pipeline_dir.resolve().name
        self.dataset = layout.kind == "dataset"
        self.allowed = frozenset(layout.code_parts)
        self.helpers = frozenset(layout.stage_helpers)
        self.file_pattern = DATASET_STAGE_FILE if self.dataset else STAGE_FILE
        homes = [f"{part}/" for part in layout.code_parts] + [
            f"stages/{name}.py" for name in layout.stage_helpers
        ]
        self.homes = ", ".join(homes[:-1]) + f" or {homes[-1]}"
        """Where shared code goes, for the messages: "contracts/ or shared/"."""
        self.violations: list[Violation] = []
        self.modules: dict[str, _Module] = {}
        self.stage_alias: dict[str, _Module] = {}  # "10_validate" and "validate" -> module

    def add(self, path: Path, line: int, rule: str, message: str) -> None:
        self.violations.append(Violation(path, line, rule, message))

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # -- collecting -------------------------------------------------------------------------

    def run(self) -> None:
        for path in sorted(_python_files(self.root)):
            module = self._module_for(path)
            self.modules[module.name] = module
            try:
                module.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
                line = getattr(exc, "lineno", None) or 1
                self.add(
                    path,
                    line,
                    "syntax-error",
                    f"cannot parse: {exc}; fix the syntax so its imports can be checked",
                )
                continue
            _Scanner(module).scan()
        self._check_stage_names()
        for module in self.modules.values():
            if module.role == "stage" and module.tree is not None:
                self._check_stage_count(module)
            if module.role == "stage" or module.role in self.allowed or module.role == "helper":
                self._check_imports(module)
        self._check_cycles()

    def _module_for(self, path: Path) -> _Module:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts.pop()
        name = ".".join([self.package, *parts])
        package = name if is_init else name.rpartition(".")[0]
        top = parts[0] if parts else ""
        if top == "stages":
            if is_init and len(parts) == 1:
                return _Module(path, name, "stages-init", package)
            if len(parts) == 2 and parts[1] in self.helpers:  # stages/base.py
                return _Module(path, name, "helper", f"{self.package}.stages")
            # Stage files are loaded by path as ``pipeline.stages.<name>``.
            return _Module(path, name, "stage", f"{self.package}.stages")
        role = top if top in self.allowed else "other"
        return _Module(path, name, role, package)

    # -- file names and stage counts ---------------------------------------------------------

    def _check_stage_names(self) -> None:
        by_number: dict[int, list[_Module]] = {}
        by_name: dict[str, list[_Module]] = {}
        for module in self.modules.values():
            if module.role != "stage":
                continue
            path = module.path
            match = self.file_pattern.match(path.name)
            if match is None or path.parent != self.root / "stages":
                where = "stages/" if path.parent == self.root / "stages" else self.rel(path)
                kind = (
                    "name.py stage files (a lower-case name, e.g. preprocess.py), "
                    + ", ".join(f"{h}.py" for h in sorted(self.helpers))
                    if self.dataset
                    else "NN_name.py stage files (two or more digits, a lower-case name, e.g. "
                    "10_validate.py)"
                )
                self.add(
                    path,
                    1,
                    "bad-stage-filename",
                    f"{where} holds only {kind} and __init__.py; rename the file, or move "
                    f"helper code to {self.homes}",
                )
                self.stage_alias.setdefault(path.stem, module)
                continue
            if self.dataset:
                self.stage_alias[path.stem] = module
                continue
            by_number.setdefault(int(match["number"]), []).append(module)
            by_name.setdefault(match["name"], []).append(module)
            self.stage_alias[path.stem] = module
            self.stage_alias.setdefault(match["name"], module)
        for number, twins in sorted(by_number.items()):
            self._duplicates(twins, "duplicate-stage-number", f"number {number:02d}", "number")
        for name, twins in sorted(by_name.items()):
            self._duplicates(twins, "duplicate-stage-name", f"name {name!r}", "name")

    def _duplicates(self, twins: list[_Module], rule: str, what: str, kind: str) -> None:
        if len(twins) < 2:
            return
        for module in twins:
            others = ", ".join(t.path.name for t in twins if t is not module)
            self.add(
                module.path,
                1,
                rule,
                f"stage {what} is also used by {others}; give each stage file its own {kind}",
            )

    def _check_stage_count(self, module: _Module) -> None:
        assert module.tree is not None
        if self.file_pattern.match(module.path.name) is None:
            return
        found = _stage_definitions(module.tree)
        if len(found) == 1:
            return
        if not found and self._windowed(module.path):
            return  # its window in config.yaml has a built-in aggregate (ADR 0013)
        if not found:
            self.add(
                module.path,
                1,
                "stages-per-file",
                "defines no stage; define one class subclassing PipelineStage, Source, Sink "
                "or TaskStage, or one module-level stage instance (e.g. stage = MapStage(fn))",
            )
            return
        listing = ", ".join(f"{what} (line {line})" for line, what in found)
        self.add(
            module.path,
            found[1][0],
            "stages-per-file",
            f"defines {len(found)} stages: {listing}; keep one stage per file and move the "
            f"others to their own {'name.py' if self.dataset else 'NN_name.py'} files",
        )

    def _windowed(self, path: Path) -> bool:
        """Whether config.yaml (as written) gives stage file ``path`` a ``window:`` with an
        ``aggregate:``, so that the file may define no stage (stream layout)."""
        match = STAGE_FILE.match(path.name)
        if self.dataset or match is None:
            return False
        from conveyor.errors import ConfigError
        from conveyor.project.config import read_config_document

        try:
            document = read_config_document(self.root / "config.yaml")
        except ConfigError:
            return False
        stages = document.get("stages") if isinstance(document, dict) else None
        section = stages.get(match["name"]) if isinstance(stages, dict) else None
        window = section.get("window") if isinstance(section, dict) else None
        return isinstance(window, dict) and window.get("aggregate") is not None

    # -- import rules ------------------------------------------------------------------------

    def _classify(self, target: str) -> tuple[str, _Module | None]:
        """``("external" | "package" | "allowed" | "stages" | "stage" | "other", stage)``."""
        if target != self.package and not target.startswith(self.package + "."):
            return "external", None
        rest = target.split(".")[1:]
        if not rest:
            return "package", None
        if rest[0] == "stages":
            if len(rest) == 1:
                return "stages", None
            if rest[1] in self.helpers:
                return "allowed", None
            return "stage", self.stage_alias.get(rest[1])
        if rest[0] in self.allowed:
            return "allowed", None
        return "other", None

    def _check_imports(self, module: _Module) -> None:
        for imp in module.imports:
            for target in imp.targets:
                self._check_target(module, imp.line, target, None, bare=imp.bare)
        for call in module.calls:
            if call.module is not None and self._check_target(
                module, call.line, call.module, call.function, bare=False
            ):
                continue
            for literal in call.literals:
                if self._mentions_stage(literal):
                    self._dynamic_violation(module, call.line, call.function, repr(literal))
                    break

    def _check_target(
        self, module: _Module, line: int, target: str, dynamic: str | None, *, bare: bool
    ) -> bool:
        """Report ``target`` if ``module`` may not import it; True when reported."""
        kind, stage = self._classify(target)
        if kind in ("stage", "stages"):
            if stage is module:
                return False
            what = f"{target!r}" + (f" ({self.rel(stage.path)})" if stage else "")
            if dynamic is not None:
                self._dynamic_violation(module, line, dynamic, what)
            elif module.role == "stage":
                self.add(
                    module.path,
                    line,
                    "stage-imports-stage",
                    f"imports stage module {what}; a stage must not reach into another "
                    f"stage: {self._move_hint()}",
                )
            else:
                self.add(
                    module.path,
                    line,
                    "forbidden-import",
                    f"{module.role} code imports stage module {what}; {module.role} code must "
                    f"not depend on stages: move the code it needs into "
                    f"{'shared/' if not self.dataset else self.homes}",
                )
            return True
        if kind == "other" or (kind == "package" and bare):
            who = "a stage" if module.role == "stage" else f"{module.role} code"
            self.add(
                module.path,
                line,
                "forbidden-import",
                f"imports {target!r}; {who} may import only {self._importable()}, the "
                f"standard library and third-party packages: move what it needs into "
                f"{self.homes}",
            )
            return True
        return False

    def _dynamic_violation(self, module: _Module, line: int, function: str, what: str) -> None:
        who = "a stage" if module.role == "stage" else f"{module.role} code"
        self.add(
            module.path,
            line,
            "dynamic-import-of-stage",
            f"{function}() loads stage {what}; {who} must not import a stage, not even "
            f"dynamically: {self._move_hint()}",
        )

    def _mentions_stage(self, literal: str) -> bool:
        parts = [p for p in re.split(r"[./\\]+", literal) if p]
        if "stages" in parts:
            after = parts[parts.index("stages") + 1 :]
            return not (after and after[0].removesuffix(".py") in self.helpers)
        return any(
            p in self.stage_alias and p not in self.helpers and self.file_pattern.match(p + ".py")
            for p in parts
        )

    def _move_hint(self) -> str:
        """Where the code two stages share belongs."""
        if self.dataset:
            return f"move the code they share to {self.homes}"
        return "move the shared code to shared/ or the record type to contracts/"

    def _importable(self) -> str:
        """The pipeline modules stage and shared code may import, for the messages."""
        names = [f"{self.package}.{part}" for part in sorted(self.allowed)]
        names += [f"{self.package}.stages.{name}" for name in sorted(self.helpers)]
        return ", ".join(names)

    # -- cycles ------------------------------------------------------------------------------

    def _resolve(self, target: str) -> str | None:
        kind, stage = self._classify(target)
        if kind == "stage":
            return stage.name if stage is not None else None
        name = target
        while name:
            if name in self.modules and self.modules[name].role != "stage":
                return name
            name = name.rpartition(".")[0]
        return None

    def _ast_edges(self, *, stages_only: bool) -> dict[tuple[str, str], int]:
        edges: dict[tuple[str, str], int] = {}
        for module in self.modules.values():
            for imp in module.imports:
                if imp.type_checking:
                    continue
                for target in imp.targets:
                    dest = self._resolve(target)
                    if dest is None or dest == module.name:
                        continue
                    if stages_only and "stage" not in (module.role, self.modules[dest].role):
                        continue
                    key = (module.name, dest)
                    edges[key] = min(edges.get(key, imp.line), imp.line)
        return edges

    def _grimp_edges(self) -> dict[tuple[str, str], int] | None:
        """Edges among non-stage modules from grimp; None when grimp cannot build the graph."""
        if not self.package.isidentifier():
            return None
        try:
            import grimp
        except ImportError:  # pragma: no cover - grimp is a dev dependency
            return None
        root = self.root.resolve()
        with _SYS_LOCK:
            saved_path = list(sys.path)
            saved_modules = {
                key: value
                for key, value in sys.modules.items()
                if key == self.package or key.startswith(self.package + ".")
            }
            for key in saved_modules:
                del sys.modules[key]
            # Only the project's folder: a namespace package (no __init__.py) would lose to
            # any module of the same name elsewhere on sys.path.
            sys.path[:] = [str(root.parent)]
            importlib.invalidate_caches()
            try:
                spec = importlib.util.find_spec(self.package)
                found = list(spec.submodule_search_locations or []) if spec else []
                if [Path(p).resolve() for p in found] != [root]:
                    return None  # another package of that name would be analysed
                graph = grimp.build_graph(
                    self.package, cache_dir=None, exclude_type_checking_imports=True
                )
            except Exception:
                return None
            finally:
                sys.path[:] = saved_path
                sys.modules.update(saved_modules)
                importlib.invalidate_caches()
        known = {name for name, m in self.modules.items() if m.role != "stage"}
        edges: dict[tuple[str, str], int] = {}
        for importer in sorted(known & graph.modules):
            for imported in sorted(graph.find_modules_directly_imported_by(importer) & known):
                if imported == importer:
                    continue
                details = graph.get_import_details(importer=importer, imported=imported)
                lines = [int(d["line_number"]) for d in details] or [1]
                edges[(importer, imported)] = min(lines)
        return edges

    def _check_cycles(self) -> None:
        grimp_edges = self._grimp_edges()
        if grimp_edges is None:
            edges = self._ast_edges(stages_only=False)
        else:
            edges = {**grimp_edges, **self._ast_edges(stages_only=True)}
        graph: dict[str, list[str]] = {}
        for source, dest in sorted(edges):
            graph.setdefault(source, []).append(dest)
        for component in _strongly_connected(graph):
            if len(component) < 2:
                continue
            cycle = _one_cycle(graph, component)
            start, nxt = cycle[0], cycle[1]
            module = self.modules[start]
            chain = " -> ".join(self.rel(self.modules[name].path) for name in cycle)
            self.add(
                module.path,
                edges[(start, nxt)],
                "import-cycle",
                f"import cycle {chain}; break it by moving what these modules share into a "
                f"module of {self.homes} that imports none of them",
            )


# -- helpers -------------------------------------------------------------------------------


def _python_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(part in _IGNORED_DIRS or part.startswith(".") for part in rel[:-1]):
            continue
        if rel[0] == "stages" or all(part.isidentifier() for part in rel[:-1]):
            yield path


def _base_name(node: ast.expr) -> str | None:
    """``PipelineStage`` for ``PipelineStage``, ``conveyor.PipelineStage``, ``X[A, B]``."""
    if isinstance(node, ast.Subscript):
        return _base_name(node.value)
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _is_stage_base(name: str | None) -> bool:
    return name is not None and (name in _STAGE_BASES or name.endswith("Stage"))


def _constructor(node: ast.expr | None) -> str | None:
    """The ``*Stage`` class a call builds, looking through ``MapStage(f).method(...)``."""
    while isinstance(node, ast.Call):
        name = _base_name(node.func)
        if _is_stage_base(name):
            return name
        node = node.func.value if isinstance(node.func, ast.Attribute) else None
    return None


def _stage_definitions(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, description) of each stage a module defines at its top level."""
    classes: dict[str, ast.ClassDef] = {}
    used_as_base: set[str] = set()
    found: list[tuple[int, str]] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = [_base_name(b) for b in node.bases]
            if any(_is_stage_base(b) or b in classes for b in bases):
                classes[node.name] = node
                used_as_base.update(b for b in bases if b in classes)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            built = _constructor(node.value)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = ", ".join(ast.unparse(t) for t in targets)
            if built is not None and not names.startswith("_"):
                found.append((node.lineno, f"{names} = {built}(...)"))
    found += [
        (node.lineno, f"class {name}")
        for name, node in classes.items()
        if name not in used_as_base and not name.startswith("_")
    ]
    return sorted(found)


def _is_type_checking(test: ast.expr) -> bool:
    return _base_name(test) == "TYPE_CHECKING"


def _call_name(node: ast.Call) -> str | None:
    name = _base_name(node.func)
    return name if name in _DYNAMIC_CALLS else None


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


class _Scanner:
    """Collects a module's static imports and dynamic-import calls, with lines."""

    def __init__(self, module: _Module) -> None:
        self.module = module

    def scan(self) -> None:
        assert self.module.tree is not None
        self._visit(self.module.tree, type_checking=False)

    def _visit(self, node: ast.AST, *, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                self._visit(child, type_checking=True)
            for child in node.orelse:
                self._visit(child, type_checking=type_checking)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.module.imports.append(
                    _Import(
                        node.lineno,
                        (alias.name,),
                        type_checking,
                        bare=alias.name == self.module.name.partition(".")[0],
                    )
                )
        elif isinstance(node, ast.ImportFrom):
            base = self._absolute(node.module, node.level, self.module.package)
            if base is not None:
                targets = tuple(
                    base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names
                )
                self.module.imports.append(_Import(node.lineno, targets, type_checking, False))
        elif isinstance(node, ast.Call):
            self._call(node)
        for sub in ast.iter_child_nodes(node):
            self._visit(sub, type_checking=type_checking)

    def _call(self, node: ast.Call) -> None:
        function = _call_name(node)
        if function is None:
            return
        module: str | None = None
        if function in _IMPORT_BY_NAME and node.args:
            name = _literal(node.args[0])
            package = _literal(node.args[1]) if len(node.args) > 1 else None
            for keyword in node.keywords:
                if keyword.arg == "package":
                    package = _literal(keyword.value)
            if name is not None and function == "import_module" and name.startswith("."):
                level = len(name) - len(name.lstrip("."))
                module = self._absolute(name[level:] or None, level, package or "")
            elif name is not None and not name.startswith("."):
                module = name
        literals = tuple(
            child.value
            for arg in [*node.args, *(k.value for k in node.keywords)]
            for child in ast.walk(arg)
            if isinstance(child, ast.Constant) and isinstance(child.value, str)
        )
        self.module.calls.append(_Call(node.lineno, function, module, literals))

    @staticmethod
    def _absolute(name: str | None, level: int, package: str) -> str | None:
        if level == 0:
            return name
        parts = package.split(".") if package else []
        if level - 1 > len(parts) or not parts:
            return None
        base = ".".join(parts[: len(parts) - (level - 1)])
        return f"{base}.{name}" if name else base


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            successors = graph.get(node, [])
            if i < len(successors):
                work.append((node, i + 1))
                nxt = successors[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return sorted(result)


def _one_cycle(graph: dict[str, list[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, closed: ``[a, b, a]``."""
    start = component[0]
    members = set(component)
    previous: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for nxt in graph.get(node, []):
            if nxt not in members:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    raise AssertionError("a strongly connected component has a cycle")  # pragma: no cover
