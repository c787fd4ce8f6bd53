"""Docs that run: every fenced code block of README.md and of examples/*/README.md, run in
order in a fresh folder, as a reader would run them; and the README's CLI table, checked
against the commands and options of the ``conveyor`` Typer app.

How a block is treated is said by its language and by HTML comments (invisible on GitHub)
on the lines just before its fence, blank lines allowed between them:

- ```` ```python ```` / ```` ```py ````: run with the venv's python, cwd the document's
  folder. Each block is a program of its own, unless ``<!-- continues -->`` precedes it:
  then it runs after the code of the block(s) it continues (the previous python block of
  the same document, and that one's chain).
- ```` ```sh ```` / ```` ```bash ```` / ```` ```shell ````: each command (a line, with its
  ``\\`` continuations; comment lines skipped) runs in one bash script, the venv's ``bin``
  first on ``PATH``; the first command that fails fails the block. ```` ```console ````:
  the same for the lines that start with ``$ ``; the other lines are output. ``pip`` there
  installs nothing into the shared venv: ``pip install REQ …`` passes when every
  requirement (with its extras) is already installed and fails naming what is not; ``pip
  uninstall`` fails; other pip commands run as they are.
- ``<!-- file: PATH -->``: the block's text is written to ``PATH`` (relative to the folder),
  whatever its language, for later blocks to use.
- ``<!-- same-as: PATH -->``: the block must equal the file ``PATH`` that earlier blocks
  made (YAML and JSON compared by value, other text line by line).
- ``<!-- needs: postgres, nats, sqlite3 -->``: the services (postgres, redis, rabbitmq, nats,
  mosquitto, mariadb: their usual ports on 127.0.0.1) or programs the block needs. Missing:
  skipped with what to start, a failure under ``CI=true``.
- ``<!-- not-run: REASON -->``: not run (output, a drawing, a placeholder URL, something
  that runs forever): skipped with the reason. Python, YAML and JSON are still parsed.

Any other block fails the test: nothing is skipped without a marker saying why.

The folder of README.md starts empty; that of ``examples/NAME/README.md`` is a fresh
checkout (``Makefile``, ``pyproject.toml``, the example's files and a ``.venv`` of links to
the installed one), since those READMEs are read from the repository root. Each block is a
test of its own, ``DOC:LINE`` (the line of its opening fence); selected alone it first runs
the blocks before it in its document.
"""

from __future__ import annotations

import ast
import atexit
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.main
import yaml

from conveyor.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted(REPO.glob("examples/*/README.md"))]
BIN = Path(sys.executable).parent
VENV = BIN.parent

PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell"}
MARKERS = {"continues", "file", "same-as", "needs", "not-run"}
BLOCK_TIMEOUT = 240.0
"""Seconds a block may take (the slowest, the dataset template with `dvc repro`, needs ~20)."""

SERVICES = {
    "postgres": (5432, "PostgreSQL at 127.0.0.1:5432 (trust auth, database test): "
                 "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
    "redis": (6379, "Redis at 127.0.0.1:6379: redis-server --daemonize yes"),
    "rabbitmq": (5672, "RabbitMQ at 127.0.0.1:5672: rabbitmq-server -detached"),
    "nats": (4222, "NATS with JetStream at 127.0.0.1:4222: nats-server -js -a 127.0.0.1 &"),
    "mosquitto": (1883, "Mosquitto at 127.0.0.1:1883: mosquitto -d"),
    "mariadb": (3306, "MariaDB at 127.0.0.1:3306: mysqld_safe &"),
}  # fmt: skip

FENCE = re.compile(r"^```\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*([a-z-]+)\s*(?::\s*(.*?))?\s*-->$")


@dataclass
class Block:
    doc: Path
    line: int
    """The line of the opening fence (1-based)."""
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)
    chain: list[Block] = field(default_factory=list)
    """For a python block: the blocks whose code runs, itself last."""
    problem: str | None = None
    """Why the block is malformed (an unknown marker, a `continues` that continues nothing)."""

    @property
    def doc_name(self) -> str:
        return self.doc.relative_to(REPO).as_posix()

    @property
    def id(self) -> str:
        return f"{self.doc_name}:{self.line}"


