"""The report of a run to look at afterwards (``conveyor run --report run.html|run.json``).

:class:`RunRecorder` samples a live run while it goes (queue fill per channel, records out
of the sink, and for each stateful stage its open windows, state and watermark lag) at the
pace of the run's progress ticks, keeping at most ``max_samples`` (older samples are
thinned, never the first or the last); :func:`report_document` folds
the run's final report, those samples, the dead letters of the run and the pipeline's
drawing into one JSON-able document; :func:`render_html` turns that document into a
self-contained page: no script, no external address (a Content-Security-Policy forbids
loading anything), the graph and the charts as inline SVG, and the document itself
embedded as ``<script type="application/json" id="conveyor-report">`` for tools.

This layer knows runs only by their shape (the attributes of
:class:`conveyor.runtime.RunReport` and of a live :class:`conveyor.runtime.StreamRunner`);
it never imports the runtime or the dead-letter store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from conveyor._version import __version__
from conveyor.observe.state import (
    format_lag,
    format_watermark,
    stateful_stages,
    watermark_lag,
)

__all__ = [
    "REPORT_FORMAT",
    "RunRecorder",
    "dead_letter_groups",
    "render_html",
    "report_document",
    "write_report",
]

REPORT_FORMAT = 1
"""The version of the document's layout (its ``format`` key)."""

_EXAMPLES = 3  # examples shown per group of dead letters


@dataclass
class RunRecorder:
    """Samples a live run for its report: call it with the runner (a progress callback).

    Each call records the run's elapsed seconds, every channel's fill (items buffered over
    capacity) and the records the sink has taken; and for each stateful stage (windows,
    keyed state; branch arms too) its open windows, state keys, held records, late records
    and watermark lag (the wall clock at the sample minus the watermark; ``None`` before
    it has one), in ``state[stage][figure]``. At ``max_samples`` every other sample is
    dropped and from then on only every second call is kept (and so on), so a run of any
    length leaves an even, bounded series.
    """

    max_samples: int = 240
    times: list[float] = field(default_factory=list)
    fill: dict[str, list[float]] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    records_out: list[int] = field(default_factory=list)
    state: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    _stride: int = 1
    _calls: int = 0

    def __call__(self, runner: Any) -> None:
        self._calls += 1
        if (self._calls - 1) % self._stride:
            return
        stages, channels = runner.progress()
        self.times.append(round(float(runner.elapsed_seconds), 3))
        self.records_out.append(int(stages[-1].records_out) if stages else 0)
        for ch in channels:
            name = str(ch.name)
            series = self.fill.setdefault(name, [0.0] * (len(self.times) - 1))
            series.append(round(ch.buffered / ch.capacity, 4) if ch.capacity else 0.0)
            self.capacity[name] = int(ch.capacity)
        live = getattr(runner, "live_stats", None)
        stateful = stateful_stages(live() if callable(live) else stages)
        if stateful:
            self._sample_state(stateful)
        if len(self.times) >= self.max_samples:
            self._thin()

    def _sample_state(self, stateful: Sequence[Any]) -> None:
        now = time.time()
        for stats in stateful:
            name = str(stats.name)
            figures = self.state.get(name)
            if figures is None:
                before = len(self.times) - 1
                figures = self.state[name] = {
                    "open_windows": [0] * before,
                    "state_keys": [0] * before,
                    "state_records": [0] * before,
                    "late": [0] * before,
                    "watermark_lag": [None] * before,
                }
            figures["open_windows"].append(int(stats.open_windows))
            figures["state_keys"].append(int(stats.state_keys))
            figures["state_records"].append(int(stats.state_records))
            figures["late"].append(int(stats.late))
            lag = watermark_lag(stats, now)
            figures["watermark_lag"].append(None if lag is None else round(lag, 3))

    def _thin(self) -> None:
        keep = slice(None, None, 2)
        self.times = self.times[keep]
        self.records_out = self.records_out[keep]
        self.fill = {name: series[keep] for name, series in self.fill.items()}
        self.state = {
            name: {figure: series[keep] for figure, series in figures.items()}
            for name, figures in self.state.items()
        }
        self._stride *= 2

    def as_dict(self) -> dict[str, Any]:
        """The samples: ``t`` (seconds), ``records_out``, ``fill`` per channel, and
        ``state`` per stateful stage (``{}``: none)."""
        return {
            "t": list(self.times),
            "records_out": list(self.records_out),
            "fill": {name: list(series) for name, series in self.fill.items()},
            "capacity": dict(self.capacity),
            "state": {
                name: {figure: list(series) for figure, series in figures.items()}
                for name, figures in self.state.items()
            },
        }


