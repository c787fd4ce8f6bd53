"""The ``conveyor`` command line. Thin: it parses arguments and calls the library.

Text that comes from records, errors, config or the file system (letters, messages,
tracebacks, stage and pipeline names, paths) is printed through :func:`_say` and
:func:`_cell`: control characters escaped (:func:`~conveyor.core._render.printable`), and
never read as rich markup or emoji codes, so a record cannot rewrite the terminal or
restyle the output.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

import conveyor
from conveyor.core._render import printable
from conveyor.errors import ConveyorError, UsageError

app = typer.Typer(
    name="conveyor",
    help="Conveyor: typed, concurrent, back-pressured data pipelines.",
    no_args_is_help=True,
    add_completion=False,
)
dlq_app = typer.Typer(
    help="List, show, replay, purge and export dead letters of a project.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
contracts_app = typer.Typer(help="Work with a project's contract files.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")

console = Console(soft_wrap=True, emoji=False)
errors = Console(stderr=True, soft_wrap=True, emoji=False)


def _say(text: object, *, lines: bool = False, err: bool = False) -> None:
    """Print ``text`` as it is: control characters escaped (line breaks too, unless
    ``lines``), no markup, no highlighting; on stderr with ``err``."""
    (errors if err else console).print(
        printable(text, newlines=lines), markup=False, highlight=False, emoji=False
    )


def _cell(text: object) -> Text:
    """A table cell or title holding ``text`` literally (control characters escaped)."""
    return Text(printable(text))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"conveyor {conveyor.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Conveyor: typed, concurrent, back-pressured data pipelines."""


@app.command()
def version() -> None:
    """Print Conveyor's version."""
    typer.echo(f"conveyor {conveyor.__version__}")


def _split_path(args: list[str]) -> tuple[Path, list[str]]:
    """``[PATH] [key=value ...]``: the first argument without ``=`` is the path."""
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return Path("."), list(args)


def _fail(error: BaseException, hint: str = "") -> None:
    message = Text.assemble(("error:", "bold red"), " ", printable(error, newlines=True))
    errors.print(message, highlight=False)
    if hint:
        _say(hint, lines=True, err=True)
    raise typer.Exit(1)


def _findings(findings: Sequence[object], failed: str, passed: str) -> None:
    """Print one finding a line; exit 1 with ``failed`` on stderr if there are any."""
    for finding in findings:
        _say(finding)
    if findings:
        _say(failed, err=True)
        raise typer.Exit(1)
    _say(passed)


def _stats_table(runner: Any) -> Table:
    from conveyor.observe.state import STATE_COLUMNS, state_cells, stateful_stages

    stats, channels = runner.progress()
    fill = {ch.name.split(" -> ")[-1]: ch for ch in channels}
    table = Table(title=_cell(runner.name), title_justify="left")
    state = bool(stateful_stages(stats))  # windows, state, watermark lag: only then
    columns = ("stage", "in", "out", "filtered", "dead", "rate/s", "queue")
    for column in columns + (STATE_COLUMNS if state else ()):
        table.add_column(column, justify="left" if column == "stage" else "right")
    sink = str(getattr(getattr(runner, "sink", None), "description", "") or "")
    now = time.time()
    for s in stats:
        ch = fill.get(s.name)
        elapsed = runner.elapsed_seconds
        rate = s.records_in / elapsed if elapsed else 0.0
        table.add_row(
            _cell(_row_name(s, stats, sink)),
            f"{s.records_in:,}",
            f"{s.records_out:,}",
            f"{s.records_filtered:,}",
            f"{s.records_dead:,}",
            f"{rate:,.0f}",
            f"{ch.buffered}/{ch.capacity}" if ch else "",
            *(state_cells(s, now) if state else ()),
        )
    return table


def _row_name(stats: Any, stages: Sequence[Any], sink: str) -> str:
    """A stage's name in a table; the sink's (the last row) with where it writes."""
    return f"{stats.name} ({sink})" if sink and stats is stages[-1] else str(stats.name)