def parse(doc: Path) -> list[Block]:
    """The fenced code blocks of ``doc``, with their markers and python chains."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    last_python: Block | None = None
    n = 0
    while n < len(lines):
        opening = FENCE.match(lines[n])
        if not opening:
            n += 1
            continue
        start, body = n, []
        n += 1
        while n < len(lines) and lines[n].strip() != "```":
            body.append(lines[n])
            n += 1
        if n == len(lines):
            raise AssertionError(f"{doc.name}:{start + 1}: a code block that is never closed")
        n += 1
        block = Block(doc, start + 1, opening.group(1).lower(), "\n".join(body) + "\n")
        back = start - 1
        while back >= 0 and (not lines[back].strip() or MARKER.match(lines[back].strip())):
            found = MARKER.match(lines[back].strip())
            if found:
                name, value = found.group(1), (found.group(2) or "").strip()
                if name not in MARKERS:
                    block.problem = f"unknown marker <!-- {name} -->; known: {sorted(MARKERS)}"
                elif name != "continues" and not value:
                    block.problem = f"<!-- {name}: ... --> needs a value"
                block.markers[name] = value
            back -= 1
        if block.lang in PYTHON and not {"file", "same-as"} & set(block.markers):
            if "continues" in block.markers:
                if last_python is None or "not-run" in last_python.markers:
                    block.problem = "<!-- continues --> but no runnable python block before it"
                else:
                    block.chain = [*last_python.chain, block]
            else:
                block.chain = [block]
            last_python = block
        elif "continues" in block.markers:
            block.problem = "<!-- continues --> is for python blocks"
        blocks.append(block)
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in parse(doc)]


# -- running ---------------------------------------------------------------------------------


PIP_SHIM = f"""#!{sys.executable}
\"\"\"pip for the blocks of the docs test: nothing is installed into the shared venv.\"\"\"
import subprocess, sys
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement

def missing(text):
    req = Requirement(text)
    try:
        dist = distribution(req.name)
    except PackageNotFoundError:
        return [f"{{text}}: not installed"]
    if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
        return [f"{{text}}: {{dist.version}} is installed"]
    gaps = []
    for extra in sorted(req.extras):
        deps = [Requirement(d) for d in dist.requires or []]
        deps = [d for d in deps if d.marker and d.marker.evaluate({{"extra": extra}})
                and not d.marker.evaluate({{"extra": ""}})]
        if not deps:
            gaps.append(f"{{req.name}}[{{extra}}]: {{req.name}} has no extra {{extra!r}}")
        for dep in deps:
            dep.marker = None
            gaps += missing(str(dep))
    return gaps

args = sys.argv[1:]
if args[:1] == ["install"]:
    reqs = [a for a in args[1:] if not a.startswith("-")]
    if not reqs or any(a in ("-r", "-e", "--requirement", "--editable") for a in args):
        sys.exit(f"pip (docs test): only `pip install REQ ...` is checked, not {{args}}")
    gaps = [gap for req in reqs for gap in missing(req)]
    if gaps:
        sys.exit("pip (docs test): not in the venv, and tests install nothing: " + "; ".join(gaps))
    for req in reqs:
        print(f"Requirement already satisfied: {{req}} (docs test: nothing installed)")
elif args[:1] == ["uninstall"]:
    sys.exit("pip (docs test): uninstalling from the shared venv is refused")
else:
    sys.exit(subprocess.call([sys.executable, "-m", "pip", *args]))
