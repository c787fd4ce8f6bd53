"""Live metrics of a run, served for Prometheus (``conveyor run --metrics-port N``).

A custom collector reads the live run's own counters each time the endpoint is scraped:
nothing is copied per record, and a run nobody scrapes pays nothing but an idle thread.
The metrics (every one named ``conveyor_…``, stage metrics labelled ``pipeline`` and
``stage``):

- ``conveyor_run_info{pipeline, run_id}`` and ``conveyor_run_elapsed_seconds``;
- per stage, counters ``conveyor_stage_records_in_total``, ``…_records_out_total``,
  ``…_records_filtered_total``, ``…_records_dead_lettered_total``,
  ``conveyor_stage_retries_total`` and ``conveyor_stage_busy_seconds_total``;
- per channel, gauges ``conveyor_channel_queue_depth{channel}`` (micro-batches waiting)
  and ``conveyor_channel_capacity{channel}``;
- ``conveyor_dead_letters_total`` (letters written by the run, all stages);
- with checkpoints, ``conveyor_checkpoint_lag_seconds`` (seconds since the last checkpoint)
  and ``conveyor_checkpoints_written_total``;
- per stateful stage (windows, keyed state; none of these for a pipeline without one),
  gauges ``conveyor_window_open`` (windows not emitted yet), ``conveyor_state_keys`` (keys
  with state), ``conveyor_state_records`` (records held in open windows: the state's size),
  ``conveyor_watermark_seconds`` (the event-time watermark, POSIX seconds) and
  ``conveyor_watermark_lag_seconds`` (the wall clock at the scrape minus the watermark:
  meaningful when event times are real times), and the counter
  ``conveyor_late_records_total`` (records dead-lettered for coming after their window
  closed). The two watermark gauges are absent until the stage has a watermark (and for
  count windows, which have none). See :mod:`conveyor.observe.state`.

This layer knows runs only by their shape (:class:`LiveRun`, which
:class:`conveyor.runtime.StreamRunner` is); it never imports the runtime. It needs
prometheus_client, an optional dependency: ``pip install 'conveyor[metrics]'``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from conveyor.observe.state import stateful_stages, watermark_lag

__all__ = ["DEFAULT_METRICS_HOST", "LiveRun", "MetricsServer", "serve_metrics"]

DEFAULT_METRICS_HOST = "127.0.0.1"
"""Where the endpoint listens unless told otherwise: this machine only."""

_HINT = (
    "live metrics need prometheus_client, an optional dependency: pip install 'conveyor[metrics]'"
)

_STAGE_COUNTERS = (
    ("records_in", "records_in", "Records the stage took."),
    ("records_out", "records_out", "Records the stage gave on."),
    ("records_filtered", "records_filtered", "Records the stage dropped on purpose."),
    ("records_dead_lettered", "records_dead", "Records the stage sent to the dead-letter queue."),
    ("retries", "retried", "Record retries of the stage."),
    ("busy_seconds", "busy_seconds", "Seconds the stage spent working."),
)

_STATE_GAUGES = (
    ("conveyor_window_open", "open_windows", "Windows of the stateful stage not emitted yet."),
    ("conveyor_state_keys", "state_keys", "Keys with state in the stateful stage."),
    (
        "conveyor_state_records",
        "state_records",
        "Records held in the stateful stage's open windows (the state's size).",
    ),
)


@runtime_checkable
class LiveRun(Protocol):
    """What the exporter reads of a running pipeline (a :class:`~conveyor.runtime.StreamRunner`).

    ``progress()`` returns the live stage counters and the channel snapshots; a run may
    also have ``live_stats()`` (every stage, branch arms included), ``last_checkpoint``
    and ``checkpoints_written``.
    """

    @property
    def name(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def elapsed_seconds(self) -> float: ...

    def progress(self) -> tuple[Sequence[Any], Sequence[Any]]: ...


RunGetter = Callable[[], "LiveRun | None"]


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    return prometheus_client


class _RunCollector:
    """A prometheus_client collector that reads the run ``get()`` returns on each scrape."""

    def __init__(self, get: RunGetter) -> None:
        self._get = get

    def describe(self) -> list[Any]:
        return []  # no collect() at registration: the run may not have started yet

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        run = self._get()
        if run is None:
            return
        pipeline = str(run.name)
        info = InfoMetricFamily("conveyor_run", "The pipeline running and its run id.")
        info.add_metric([], {"pipeline": pipeline, "run_id": str(run.run_id)})
        yield info
        yield GaugeMetricFamily(
            "conveyor_run_elapsed_seconds",
            "Seconds since the run started.",
            value=run.elapsed_seconds,
        )
        top, channels = run.progress()
        live = getattr(run, "live_stats", None)
        stages = list(live() if callable(live) else top)
        families = {
            key: CounterMetricFamily(f"conveyor_stage_{name}", text, labels=["pipeline", "stage"])
            for name, key, text in _STAGE_COUNTERS
        }
        letters = 0
        for stats in stages:
            labels = [pipeline, str(stats.name)]
            for key, family in families.items():
                family.add_metric(labels, getattr(stats, key))
            letters += stats.dead_lettered
        yield from families.values()
        depth = GaugeMetricFamily(
            "conveyor_channel_queue_depth",
            "Micro-batches waiting in the channel.",
            labels=["pipeline", "channel"],
        )
        capacity = GaugeMetricFamily(
            "conveyor_channel_capacity",
            "Micro-batches the channel holds at most.",
            labels=["pipeline", "channel"],
        )
        for ch in channels:
            depth.add_metric([pipeline, str(ch.name)], ch.buffered)
            capacity.add_metric([pipeline, str(ch.name)], ch.capacity)
        yield depth
        yield capacity
        yield CounterMetricFamily(
            "conveyor_dead_letters",
            "Dead letters the run wrote, over all stages.",
            value=letters,
        )
        yield from _checkpoint_metrics(run, GaugeMetricFamily, CounterMetricFamily)
        yield from _state_metrics(pipeline, stages, GaugeMetricFamily, CounterMetricFamily)


def _state_metrics(pipeline: str, stages: Sequence[Any], gauge: Any, counter: Any) -> Iterator[Any]:
    """Windows, state and watermark of the stateful stages (nothing when there are none)."""
    stateful = stateful_stages(stages)
    if not stateful:
        return
    labels = ["pipeline", "stage"]
    gauges = [(key, gauge(name, text, labels=labels)) for name, key, text in _STATE_GAUGES]
    mark = gauge(
        "conveyor_watermark_seconds",
        "The stateful stage's event-time watermark (POSIX seconds).",
        labels=labels,
    )
    lag = gauge(
        "conveyor_watermark_lag_seconds",
        "Wall clock at this scrape minus the stateful stage's event-time watermark.",
        labels=labels,
    )
    late = counter(
        "conveyor_late_records",
        "Records dead-lettered for coming after their window closed.",
        labels=labels,
    )
    now = time.time()
    for stats in stateful:
        names = [pipeline, str(stats.name)]
        for key, family in gauges:
            family.add_metric(names, getattr(stats, key))
        late.add_metric(names, stats.late)
        behind = watermark_lag(stats, now)
        if behind is not None:
            mark.add_metric(names, float(stats.watermark))
            lag.add_metric(names, behind)
    for _, family in gauges:
        yield family
    yield mark
    yield lag
    yield late


def _checkpoint_metrics(run: Any, gauge: Any, counter: Any) -> Iterator[Any]:
    written = getattr(run, "checkpoints_written", None)
    if written is None:  # the run keeps no checkpoints
        return
    yield counter("conveyor_checkpoints_written", "Checkpoints the run committed.", value=written)
    last = getattr(run, "last_checkpoint", None)
    stamp = getattr(last, "written_at", "")
    if stamp:
        at = datetime.fromisoformat(stamp)
        lag = (datetime.now(UTC) - at).total_seconds()
        yield gauge(
            "conveyor_checkpoint_lag_seconds",
            "Seconds since the last checkpoint was written.",
            value=max(lag, 0.0),
        )


class _Quiet(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """A running metrics endpoint (``http://host:port/metrics``); :meth:`close` stops it.

    It reads the run that ``get()`` returns on each scrape (nothing before it returns one).
    Use it as a context manager to stop it when the run ends.
    """

    def __init__(self, get: RunGetter, port: int = 0, host: str = DEFAULT_METRICS_HOST) -> None:
        client = _prometheus()
        from prometheus_client.exposition import ThreadingWSGIServer

        self.registry = client.CollectorRegistry(auto_describe=False)
        self.registry.register(_RunCollector(get))

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = make_server(
            host, port, client.make_wsgi_app(self.registry), Server, handler_class=_Quiet
        )
        self._server.timeout = None  # wait for a scrape without polling: idle costs nothing
        bound = self._server.server_address
        self.host: str = str(bound[0])
        self.port: int = int(bound[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="conveyor-metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._server.handle_request()  # each scrape on a thread of its own

    @property
    def url(self) -> str:
        """The address of the metrics page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (a second call does nothing)."""
        if self._closed.is_set():
            return
        self._closed.set()
        wake = "127.0.0.1" if self.host == "0.0.0.0" else "::1" if self.host == "::" else self.host
        with contextlib.suppress(OSError):  # wake the waiting loop: it sees it is closed
            socket.create_connection((wake, self.port), timeout=1).close()
        self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def serve_metrics(
    run: LiveRun | RunGetter, port: int = 0, host: str = DEFAULT_METRICS_HOST
) -> MetricsServer:
    """Serve Prometheus metrics of ``run`` (a live run, or a function returning the current
    one or ``None``) on ``host:port`` (port 0: a free one, see ``.port``) until ``close()``.

    Raises :class:`ImportError` naming ``pip install 'conveyor[metrics]'`` without
    prometheus_client, and :class:`OSError` if the port cannot be bound.
    """
    if isinstance(run, LiveRun):
        live = run
        return MetricsServer(lambda: live, port, host)
    return MetricsServer(run, port, host)
