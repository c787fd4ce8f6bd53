"""End-to-end tests of examples/digits: the project is copied to a temporary folder and run
with ``run_project``; downloads are tested against an HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
import pytest

from conveyor.dlq import open_dead_letter_store
from conveyor.project.run import ProjectRun, run_project

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
BUNDLED = EXAMPLE / "bundled" / "digits.csv.gz"
CORRUPT = EXAMPLE / "bundled" / "digits_corrupt.csv.gz"
PLANTED = json.loads((EXAMPLE / "bundled" / "digits_corrupt.planted.json").read_text("utf-8"))
TOTAL = 1797
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
FAST = ("stages.download.params.backoff=0",)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the example (no outputs, no dead letters)."""
    target = tmp_path / "digits"
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("data", ".conveyor", "__pycache__")
    )
    return target


def run(path: Path, *overrides: str) -> ProjectRun:
    return run_project(path, [*FAST, *overrides], handle_signals=False)


def read_splits(path: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for split in FRACTIONS:
        rows: list[dict[str, Any]] = []
        for shard in sorted((path / "data" / "splits" / split).glob("part-*.parquet")):
            rows.extend(pq.read_table(shard).to_pylist())
        out[split] = rows
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --------------------------------------------------------------------------- the default run


def test_default_run_writes_stratified_deterministic_splits(project: Path) -> None:
    first = run(project)
    assert first.report is not None
    assert (first.report.records_in, first.report.records_out) == (TOTAL, TOTAL)
    assert first.report.dead_lettered == 0
    splits = read_splits(project)
    assert sum(len(rows) for rows in splits.values()) == TOTAL
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert sorted(ids) == list(range(TOTAL))  # every record in exactly one split

    per_class = Counter(r["label"] for rows in splits.values() for r in rows)
    assert sorted(per_class) == list(range(10))
    for split, rows in splits.items():
        counts = Counter(r["label"] for r in rows)
        for label, n in per_class.items():
            assert abs(counts[label] - n * FRACTIONS[split]) <= 1, (split, label)
        for r in rows:
            assert r["split"] == split
            assert r["size"] == 8
            assert len(r["pixels"]) == 64
            assert min(r["pixels"]) >= 0.0
            assert max(r["pixels"]) <= 1.0

    # the manifest matches the files
    out = project / "data" / "splits"
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert manifest["records"] == TOTAL
    for split, rows in splits.items():
        entry = manifest["splits"][split]
        assert entry["records"] == len(rows)
        counts = Counter(r["label"] for r in rows)
        assert entry["classes"] == {str(label): counts[label] for label in range(10)}
        assert sum(s["records"] for s in entry["shards"]) == len(rows)
        for shard in entry["shards"]:
            file = out / shard["path"]
            assert sha256(file) == shard["sha256"]
            assert file.stat().st_size == shard["bytes"]
            assert pq.read_metadata(file).num_rows == shard["records"]
    sheet = out / "contact_sheet.png"
    assert manifest["contact_sheet"]["sha256"] == sha256(sheet)
    # 10 classes x 10 samples of 8x8 pixels at scale 4, 2 pixels of padding
    assert png_size(sheet) == (2 + 10 * (32 + 2), 2 + 10 * (32 + 2))

    # a second run (other batch size, other worker count) assigns every record the same way
    membership = {split: sorted(r["id"] for r in rows) for split, rows in splits.items()}
    shutil.rmtree(project / "data")
    run(project, "pipeline.batch_size=100", "stages.preprocess.workers=3")
    again = read_splits(project)
    assert {split: sorted(r["id"] for r in rows) for split, rows in again.items()} == membership


def test_single_stage_runs_read_the_persisted_outputs(project: Path) -> None:
    run(project)
    manifest = (project / "data" / "splits" / "manifest.json").read_bytes()
    (project / "data" / "splits" / "manifest.json").unlink()
    result = run(project, "stage=export")
    assert result.report is not None
    assert result.report.records_in == TOTAL
    assert (project / "data" / "splits" / "manifest.json").read_bytes() == manifest


def test_corrupt_variant_dead_letters_exactly_the_planted_rows(project: Path) -> None:
    result = run(
        project,
        "stages.download.params.url=file:bundled/digits_corrupt.csv.gz",
        f"stages.download.params.sha256={sha256(CORRUPT)}",
    )
    assert result.report is not None
    assert result.report.records_in == TOTAL + len(PLANTED)
    assert result.report.dead_lettered == len(PLANTED)
    store = open_dead_letter_store(project / ".conveyor" / "dead_letters.db")
    letters = store.list()
    assert sorted(letter.record["id"] for letter in letters) == [p["id"] for p in PLANTED]
    assert {letter.stage for letter in letters} == {"validate"}
    # Each letter names the fault planted in its row, in the words of the file.
    reasons = {letter.record["id"]: letter.message for letter in letters}
    expected = {
        "label 11": "label",
        "pixel 99": "is 99, outside the raw range 0..16",
        "63 pixel values": "63 pixel values: not a square image",
        "non-numeric pixel 'x'": "is 'x', not a number",
        "label -1": "label",
    }
    for planted in PLANTED:
        assert expected[planted["fault"]] in reasons[planted["id"]], (planted, reasons)
    for fault in ("label 11", "label -1"):
        assert "size" not in reasons[next(p["id"] for p in PLANTED if p["fault"] == fault)]
    assert sum(len(rows) for rows in read_splits(project).values()) == TOTAL


def test_wrong_sha256_of_the_file_is_a_clear_error(project: Path) -> None:
    with pytest.raises(Exception, match="sha256 mismatch") as caught:
        run(project, "stages.download.params.url=file:bundled/digits_corrupt.csv.gz")
    assert sha256(CORRUPT) in str(caught.value)
    assert not (project / "data" / "splits").exists()


# --------------------------------------------------------------------------- http(s) downloads


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves BUNDLED; ``mode`` decides how the first requests misbehave."""

    body: ClassVar[bytes] = BUNDLED.read_bytes()
    mode: ClassVar[str] = "ok"
    requests: ClassVar[list[dict[str, str]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        seen = len(self.requests)
        self.requests.append(dict(self.headers.items()))
        if self.mode == "flaky" and seen < 2:
            self.send_error(503, "try again")
            return
        body, status = self.body, 200
        wanted = self.headers.get("Range")
        if wanted:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            body, status = self.body[start:], 206
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
            )
        self.end_headers()
        if self.mode == "drop" and seen == 0:
            self.wfile.write(body[: len(body) // 2])  # then hang up half-way
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"requests": [], "mode": "ok"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/digits.csv.gz", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_http_download_verifies_the_sha256(
    project: Path, server: tuple[str, type[_Handler]]
) -> None:
    url, _ = server
    result = run(project, f"stages.download.params.url={url}")
    assert result.report is not None
    assert result.report.records_out == TOTAL
    assert (project / "data" / "raw" / "digits.csv.gz").read_bytes() == BUNDLED.read_bytes()

    shutil.rmtree(project / "data")
    with pytest.raises(Exception, match="sha256 mismatch"):
        run(
            project,
            f"stages.download.params.url={url}",
            "stages.download.params.sha256=" + "ab" * 32,
        )
    assert not (project / "data" / "raw" / "digits.csv.gz").exists()


def test_http_download_retries_transient_errors(
    project: Path, server: tuple[str, type[_Handler]]
) -> None:
    url, handler = server
    handler.mode = "flaky"  # 503, 503, then 200
    result = run(project, f"stages.download.params.url={url}")
    assert result.report is not None
    assert result.report.records_out == TOTAL
    assert len(handler.requests) == 3

    shutil.rmtree(project / "data")
    handler.requests.clear()
    with pytest.raises(Exception, match="after 2 attempt"):
        run(project, f"stages.download.params.url={url}", "stages.download.params.retries=1")


def test_http_download_resumes_after_a_dropped_connection(
    project: Path, server: tuple[str, type[_Handler]]
) -> None:
    url, handler = server
    handler.mode = "drop"
    result = run(project, f"stages.download.params.url={url}")
    assert result.report is not None
    assert result.report.records_out == TOTAL
    assert len(handler.requests) == 2
    assert "Range" not in handler.requests[0]
    half = len(_Handler.body) // 2
    assert handler.requests[1]["Range"] == f"bytes={half}-"
    assert (project / "data" / "raw" / "digits.csv.gz").read_bytes() == BUNDLED.read_bytes()


def test_the_projects_own_stage_tests_pass() -> None:
    import subprocess
    import sys

    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "src/pipeline/stages"],
        cwd=digits,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