def _stage_row(stats: Any, duration: float, branch: str = "") -> dict[str, Any]:
    row: dict[str, Any] = dict(stats.as_dict())
    row["branch"] = branch
    row["rate_per_second"] = round(stats.records_in / duration, 1) if duration > 0 else 0.0
    row["busy_share"] = round(stats.busy_seconds / duration, 4) if duration > 0 else 0.0
    return row


def _state_rows(
    samples: RunRecorder | None, rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per stateful stage: its figures at the end (as the run left them), the peaks of
    the samples (and the end), and the largest sampled watermark lag."""
    sampled = samples.state if samples is not None else {}
    out = []
    for row in rows:
        if row.get("kind") != "stateful":
            continue
        name = str(row["stage"])
        series = sampled.get(name, {})
        entry: dict[str, Any] = {"stage": name, "branch": row["branch"]}
        for figure in ("open_windows", "state_keys", "state_records"):
            entry[figure] = row[figure]
            entry[f"peak_{figure}"] = max([row[figure], *series.get(figure, [])])
        lags = [lag for lag in series.get("watermark_lag", []) if lag is not None]
        entry.update(
            late=row["late"],
            watermark=row["watermark"],
            watermark_lag=None if row["watermark_lag"] is None else round(row["watermark_lag"], 3),
            max_watermark_lag=max(lags) if lags else None,
            samples=len(series.get("open_windows", [])),
        )
        out.append(entry)
    return out


def _when(moment: Any) -> str:
    return moment.isoformat() if isinstance(moment, datetime) else str(moment or "")


def _resume(report: Any) -> dict[str, Any] | None:
    resume = getattr(report, "resume", None)
    if resume is None:
        return None
    return {
        "checkpoint_run": resume.checkpoint_run,
        "position": resume.position,
        "offset": _plain(resume.offset),
        "seeked": resume.seeked,
        "skipped": resume.skipped,
        "replayed": getattr(report, "replayed", 0),
        "superseded_letters": resume.superseded_letters,
    }


def _checkpoint(report: Any) -> dict[str, Any] | None:
    cp = getattr(report, "checkpoint", None)
    if cp is None:
        return None
    return {
        "position": cp.position,
        "offset": _plain(cp.offset),
        "finished": cp.finished,
        "written_at": cp.written_at,
        "store": getattr(report, "checkpoint_store", ""),
        "written": getattr(report, "checkpoints_written", 0),
        "guarantee": getattr(report, "sink_guarantee", ""),
    }


def _plain(value: Any) -> Any:
    """``value`` if JSON can hold it, else its text."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def dead_letter_groups(groups: Sequence[Any]) -> list[dict[str, Any]]:
    """Letters (:class:`~conveyor.dlq.LetterGroup` objects of one run) by stage and error
    type: how many records and letters, and a few examples with their reason and record."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for group in groups:
        key = (str(group.stage), str(group.error_type))
        entry = found.setdefault(
            key,
            {"stage": key[0], "error_type": key[1], "letters": 0, "records": 0, "examples": []},
        )
        entry["letters"] += group.occurrences
        entry["records"] += 1
        if len(entry["examples"]) < _EXAMPLES:
            entry["examples"].append(
                {"id": group.id, "message": group.message, "record": group.record_json}
            )
    return sorted(found.values(), key=lambda e: (-e["letters"], e["stage"], e["error_type"]))


def report_document(
    report: Any,
    *,
    samples: RunRecorder | None = None,
    dead_letters: Sequence[Mapping[str, Any]] = (),
    graph_svg: str = "",
    graph_mermaid: str = "",
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict (the ``--report run.json`` file).

    ``report`` is the run's :class:`~conveyor.runtime.RunReport`; ``dead_letters`` the
    run's letters folded by :func:`dead_letter_groups`; ``graph_svg``/``graph_mermaid``
    the pipeline drawn (only the HTML page shows the SVG).

    ``stateful`` has one entry per stateful stage (windows, keyed state; empty without
    one): ``open_windows``, ``state_keys``, ``state_records``, ``watermark`` and
    ``watermark_lag`` as the run left them (the lag as of the stage's last update), their
    peaks over the samples (``peak_…``), ``max_watermark_lag`` (the largest sampled lag,
    ``None`` without samples or watermark) and ``late`` records; ``samples["state"]`` holds
    the series (see :class:`RunRecorder`).
    """
    duration = float(report.duration_seconds)
    stages = [_stage_row(s, duration) for s in report.stages]
    for branch, arms in getattr(report, "branches", {}).items():
        for arm, chain in arms.items():
            stages.extend(_stage_row(s, duration, f"{branch}/{arm}") for s in chain)
    stateful = _state_rows(samples, stages)
    return {
        "format": REPORT_FORMAT,
        "conveyor": __version__,
        "run": {
            "run_id": report.run_id,
            "pipeline": report.pipeline_name,
            "status": report.status.value,
            "started_at": _when(report.started_at),
            "duration_seconds": round(duration, 3),
            "records_in": report.records_in,
            "records_out": report.records_out,
            "filtered": report.filtered,
            "dead_lettered": report.dead_lettered,
            "late": getattr(report, "late", 0),
            "letters": report.letters,
            "retried": report.retried,
            "unfinished": report.unfinished,
            "rate_per_second": round(report.records_in / duration, 1) if duration > 0 else 0.0,
            "sink": getattr(report, "sink_description", ""),
            "dead_letter_store": report.dead_letter_store,
            "failure": report.failure,
            "low_watermark": _plain(report.low_watermark),
            "summary": report.summary(),
        },
        "stages": stages,
        "stateful": stateful,
        "channels": [
            {
                "name": ch.name,
                "capacity": ch.capacity,
                "peak": ch.peak,
                "sent": ch.sent,
                "received": ch.received,
            }
            for ch in report.channels
        ],
        "samples": samples.as_dict() if samples is not None else None,
        "dead_letters": [dict(d) for d in dead_letters],
        "resume": _resume(report),
        "checkpoint": _checkpoint(report),
        "graph": {"mermaid": graph_mermaid},
        "_svg": graph_svg,
    }


# -- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#1f2328;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}
.meta{color:#57606a}.status{display:inline-block;padding:1px 8px;border-radius:10px;
color:#fff;font-weight:600}.completed{background:#1a7f37}.failed{background:#cf222e}
.interrupted,.aborted{background:#9a6700}
dl.totals{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}dl.totals div{border:1px solid
#d0d7de;border-radius:6px;padding:8px 14px;min-width:110px}dl.totals dt{color:#57606a;
font-size:12px}dl.totals dd{margin:0;font-size:20px;font-weight:600}
table{border-collapse:collapse}th,td{padding:4px 10px;border-bottom:1px solid #d0d7de;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
pre{background:#f6f8fa;padding:10px;white-space:pre-wrap;word-break:break-word}
.graph{overflow-x:auto;border:1px solid #d0d7de;border-radius:6px;padding:8px}
.chart{border:1px solid #d0d7de;border-radius:6px}.legend span{margin-right:14px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
details{margin:4px 0}code{font-size:12px}.none{color:#57606a}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""Nothing may be loaded from anywhere: the page is all there is."""

_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a3069")


def _n(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _totals(run: Mapping[str, Any]) -> str:
    items = [
        ("records_in", "in"),
        ("records_out", "out"),
        ("filtered", "filtered"),
        ("dead_lettered", "dead-lettered"),
        ("retried", "retried"),
        ("duration_seconds", "seconds"),
        ("rate_per_second", "records/s"),
    ]
    cells = "".join(
        f'<div><dt>{label}</dt><dd data-metric="{key}">{_n(run[key])}</dd></div>'
        for key, label in items
    )
    return f'<dl class="totals">{cells}</dl>'


_STAGE_COLUMNS = (
    ("kind", "kind"),
    ("executor", "executor"),
    ("records_in", "in"),
    ("records_out", "out"),
    ("records_filtered", "filtered"),
    ("records_dead", "dead-lettered"),
    ("retried", "retried"),
    ("rate_per_second", "records/s"),
    ("busy_seconds", "busy s"),
)


def _stages_table(stages: Sequence[Mapping[str, Any]], sink: str) -> str:
    head = "".join(f"<th>{label}</th>" for _, label in _STAGE_COLUMNS)
    main = [row for row in stages if not row["branch"]]  # the main line, the sink last
    rows = []
    for row in stages:
        name = str(row["stage"])
        shown = f"{name} ({sink})" if sink and main and row is main[-1] else name
        if row["branch"]:
            shown = f"{row['branch']} / {name.rsplit('/', 1)[-1]}"
        cells = "".join(f'<td data-field="{key}">{_n(row[key])}</td>' for key, _ in _STAGE_COLUMNS)
        rows.append(f'<tr data-stage="{escape(name)}"><td>{escape(shown)}</td>{cells}</tr>')
    return (
        f"<table><thead><tr><th>stage</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


_LEFT = 72  # room for the value axis's labels


def _polyline(
    xs: Sequence[float], ys: Sequence[float | None], box: tuple[float, float, float]
) -> str:
    width, height, top = box
    span = xs[-1] - xs[0] if len(xs) > 1 and xs[-1] > xs[0] else 1.0
    ceiling = max(max(_values(ys), default=0.0), 1e-9) if top <= 0 else top
    points = " ".join(
        f"{_LEFT + (x - xs[0]) / span * (width - _LEFT - 10):.1f},"
        f"{10 + (1 - min(max(y, 0.0) / ceiling, 1.0)) * (height - 30):.1f}"
        for x, y in zip(xs, ys, strict=False)
        if y is not None  # (a watermark lag before the stage has a watermark)
    )
    return points


def _values(ys: Sequence[float | None]) -> list[float]:
    return [y for y in ys if y is not None]


def _chart(
    title: str,
    times: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    top: float,
    unit: str,
) -> str:
    width, height = 900.0, 220.0
    if len(times) < 2 or not series:
        return f'<p class="none">{escape(title)}: the run was too short to sample.</p>'
    highest = max((max(_values(s), default=0.0) for s in series.values()), default=1.0)
    ceiling = top if top > 0 else highest
    ceiling = ceiling or 1.0
    lines, legend = [], []
    for i, (name, ys) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        points = _polyline(times, ys, (width, height, ceiling))
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        legend.append(
            f'<span><i class="swatch" style="background:{colour}"></i>{escape(name)}</span>'
        )
    axis = (
        f'<line x1="{_LEFT}" y1="{height - 20:g}" x2="{width - 10:g}" y2="{height - 20:g}" '
        f'stroke="#8c959f"/><line x1="{_LEFT}" y1="10" x2="{_LEFT}" '
        f'y2="{height - 20:g}" stroke="#8c959f"/>'
        f'<text x="{_LEFT - 4}" y="16" font-size="11" text-anchor="end">'
        f"{_axis(ceiling, unit)}</text>"
        f'<text x="{_LEFT - 4}" y="{height - 20:g}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{_LEFT}" y="{height - 4:g}" font-size="11">0 s</text>'
        f'<text x="{width - 10:g}" y="{height - 4:g}" font-size="11" text-anchor="end">'
        f"{times[-1]:.1f} s</text>"
    )
    svg = (
        f'<svg class="chart" role="img" width="{width:g}" height="{height:g}" '
        f'viewBox="0 0 {width:g} {height:g}"><title>{escape(title)}</title>{axis}'
        f"{''.join(lines)}</svg>"
    )
    return f'<div class="legend">{"".join(legend)}</div>{svg}'


def _axis(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == " s":
        return format_lag(value)
    return f"{value:,.0f}{unit}"


def _rates(samples: Mapping[str, Any]) -> tuple[list[float], dict[str, list[float]]]:
    """Records per second out of the sink between samples."""
    times, out = samples["t"], samples["records_out"]
    rates = [0.0]
    for i in range(1, len(times)):
        gap = times[i] - times[i - 1]
        rates.append((out[i] - out[i - 1]) / gap if gap > 0 else rates[-1])
    return list(times), {"records out of the sink per second": rates}


_STATE_COLUMNS = (
    ("open_windows", "open windows"),
    ("peak_open_windows", "peak"),
    ("state_keys", "keys"),
    ("peak_state_keys", "peak"),
    ("state_records", "held records"),
    ("peak_state_records", "peak"),
    ("late", "late"),
)


def _state_html(doc: Mapping[str, Any]) -> str:
    """Windows, state and watermark per stateful stage, and their samples over the run
    (``""``: the pipeline has no stateful stage, the page has no such section)."""
    rows = doc.get("stateful") or []
    if not rows:
        return ""
    head = "".join(f"<th>{label}</th>" for _, label in _STATE_COLUMNS)
    body = []
    for row in rows:
        name = str(row["stage"])
        shown = f"{row['branch']} / {name.rsplit('/', 1)[-1]}" if row["branch"] else name
        cells = "".join(f'<td data-field="{key}">{_n(row[key])}</td>' for key, _ in _STATE_COLUMNS)
        mark = row["watermark"]
        lag, most = row["watermark_lag"], row["max_watermark_lag"]
        body.append(
            f'<tr data-state="{escape(name)}"><td>{escape(shown)}</td>{cells}'
            f'<td data-field="watermark" data-value="{escape(str(mark))}">'
            f"{escape(format_watermark(mark))}</td>"
            f'<td data-field="watermark_lag" data-value="{escape(str(lag))}">'
            f"{escape(format_lag(lag))}</td>"
            f'<td data-field="max_watermark_lag" data-value="{escape(str(most))}">'
            f"{escape(format_lag(most))}</td></tr>"
        )
    table = (
        f"<table><thead><tr><th>stage</th>{head}<th>watermark</th><th>watermark lag</th>"
        f"<th>max lag</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="meta">Figures as the run left them (a completed run closes every window), '
        "peaks over the samples. The watermark is the newest event time seen minus "
        "max_out_of_orderness; its lag is the wall clock minus the watermark (at the stage's "
        "last update; max: over the samples), meaningful when event times are real times.</p>"
    )
    samples = doc.get("samples") or {}
    state = samples.get("state") or {}
    if not state:
        return table
    times = samples["t"]

    def series(figure: str) -> dict[str, list[Any]]:
        return {name: list(figures[figure]) for name, figures in state.items()}

    return (
        f"{table}<h3>Open windows over the run</h3>"
        f"{_chart('Open windows over the run', times, series('open_windows'), 0.0, '')}"
        "<h3>Records held in state over the run</h3>"
        f"{_chart('Records held over the run', times, series('state_records'), 0.0, '')}"
        "<h3>Watermark lag over the run</h3>"
        f"{_chart('Watermark lag over the run', times, series('watermark_lag'), 0.0, ' s')}"
    )


def _state_section(doc: Mapping[str, Any]) -> str:
    inner = _state_html(doc)
    return f'<h2 id="state">Windows and state</h2>{inner}' if inner else ""


def _dead_letters(groups: Sequence[Mapping[str, Any]], run: Mapping[str, Any]) -> str:
    if not groups:
        return '<p class="none" data-metric="dead_letter_groups">No dead letters.</p>'
    rows = []
    for g in groups:
        examples = "".join(
            f"<details><summary><code>{escape(str(e['id'])[-12:])}</code> "
            f"{escape(_first_line(e['message']))}</summary><pre>{escape(str(e['message']))}"
            f"\nrecord: {escape(str(e['record']))}</pre></details>"
            for e in g["examples"]
        )
        rows.append(
            f'<tr data-letters="{escape(str(g["stage"]))}"><td>{escape(str(g["stage"]))}</td>'
            f"<td>{escape(str(g['error_type']).removeprefix('builtins.'))}</td>"
            f'<td data-field="letters">{_n(g["letters"])}</td>'
            f'<td data-field="records">{_n(g["records"])}</td>'
            f'<td style="text-align:left">{examples}</td></tr>'
        )
    store = escape(str(run["dead_letter_store"]))
    return (
        "<table><thead><tr><th>stage</th><th>error</th><th>letters</th><th>distinct records"
        "</th><th style='text-align:left'>examples</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<p class="meta">In {store}: review them with <code>conveyor dlq list --run '
        f"{escape(str(run['run_id']))}</code>, replay with <code>conveyor dlq replay</code>.</p>"
    )


def _first_line(text: Any) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= 140 else line[:139] + "…"


def _resume_html(doc: Mapping[str, Any]) -> str:
    parts = []
    resume, cp = doc["resume"], doc["checkpoint"]
    if resume is not None:
        offset = escape(repr(resume["offset"]))
        how = f"seeked to offset {offset}" if resume["seeked"] else "read again from the start"
        parts.append(
            f"<p>Resumed from the checkpoint of run <code>{escape(str(resume['checkpoint_run']))}"
            f'</code> at source position <b data-metric="resume_position">{resume["position"]}'
            f"</b> ({how}"
            f"): {_n(resume['skipped'])} records already done were skipped, "
            f"{_n(resume['replayed'])} replayed, {_n(resume['superseded_letters'])} dead letters "
            "of the crashed run retired.</p>"
        )
    if cp is not None:
        state = "finished (nothing to resume)" if cp["finished"] else "unfinished"
        parts.append(
            f'<p>Last checkpoint: source position <b data-metric="checkpoint_position">'
            f"{cp['position']}</b>, {state}, written {escape(str(cp['written_at']))} "
            f"({_n(cp['written'])} this run) in {escape(str(cp['store']))}; the sink is "
            f"{escape(str(cp['guarantee']))}.</p>"
        )
        if not cp["finished"]:
            parts.append("<p>Continue with <code>conveyor run --resume</code>.</p>")
    if not parts:
        return '<p class="none">The run started at the beginning and kept no checkpoints.</p>'
    return "".join(parts)


def _script_json(doc: Mapping[str, Any]) -> str:
    """The document as JSON that cannot end the ``<script>`` element it sits in."""
    text = json.dumps({k: v for k, v in doc.items() if k != "_svg"}, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(doc: Mapping[str, Any]) -> str:
    """The report page of ``doc`` (see :func:`report_document`): one file, nothing to load."""
    run = doc["run"]
    status = escape(str(run["status"]))
    samples = doc.get("samples") or None
    if samples:
        fill = _chart("Queue fill over the run", samples["t"], samples["fill"], 1.0, "%")
        times, rates = _rates(samples)
        rate = _chart("Throughput over the run", times, rates, 0.0, "/s")
    else:
        fill = rate = '<p class="none">No samples were taken.</p>'
    channels = "".join(
        f"<tr><td>{escape(str(c['name']))}</td><td>{_n(c['capacity'])}</td>"
        f"<td>{_n(c['peak'])}</td><td>{_n(c['sent'])}</td></tr>"
        for c in doc["channels"]
    )
    svg = str(doc.get("_svg") or "").replace(' xmlns="http://www.w3.org/2000/svg"', "")
    failure = f"<pre>{escape(str(run['failure']))}</pre>" if run["failure"] else ""
    title = escape(f"{run['pipeline']} — run {run['run_id']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{_CSS}</style></head><body>
<h1>{escape(str(run["pipeline"]))} <span class="status {status}" id="status">{status}</span></h1>
<p class="meta">run <code id="run-id">{escape(str(run["run_id"]))}</code> · started
{escape(str(run["started_at"]))} · sink: {escape(str(run["sink"]) or "none")} · Conveyor
{escape(str(doc["conveyor"]))}</p>
{_totals(run)}{failure}
<h2>Pipeline</h2><div class="graph">{svg or '<p class="none">No drawing.</p>'}</div>
<h2>Stages</h2>{_stages_table(doc["stages"], str(run["sink"]))}
{_state_section(doc)}<h2>Queues</h2>{fill}
<table><thead><tr><th>channel</th><th>capacity</th><th>peak</th><th>micro-batches</th></tr>
</thead><tbody>{channels}</tbody></table>
<h2>Throughput</h2>{rate}
<h2>Dead letters</h2>{_dead_letters(doc["dead_letters"], run)}
<h2>Checkpoints and resume</h2>{_resume_html(doc)}
<h2>Summary</h2><pre id="summary">{escape(str(run["summary"]))}</pre>
<script type="application/json" id="conveyor-report">{_script_json(doc)}</script>
</body></html>
"""


def write_report(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``doc`` to ``path``: the page for ``.html``/``.htm``, the JSON for ``.json``."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in (".html", ".htm"):
        text = render_html(doc)
    elif suffix == ".json":
        text = json.dumps({k: v for k, v in doc.items() if k != "_svg"}, indent=2, default=str)
    else:
        raise ValueError(f"--report {path}: name a .html or a .json file")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")
    return target
