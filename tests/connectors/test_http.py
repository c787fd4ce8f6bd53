"""The ``http`` source (download, sha256, Range resume, retries, max_bytes, cancellation,
delegation to the file sources) and HttpClient (per-host concurrency, rate limit,
Retry-After, giving up into the dead-letter queue), all against a real server on
127.0.0.1 (tests/_httpkit.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from _httpkit import Server, State, serve
from conveyor import MapStage, Pipeline
from conveyor.connectors import DownloadError, HttpClient, HttpError, HttpSource, connector
from conveyor.connectors.http import DEFAULT_MAX_BYTES, parse_retry_after
from conveyor.core._paths import OutsideProject
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import PipelineDefinitionError, SourceUnavailableError

BODY = bytes(range(256)) * 4096  # 1 MiB, every byte value
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server() -> Iterator[Server]:
    with serve(State(body=BODY)) as running:
        yield running


def fetch(source: HttpSource) -> dict[str, Any]:
    return asyncio.run(source.fetch())


def records(source: HttpSource) -> list[Any]:
    async def read() -> list[Any]:
        return [item async for item in source]

    return asyncio.run(read())


def fast(server: Server, dest: Path, **options: Any) -> HttpSource:
    """A source of the server's /file with no back-off (tests stay quick)."""
    return HttpSource(server.url(), dest, backoff=0.0, **options)


# ----------------------------------------------------------------------------- downloads


