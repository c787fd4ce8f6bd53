"""A real HTTP server on 127.0.0.1 for the tests of the http source and HttpClient.

``with serve() as server:`` runs a ``ThreadingHTTPServer`` in a thread; ``server.url(path)``
is a URL of it and ``server.state`` decides how it answers (change it between requests):

- ``/file...``: ``state.body``, with ``Range: bytes=N-`` answered ``206`` (``416`` past the
  end) unless ``ignore_range``; the first ``fail_first`` requests answer ``fail_status``
  (``Retry-After: retry_after`` when set); ``drop_first`` requests send half the body and
  hang up; ``endless`` streams bytes forever (``rate`` bytes per second at most, no
  ``Content-Length``; ``announce`` claims a length anyway); ``stall`` seconds of silence
  before the answer;
- ``/json/KEY``: ``{"key": KEY, "n": len(KEY)}`` after ``delay`` seconds, counting the
  requests in flight (``state.peak``) and their arrival times; ``/json/fail/KEY`` always
  answers ``503``; ``/json/busy/KEY`` answers ``429`` with ``Retry-After: retry_after`` the
  first time per KEY; ``/json/missing/KEY`` answers ``404``.

Every request is recorded in ``state.requests`` (path, headers, arrival time).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class State:
    body: bytes = b""
    fail_first: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    drop_first: int = 0
    ignore_range: bool = False
    endless: bool = False
    rate: float | None = None
    announce: int | None = None
    stall: float = 0.0
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    streamed: int = 0
    busy_seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    disconnected: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def count(self, prefix: str = "") -> int:
        return sum(1 for r in self.requests if r["path"].startswith(prefix))


class _Handler(http.server.BaseHTTPRequestHandler):
    state: State

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.state
        with state.lock:
            seen = state.count("/file")
            state.requests.append(
                {"path": self.path, "headers": dict(self.headers.items()), "at": time.monotonic()}
            )
        if self.path.startswith("/json/"):
            self._json()
        else:
            self._file(seen)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self) -> None:
        state = self.state
        key = self.path.rsplit("/", 1)[-1]
        with state.lock:
            state.in_flight += 1
            state.peak = max(state.peak, state.in_flight)
        try:
            time.sleep(state.delay)
            if self.path.startswith("/json/fail/"):
                self._send(503, b"down")
                return
            if self.path.startswith("/json/missing/"):
                self._send(404, b"no such key")
                return
            if self.path.startswith("/json/busy/"):
                with state.lock:
                    first = key not in state.busy_seen
                    state.busy_seen.add(key)
                if first:
                    self._send(429, b"slow down", {"Retry-After": state.retry_after or "1"})
                    return
            body = json.dumps({"key": key, "n": len(key)}).encode()
            self._send(200, body, {"Content-Type": "application/json"})
        finally:
            with state.lock:
                state.in_flight -= 1

    def _file(self, seen: int) -> None:
        state = self.state
        if state.stall:
            time.sleep(state.stall)
        if seen < state.fail_first:
            headers = {"Retry-After": state.retry_after} if state.retry_after else {}
            self._send(state.fail_status, b"try again", headers)
            return
        if state.endless:
            self._endless()
            return
        body, status, headers = state.body, 200, {"Accept-Ranges": "bytes"}
        wanted = self.headers.get("Range")
        if wanted and not state.ignore_range:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            body = body[start:]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if seen < state.fail_first + state.drop_first:
            self.wfile.write(body[: len(body) // 2])  # then hang up half-way
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _endless(self) -> None:
        state = self.state
        self.send_response(200)
        if state.announce is not None:
            self.send_header("Content-Length", str(state.announce))
        self.end_headers()
        chunk = b"x" * 65536
        started = time.monotonic()
        sent = 0
        try:
            while not state.stop.is_set():
                if state.rate is not None:
                    ahead = sent / state.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                self.wfile.write(chunk)
                sent += len(chunk)
                with state.lock:
                    state.streamed += len(chunk)
        except OSError:  # the client hung up
            state.disconnected.set()
        self.close_connection = True


@dataclass
class Server:
    state: State
    port: int

    def url(self, path: str = "/file") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def serve(state: State | None = None) -> Iterator[Server]:
    """A server on 127.0.0.1 (a free port) answering by ``state``; stopped afterwards."""
    state = state or State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(state, httpd.server_address[1])
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