class _Progress:
    """A live table on a terminal; a log line every few seconds otherwise."""

    def __init__(self) -> None:
        self.live: Live | None = None
        self.last_line = 0.0
        self.runner: Any = None  # the live run, for the metrics endpoint
        self.metrics: Any = None

    def __call__(self, runner: Any) -> None:
        self.runner = runner
        if console.is_terminal:
            if self.live is None:
                self.live = Live(_stats_table(runner), console=console, refresh_per_second=4)
                self.live.start()
            else:
                self.live.update(_stats_table(runner))
        elif time.monotonic() - self.last_line >= 2.0:
            self.last_line = time.monotonic()
            from conveyor.observe.state import state_line

            stats, _ = runner.progress()
            now = time.time()
            _say(
                " | ".join(
                    f"{s.name}: {s.records_in:,} in, {s.records_out:,} out{state_line(s, now)}"
                    for s in stats
                )
            )

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
        if self.metrics is not None:
            self.metrics.close()


def _serve_metrics(progress: _Progress, port: int, host: str) -> None:
    """Serve the metrics of the run ``progress`` shows until it stops (``--metrics-port``)."""
    from conveyor.observe.metrics import serve_metrics

    try:
        progress.metrics = serve_metrics(lambda: progress.runner, port, host)
    except (ImportError, OSError) as exc:
        _fail(exc, "" if isinstance(exc, ImportError) else "pick another --metrics-port")
    _say(f"live metrics at {progress.metrics.url}", err=True)


