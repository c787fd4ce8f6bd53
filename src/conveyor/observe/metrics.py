"""Live metrics of a run, served for Prometheus (``conveyor run --metrics-port N``).

A custom collector reads the live run's own counters each time the endpoint is scraped:
nothing is copied per record, and a run nobody scrapes pays nothing. Started on the main
thread on Linux (as ``conveyor run`` does), the endpoint is served by that thread itself,
woken by a SIGIO when a scraper connects or sends: no server thread waits for the GIL
while the run holds it, which is what made a scrape cost a busy run tens of milliseconds
(see the notes above :class:`MetricsServer`'s helpers). Elsewhere a thread serves it.
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
import gzip
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

from conveyor.observe.state import stateful_stages, watermark_lag

try:
    import fcntl
except ImportError:  # Windows: served by a thread
    fcntl = None  # type: ignore[assignment]

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


# -- serving on the main thread ------------------------------------------------------------
#
# Why not a server thread: a thread that wakes up for a scrape needs the GIL back after each
# socket call, and the runner's thread (CPU-bound, releasing the GIL for an instant at each
# event-loop turn, ~1,500 times a second in W1) keeps it: every release wakes the waiting
# thread, which restarts its 5 ms wait for the GIL and so never asks for it; it gets it only
# by winning a race, often not before the run ends (a thread waking from a 20 ms sleep during
# W1 got the GIL 580 ms later). Meanwhile each release of the runner wakes that thread in
# vain, which is what a scrape cost the run (tens of ms). So on Linux, when served from the
# main thread (as ``conveyor run`` does), the listening socket and its connections signal
# the main thread (SIGIO, O_ASYNC) and the main thread serves them between two bytecodes of
# whatever it runs: no other thread, no GIL hand-off, a scrape costs the run its own work.

_HEAD_LIMIT = 16 * 1024  # bytes of request head read at most
_CONNECTIONS = 32  # connections open at once at most (the oldest are dropped)
_STALE_SECONDS = 10.0  # a connection that sent no whole request by then is dropped
_F_SETOWN_EX = getattr(fcntl, "F_SETOWN_EX", 15) if fcntl is not None else 15
_F_OWNER_TID = getattr(fcntl, "F_OWNER_TID", 0) if fcntl is not None else 0


def _http(status: str, headers: Sequence[tuple[str, str]], body: bytes, *, head: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def _respond(registry: Any, request: bytes, choose_encoder: Any) -> bytes:
    """The whole HTTP response to ``request`` (its head), as prometheus_client's WSGI app
    answers: the page at any path (``name[]`` filters it; OpenMetrics or gzip if accepted;
    ``choose_encoder`` is prometheus_client's), an empty ``/favicon.ico``, ``OPTIONS``, 405
    for other methods. Nothing imported here: it runs in a signal handler."""
    lines = request.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return _http("400 Bad Request", [], b"", head=False)
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition("?")
    head = method == "HEAD"
    if method == "OPTIONS":
        return _http("200 OK", [("Allow", "OPTIONS,GET")], b"", head=False)
    if method not in ("GET", "HEAD"):
        text = f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n"
        return _http(
            "405 Method Not Allowed", [("Allow", "OPTIONS,GET")], text.encode(), head=False
        )
    if path == "/favicon.ico":
        return _http("200 OK", [], b"", head=head)
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    params = parse_qs(query)
    served = registry.restricted_registry(params["name[]"]) if "name[]" in params else registry
    try:
        body = encoder(served)
    except Exception as exc:  # a broken collector: say so, never raise into the run
        failed = f"# metrics failed: {type(exc).__name__}: {exc}\n".encode()
        return _http("500 Internal Server Error", [], failed, head=head)
    out = [("Content-Type", content_type)]
    codings = {
        c.split(";")[0].strip().lower() for c in headers.get("accept-encoding", "").split(",")
    }
    if "gzip" in codings:
        body = gzip.compress(body)
        out.append(("Content-Encoding", "gzip"))
    return _http("200 OK", out, body, head=head)


class _Connection:
    __slots__ = ("pending", "received", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""
        self.pending: bytes | None = None  # the response not sent yet (None: not made yet)
        self.since = time.monotonic()


def _signal_me(sock: socket.socket, tid: int) -> None:
    """Non-blocking, and a SIGIO to thread ``tid`` whenever ``sock`` can be read or written."""
    assert fcntl is not None
    sock.setblocking(False)
    fd = sock.fileno()
    fcntl.fcntl(fd, _F_SETOWN_EX, struct.pack("ii", _F_OWNER_TID, tid))
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)


class _MainThreadServing:
    """Serves ``sock`` on the main thread, from the SIGIO handler (see above)."""

    def __init__(self, sock: socket.socket, registry: Any) -> None:
        from prometheus_client.exposition import choose_encoder

        self._sock = sock
        self._registry = registry
        self._choose = choose_encoder
        self._tid = threading.get_native_id()
        self._open: list[_Connection] = []
        self._busy = False
        self._again = False
        _signal_me(sock, self._tid)

    def pump(self) -> None:
        """Serve what can be served now. A signal during it (the handler called again,
        within) is not lost: the outer call goes round once more."""
        for _ in range(16):
            if self._busy:
                self._again = True
                return
            self._busy = True
            try:
                self._again = False
                self._accept()
                self._serve()
            except Exception:  # never raise into the code the main thread was running
                pass
            finally:
                self._busy = False
            if not self._again:
                return

    def _accept(self) -> None:
        for _ in range(_CONNECTIONS):
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed, or the peer gave up before we accepted
                return
            try:
                _signal_me(sock, self._tid)
            except OSError:
                sock.close()
                continue
            self._open.append(_Connection(sock))
            while len(self._open) > _CONNECTIONS:
                self._drop(self._open[0])

    def _serve(self) -> None:
        stale = time.monotonic() - _STALE_SECONDS
        for conn in list(self._open):
            try:
                done = self._step(conn)
            except OSError:
                done = True
            if done or conn.since < stale:
                self._drop(conn)

    def _step(self, conn: _Connection) -> bool:
        """Read the request, answer it, send what the socket takes; True: finished."""
        if conn.pending is None:
            for _ in range(8):
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return False  # more to come: another SIGIO
                if not data:
                    return True  # the client went away
                conn.received += data
                end = conn.received.find(b"\r\n\r\n")
                if end >= 0:
                    conn.pending = _respond(self._registry, conn.received[:end], self._choose)
                    break
                if len(conn.received) > _HEAD_LIMIT:
                    conn.pending = _http("431 Request Header Fields Too Large", [], b"", head=False)
                    break
            else:
                return False
        for _ in range(64):
            if not conn.pending:
                return True
            try:
                sent = conn.sock.send(conn.pending)
            except (BlockingIOError, InterruptedError):
                return False  # the socket's buffer is full: a SIGIO when it has room
            conn.pending = conn.pending[sent:]
        return not conn.pending

    def _drop(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._open.remove(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def close(self) -> None:
        for conn in list(self._open):
            self._drop(conn)
        self._sock.close()


_serving: list[_MainThreadServing] = []  # the live ones; the SIGIO handler serves them all
_handler: dict[str, Any] = {}  # "previous": the SIGIO handler ours replaced (called on)


def _on_sigio(signum: int, frame: Any) -> None:
    with contextlib.suppress(Exception):  # e.g. at interpreter exit: never raise from here
        for serving in list(_serving):
            serving.pump()
    previous = _handler.get("previous")
    if callable(previous):
        previous(signum, frame)


def _can_serve_on_main_thread() -> bool:
    return (
        sys.platform == "linux"
        and fcntl is not None
        and hasattr(signal, "SIGIO")
        and threading.current_thread() is threading.main_thread()
    )


def _start_main_thread_serving(sock: socket.socket, registry: Any) -> _MainThreadServing | None:
    """Serve ``sock`` from the main thread's SIGIO handler (None: not possible here)."""
    if not _can_serve_on_main_thread():
        return None
    try:
        if "installed" not in _handler:
            _handler["previous"] = signal.signal(signal.SIGIO, _on_sigio)
            _handler["installed"] = True
        serving = _MainThreadServing(sock, registry)
    except (OSError, ValueError):
        return None
    _serving.append(serving)
    serving.pump()  # a connection may have come before the signal was asked for
    return serving


def _stop_main_thread_serving(serving: _MainThreadServing) -> None:
    with contextlib.suppress(ValueError):
        _serving.remove(serving)
    serving.close()  # no more signals from its sockets
    if _serving or threading.current_thread() is not threading.main_thread():
        return  # our handler stays: it serves the others, or cannot be changed from here
    if _handler.pop("installed", None):
        previous = _handler.pop("previous", None)
        with contextlib.suppress(TypeError, ValueError):
            signal.signal(signal.SIGIO, signal.SIG_IGN if previous is None else previous)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


class MetricsServer:
    """A running metrics endpoint (``http://host:port/metrics``); :meth:`close` stops it.

    It reads the run that ``get()`` returns on each scrape (nothing before it returns one).
    Use it as a context manager to stop it when the run ends. Started on the main thread on
    Linux, it serves there, between two bytecodes of whatever that thread runs (woken by
    SIGIO: see the notes in this module); elsewhere, or from another thread, a thread of its
    own serves it.
    """

    def __init__(self, get: RunGetter, port: int = 0, host: str = DEFAULT_METRICS_HOST) -> None:
        client = _prometheus()
        self.registry = client.CollectorRegistry(auto_describe=False)
        self.registry.register(_RunCollector(get))
        self._closed = threading.Event()
        self._serving: _MainThreadServing | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        if _can_serve_on_main_thread():
            sock = _listen(host, port)
            bound = sock.getsockname()
            self._serving = _start_main_thread_serving(sock, self.registry)
            if self._serving is None:
                sock.close()
        if self._serving is None:
            bound = self._start_thread(client, host, port)
        self.host: str = str(bound[0])
        self.port: int = int(bound[1])

    def _start_thread(self, client: Any, host: str, port: int) -> Any:
        from prometheus_client.exposition import ThreadingWSGIServer

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = make_server(
            host, port, client.make_wsgi_app(self.registry), Server, handler_class=_Quiet
        )
        self._server.timeout = None  # wait for a scrape without polling: idle costs nothing
        self._thread = threading.Thread(target=self._serve, name="conveyor-metrics", daemon=True)
        self._thread.start()
        return self._server.server_address

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
        if self._serving is not None:
            _stop_main_thread_serving(self._serving)
            return
        wake = "127.0.0.1" if self.host == "0.0.0.0" else "::1" if self.host == "::" else self.host
        with contextlib.suppress(OSError):  # wake the waiting loop: it sees it is closed
            socket.create_connection((wake, self.port), timeout=1).close()
        if self._thread is not None:
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