def test_downloads_to_path_and_yields_one_record(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "data.bin"
    got = records(fast(server, dest))
    assert got == [{"path": str(dest), "bytes": len(BODY), "sha256": SHA, "url": server.url()}]
    assert dest.read_bytes() == BODY
    assert not dest.with_name("data.bin.part").exists()
    assert server.state.requests[0]["headers"]["User-Agent"].startswith("conveyor/")


def test_a_present_file_with_the_pinned_sha256_is_not_downloaded_again(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "data.bin"
    first = fast(server, dest, sha256=SHA)
    assert first.deterministic
    fetch(first)
    again = fast(server, dest, sha256=SHA.upper())
    assert fetch(again)["sha256"] == SHA
    assert server.state.count() == 1
    assert again.requests == 0

    dest.write_bytes(b"stale")  # the wrong content: downloaded again
    fetch(fast(server, dest, sha256=SHA))
    assert server.state.count() == 2
    assert dest.read_bytes() == BODY

    unpinned = fast(server, dest)  # no pin: a present file is refreshed every run
    assert not unpinned.deterministic
    fetch(unpinned)
    assert server.state.count() == 3


def test_sha256_mismatch_deletes_the_download_and_names_both(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError, match="sha256 mismatch") as caught:
        fetch(fast(server, dest, sha256=wrong))
    message = str(caught.value)
    assert wrong in message
    assert SHA in message
    assert server.url() in message
    assert caught.value.url == server.url()
    assert not dest.exists()
    assert not dest.with_name("data.bin.part").exists()
    assert server.state.count() == 1  # never retried


def test_resumes_a_partial_download_with_range(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    part.write_bytes(BODY[:1000])
    fetch(fast(server, dest, sha256=SHA))
    assert server.state.requests[0]["headers"]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == BODY
    assert not part.exists()


def test_a_server_that_ignores_range_is_downloaded_afresh(server: Server, tmp_path: Path) -> None:
    server.state.ignore_range = True
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(BODY[:1000])
    fetch(fast(server, dest, sha256=SHA))
    assert server.state.requests[0]["headers"]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == BODY  # 200: written from the start, not appended


def test_a_complete_part_file_is_finished_on_416(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(BODY)
    fetch(fast(server, dest, sha256=SHA))
    assert dest.read_bytes() == BODY
    assert server.state.count() == 1


@pytest.mark.parametrize("size", [len(BODY), 50_001])
def test_a_dropped_connection_is_resumed_where_it_broke(
    server: Server, tmp_path: Path, size: int
) -> None:
    body = server.state.body = BODY[:size]
    server.state.drop_first = 1
    dest = tmp_path / "data.bin"
    fetch(fast(server, dest, sha256=hashlib.sha256(body).hexdigest()))
    first, second = server.state.requests
    assert "Range" not in first["headers"]
    assert second["headers"]["Range"] == f"bytes={size // 2}-"  # every byte received kept
    assert dest.read_bytes() == body


def test_503_is_retried_then_given_up_with_a_clear_error(server: Server, tmp_path: Path) -> None:
    server.state.fail_first = 2
    dest = tmp_path / "data.bin"
    fetch(fast(server, dest))
    assert server.state.count() == 3
    assert dest.read_bytes() == BODY

    server.state.requests.clear()
    dest.unlink()
    with pytest.raises(SourceUnavailableError, match=r"after 2 attempt\(s\): HTTP 503") as caught:
        fetch(fast(server, dest, retries=1))
    assert server.url() in str(caught.value)
    assert server.state.count() == 2


def test_429_retry_after_is_honoured(server: Server, tmp_path: Path) -> None:
    server.state.fail_first, server.state.fail_status, server.state.retry_after = 1, 429, "1"
    fetch(fast(server, tmp_path / "data.bin"))
    first, second = server.state.requests
    assert second["at"] - first["at"] >= 0.95


def test_a_client_error_is_not_retried(server: Server, tmp_path: Path) -> None:
    server.state.fail_first, server.state.fail_status = 5, 404
    with pytest.raises(SourceUnavailableError, match="HTTP 404"):
        fetch(fast(server, tmp_path / "data.bin"))
    assert server.state.count() == 1


def test_timeouts_are_retried_and_reported(server: Server, tmp_path: Path) -> None:
    server.state.stall = 1.0
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"after 2 attempt\(s\): ReadTimeout"):
        fetch(fast(server, tmp_path / "data.bin", timeout=0.2, retries=1))
    assert time.monotonic() - started < 2.0


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    with serve() as gone:
        url = gone.url()
    source = HttpSource(url, tmp_path / "x", retries=2, backoff=0.01)
    with pytest.raises(SourceUnavailableError, match=r"after 3 attempt\(s\): ConnectError"):
        fetch(source)
    assert source.requests == 3


def test_max_bytes_refuses_an_announced_length_before_writing(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(BODY[:10])
    with pytest.raises(DownloadError, match=f"is {len(BODY)} bytes, over max_bytes=1000"):
        fetch(fast(server, dest, max_bytes=1000))
    assert not (tmp_path / "data.bin.part").exists()
    assert not dest.exists()


def test_an_endless_body_stops_at_max_bytes(server: Server, tmp_path: Path) -> None:
    server.state.endless = True
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="went past 2000000 bytes, over max_bytes") as caught:
        fetch(fast(server, dest, max_bytes=2_000_000))
    assert "null to lift" in str(caught.value)
    assert not (tmp_path / "data.bin.part").exists()
    assert server.state.disconnected.wait(5)  # the stream was closed


def test_max_bytes_is_on_by_default_and_null_lifts_it() -> None:
    assert HttpSource.Config(url="http://h/x", path="x").max_bytes == DEFAULT_MAX_BYTES == 2**30
    assert HttpSource.Config(url="http://h/x", path="x", max_bytes=None).max_bytes is None


async def test_cancelling_closes_the_stream_and_keeps_the_part_for_a_resume(
    tmp_path: Path,
) -> None:
    state = State(body=BODY * 8, endless=True, rate=4_000_000)
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    with serve(state) as server:
        source = HttpSource(server.url(), dest)
        task = asyncio.create_task(source.fetch())
        for _ in range(1000):  # at most 10 s
            if part.exists() and part.stat().st_size >= 200_000:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0
        assert await asyncio.to_thread(state.disconnected.wait, 5)  # the stream was closed
        kept = part.stat().st_size
        assert kept >= 200_000
        state.endless = False  # the server now has the file: the next try resumes
        record = await HttpSource(server.url(), dest).fetch()
        assert state.requests[-1]["headers"]["Range"] == f"bytes={kept}-"
    assert record["bytes"] == len(BODY) * 8
    assert not part.exists()


def test_seek_past_the_record_of_format_none_downloads_nothing(
    server: Server, tmp_path: Path
) -> None:
    source = fast(server, tmp_path / "d")
    assert source.offset == 0
    source.seek(1)
    assert records(source) == []
    assert server.state.count() == 0


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(PipelineDefinitionError, match="http:// or https://"):
        HttpSource("file:x", tmp_path / "x")
    with pytest.raises(PipelineDefinitionError, match="sha256 must be 64"):
        HttpSource("http://h/x", tmp_path / "x", sha256="abc")
    with pytest.raises(PipelineDefinitionError, match="need a format"):
        HttpSource("http://h/x", tmp_path / "x", read={"delimiter": ";"})
    with pytest.raises(ValueError, match="set `format`"):
        HttpSource.Config(url="http://h/x", path="x", read={"delimiter": ";"})
    with pytest.raises(ValueError, match="64 hexadecimal"):
        HttpSource.Config(url="http://h/x", path="x", sha256="xyz")
    with pytest.raises(OutsideProject, match=r"source\.path"):
        HttpSource.from_config(HttpSource.Config(url="http://h/x", path="../x"), tmp_path)
    assert connector("source", "http") is HttpSource


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after("") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None
    assert 28 <= later <= 31
    assert parse_retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_a_pipeline_reads_the_download(server: Server, tmp_path: Path) -> None:
    out: list[dict[str, Any]] = []
    report = (
        Pipeline("dl")
        .add_stage(MapStage(lambda r: {"size": r["bytes"]}, name="size"))
        .run(fast(server, tmp_path / "d.bin", sha256=SHA), out.extend, dead_letters="memory")
    )
    assert out == [{"size": len(BODY)}]
    assert report.stage("source").emitted == 1


def test_a_project_downloads_from_its_source_section(server: Server, tmp_path: Path) -> None:
    from conveyor.project.run import run_project

    root = tmp_path / "proj"
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (root / "src" / "pipeline" / "__init__.py").write_text("")
    (stages / "__init__.py").write_text("")
    (stages / "10_size.py").write_text(
        "from conveyor import MapStage\n\n"
        "stage = MapStage(lambda r: {'path': r['path'], 'bytes': r['bytes']}, name='size')\n"
    )
    (root / "src" / "pipeline" / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            pipeline: {{name: dl}}
            source:
              connector: http
              url: {server.url()}
              path: data/raw/d.bin
              sha256: {SHA}
              backoff: 0
            sink: {{connector: jsonl, path: data/out.jsonl}}
            """
        )
    )
    result = run_project(root, handle_signals=False)
    assert result.report is not None
    assert result.report.records_out == 1
    lines = (root / "data" / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"path": "data/raw/d.bin", "bytes": len(BODY)}]
    assert (root / "data" / "raw" / "d.bin").read_bytes() == BODY


# ----------------------------------------------------------------------------- HttpClient


async def test_client_keeps_to_per_host_concurrency(server: Server) -> None:
    server.state.delay = 0.05
    async with HttpClient(per_host=3) as client:
        got = await asyncio.gather(*(client.get_json(server.url(f"/json/k{i}")) for i in range(20)))
    assert got == [{"key": f"k{i}", "n": len(f"k{i}")} for i in range(20)]
    assert server.state.peak == 3


async def test_client_keeps_to_its_rate_per_host(server: Server) -> None:
    rate, n = 20.0, 10
    started = time.monotonic()
    async with HttpClient(per_host=10, rate=rate) as client:
        await asyncio.gather(*(client.get(server.url(f"/json/r{i}")) for i in range(n)))
    took = time.monotonic() - started
    assert n / rate * 0.9 <= took < n / rate + 2.0  # the bucket starts empty
    arrivals = sorted(r["at"] for r in server.state.requests)
    for i in range(len(arrivals)):  # no second holds more than `rate` requests (+ slack)
        window = [a for a in arrivals[i:] if a - arrivals[i] < 1.0]
        assert len(window) <= rate + 1


async def test_client_honours_retry_after_seconds_and_dates(server: Server) -> None:
    server.state.retry_after = "1"
    async with HttpClient(backoff=0.0) as client:
        assert (await client.get_json(server.url("/json/busy/a")))["key"] == "a"
        first, second = server.state.requests
        assert second["at"] - first["at"] >= 0.95

        server.state.requests.clear()
        server.state.retry_after = formatdate(time.time() + 2, usegmt=True)
        assert (await client.get_json(server.url("/json/busy/b")))["key"] == "b"
        first, second = server.state.requests
        assert 0.9 <= second["at"] - first["at"] <= 3.0


async def test_client_gives_up_after_its_retries(server: Server) -> None:
    async with HttpClient(retries=2, backoff=0.01) as client:
        with pytest.raises(HttpError, match=r"failed after 3 attempt\(s\): HTTP 503") as caught:
            await client.get(server.url("/json/fail/x"))
        assert caught.value.status == 503
        assert caught.value.attempts == 3
        assert caught.value.retryable is False
        assert server.state.count("/json/fail") == 3
        with pytest.raises(HttpError, match="HTTP 404") as missing:
            await client.get_json(server.url("/json/missing/y"))
        assert missing.value.status == 404
        assert server.state.count("/json/missing") == 1  # not retried


async def test_client_retries_transport_errors() -> None:
    with serve() as gone:
        url = gone.url("/json/x")
    async with HttpClient(retries=1, backoff=0.01, timeout=1.0) as client:
        with pytest.raises(HttpError, match=r"after 2 attempt\(s\): ConnectError") as caught:
            await client.get(url)
    assert caught.value.status is None


def test_a_stage_dead_letters_the_records_whose_lookup_failed(
    server: Server, tmp_path: Path
) -> None:
    ids = set(range(30))
    failing = {4, 17, 23}

    async def main() -> tuple[list[dict[str, Any]], Any]:
        out: list[dict[str, Any]] = []
        async with HttpClient(per_host=4, retries=1, backoff=0.0) as client:

            async def enrich(record: dict[str, Any]) -> dict[str, Any]:
                path = "/json/fail/" if record["id"] in failing else "/json/"
                found = await client.get_json(server.url(f"{path}{record['id']}"))
                return {**record, "n": found["n"]}

            report = await (
                Pipeline("enrich")
                .add_stage(MapStage(enrich, concurrency=8, name="enrich"))
                .arun(
                    [{"id": i} for i in sorted(ids)],
                    out.extend,
                    dead_letters=str(tmp_path / "dlq.db"),
                    max_dead_letters=10,
                )
            )
        return out, report

    out, report = asyncio.run(main())
    sunk = {r["id"] for r in out}
    with open_dead_letter_store(tmp_path / "dlq.db") as store:
        letters = store.list()
    lettered = {letter.record["id"] for letter in letters}
    assert sunk == ids - failing
    assert lettered == failing
    assert not sunk & lettered
    assert len(out) == len(sunk)
    assert all(r["n"] == len(str(r["id"])) for r in out)
    assert {letter.stage for letter in letters} == {"enrich"}
    assert all("after 2 attempt(s): HTTP 503" in letter.message for letter in letters)
    assert report.dead_lettered == len(failing)


# ----------------------------------------------------------------------------- formats

CSV = b"id;name\n1;Ada\n2;Grace\nthree\n4;Edsger\n5;Barbara\n"


def test_csv_records_and_rejects_come_from_the_csv_source(tmp_path: Path) -> None:
    with serve(State(body=CSV)) as server:
        dest = tmp_path / "in.csv"
        source = HttpSource(server.url(), dest, format="csv", read={"delimiter": ";"})
        got = records(source)
    assert got[:2] == [{"id": "1", "name": "Ada"}, {"id": "2", "name": "Grace"}]
    rejected = got[2]
    assert rejected.record == {"file": str(dest), "line": 4, "raw": "three"}
    assert "1 field, expected 2" in str(rejected.error)
    assert got[3:] == [{"id": "4", "name": "Edsger"}, {"id": "5", "name": "Barbara"}]
    assert source.offset == [str(dest), len(CSV), 7]
    source.close()


def test_offsets_are_the_file_sources_and_a_seek_reads_the_file_already_there(
    tmp_path: Path,
) -> None:
    sha = hashlib.sha256(CSV).hexdigest()
    with serve(State(body=CSV)) as server:
        dest = tmp_path / "in.csv"
        first = HttpSource(server.url(), dest, format="csv", sha256=sha, read={"delimiter": ";"})
        assert first.offset is None  # nothing read yet

        async def two() -> tuple[list[Any], Any]:
            taken, at = [], None
            async for item in first:
                taken.append(item)
                if len(taken) == 2:
                    at = first.offset  # after the second record
                    break
            return taken, at

        taken, at = asyncio.run(two())
        assert len(taken) == 2
        assert at == [str(dest), len(b"id;name\n1;Ada\n2;Grace\n"), 4]
        for pinned in (sha, None):  # pinned or not, a resume reads the file it counted in
            again = HttpSource(
                server.url(), dest, format="csv", sha256=pinned, read=first.read_options
            )
            again.seek(at)
            assert again.offset == at
            rest = records(again)
            assert [getattr(r, "record", r) for r in rest][1:] == [
                {"id": "4", "name": "Edsger"},
                {"id": "5", "name": "Barbara"},
            ]
            assert again.requests == 0
        assert server.state.count() == 1


def test_jsonl_and_parquet_are_read_by_their_sources(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3]}), table, row_group_size=2)
    with serve(State(body=b'{"id": 1}\n[2]\n{"id": 3}\n')) as server:
        got = records(HttpSource(server.url(), tmp_path / "d.jsonl", format="jsonl"))
        assert [getattr(r, "record", r) for r in got] == [
            {"id": 1},
            {"file": str(tmp_path / "d.jsonl"), "line": 2, "raw": "[2]"},
            {"id": 3},
        ]
        server.state.body = table.read_bytes()
        source = HttpSource(server.url(), tmp_path / "d.parquet", format="parquet")
        assert records(source) == [{"id": 1}, {"id": 2}, {"id": 3}]
        assert source.offset == [str(tmp_path / "d.parquet"), 1, 1]


def test_read_options_are_checked_against_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"read\.delimeter: Extra inputs are not permitted"):
        HttpSource.Config(url="http://h/x", path="x", format="csv", read={"delimeter": ";"})
    with pytest.raises(ValueError, match=r"read\.path"):
        HttpSource.Config(url="http://h/x", path="x", format="csv", read={"path": "y"})
    config = HttpSource.Config(url="http://h/x", path="x", format="csv", read={"delimiter": ";"})
    assert config.read == {"delimiter": ";"}


def test_a_resumed_run_seeks_after_the_download(tmp_path: Path) -> None:
    rows = b"id\n" + b"".join(f"{i}\n".encode() for i in range(2000))
    sha = hashlib.sha256(rows).hexdigest()
    interrupted = {"done": False}

    def work(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == "700" and not interrupted["done"]:
            interrupted["done"] = True
            raise KeyboardInterrupt  # the run drains and checkpoints, as after a SIGTERM
        return {"id": int(record["id"])}

    pipeline = Pipeline("resume-http").add_stage(MapStage(work, name="work"))
    out: list[dict[str, Any]] = []
    options: dict[str, Any] = {
        "batch_size": 50,
        "checkpoint": str(tmp_path / "cp.db"),
        "dead_letters": str(tmp_path / "dlq.db"),
    }
    with serve(State(body=rows)) as server:
        dest = tmp_path / "rows.csv"
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(
                HttpSource(server.url(), dest, format="csv", sha256=sha), out.extend, **options
            )
        second = HttpSource(server.url(), dest, format="csv", sha256=sha)
        report = pipeline.run(second, out.extend, resume=True, **options)
        assert server.state.count() == 1  # the resume read the file downloaded before
    assert second.requests == 0
    assert report.resume is not None
    assert report.resume.seeked
    with open_dead_letter_store(tmp_path / "dlq.db") as store:
        lettered = [letter.record["id"] for letter in store.list()]
    ids = [r["id"] for r in out] + [int(i) for i in lettered]
    assert sorted(ids) == list(range(2000))  # each id once, in the sink or the DLQ


def test_a_project_reads_a_downloaded_csv_with_its_read_options(tmp_path: Path) -> None:
    from conveyor.errors import ConfigError
    from conveyor.project.run import run_project

    root = tmp_path / "proj"
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (root / "src" / "pipeline" / "__init__.py").write_text("")
    (stages / "__init__.py").write_text("")
    (stages / "10_keep.py").write_text(
        "from conveyor import MapStage\n\nstage = MapStage(lambda r: dict(r), name='keep')\n"
    )
    with serve(State(body=CSV)) as server:

        def configure(read: str) -> None:
            (root / "src" / "pipeline" / "config.yaml").write_text(
                textwrap.dedent(
                    f"""\
                    pipeline: {{name: dl, max_dead_letters: 5}}
                    source:
                      connector: http
                      url: {server.url()}
                      path: data/raw/in.csv
                      format: csv
                      read: {read}
                    sink: {{connector: jsonl, path: data/out.jsonl}}
                    """
                )
            )

        configure("{delimeter: ';'}")
        with pytest.raises(ConfigError, match=r"read\.delimeter") as caught:
            run_project(root, handle_signals=False)
        assert "config.yaml:7:" in str(caught.value)  # at `read:`
        configure("{delimiter: ';'}")
        result = run_project(root, handle_signals=False)
    assert result.report is not None
    assert result.report.records_out == 4
    assert result.report.dead_lettered == 1
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        (letter,) = store.list()
    assert letter.record == {"file": "data/raw/in.csv", "line": 4, "raw": "three"}
    assert letter.message.startswith("data/raw/in.csv:4: ")
    assert letter.stage == "source"
