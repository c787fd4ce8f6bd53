"""``conveyor run --report run.html|run.json``: the report of a project's run, written when
the run ends (also when a signal stopped it). The page and the document are
:mod:`conveyor.observe.run_page`'s; this module gathers what they show: the run's report,
the samples taken while it ran, its dead letters from the project's store, the drawing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from conveyor.errors import UsageError
from conveyor.observe.run_page import (
    RunRecorder,
    dead_letter_groups,
    report_document,
    write_report,
)
from conveyor.project.project import Project
from conveyor.runtime import RunReport

__all__ = ["REPORT_SUFFIXES", "report_target", "write_run_report"]

REPORT_SUFFIXES = (".html", ".htm", ".json")

log = logging.getLogger("conveyor.report")


def report_target(path: str | Path) -> Path:
    """Where the report goes, absolute (the run works in the project folder); a name that
    is neither ``.html`` nor ``.json`` is refused before anything runs."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise UsageError(f"--report {path} is a folder; name a file in it, e.g. {target}/run.html")
    if target.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(
            f"--report {path}: name a .html file (a page to look at) or a .json file (the "
            "same figures for tools), e.g. --report run.html"
        )
    return target


def write_run_report(
    project: Project, report: RunReport, samples: RunRecorder | None, target: Path
) -> Path:
    """Write the report of ``report`` (a run of ``project``) to ``target``."""
    doc = report_document(
        report,
        samples=samples,
        dead_letters=_letters(project, report),
        **_drawing(project),
    )
    return write_report(doc, target)


def _letters(project: Project, report: RunReport) -> list[dict[str, Any]]:
    """The run's dead letters by stage and error type (none read when it wrote none)."""
    if not report.letters:
        return []
    from conveyor.dlq import open_dead_letter_store

    settings = project.config.config.pipeline
    with open_dead_letter_store(project.path(settings.dead_letters)) as store:
        return dead_letter_groups(store.groups(run_id=report.run_id, include_replayed=True))


def _drawing(project: Project) -> dict[str, str]:
    """The pipeline as SVG and Mermaid; nothing (and a warning) if it cannot be drawn."""
    from conveyor.observe import render_svg, to_mermaid

    try:
        drawable = project.drawable()
        return {"graph_svg": render_svg(drawable), "graph_mermaid": to_mermaid(drawable)}
    except Exception as exc:  # a report without its drawing beats no report
        log.warning("the run report has no drawing of the pipeline: %s", exc)
        return {}