"""
"""A ``pip`` for the blocks: it checks ``pip install`` lines against the venv, installs nothing."""


@functools.cache
def pip_shims() -> Path:
    """A folder holding ``pip`` and ``pip3`` (the shim above), made once, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="conveyor-docs-pip-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in ("pip", "pip3"):
        (folder / name).write_text(PIP_SHIM, encoding="utf-8")
        (folder / name).chmod(0o755)
    return folder


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PY_COLORS")}
    env.update(
        PATH=f"{pip_shims()}{os.pathsep}{BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(VENV),
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="160",
        DVC_NO_ANALYTICS="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        SE_AVOID_STATS="true",
    )
    env.pop("PYTHONHOME", None)
    return env


def run_process(args: list[str], cwd: Path, stdin: str | None = None) -> tuple[int, str]:
    """Run ``args`` in ``cwd`` (its own process group, killed whole on timeout): the exit
    code and what it printed, stdout and stderr together."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=subprocess_env(),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(stdin, timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, f"{out}\n[timed out after {BLOCK_TIMEOUT:.0f} s: killed]"
    return proc.returncode, out


def shell_script(block: Block) -> str:
    """A bash script running the block's commands one by one, stopping at the first that
    fails with a line naming it."""
    commands: list[tuple[int, str]] = []
    pending: list[str] = []
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        if block.lang == "console" and not pending:
            if not raw.startswith("$ "):
                continue  # output
            raw = raw[2:]
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if not pending:
            first = block.line + offset
        pending.append(raw)
        if not raw.endswith("\\"):
            commands.append((first, "\n".join(pending)))
            pending = []
    assert not pending, f"{block.id}: the last command ends with a backslash"
    assert commands, f"{block.id}: a shell block without commands"
    for line, command in commands:  # the shim intercepts `pip`, not `python -m pip`
        assert not re.search(r"-m\s+pip\s+install", command), (
            f"{block.doc_name}:{line}: write `pip install`, which the test checks without "
            "installing into the shared venv"
        )
    script = []
    for line, command in commands:
        where = f"{block.doc_name}:{line}"
        script += [
            f"printf '%s\\n' {shlex.quote('$ ' + command)}",
            command,
            f'rc=$?; if [ $rc -ne 0 ]; then echo {shlex.quote(where)}": exit $rc"; exit $rc; fi',
        ]
    return "\n".join(script) + "\n"


def python_program(block: Block) -> str:
    return "".join(f"# ---- {part.id} ----\n{part.text}" for part in block.chain)


def check_parses(block: Block) -> None:
    """A block that is not run still has to be valid Python, YAML or JSON."""
    if block.lang in PYTHON:
        ast.parse(block.text, filename=block.id)
    elif block.lang == "yaml":
        yaml.safe_load(block.text)
    elif block.lang == "json":
        json.loads(block.text)


def inside(folder: Path, relative: str, block: Block) -> Path:
    target = (folder / relative).resolve()
    assert target.is_relative_to(folder.resolve()), f"{block.id}: {relative} leaves the folder"
    return target


def same(block: Block, path: Path) -> None:
    assert path.is_file(), f"{block.id}: same-as {path.name}, which earlier blocks did not make"
    actual = path.read_text(encoding="utf-8")
    if block.lang == "yaml":
        assert yaml.safe_load(block.text) == yaml.safe_load(actual), (
            f"{block.id} is not what {path} holds:\n{actual}"
        )
    elif block.lang == "json":
        assert json.loads(block.text) == json.loads(actual), f"{block.id} differs from {path}"
    else:
        wanted = [line.rstrip() for line in block.text.strip().splitlines()]
        assert wanted == [line.rstrip() for line in actual.strip().splitlines()], (
            f"{block.id} is not what {path} holds:\n{actual}"
        )


def missing_needs(block: Block) -> list[str]:
    """What the block needs and is not there, each with how to get it."""
    missing = []
    for need in filter(None, (n.strip() for n in block.markers["needs"].split(","))):
        if need in SERVICES:
            port, start = SERVICES[need]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                missing.append(f"start {start}")
        elif shutil.which(need, path=subprocess_env()["PATH"]) is None:
            missing.append(f"install the program {need!r}")
    return missing


def run_block(block: Block, folder: Path, scripts: Path) -> None:
    """Run one block in ``folder``; fail with what it printed when it fails."""
    if block.problem:
        pytest.fail(f"{block.id}: {block.problem}")
    if "not-run" in block.markers:
        check_parses(block)
        pytest.skip(f"{block.id} not run: {block.markers['not-run']}")
    if "needs" in block.markers and (missing := missing_needs(block)):
        message = f"{block.id} needs what is not there: " + "; ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if "file" in block.markers:
        target = inside(folder, block.markers["file"], block)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text, encoding="utf-8")
        return
    if "same-as" in block.markers:
        same(block, inside(folder, block.markers["same-as"], block))
        return
    if block.lang in PYTHON:
        script = scripts / f"{block.id.replace('/', '_').replace(':', '_L')}.py"
        script.write_text(python_program(block), encoding="utf-8")
        rc, out = run_process([sys.executable, str(script)], folder)
        what = " + ".join(part.id for part in block.chain)
    elif block.lang in SHELL or block.lang == "console":
        rc, out = run_process(["bash", "--noprofile", "--norc", "-s"], folder, shell_script(block))
        what = block.id
    else:
        pytest.fail(
            f"{block.id}: a ```{block.lang or '(no language)'} block with no marker: say what it "
            "is, <!-- file: PATH --> (written for later blocks), <!-- same-as: PATH -->, or "
            "<!-- not-run: REASON --> (e.g. output of the command above)"
        )
    if rc != 0:
        tail = "\n".join(out.splitlines()[-80:])
        pytest.fail(f"{what} failed (exit {rc}) in {folder}:\n{tail}", pytrace=False)


@dataclass
class DocRun:
    folder: Path
    done: set[int] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)


LEFTOVERS = {"data", ".conveyor", "__pycache__", ".dvc", "dvc.lock"}
"""What a run of an example makes in its folder: not part of a fresh checkout."""


def fresh_checkout(folder: Path, example: Path) -> None:
    """The files a reader of ``examples/NAME/README.md`` has at the repository root."""
    rel = example.relative_to(REPO).as_posix()
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "--", rel],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(example, folder / rel, ignore=shutil.ignore_patterns(*LEFTOVERS))
        listed = []
    # what running the README in the repository leaves (`dvc init` makes .dvc/, untracked)
    listed = [n for n in listed if not LEFTOVERS & set(Path(n).relative_to(rel).parts)]
    for name in [*listed, "Makefile", "pyproject.toml"]:
        source = REPO / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)  # copy2: pyproject.toml keeps its mtime
    venv = folder / ".venv"
    venv.mkdir()
    for entry in VENV.iterdir():
        if entry.name != ".installed-stamp":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed-stamp").touch()  # the venv is installed: make must not reinstall it


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, DocRun]:
    runs: dict[Path, DocRun] = {}
    for doc in DOCS:
        folder = tmp_path_factory.mktemp(doc.parent.name if doc.parent != REPO else "readme")
        if doc.parent != REPO:
            fresh_checkout(folder, doc.parent)
        runs[doc] = DocRun(folder)
    return runs


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("doc-scripts")


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.id for block in ALL_BLOCKS])
def test_doc_block_runs_as_written(
    block: Block, doc_runs: dict[Path, DocRun], scripts: Path
) -> None:
    state = doc_runs[block.doc]
    for earlier in (b for b in ALL_BLOCKS if b.doc == block.doc and b.line < block.line):
        if earlier.line not in state.done:  # selected alone: what a reader did before
            state.done.add(earlier.line)
            try:
                run_block(earlier, state.folder, scripts)
            except (pytest.fail.Exception, pytest.skip.Exception, AssertionError):
                state.failed.append(earlier.id)
    state.done.add(block.line)
    started = time.monotonic()
    try:
        run_block(block, state.folder, scripts)
    except (pytest.fail.Exception, AssertionError):
        earlier_failures = list(state.failed)
        state.failed.append(block.id)
        if earlier_failures:
            print(f"(blocks before it that failed: {', '.join(earlier_failures)})")
        raise
    finally:
        print(f"{block.id}: {time.monotonic() - started:.1f} s")


def test_every_block_has_a_way_to_run() -> None:
    """Caught early and all at once: blocks that neither run nor say why not."""
    runnable = PYTHON | SHELL | {"console"}
    silent = [
        f"{b.id} (```{b.lang or ''})"
        for b in ALL_BLOCKS
        if b.lang not in runnable and not {"file", "same-as", "not-run"} & set(b.markers)
    ]
    broken = [f"{b.id}: {b.problem}" for b in ALL_BLOCKS if b.problem]
    assert not silent, f"blocks with no runnable language and no marker: {silent}"
    assert not broken, broken


def test_the_parser_reads_markers_and_chains(tmp_path: Path) -> None:
    doc = tmp_path / "DOC.md"
    doc.write_text(
        "```python\nx = 1\n```\n\n<!-- continues -->\n\n```python\nprint(x)\n```\n"
        "<!-- file: a/b.yaml -->\n```yaml\nk: v\n```\n"
        "<!-- not-run: output -->\n```\nout\n```\n<!-- nope -->\n```sh\ntrue\n```\n"
        "<!-- continues -->\n```sh\ntrue\n```\n",
        encoding="utf-8",
    )
    first, second, yml, output, unknown, bad_chain = parse(doc)
    assert [b.line for b in second.chain] == [1, 7]
    assert first.chain == [first]
    assert yml.markers == {"file": "a/b.yaml"}
    assert yml.lang == "yaml"
    assert output.markers == {"not-run": "output"}
    assert output.lang == ""
    assert unknown.problem
    assert "unknown marker" in unknown.problem
    assert bad_chain.problem == "<!-- continues --> is for python blocks"


def test_shell_blocks_run_command_by_command() -> None:
    block = Block(
        REPO / "README.md",
        10,
        "console",
        "$ echo one \\\n    two   # a comment\none two\n$ false && true\n$ echo never\n",
    )
    script = shell_script(block)
    rc, out = run_process(["bash", "--noprofile", "--norc", "-s"], REPO, script)
    assert rc == 1
    assert "one two" in out
    assert "README.md:14: exit 1" in out  # `false && true` fails as a whole
    assert "never" not in out.replace("$ echo never", "")


# -- the CLI table ---------------------------------------------------------------------------


def cli_table_commands() -> list[str]:
    """The first cells of the README's "### CLI" table, backticks and escapes removed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### CLI\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    cells = []
    for line in section.splitlines():
        if line.startswith("|"):
            first = re.split(r"(?<!\\)\|", line)[1]
            cells.append(first.replace("\\|", "|").replace("`", "").strip())
    return [cell for cell in cells if cell.startswith("conveyor")]