EXIT_ERROR = 1
EXIT_OVER_BUDGET = 3
EXIT_INTERRUPTED = 130


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    args: list[str] = typer.Argument(
        None,
        help="[PATH] \\[key=value ...]: config overrides as key=value, dotted for nesting "
        "(stages.enrich.concurrency=4; in the dataset layout preprocess.image_size=16 for a "
        "stage's parameter, seed=1 for a shared one); stage=NAME runs one stage",
    ),
    force: bool = typer.Option(
        False, "--force", help="Run every stage, also the unchanged persisted ones."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the unfinished run from its last checkpoint."
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="Start from the beginning, abandoning an unfinished checkpoint."
    ),
    after: str | None = typer.Option(
        None,
        "--after",
        metavar="NAME",
        help="Run every stage after the persisted stage NAME, on its dataset, into the sink "
        "(what the last DVC stage of `conveyor dvc` runs).",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        metavar="N",
        help="Serve live Prometheus metrics (conveyor_...) at http://HOST:N/metrics during "
        "the run (needs prometheus_client: pip install 'conveyor\\[metrics]').",
    ),
    metrics_host: str = typer.Option(
        "127.0.0.1", "--metrics-host", help="The address --metrics-port listens on."
    ),
    report_file: Path | None = typer.Option(
        None,
        "--report",
        metavar="FILE",
        help="When the run ends, write its report to FILE: run.html is a self-contained page "
        "(graph, per-stage counts, rates, queue fill, dead letters, resume point), run.json "
        "the same figures for tools.",
    ),
) -> None:
    """Run a pipeline project (the whole pipeline, one stage with stage=NAME, or the stages
    after a persisted stage with --after NAME).

    A whole run keeps checkpoints; after a crash or a stop, `--resume` continues from the
    last one and `--fresh` starts again from the beginning (a plain run refuses to guess).

    Exit codes: 0 done; 1 an error; 3 more dead letters than pipeline.max_dead_letters
    allows; 130 interrupted (Ctrl-C / SIGTERM).
    """
    from conveyor.project.run import run_project

    if resume and fresh:
        _fail(UsageError("--resume and --fresh exclude each other; pick one"), "")
        return
    path, overrides = _split_path(list(args or []))
    progress = _Progress()
    if metrics_port is not None:
        _serve_metrics(progress, metrics_port, metrics_host)
    try:
        outcome = run_project(
            path,
            overrides,
            progress=progress,
            force=force,
            resume=True if resume else False if fresh else None,
            after=after,
            report=report_file,
        )
    except ConveyorError as exc:
        progress.stop()
        if getattr(exc, "over_budget", False):  # a task stage over the dead-letter budget
            errors.print(
                Text.assemble(("error:", "bold red"), " ", printable(exc, newlines=True)),
                highlight=False,
            )
            _say(f"inspect the dead letters with: conveyor dlq list {path}", err=True)
            raise typer.Exit(EXIT_OVER_BUDGET) from None
        _fail(exc, _rerun_hint(path, overrides, exc))
        return
    except (KeyboardInterrupt, SystemExit) as stop:
        progress.stop()
        report = getattr(stop, "report", None)
        if report is None:
            raise
        _print_report(report, path)
        if report_file is not None:
            _say(f"wrote the run report to {report_file}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    progress.stop()
    for name in outcome.skipped:
        _say(
            f"stage {name} is unchanged (code, config and input): skipped "
            "(conveyor run --force runs it anyway)"
        )
    for note in outcome.notes:
        _say(note, lines=True)
    report = outcome.report
    if report is None:
        for name in outcome.tasks_run:
            summary = str(getattr(outcome.project.stage(name).stage, "summary", "") or "done")
            _say(f"{name}: {summary}")
        if outcome.tasks_run:
            _say(f"ran task stages: {', '.join(outcome.tasks_run)}")
        if report_file is not None:
            _say(
                f"no run report: every stage was unchanged, nothing ran ({report_file} not written)"
            )
        return
    _print_report(report, path)
    if outcome.report_path is not None:
        _say(f"wrote the run report to {report_file}")
    _exit_for(report)


def _rerun_hint(path: Path, overrides: Sequence[str], exc: BaseException) -> str:
    from conveyor.errors import PipelineDefinitionError, ProjectError, SinkUnavailableError

    if isinstance(exc, SinkUnavailableError):
        return (
            "nothing was dead-lettered and the last checkpoint is consistent: once the sink "
            f"is reachable, continue with: conveyor run {path} --resume (a project whose "
            "stages persist datasets keeps no checkpoints: run it again)"
        )
    if isinstance(exc, ProjectError | PipelineDefinitionError | UsageError):
        return ""  # the project or the command is wrong: running it again cannot help
    named = [o.partition("=")[2] for o in overrides if o.startswith("stage=")]
    failed = getattr(exc, "stage", None)  # HookError, ConservationError … name it
    name = named[-1] if named else failed if isinstance(failed, str) else ""
    if not name.strip() or "/" in name or not _is_stage(path, overrides, name):
        return ""  # never `stage=` nor a stage the project does not have
    return f"re-run with: conveyor run {path} stage={name}"


def _is_stage(path: Path, overrides: Sequence[str], name: str) -> bool:
    """Whether ``name`` is a stage (or a group of ``branches:``) of the project at
    ``path``: read from its config and stage file names, importing no stage."""
    from conveyor.project.project import load_project_config, stage_files

    rest = [o for o in overrides if not o.startswith("stage=")]
    try:
        _, package_dir, config = load_project_config(path, rest)
        names = {f.name for f in stage_files(package_dir, config)}
    except ConveyorError:
        return False
    return name in names or name in config.config.branches


def _print_report(report: Any, path: Path) -> None:
    if not console.is_terminal:
        console.print(_stats_table_from_report(report))
    _say(report.summary(), lines=True)
    if report.dead_lettered:
        _say(
            f"{report.dead_lettered} dead-lettered records in {report.dead_letter_store}; "
            f"inspect them with: conveyor dlq list {path}"
        )


def _exit_for(report: Any) -> None:
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(EXIT_OVER_BUDGET)


def _stats_table_from_report(report: Any) -> Table:
    table = Table(title=_cell(report.pipeline_name), title_justify="left")
    for column in ("stage", "in", "out", "filtered", "dead", "retried", "busy s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in report.stages:
        table.add_row(
            _cell(_row_name(s, report.stages, getattr(report, "sink_description", ""))),
            f"{s.records_in:,}",
            f"{s.records_out:,}",
            f"{s.records_filtered:,}",
            f"{s.records_dead:,}",
            f"{s.retried:,}",
            f"{s.busy_seconds:.2f}",
        )
    return table


def _project_store(path: Path) -> Any:
    """The project's dead-letter store, its config loaded (and checked) as for a run."""
    return _project_dlq(path)[0]


def _project_dlq(path: Path) -> tuple[Any, Path]:
    """The project's dead-letter store and the folder its package imports from."""
    from conveyor.dlq import open_dead_letter_store
    from conveyor.project.project import load_project_config

    root, package_dir, config = load_project_config(path)
    store_path = Path(config.config.pipeline.dead_letters)
    store = open_dead_letter_store(store_path if store_path.is_absolute() else root / store_path)
    return store, package_dir.parent


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """The project's package importable (so the pickles of its records load), for a while."""
    saved = list(sys.path)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved


_RUN_HELP = "Only the letters of this run: a run id, or `latest` (the newest run with letters)."


def _run_filter(store: Any, run: str | None, stage: str | None, replayed: bool) -> str | None:
    """``--run``: ``None``, a run id, or ``latest`` resolved (``""`` when there is none)."""
    if run != "latest":
        return run
    return store.latest_run(stage=stage, include_replayed=replayed) or ""


def _before(text: str | None) -> datetime | None:
    """``--before DATE``: an ISO date or date-time; without a time zone it is UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date or date-time (e.g. 2026-01-31 or 2026-01-31T12:00)",
            param_hint="--before",
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@dlq_app.command("list")
def dlq_list(
    path: Path = typer.Argument(Path("."), help="The project."),
    stage: str | None = typer.Option(None, help="Only this stage's letters."),
    run: str | None = typer.Option(None, "--run", metavar="RUN_ID|latest", help=_RUN_HELP),
    all_letters: bool = typer.Option(False, "--all", help="Include replayed letters."),
    occurrences: bool = typer.Option(
        False,
        "--all-occurrences",
        help="One line per letter, instead of one per failure (a repeated failure: the same "
        "record, stage and error type).",
    ),
    limit: int = typer.Option(50, min=0, help="At most this many lines: the newest."),
) -> None:
    """List a project's dead letters, newest last: one line per failure, with how often
    it occurred and when first and last (the letters of the same record, stage and error
    type; the record is recognised by the SHA-256 of its canonical JSON)."""
    try:
        store, imports = _project_dlq(path)
        with store, _importable(imports):
            run_id = _run_filter(store, run, stage, all_letters)
            if occurrences:
                letters = store.list(
                    stage=stage,
                    run_id=run_id,
                    include_replayed=all_letters,
                    limit=limit,
                    newest=True,
                )
                total = store.count(stage=stage, run_id=run_id, include_replayed=all_letters)
                lines = [letter.summary() for letter in letters]
            else:
                groups = store.groups(stage=stage, run_id=run_id, include_replayed=all_letters)
                total = sum(group.occurrences for group in groups)
                lines = _group_lines(store, groups[len(groups) - limit :][:limit])
    except ConveyorError as exc:
        _fail(exc)
        return
    for line in lines:
        _say(line)
    where = f" of run {run_id}" if run_id else ""
    if occurrences:
        shown = f"{len(lines)} of {total}" if len(lines) < total else f"{total}"
        _say(f"{shown} dead letter(s){where} in {store.description}")
        return
    failures = len(groups)
    shown = f"{len(lines)} of {failures}" if len(lines) < failures else f"{failures}"
    _say(
        f"{total} dead letter(s){where} in {store.description}: {shown} failure(s) shown"
        " (--all-occurrences: every letter)"
    )


def _group_lines(store: Any, groups: Sequence[Any]) -> list[str]:
    """One line per failure: its newest letter's summary, how often, first and last seen."""
    newest = {letter.id: letter for letter in store.get_many(group.id for group in groups)}
    lines = []
    for group in groups:
        letter = newest.get(group.id)
        head = letter.summary() if letter is not None else group.summary()
        first, last = (f"{when:%Y-%m-%d %H:%M:%S}Z" for when in (group.first_seen, group.last_seen))
        lines.append(f"{head} | {group.occurrences}x, first {first}, last {last}")
    return lines


@dlq_app.command("show")
def dlq_show(
    letter_id: str = typer.Argument(
        ..., help="The letter's id, or its end as `dlq list` shows it (12 characters)."
    ),
    path: Path = typer.Argument(Path("."), help="The project."),
) -> None:
    """Show one dead letter with its record and traceback."""
    try:
        store, imports = _project_dlq(path)
        with store, _importable(imports):
            matches = store.find_ids(letter_id)
            letter = store.get(matches[0]) if len(matches) == 1 else None
    except ConveyorError as exc:
        _fail(exc)
        return
    if not matches:
        _fail(
            UsageError(
                f"no dead letter's id starts with {letter_id!r}; the ids are in "
                f"'conveyor dlq list {path} --all' (usage: conveyor dlq show ID [PATH])"
            )
        )
        return
    if letter is None:
        _fail(UsageError(f"{len(matches)} dead letters match {letter_id!r}; give more of the id"))
        return
    for key in ("id", "stage", "attempts", "records", "error_type", "message", "run_id"):
        _say(f"{key}: {getattr(letter, key)}", lines=key == "message")
    _say(f"created_at: {letter.created_at}")
    shown = "record" if letter.record_exact else "record (its JSON rendering)"
    _say(f"{shown}: {letter.record!r}")
    if letter.output is not None:
        _say(f"output: {letter.output!r}")
    _say(letter.traceback, lines=True)


@dlq_app.command("purge")
def dlq_purge(
    path: Path = typer.Argument(Path("."), help="The project."),
    replayed: bool = typer.Option(False, "--replayed", help="Only replayed letters."),
    before: str | None = typer.Option(
        None, "--before", metavar="DATE", help="Only letters older than DATE (ISO; UTC)."
    ),
    stage: str | None = typer.Option(None, help="Only this stage's letters."),
    run: str | None = typer.Option(None, "--run", metavar="RUN_ID|latest", help=_RUN_HELP),
    yes: bool = typer.Option(False, "--yes", help="Delete; without it, only say what would go."),
) -> None:
    """Delete the dead letters that every given filter selects. A letter not yet replayed
    goes only when --before, --stage or --run names it; with no filter nothing is deleted.
    Without --yes it prints what it would delete and deletes nothing (exit 0)."""
    if not (replayed or before or stage or run):
        _fail(
            UsageError(
                "say what to purge: --replayed, --before DATE, --stage S and/or --run RUN_ID "
                "(letters not yet replayed go only when --before, --stage or --run names them)"
            )
        )
        return
    when = _before(before)
    try:
        with _project_store(path) as store:
            run_id = _run_filter(store, run, stage, True)
            groups = store.purge(
                replayed=replayed, before=when, stage=stage, run_id=run_id, dry_run=not yes
            )
    except ConveyorError as exc:
        _fail(exc)
        return
    letters = sum(group.occurrences for group in groups)
    if yes:
        _say(
            f"deleted {letters} dead letter(s) ({len(groups)} failure(s)) from {store.description}"
        )
        return
    for group in groups[:50]:
        _say(group.summary())
    if len(groups) > 50:
        _say(f"… and {len(groups) - 50} more failure(s)")
    _say(
        f"would delete {letters} dead letter(s) ({len(groups)} failure(s)) from "
        f"{store.description}; nothing deleted: add --yes to delete them"
    )


@dlq_app.command("export")
def dlq_export(
    path: Path = typer.Argument(Path("."), help="The project."),
    fmt: str = typer.Option("csv", "--format", metavar="csv|jsonl", help="csv or jsonl."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write this file instead of printing."
    ),
    stage: str | None = typer.Option(None, help="Only this stage's letters."),
    run: str | None = typer.Option(None, "--run", metavar="RUN_ID|latest", help=_RUN_HELP),
    all_letters: bool = typer.Option(False, "--all", help="Include replayed letters."),
) -> None:
    """Export the rejects for a person to review: one row per failure (id, stage,
    error_type, message, first_seen, last_seen, occurrences, run_ids, record as JSON).
    CSV cells are spreadsheet-safe (a cell starting with = + - @ gets a leading ') and
    control characters are escaped."""
    from conveyor.dlq._review import export_csv, export_jsonl

    if fmt not in ("csv", "jsonl"):
        _fail(UsageError(f"--format is csv or jsonl, not {fmt!r}"))
        return
    try:
        with _project_store(path) as store:
            run_id = _run_filter(store, run, stage, all_letters)
            groups = store.groups(stage=stage, run_id=run_id, include_replayed=all_letters)
    except ConveyorError as exc:
        _fail(exc)
        return
    text = export_csv(groups) if fmt == "csv" else export_jsonl(groups)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        _fail(exc)
        return
    _say(f"wrote {len(groups)} failure(s) to {output}")


@dlq_app.command(
    "replay", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def dlq_replay(
    args: list[str] = typer.Argument(
        None, help="[PATH] \\[key=value ...]: config overrides, e.g. pipeline.max_dead_letters=0"
    ),
    stage: str | None = typer.Option(None, help="Only this stage's letters."),
    run_id: str | None = typer.Option(None, "--run", help="Only the letters of this run."),
) -> None:
    """Feed not-yet-replayed dead letters back into the stage where they failed, on
    through every later stage into the Sink (persisted datasets gain the records).

    Exit codes as for run: 3 when the records that fail again are over the budget."""
    from conveyor.project.replay import replay_project

    path, overrides = _split_path(list(args or []))
    try:
        outcome = replay_project(path, overrides, stage=stage, run_id=run_id)
    except ConveyorError as exc:
        _fail(exc)
        return
    if not outcome.reports:
        _say("no dead letters to replay")
        return
    for report in outcome.reports:
        _say(report.summary(), lines=True)
    for barrier in outcome.recomputed:
        _say(f"recomputed {barrier} and every stage after it from its persisted input")
    _say(f"{outcome.replayed} dead letter(s) marked replayed")
    for report in outcome.reports:
        _exit_for(report)


_STAGE_KINDS = ("map", "filter", "validate", "source", "sink", "aggregate", "batch")
"""The kinds of `new stage --kind` (conveyor.project.scaffold.STAGE_KINDS, which a test
keeps equal: the scaffold is imported only when the command runs)."""


@app.command(context_settings={"allow_extra_args": True})
def new(
    what: list[str] = typer.Argument(..., help="PROJECT, or: stage NAME"),
    template: str | None = typer.Option(
        None,
        "--template",
        "-t",
        help="For a project: stream (the default: numbered stage files and config.yaml) or "
        "dataset (seed 002: stages by name, configs/, data/, dvc.yaml, a pixi manifest).",
    ),
    after: int | None = typer.Option(None, help="For a stage: the number it comes after."),
    project: Path = typer.Option(Path("."), help="For a stage: the project."),
    kind: str | None = typer.Option(
        None,
        "--kind",
        metavar="|".join(_STAGE_KINDS),
        help="For a stage: what it is. map (the default), filter, validate, aggregate: a "
        "function and the built-in stage calling it; batch: lists of `size` records; "
        "source: the first stage, a conveyor.project.Source; sink: the last stage, a "
        "conveyor.project.Sink writing JSON lines.",
    ),
) -> None:
    """Create a working project (`new [--template dataset] PROJECT`) or one stage (`new
    stage NAME [--kind KIND]`)."""
    from conveyor.project.scaffold import TEMPLATES, new_project, new_stage

    try:
        if len(what) == 2 and what[0] == "stage":
            if template is not None:
                raise typer.BadParameter("--template is for a new project, not a stage")
            written = new_stage(project, what[1], after=after, kind=kind or _STAGE_KINDS[0])
        elif len(what) == 1:
            if kind is not None:
                raise typer.BadParameter("--kind is for a new stage: conveyor new stage NAME")
            written = new_project(Path(what[0]), template or TEMPLATES[0])
        else:
            raise typer.BadParameter(
                "use: conveyor new [--template dataset] PROJECT  or  conveyor new stage NAME "
                "[--kind KIND]"
            )
    except ConveyorError as exc:
        _fail(exc)
        return
    for path in written:
        _say(f"wrote {path}")


@app.command()
def check(path: Path = typer.Argument(Path("."), help="The project.")) -> None:
    """Check the architecture rules (stage imports, cycles, stage file names) of either
    layout, and that the config files are documents Conveyor reads (within its bounds, no
    unsafe tags)."""
    from conveyor.project.config import read_config_document
    from conveyor.project.discovery import find_layout
    from conveyor.project.lint import check_project

    try:
        layout = find_layout(path)
        read_config_document(layout.config_file)
        if layout.kind == "dataset":
            for file in sorted((layout.config_file.parent / "stages").glob("*.y*ml")):
                read_config_document(file)
        violations = check_project(layout.package_dir)
    except ConveyorError as exc:
        _fail(exc)
        return
    _findings(violations, f"{len(violations)} violation(s)", "no violations")


@app.command()
def graph(
    path: Path = typer.Argument(Path("."), help="The project."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write .mmd, .md, .svg or .png instead of printing Mermaid."
    ),
) -> None:
    """Draw the project's pipeline: Mermaid text, or an SVG/PNG file."""
    from conveyor.observe import to_mermaid, write_graph
    from conveyor.project.project import load_project

    try:
        project = load_project(path)  # stages are only built, not run: no chdir needed
        pipeline = project.drawable()
        if output is None:
            _say(to_mermaid(pipeline), lines=True)
            return
        written = write_graph(pipeline, output)
    except (ConveyorError, ValueError, ImportError) as exc:
        _fail(exc)
        return
    _say(f"wrote {written}")


@app.command()
def dvc(
    path: Path = typer.Argument(Path("."), help="The project."),
    output: Path | None = typer.Option(None, help="Where to write (default: PATH/dvc.yaml)."),
    force: bool = typer.Option(False, help="Overwrite a dvc.yaml that Conveyor did not write."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Write nothing; exit 1 with a diff when dvc.yaml is missing or differs from what "
        "conveyor dvc would write (for CI).",
    ),
    remote: tuple[str, str] | None = typer.Option(
        None,
        "--remote",
        metavar="NAME URL",
        help="Also configure the DVC remote NAME at URL (dvc init first if needed; an "
        "existing NAME is pointed at URL).",
    ),
    default: bool = typer.Option(
        False, "--default", "-d", help="With --remote: make it the default remote."
    ),
) -> None:
    """Write dvc.yaml: one DVC stage per persisted stage and one for the rest of the
    pipeline into the sink, so that `dvc repro` reproduces it all; warnings name what DVC
    cannot track. Exit codes: 0 done (or, with --check, up to date); 1 an error (or, with
    --check, dvc.yaml out of date)."""
    from conveyor.project.dvc import configure_remote, dvc_yaml, dvc_yaml_diff, save_dvc_yaml
    from conveyor.project.project import load_project

    if check and (remote is not None or force):
        _fail(UsageError("--check writes nothing: use it without --remote and --force"))
        return
    if default and remote is None:
        _fail(UsageError("-d/--default goes with --remote NAME URL"))
        return
    try:
        generated = dvc_yaml(load_project(path), output)
        for warning in generated.warnings:
            _say(f"warning: {warning}", err=True)
        if check:
            diff = dvc_yaml_diff(generated)
            if diff:
                _say(diff.rstrip("\n"), lines=True)
                _say(
                    f"{generated.path} is not what conveyor dvc writes; run: conveyor dvc {path}",
                    err=True,
                )
                raise typer.Exit(1)
            _say(f"{generated.path} is up to date")
            return
        written = save_dvc_yaml(generated, force=force)
        _say(f"wrote {written}; run it with: dvc repro")
        if remote is not None:
            for line in configure_remote(generated.root, *remote, default=default):
                _say(line)
    except ConveyorError as exc:
        _fail(exc)
        return


@app.command()
def connectors(
    name: str | None = typer.Argument(None, help="One connector (e.g. csv); default: all."),
) -> None:
    """List the source and sink connectors of config.yaml's `source:` and `sink:` sections,
    with their options and defaults."""
    from conveyor.connectors import connector, connector_names, describe_connector

    sources, sinks = connector_names()
    wanted = [("source", n) for n in sources] + [("sink", n) for n in sinks]
    if name is not None:
        wanted = [(kind, n) for kind, n in wanted if n == name]
        if not wanted:
            known = ", ".join(sorted({*sources, *sinks}))
            _fail(UsageError(f"no connector {name!r}; connectors: {known}"))
            return
    for kind, n in wanted:
        try:
            cls = connector(kind, n)
        except ImportError as exc:
            console.print(f"{kind} {n}: not available here ({exc})", highlight=False)
            continue
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        table = Table(
            title=_cell(f"{kind}: {n}  ({cls.__name__})"),
            title_justify="left",
            caption=_cell(doc),  # (literally: "[a, b]" is no markup)
        )
        for column in ("option", "type", "default", "description"):
            table.add_column(column, overflow="fold")
        for row in describe_connector(cls):
            table.add_row(*(_cell(row[k]) for k in ("name", "type", "default", "description")))
        console.print(table)


@contracts_app.command("check")
def contracts_check(
    path: Path = typer.Argument(Path("."), help="A project, its pipeline folder, or a folder."),
) -> None:
    """Refuse contract versions that break readers of the previous version (backward)."""
    from conveyor.contracts import check_directory
    from conveyor.project.discovery import find_layout

    folder, in_project = path, False
    for candidate in (path / "src" / "pipeline" / "contracts", path / "contracts"):
        if candidate.is_dir():
            folder, in_project = candidate, True
            break
    else:
        with contextlib.suppress(ConveyorError):  # a subfolder of a project: its contracts
            found = find_layout(path).package_dir / "contracts"
            if found.is_dir():
                folder, in_project = found, True
    suffixes = {".json", ".avsc", ".proto"}
    if not folder.is_dir() or not any(
        f.suffix in suffixes for f in folder.rglob("*") if f.is_file()
    ):
        if in_project:
            _say(
                f"no versioned contract files in {folder} (.json, .avsc, .proto): nothing to check"
            )
            return
        _fail(
            UsageError(
                f"{folder}: no contract files here (JSON Schema .json, Avro .avsc, Protobuf "
                ".proto); pass a project, its contracts/ folder, or a folder of versioned "
                "contracts such as order.v1.json and order.v2.json"
            )
        )
        return
    try:
        changes = check_directory(folder)
    except (ConveyorError, FileNotFoundError, ImportError) as exc:
        _fail(exc)
        return
    _findings(
        changes,
        f"{len(changes)} breaking change(s) in {folder}",
        f"contracts in {folder} are backward compatible",
    )


def main() -> None:
    """Entry point of the ``conveyor`` console script and ``python -m conveyor``.

    An exception no command turned into an error message (a bug in a stage or a source, or
    in Conveyor) is printed as its plain traceback, escaped like every other text from
    errors (and without the local variables a rich traceback would show: they may hold
    secrets); the exit code is 1."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C outside a run
        sys.exit(130)
    except Exception as exc:
        from conveyor.core._render import format_traceback

        _say(format_traceback(exc).rstrip("\n"), lines=True, err=True)
        sys.exit(1)
