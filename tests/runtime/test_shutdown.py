"""Shutdown: SIGTERM drains and reports ``interrupted``; a second signal, or a grace period
that runs out, aborts and reports the low watermark to resume from.

The signal tests run a real pipeline in a subprocess; the in-process tests drive
``stop_intake()``, ``abort()`` and the signal handlers of a run directly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import _fns
import pytest

from conveyor import MapStage, PipelineSpec, RunOptions, RunStatus, StageOptions
from conveyor.dlq import MemoryDeadLetterStore
from conveyor.runtime import StreamRunner

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import itertools
    import json
    import sys
    import time

    from conveyor import MapStage, Pipeline


    def slow(x):
        time.sleep(0.002)
        return x


    async def hang_from_30(x):
        if x >= 30:
            await asyncio.sleep(3600)
        return x


    def main():
        scenario, grace = sys.argv[1], float(sys.argv[2])
        stage = MapStage(slow if scenario == "slow" else hang_from_30, name="work")
        seen = {"records": 0}

        def sink(batch):
            seen["records"] += len(batch)
            if seen["records"] == len(batch):
                print("ready", flush=True)
            if seen["records"] >= 20:
                print("progress", seen["records"], flush=True)

        report = Pipeline("shutdown").add_stage(stage).run(
            itertools.count(), sink, batch_size=5, capacity=2, dead_letters="memory",
            grace_period=grace,
        )
        print("REPORT " + json.dumps({
            "status": report.status.value,
            "records_in": report.records_in,
            "records_out": report.records_out,
            "dead_lettered": report.dead_lettered,
            "filtered": report.filtered,
            "in_flight": report.in_flight_records,
            "low_watermark": report.low_watermark,
            "sink_saw": seen["records"],
        }), flush=True)


    if __name__ == "__main__":
        main()
    """
)


def run_until_progress(tmp_path: Path, scenario: str, grace: float) -> subprocess.Popen[str]:
    script = tmp_path / "shutdown_job.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), scenario, str(grace)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("progress"):
            return proc
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"the job ended before making progress: {lines} {err}")