def code_commands() -> Iterator[tuple[list[str], list[str], bool]]:
    """(path of words, long flags, is a leaf) of every command of the Typer app."""

    def walk(command: object, path: list[str]) -> Iterator[tuple[list[str], list[str], bool]]:
        if getattr(command, "hidden", False):
            return
        flags = [
            flag
            for param in getattr(command, "params", [])
            if param.param_type_name == "option" and not getattr(param, "hidden", False)
            for flag in [*param.opts, *param.secondary_opts]
            if flag.startswith("--")
        ]
        subcommands = getattr(command, "commands", {})
        yield path, flags, not subcommands
        for name, sub in subcommands.items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def test_the_cli_table_lists_every_command_and_option() -> None:
    rows = cli_table_commands()
    assert rows, "README.md's ### CLI section has no table rows starting with `conveyor`"
    problems = []
    for path, flags, leaf in code_commands():
        name = " ".join(["conveyor", *path])
        own = [row for row in rows if re.match(re.escape(name) + r"(\s|$)", row)]
        if leaf and not own:
            problems.append(f"`{name}` has no row")
        for flag in flags:
            if not any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", r) for r in own):
                problems.append(f"`{name} {flag}` is not in its row(s)")
    assert not problems, "README.md's CLI table is missing: " + "; ".join(problems)