def final_report(proc: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    [line] = [line for line in out.splitlines() if line.startswith("REPORT ")]
    return json.loads(line.removeprefix("REPORT ")), err


@pytest.mark.timeout(120)
def test_sigterm_drains_and_reports_interrupted(tmp_path: Path) -> None:
    proc = run_until_progress(tmp_path, "slow", grace=60)
    proc.send_signal(signal.SIGTERM)
    report, err = final_report(proc)
    assert report["status"] == "interrupted"
    assert report["records_in"] == (
        report["records_out"] + report["dead_lettered"] + report["filtered"]
    )
    assert report["records_out"] == report["sink_saw"] >= 20
    assert report["in_flight"] == 0
    assert report["low_watermark"] is None
    assert "stopping intake and draining" in err


@pytest.mark.timeout(120)
def test_grace_period_running_out_aborts_with_a_low_watermark(tmp_path: Path) -> None:
    proc = run_until_progress(tmp_path, "hang", grace=0.3)
    proc.send_signal(signal.SIGTERM)
    report, _ = final_report(proc)
    assert report["status"] == "aborted"
    # Records 0-29 reached the sink; the micro-batch from 30 on is stuck in the stage.
    assert report["records_out"] == 30
    assert report["low_watermark"] == 30
    assert report["in_flight"] > 0


@pytest.mark.timeout(120)
def test_a_second_sigterm_aborts_at_once(tmp_path: Path) -> None:
    proc = run_until_progress(tmp_path, "hang", grace=3600)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # pacing only: two signals sent together may merge into one
    proc.send_signal(signal.SIGTERM)
    report, err = final_report(proc)
    assert report["status"] == "aborted"
    assert report["low_watermark"] == 30
    assert "again: aborting now" in err


# --- in process ----------------------------------------------------------------------------


async def hang_from_30(x: int) -> int:
    if x >= 30:
        await asyncio.sleep(3600)
    return x


def make_runner(stage: Any, sink: Any, **options: Any) -> StreamRunner:
    return StreamRunner(
        PipelineSpec("shutdown", (stage,)),
        sink,
        RunOptions(batch_size=5, capacity=2, dead_letters=MemoryDeadLetterStore(), **options),
    )


async def test_stop_intake_drains_what_was_read() -> None:
    received: list[int] = []

    def sink(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) >= 50:
            runner.stop_intake()

    runner = make_runner(MapStage(_fns.inc, name="inc"), sink)
    report = await runner.run(itertools.count())
    assert report.status is RunStatus.INTERRUPTED
    assert report.interrupted
    assert report.records_in == report.records_out == len(received) >= 50
    assert received == list(range(1, len(received) + 1))
    assert report.in_flight_records == 0
    assert report.low_watermark is None
    report.check_conservation()


async def test_stop_intake_of_an_async_source() -> None:
    received: list[int] = []

    async def endless() -> Any:
        for i in itertools.count():
            yield i
            await asyncio.sleep(0)

    def sink(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) >= 30:
            runner.stop_intake()

    runner = make_runner(MapStage(_fns.ident, name="ident"), sink, linger=0.001)
    report = await asyncio.wait_for(runner.run(endless()), 30)
    assert report.status is RunStatus.INTERRUPTED
    assert report.records_in == report.records_out == len(received)
    assert received == list(range(len(received)))
    report.check_conservation()


async def test_abort_stops_at_once_and_gives_the_low_watermark() -> None:
    received: list[int] = []

    def sink(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) == 30:
            asyncio.get_running_loop().call_soon(runner.abort)

    runner = make_runner(MapStage(hang_from_30, name="hang"), sink)
    report = await asyncio.wait_for(runner.run(itertools.count()), 30)
    assert report.status is RunStatus.ABORTED
    assert received == list(range(30))
    assert report.low_watermark == 30
    assert report.in_flight_records == report.records_in - 30 > 0
    report.check_conservation()  # not checked for an aborted run: records were left behind
    assert "aborted" in report.summary()


async def test_abort_cancels_unordered_concurrent_work() -> None:
    received: list[int] = []

    def sink(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) == 30:
            asyncio.get_running_loop().call_soon(runner.abort)

    runner = StreamRunner(
        PipelineSpec("shutdown", (MapStage(hang_from_30, name="hang"),)),
        sink,
        RunOptions(
            batch_size=1,
            dead_letters=MemoryDeadLetterStore(),
            stage_options={"hang": StageOptions(concurrency=3, ordered=False)},
        ),
    )
    report = await asyncio.wait_for(runner.run(range(40)), 30)
    assert report.status is RunStatus.ABORTED
    assert sorted(received) == list(range(30))
    assert report.low_watermark == 30
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []


def handler_installed() -> bool:
    return signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)


@pytest.mark.parametrize("signals", [1, 2])
async def test_signal_handlers_of_a_run(signals: int) -> None:
    received: list[int] = []
    problems: list[str] = []

    def sink(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) == 30:
            if not handler_installed():  # never signal a process that would die of it
                problems.append("no SIGTERM handler during the run")
                runner.abort()
                return
            for _ in range(signals):
                signal.raise_signal(signal.SIGTERM)

    # One signal drains (nothing hangs); two abort a run stuck on records from 30 on.
    stage = MapStage(_fns.inc if signals == 1 else hang_from_30, name="work")
    runner = make_runner(stage, sink, handle_signals=True, grace_period=3600)
    report = await asyncio.wait_for(runner.run(itertools.count()), 30)
    assert problems == []
    assert not handler_installed()  # removed again after the run
    if signals == 1:
        assert report.status is RunStatus.INTERRUPTED
        assert report.records_in == report.records_out == len(received) >= 30
        report.check_conservation()
    else:
        assert report.status is RunStatus.ABORTED
        assert report.low_watermark == 30


async def test_grace_period_expiry_aborts_in_process() -> None:
    received: list[int] = []

    def sink(batch: list[int]) -> None:
        received.extend(batch)
        if len(received) == 30 and handler_installed():
            signal.raise_signal(signal.SIGTERM)

    stage = MapStage(hang_from_30, name="hang")
    runner = make_runner(stage, sink, handle_signals=True, grace_period=0.1)
    report = await asyncio.wait_for(runner.run(itertools.count()), 30)
    assert report.status is RunStatus.ABORTED
    assert report.low_watermark == 30


def test_signals_are_not_handled_off_the_main_thread() -> None:
    outcome: dict[str, Any] = {}

    def job() -> None:
        runner = make_runner(MapStage(_fns.inc, name="inc"), [].extend, handle_signals=True)
        outcome["report"] = asyncio.run(runner.run(range(10)))

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(30)
    assert outcome["report"].status is RunStatus.COMPLETED
    assert not handler_installed()
