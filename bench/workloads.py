"""The benchmark workloads: one function per (workload, contender), each timed and verified.

Every contender function takes the workload size ``n`` and returns a :class:`Measured`: the
seconds of its timed region and what its sink saw. :func:`verify` then checks that against
the closed-form expectation, so a run that lost, duplicated or corrupted records fails
instead of reporting a time. Everything that a worker process needs (record functions,
sinks) is defined at module level so that it pickles by reference.

Run by ``bench/run.py`` in a fresh interpreter per measurement (see its docstring).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

# -- records and the per-record work shared by every contender ------------------------------


def records(n: int) -> Iterator[Record]:
    """The source: ``n`` records generated lazily (never a list), the same for everyone."""
    for i in range(n):
        yield {"id": i, "value": i % 1000, "name": f"user{i}"}


def validate(r: Record) -> bool:
    """W1's validation: the three fields have the right types."""
    return isinstance(r["id"], int) and isinstance(r["value"], int) and isinstance(r["name"], str)


def enrich(r: Record) -> Record:
    """W1's enrichment: a new dict with ``double``."""
    return {"id": r["id"], "value": r["value"], "name": r["name"], "double": r["value"] * 2}


def keep(r: Record) -> bool:
    """W1's filter: even values."""
    return r["value"] % 2 == 0


IO_SECONDS = 0.001
"""W2: what one simulated I/O call waits."""


async def io_call(r: Record) -> Record:
    """W2's per-record I/O: wait 1 ms, return a small result."""
    await asyncio.sleep(IO_SECONDS)
    return {"id": r["id"], "value": r["value"]}


BURN_ITERATIONS = 16_000
"""W3: iterations of :func:`burn`, about 1 ms of pure Python on the reference machine (the
run measures and prints the real per-record cost)."""


def burn_value(seed: int) -> int:
    """The arithmetic of W3: a linear congruential walk, pure Python, no allocation."""
    acc = seed
    for _ in range(BURN_ITERATIONS):
        acc = (acc * 1103515245 + 12345) & 0x7FFFFFFF
    return acc


def burn(r: Record) -> Record:
    """W3's per-record CPU work (module level: it is pickled to worker processes)."""
    return {"id": r["id"], "acc": burn_value(r["id"])}


# -- sinks ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a sink saw: record count, the sum of one field, the sum of ids."""

    count: int = 0
    total: int = 0
    ids: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, batch: list[Record], key: str) -> None:
        """The sink's per-record work, the same loop for every contender."""
        count, total, ids = self.count, self.total, self.ids
        for r in batch:
            count += 1
            total += r[key]
            ids += r["id"]
        self.count, self.total, self.ids = count, total, ids


@dataclass
class SlowTally(Tally):
    """W4's slow sink: the same tally, sleeping 1 ms after every 1,000 records."""

    pending: int = 0

    def add_slow(self, batch: list[Record], key: str) -> int:
        """Tally ``batch``; return how many 1 ms sleeps are now due."""
        self.add(batch, key)
        self.pending += len(batch)
        due, self.pending = divmod(self.pending, 1000)
        return due


@dataclass
class Measured:
    """The timed region's seconds and what the sink saw."""

    seconds: float
    tally: Tally
    info: dict[str, Any] = field(default_factory=dict)


def _timed(fn: Callable[[], Tally]) -> Measured:
    t0 = time.perf_counter()
    tally = fn()
    return Measured(time.perf_counter() - t0, tally)


# -- expectations -----------------------------------------------------------------------------


def expected_w1(n: int) -> tuple[int, int]:
    """Count and sum of ``double`` of the records W1 keeps (even ``value``)."""
    full, rest = divmod(n, 1000)
    count = full * 500 + (rest + 1) // 2
    total = full * sum(2 * v for v in range(0, 1000, 2)) + sum(2 * v for v in range(0, rest, 2))
    return count, total


def expected_all(n: int) -> tuple[int, int]:
    """Count and sum of ``value`` of all ``n`` records."""
    full, rest = divmod(n, 1000)
    return n, full * sum(range(1000)) + sum(range(rest))


class VerificationError(AssertionError):
    """A contender's result is wrong: its time must not be reported."""


def verify(workload: str, n: int, measured: Measured) -> None:
    """Raise :class:`VerificationError` unless the sink saw exactly the expected records."""
    t = measured.tally
    ids_all = n * (n - 1) // 2
    if workload == "W1":
        want = expected_w1(n)
        got = (t.count, t.total)
    elif workload == "W4":
        count, values = expected_all(n)
        want = (count, 2 * values, ids_all)
        got = (t.count, t.total, t.ids)
    elif workload == "W2":
        want = (*expected_all(n), ids_all)
        got = (t.count, t.total, t.ids)
    elif workload == "W3":
        want = (n, ids_all)
        got = (t.count, t.ids)
        samples = t.extra.get("samples", {})
        if len(samples) != (n + W3_SAMPLE - 1) // W3_SAMPLE:
            raise VerificationError(f"W3: {len(samples)} sampled results, expected more")
        for rid, acc in samples.items():
            if burn_value(rid) != acc:
                raise VerificationError(f"W3: record {rid} has acc {acc}, not {burn_value(rid)}")
    elif workload == "W5":
        want = expected_w1(n)
        got = (t.count, t.total)
    elif workload == "W6":
        if t.extra.get("fails"):
            want = (0, n, ids_all)  # nothing reached the sink; every record is a letter
            got = (t.count, t.extra.get("letters"), t.extra.get("letter_ids"))
        else:
            count, values = expected_all(n)
            want = (count, 2 * values, ids_all)
            got = (t.count, t.total, t.ids)
    elif workload == "W10":  # W1's records and sink
        verify("W1", n, measured)
        return
    elif workload == "W7":  # W1's or W4's expectation, as the contender says
        shape = t.extra.get("shape")
        if shape not in ("W1", "W4"):
            raise VerificationError(f"W7: unknown shape {shape!r}")
        verify(shape, n, measured)
        return
    elif workload in ("W8", "W9"):  # what the table holds, read back after the run
        want = expected_sql(n)
        got = (t.count, t.ids, t.extra.get("v2"), t.extra.get("chars"))
    else:
        raise ValueError(workload)
    if got != want:
        raise VerificationError(f"{workload} n={n}: sink saw {got}, expected {want}")


W3_SAMPLE = 31
"""W3 recomputes the result of every record whose id is a multiple of this."""


def _sample_w3(tally: Tally, batch: list[Record]) -> None:
    samples = tally.extra.setdefault("samples", {})
    for r in batch:
        if r["id"] % W3_SAMPLE == 0:
            samples[r["id"]] = r["acc"]


def _conveyor() -> Any:
    import conveyor
    import conveyor.runtime  # loaded on a pipeline's first run; IMPORT times the import

    return conveyor


# -- W1: overhead -------------------------------------------------------------------------------


def w1_generators(n: int, **_: Any) -> Measured:
    """Baseline: a plain chain of generator expressions."""

    def go() -> Tally:
        tally = Tally()
        valid = (r for r in records(n) if validate(r))
        enriched = (enrich(r) for r in valid)
        kept = (r for r in enriched if keep(r))
        count = total = ids = 0
        for r in kept:
            count += 1
            total += r["double"]
            ids += r["id"]
        tally.count, tally.total, tally.ids = count, total, ids
        return tally

    return _timed(go)


def w1_pipeline(c: Any) -> Any:
    """W1's Conveyor pipeline: ValidateStage -> MapStage -> FilterStage."""
    return (
        c.Pipeline("w1")
        .add_stage(c.ValidateStage(validate, name="validate"))
        .add_stage(c.MapStage(enrich, name="enrich"))
        .add_stage(c.FilterStage(keep, name="filter"))
    )


def w1_conveyor(n: int, batch_size: int = 1000, capacity: int = 2, **_: Any) -> Measured:
    """Conveyor streaming: ValidateStage -> MapStage -> FilterStage -> sink."""
    c = _conveyor()
    pipeline = w1_pipeline(c)

    def go() -> Tally:
        tally = Tally()
        report = pipeline.run(
            records(n),
            lambda batch: tally.add(batch, "double"),
            batch_size=batch_size,
            capacity=capacity,
            dead_letters="memory",
            handle_signals=False,
        )
        if report.records_in != n or report.dead_lettered:
            raise VerificationError(f"report: {report.records_in} in, {report.dead_lettered} dead")
        return tally

    return _timed(go)


def w1_pypeln(n: int, **_: Any) -> Measured:
    """pypeln's ``sync`` module (generators in the calling thread)."""
    import pypeln as pl

    def go() -> Tally:
        stage = pl.sync.filter(validate, records(n))
        stage = pl.sync.map(enrich, stage)
        stage = pl.sync.filter(keep, stage)
        tally = Tally()
        count = total = ids = 0
        for r in stage:
            count += 1
            total += r["double"]
            ids += r["id"]
        tally.count, tally.total, tally.ids = count, total, ids
        return tally

    return _timed(go)


def _bytewax_sink(fn: Callable[[list[Any]], None]) -> Any:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class Part(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            fn(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    return Sink()


def w1_bytewax(n: int, batch_size: int = 1000, **_: Any) -> Measured:
    """Bytewax ``run_main`` (one worker), TestingSource with ``batch_size``."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    def go() -> Tally:
        tally = Tally()
        flow = Dataflow("w1")
        s = op.input("inp", flow, TestingSource(records(n), batch_size=batch_size))
        s = op.filter("validate", s, validate)
        s = op.map("enrich", s, enrich)
        s = op.filter("keep", s, keep)
        op.output("out", s, _bytewax_sink(lambda batch: tally.add(batch, "double")))
        run_main(flow)
        return tally

    return _timed(go)


# -- W2: I/O-bound --------------------------------------------------------------------------------

W2_CONCURRENCY = 100


def w2_asyncio(n: int, **_: Any) -> Measured:
    """Baseline: hand-written asyncio, 100 worker tasks fed by a bounded queue."""

    async def main() -> Tally:
        tally = Tally()
        queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=1000)

        async def worker() -> None:
            while True:
                r = await queue.get()
                if r is None:
                    return
                out = await io_call(r)
                tally.count += 1
                tally.total += out["value"]
                tally.ids += out["id"]

        workers = [asyncio.create_task(worker()) for _ in range(W2_CONCURRENCY)]
        for r in records(n):
            await queue.put(r)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        return tally

    return _timed(lambda: asyncio.run(main()))


def w2_conveyor_map(
    n: int, batch_size: int = 1000, stage_concurrency: int = 1, **_: Any
) -> Measured:
    """Conveyor: ``MapStage(io_call, concurrency=100)``: 100 calls of one micro-batch at once
    (``stage_concurrency`` micro-batches at once, 1 by default)."""
    c = _conveyor()
    pipeline = c.Pipeline("w2").add_stage(
        c.MapStage(io_call, concurrency=W2_CONCURRENCY, name="io"),
        options=c.StageOptions(concurrency=stage_concurrency),
    )
    return _run_conveyor(pipeline, n, batch_size, "value")


def w2_conveyor_options(n: int, batch_size: int = 10, ordered: bool = True, **_: Any) -> Measured:
    """Conveyor: ``StageOptions(concurrency=100)``: 100 micro-batches in flight, the records
    of each processed one after another."""
    c = _conveyor()
    pipeline = c.Pipeline("w2").add_stage(
        c.MapStage(io_call, name="io"),
        options=c.StageOptions(concurrency=W2_CONCURRENCY, ordered=ordered),
    )
    return _run_conveyor(pipeline, n, batch_size, "value")


def _run_conveyor(
    pipeline: Any, n: int, batch_size: int, key: str, capacity: int = 2, **run: Any
) -> Measured:
    def go() -> Tally:
        tally = Tally()
        report = pipeline.run(
            records(n),
            lambda batch: tally.add(batch, key),
            batch_size=batch_size,
            capacity=capacity,
            dead_letters="memory",
            handle_signals=False,
            **run,
        )
        if report.records_in != n or report.dead_lettered:
            raise VerificationError(f"report: {report.records_in} in, {report.dead_lettered} dead")
        return tally

    return _timed(go)


def w2_pypeln(n: int, **_: Any) -> Measured:
    """pypeln's ``task`` module: ``pl.task.map(io_call, workers=100)``."""
    import pypeln as pl

    def go() -> Tally:
        tally = Tally()
        for out in pl.task.map(io_call, records(n), workers=W2_CONCURRENCY, maxsize=1000):
            tally.count += 1
            tally.total += out["value"]
            tally.ids += out["id"]
        return tally

    return _timed(go)


def w2_bytewax(n: int, batch_size: int = 1000, **_: Any) -> Measured:
    """Bytewax has no async operators: ``flat_map_batch`` runs each batch's calls on an event
    loop of its own, at most 100 at once (the pattern its docs suggest for async clients)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    loop = asyncio.new_event_loop()

    async def gather(batch: list[Record]) -> list[Record]:
        semaphore = asyncio.Semaphore(W2_CONCURRENCY)

        async def one(r: Record) -> Record:
            async with semaphore:
                return await io_call(r)

        return await asyncio.gather(*(one(r) for r in batch))

    def call_batch(batch: list[Record]) -> list[Record]:
        return loop.run_until_complete(gather(batch))

    def go() -> Tally:
        tally = Tally()
        flow = Dataflow("w2")
        s = op.input("inp", flow, TestingSource(records(n), batch_size=batch_size))
        s = op.flat_map_batch("io", s, call_batch)
        op.output("out", s, _bytewax_sink(lambda batch: tally.add(batch, "value")))
        run_main(flow)
        return tally

    try:
        return _timed(go)
    finally:
        loop.close()


# -- W3: CPU-bound ----------------------------------------------------------------------------

W3_WORKERS = 2


def _w3_tally(outputs: Any) -> Tally:
    tally = Tally()
    tally_batch(tally, outputs if isinstance(outputs, list) else list(outputs))
    return tally


def tally_batch(tally: Tally, batch: list[Record]) -> None:
    """W3's sink: count, sum of ids, and a sample of results to recompute."""
    tally.count += len(batch)
    tally.ids += sum(r["id"] for r in batch)
    _sample_w3(tally, batch)


def w3_pool(n: int, chunksize: int = 25, **_: Any) -> Measured:
    """Baseline: ``multiprocessing.Pool(2).imap`` (the platform's default start method)."""

    def go() -> Tally:
        tally = Tally()
        with multiprocessing.Pool(W3_WORKERS) as pool:
            batch: list[Record] = []
            for out in pool.imap(burn, records(n), chunksize=chunksize):
                batch.append(out)
                if len(batch) >= 100:
                    tally_batch(tally, batch)
                    batch = []
            tally_batch(tally, batch)
        return tally

    return _timed(go)


def w3_conveyor(n: int, batch_size: int = 50, concurrency: int = 4, **_: Any) -> Measured:
    """Conveyor: ``MapStage(burn)`` with ``StageOptions(executor="process", workers=2)``."""
    c = _conveyor()
    pipeline = c.Pipeline("w3").add_stage(
        c.MapStage(burn, name="burn"),
        options=c.StageOptions(executor="process", workers=W3_WORKERS, concurrency=concurrency),
    )

    def go() -> Tally:
        tally = Tally()
        report = pipeline.run(
            records(n),
            lambda batch: tally_batch(tally, batch),
            batch_size=batch_size,
            dead_letters="memory",
            handle_signals=False,
        )
        if report.records_in != n or report.dead_lettered:
            raise VerificationError(f"report: {report.records_in} in, {report.dead_lettered} dead")
        return tally

    return _timed(go)


def w3_pypeln(n: int, **_: Any) -> Measured:
    """pypeln's ``process`` module: ``pl.process.map(burn, workers=2)``."""
    import pypeln as pl

    def go() -> Tally:
        tally = Tally()
        tally_batch(tally, list(pl.process.map(burn, records(n), workers=W3_WORKERS)))
        return tally

    return _timed(go)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bytewax_w3_process(
    n: int, addresses: list[str], proc_id: int, batch_size: int, results: Any
) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, cluster_main

    tally = Tally()
    flow = Dataflow("w3")
    s = op.input("inp", flow, TestingSource(records(n), batch_size=batch_size))
    s = op.redistribute("spread", s)
    s = op.map("burn", s, burn)
    op.output("out", s, _bytewax_sink(lambda batch: tally_batch(tally, batch)))
    cluster_main(flow, addresses, proc_id)
    results.put((tally.count, tally.ids, tally.extra.get("samples", {})))


def w3_bytewax(n: int, batch_size: int = 50, **_: Any) -> Measured:
    """Bytewax: a cluster of 2 processes (``cluster_main``, one worker each, on loopback),
    the input spread over both with ``redistribute``."""
    import bytewax.testing  # noqa: F401 - imported before the fork, like the others' imports

    ctx = multiprocessing.get_context("fork")

    def go() -> Tally:
        addresses = [f"127.0.0.1:{_free_port()}" for _ in range(W3_WORKERS)]
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_bytewax_w3_process, args=(n, addresses, i, batch_size, results))
            for i in range(W3_WORKERS)
        ]
        for p in procs:
            p.start()
        parts = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"bytewax process exited with {p.exitcode}")
        tally = Tally()
        for count, ids, samples in parts:
            tally.count += count
            tally.ids += ids
            tally.extra.setdefault("samples", {}).update(samples)
        return tally

    return _timed(go)


def w3_serial_ms_per_record(calls: int = 40, repeats: int = 5) -> float:
    """The cost of one :func:`burn` call in this process (ms; median of ``repeats``)."""
    costs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(calls):
            burn({"id": i})
        costs.append((time.perf_counter() - t0) / calls * 1000.0)
    return sorted(costs)[len(costs) // 2]


# -- W4: memory under a slow sink ----------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def w4_import(library: str) -> float:
    """Peak RSS of a bare interpreter that imported ``library`` (the memory baseline)."""
    if library == "conveyor":
        c = _conveyor()
        c.Pipeline("w4").add_stage(c.MapStage(enrich))
    elif library == "pypeln":
        import pypeln  # noqa: F401
    elif library == "bytewax":
        import bytewax.operators
        import bytewax.testing  # noqa: F401
    return peak_rss_mb()


def w4_generators(n: int, **_: Any) -> Measured:
    """Baseline: a generator chain into the slow sink, fed lists of 1,000 like the others."""

    def go() -> Tally:
        tally = SlowTally()
        batch: list[Record] = []
        for r in (enrich(r) for r in records(n)):
            batch.append(r)
            if len(batch) >= 1000:
                time.sleep(IO_SECONDS * tally.add_slow(batch, "double"))
                batch = []
        time.sleep(IO_SECONDS * tally.add_slow(batch, "double"))
        return tally

    return _w4(go)


def _w4(go: Callable[[], Tally]) -> Measured:
    measured = _timed(go)
    measured.info["peak_rss_mb"] = peak_rss_mb()
    if "channel_peaks" in measured.tally.extra:
        measured.info["channel_peaks"] = measured.tally.extra["channel_peaks"]
    return measured


def w4_pipeline(c: Any) -> Any:
    """W4's Conveyor pipeline: one fast MapStage (enrich)."""
    return c.Pipeline("w4").add_stage(c.MapStage(enrich, name="enrich"))


def w4_conveyor(n: int, batch_size: int = 1000, **_: Any) -> Measured:
    """Conveyor: one fast MapStage into an async slow sink. The sink awaits its sleep, so the
    source and the stage are free to run ahead: only the bounded channels hold them back."""
    c = _conveyor()
    pipeline = w4_pipeline(c)

    def go() -> Tally:
        tally = SlowTally()

        async def sink(batch: list[Record]) -> None:
            due = tally.add_slow(batch, "double")
            if due:
                await asyncio.sleep(IO_SECONDS * due)

        report = pipeline.run(
            records(n), sink, batch_size=batch_size, dead_letters="memory", handle_signals=False
        )
        if report.records_in != n or report.dead_lettered:
            raise VerificationError(f"report: {report.records_in} in, {report.dead_lettered} dead")
        # Proof that the sink was the slow side: the channels filled up (back-pressure).
        tally.extra["channel_peaks"] = [f"{ch.peak}/{ch.capacity}" for ch in report.channels]
        return tally

    return _w4(go)


def w4_pypeln(n: int, **_: Any) -> Measured:
    """pypeln: ``pl.thread.map(enrich, maxsize=1000)``: a worker thread runs ahead of the slow
    sink in the main thread, held back by pypeln's bounded queue."""
    import pypeln as pl

    def go() -> Tally:
        tally = SlowTally()
        batch: list[Record] = []
        for r in pl.thread.map(enrich, records(n), workers=1, maxsize=1000):
            batch.append(r)
            if len(batch) >= 1000:
                time.sleep(IO_SECONDS * tally.add_slow(batch, "double"))
                batch = []
        time.sleep(IO_SECONDS * tally.add_slow(batch, "double"))
        return tally

    return _w4(go)


def w4_bytewax(n: int, batch_size: int = 1000, **_: Any) -> Measured:
    """Bytewax ``run_main``: map, then the slow sink."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    def go() -> Tally:
        tally = SlowTally()

        def sink(batch: list[Record]) -> None:
            time.sleep(IO_SECONDS * tally.add_slow(batch, "double"))

        flow = Dataflow("w4")
        s = op.input("inp", flow, TestingSource(records(n), batch_size=batch_size))
        s = op.map("enrich", s, enrich)
        op.output("out", s, _bytewax_sink(sink))
        run_main(flow)
        return tally

    return _w4(go)


# -- W5: contracts -------------------------------------------------------------------------


def w5_model() -> Any:
    """W5's input contract: a pydantic model of W1's records (built on first use, so that
    the other workloads never import pydantic themselves)."""
    global _W5_MODEL
    if _W5_MODEL is None:
        from pydantic import BaseModel, Field

        class W5Record(BaseModel):
            id: int = Field(ge=0)
            value: int = Field(ge=0, lt=1000)
            name: str

        _W5_MODEL = W5Record
    return _W5_MODEL


_W5_MODEL: Any = None


def _w5_pipeline(c: Any) -> Any:
    """W1's stages, the first with ``StageOptions(input_contract=W5Record)``."""
    return (
        c.Pipeline("w5")
        .add_stage(
            c.ValidateStage(validate, name="validate"),
            options=c.StageOptions(input_contract=w5_model()),
        )
        .add_stage(c.MapStage(enrich, name="enrich"))
        .add_stage(c.FilterStage(keep, name="filter"))
    )


def _w5_contract_is_live(c: Any, pipeline: Any, contracts: str) -> None:
    """Outside the timed region: one record that breaks the contract (``value`` out of
    range, which W1's own type check lets through) must be dead-lettered when contracts are
    checked, and pass when they are off."""
    bad = [{"id": 0, "value": 0, "name": "a"}, {"id": 1, "value": -2, "name": "b"}]
    report = pipeline.run(
        bad,
        lambda batch: None,
        contracts=contracts,
        dead_letters="memory",
        max_dead_letters="100%",
        handle_signals=False,
    )
    want = {"all": 1, "sample": None, "off": 0}[contracts]
    if want is not None and report.dead_lettered != want:
        raise VerificationError(
            f"W5 contracts={contracts}: the contract check dead-lettered "
            f"{report.dead_lettered} of 1 bad record(s), expected {want}"
        )


def w5_conveyor(n: int, contracts: str = "all", batch_size: int = 1000, **_: Any) -> Measured:
    """W1's pipeline with a pydantic input contract on its first stage, checked on every
    record (``contracts="all"``), a sample, or not at all (``"off"``)."""
    c = _conveyor()
    pipeline = _w5_pipeline(c)
    _w5_contract_is_live(c, pipeline, contracts)

    def go() -> Tally:
        tally = Tally()
        report = pipeline.run(
            records(n),
            lambda batch: tally.add(batch, "double"),
            batch_size=batch_size,
            contracts=contracts,
            dead_letters="memory",
            handle_signals=False,
        )
        if report.records_in != n or report.dead_lettered or report.status != "completed":
            raise VerificationError(
                f"report: {report.status}, {report.records_in} in, {report.dead_lettered} dead"
            )
        return tally

    return _timed(go)


def w5_pydantic_us_per_record(batch: int = 1000, batches: int = 200, repeats: int = 5) -> float:
    """What pydantic alone costs per record here: strict validation of W1's records as one
    ``list[W5Record]`` per batch of 1,000 (as Conveyor's type contracts do); µs, median."""
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[w5_model()])  # type: ignore[misc]
    chunk = list(records(batch))
    costs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            adapter.validate_python(chunk, strict=True)
        costs.append((time.perf_counter() - t0) / (batch * batches) * 1e6)
    return sorted(costs)[len(costs) // 2]


# -- W6: dead letters ---------------------------------------------------------------------


def w6_ok(r: Record) -> Record:
    """W6's stage function when records succeed: W1's enrichment."""
    return enrich(r)


def w6_fail(r: Record) -> Record:
    """W6's stage function when every record fails: the same work, then a ValueError."""
    enrich(r)
    raise ValueError(f"record {r['id']}: value {r['value']} rejected")


def w6_conveyor(n: int, fails: bool = False, store: str = "sqlite", **_: Any) -> Measured:
    """One MapStage; ``fails``: its function raises ValueError for every record, each one a
    dead letter in ``store`` (a SQLite file in a fresh temporary directory, or ``memory``);
    otherwise every record reaches the sink. ``max_dead_letters="100%"`` either way."""
    import shutil
    import tempfile

    c = _conveyor()
    fn = w6_fail if fails else w6_ok
    pipeline = c.Pipeline("w6").add_stage(c.MapStage(fn, name="map"))
    tmp = tempfile.mkdtemp(prefix="conveyor-bench-w6-")
    path = os.path.join(tmp, "dead_letters.db")
    memory = c.MemoryDeadLetterStore() if store == "memory" else None
    try:

        def go() -> Tally:
            tally = Tally()
            report = pipeline.run(
                records(n),
                lambda batch: tally.add(batch, "double"),
                dead_letters=memory if memory is not None else path,
                max_dead_letters="100%",
                handle_signals=False,
            )
            # Every record dead-lettered is over any budget: the run drains and says failed.
            want = ("failed", n) if fails else ("completed", 0)
            if (report.status, report.dead_lettered) != want or report.records_in != n:
                raise VerificationError(
                    f"report: {report.status}, {report.records_in} in, "
                    f"{report.dead_lettered} dead; expected {want}"
                )
            return tally

        measured = _timed(go)
        tally = measured.tally
        tally.extra["fails"] = fails
        if fails:  # read the letters back (outside the timed region)
            read = memory if memory is not None else c.open_dead_letter_store(path)
            try:
                letters = read.list()
            finally:
                if memory is None:
                    read.close()
            tally.extra["letters"] = len(letters)
            tally.extra["letter_ids"] = sum(letter.record["id"] for letter in letters)
            if letters and letters[0].error_type.rpartition(".")[2] != "ValueError":
                raise VerificationError(f"W6: letters hold {letters[0].error_type}")
        if memory is None:
            measured.info["store_bytes"] = os.path.getsize(path) if os.path.exists(path) else 0
        return measured
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- W7: checkpoints -------------------------------------------------------------------


def w7_conveyor(
    n: int, shape: str = "W1", checkpoint: bool = False, batch_size: int = 1000, **_: Any
) -> Measured:
    """W1's or W4's Conveyor contender (``shape``), the same pipeline and sink, with
    checkpoints on (``checkpoint=<fresh temp dir>/checkpoints.db``, the default interval
    ``checkpoint_every=1.0``) or off. Opening and creating the checkpoint file is inside the
    timed region: a run with checkpoints pays for it. Both write dead letters to a SQLite
    file (a run with checkpoints needs a durable store; none is written here)."""
    import shutil
    import tempfile

    c = _conveyor()
    pipeline = w1_pipeline(c) if shape == "W1" else w4_pipeline(c)
    tmp = tempfile.mkdtemp(prefix="conveyor-bench-w7-")
    path = os.path.join(tmp, "checkpoints.db") if checkpoint else None
    try:

        def go() -> Tally:
            tally: Tally
            if shape == "W1":
                tally = Tally()

                def sink(batch: list[Record]) -> None:
                    tally.add(batch, "double")

                write: Any = sink
            else:
                slow = tally = SlowTally()

                async def write(batch: list[Record]) -> None:
                    due = slow.add_slow(batch, "double")
                    if due:
                        await asyncio.sleep(IO_SECONDS * due)

            report = pipeline.run(
                records(n),
                write,
                batch_size=batch_size,
                # a durable store for both (a run with checkpoints refuses "memory")
                dead_letters=os.path.join(tmp, "dead_letters.db"),
                handle_signals=False,
                checkpoint=path,
            )
            if report.records_in != n or report.dead_lettered or report.status != "completed":
                raise VerificationError(
                    f"report: {report.status}, {report.records_in} in, {report.dead_lettered} dead"
                )
            tally.extra["checkpoints"] = report.checkpoints_written
            if checkpoint:  # the run really checkpointed, up to the end of the source
                cp = report.checkpoint
                if cp is None or not cp.finished or cp.position != n or not os.path.exists(path):
                    raise VerificationError(f"W7: checkpoints on, final checkpoint {cp!r}")
            elif report.checkpoint is not None or report.checkpoints_written:
                raise VerificationError("W7: checkpoints off, yet the run checkpointed")
            return tally

        measured = _timed(go)
        measured.tally.extra["shape"] = shape
        measured.info["checkpoints"] = measured.tally.extra["checkpoints"]
        if shape == "W4":
            measured.info["peak_rss_mb"] = peak_rss_mb()
        return measured
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- W8 and W9: SQL sinks -------------------------------------------------------------------

PG_DSN = os.environ.get(
    "CONVEYOR_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)
"""W8's database (PostgreSQL on loopback, trust auth); ``CONVEYOR_BENCH_PG_DSN`` overrides."""

COMMIT_EVERY = 1.0
"""W8/W9: the hand-written loops' commit interval, the runs' default ``checkpoint_every``."""

SQL_PIPELINE = "sqlbench"
CHECKPOINTS_TABLE = "conveyor_checkpoints"
SQL_ROW = f"{SQL_PIPELINE} -> %"  # a SQL sink keys its checkpoint row by pipeline and table


def sql_ids(n: int) -> Iterator[int]:
    """W8/W9's source: the ids, generated lazily (the same for everyone)."""
    yield from range(n)


def sql_row(i: int) -> Record:
    """W8/W9's per-record work, done by every contender: the row of id ``i``."""
    return {"id": i, "v": i * 0.5, "name": f"user{i}"}


def expected_sql(n: int) -> tuple[int, int, int, int]:
    """Rows, sum of ids, sum of ``2 * v`` (= sum of ids) and total length of the names."""
    ids = n * (n - 1) // 2
    chars, digits, low = 4 * n, 1, 0
    while low < n:
        high = min(n, 10**digits)
        chars += (high - low) * digits
        low, digits = high, digits + 1
    return n, ids, ids, chars


def _sql_tally(count: Any, ids: Any, vsum: Any, chars: Any) -> Tally:
    tally = Tally(count=int(count), ids=int(ids or 0))
    tally.extra["v2"] = round(float(vsum or 0) * 2)
    tally.extra["chars"] = int(chars or 0)
    return tally


SQL_CHECK = "SELECT count(*), sum(id), sum(v), sum(length(name)) FROM {table}"


def _commit_due(cadence: str, next_at: float) -> bool:
    return cadence == "batch" or time.monotonic() >= next_at


def _conveyor_sql(
    c: Any, n: int, sink: Any, checkpoint: bool, batch_size: int
) -> tuple[Any, Measured]:
    """Run ``sql_ids(n)`` → ``MapStage(sql_row)`` → ``sink`` (timed); check the report."""
    import tempfile

    pipeline = c.Pipeline(SQL_PIPELINE).add_stage(c.MapStage(sql_row, name="row"))
    letters = os.path.join(tempfile.mkdtemp(prefix="conveyor-bench-sql-"), "dead_letters.db")

    def go() -> Tally:
        report = pipeline.run(
            sql_ids(n),
            sink,
            batch_size=batch_size,
            dead_letters=letters,  # durable: a run with checkpoints refuses "memory"
            handle_signals=False,
            checkpoint=True if checkpoint else None,
        )
        if report.records_in != n or report.dead_lettered or report.status != "completed":
            raise VerificationError(
                f"report: {report.status}, {report.records_in} in, {report.dead_lettered} dead"
            )
        tally = Tally()
        tally.extra["report"] = report
        return tally

    measured = _timed(go)
    measured.info["peak_rss_mb"] = peak_rss_mb()
    report = measured.tally.extra.pop("report")
    measured.info["checkpoints"] = report.checkpoints_written
    if checkpoint and (report.checkpoint is None or not report.checkpoint.finished):
        raise VerificationError(f"final checkpoint {report.checkpoint!r} is not finished")
    return report, measured


def _finished_checkpoint(payload: Any, where: str) -> None:
    """The checkpoint row a SQL sink wrote in its own database says the run finished."""
    import json

    if payload is None:
        raise VerificationError(f"{where}: no checkpoint row in {CHECKPOINTS_TABLE}")
    body = json.loads(bytes(payload).decode() if isinstance(payload, bytes) else payload)
    if not body["checkpoint"]["finished"]:
        raise VerificationError(f"{where}: the stored checkpoint is not finished")


# W8: PostgreSQL


def _pg_table(keyed: bool) -> str:
    return "bench_w8_upsert" if keyed else "bench_w8_copy"


def _pg_reset(table: str, keyed: bool) -> None:
    """Outside the timed region: the table exists (as the sink would create it), empty, and
    no checkpoint of the benchmark's pipeline is left from an earlier run."""
    import psycopg

    pk = ", PRIMARY KEY (id)" if keyed else ""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id bigint, v double precision, name text{pk})"
        )
        conn.execute(f"TRUNCATE {table}")
        found = conn.execute("SELECT to_regclass(%s)", (CHECKPOINTS_TABLE,)).fetchone()
        if found and found[0] is not None:  # the sink creates it; the benchmark never does
            conn.execute(f"DELETE FROM {CHECKPOINTS_TABLE} WHERE pipeline LIKE %s", (SQL_ROW,))


def _pg_result(table: str, checkpointed: bool) -> Tally:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        row = conn.execute(SQL_CHECK.format(table=table)).fetchone()
        assert row is not None
        if checkpointed:
            found = conn.execute(
                f"SELECT payload FROM {CHECKPOINTS_TABLE} WHERE pipeline LIKE %s", (SQL_ROW,)
            ).fetchone()
            _finished_checkpoint(found[0] if found else None, table)
    return _sql_tally(*row)


def w8_hand(
    n: int, commit: str = "1s", keyed: bool = False, batch_size: int = 1000, **_: Any
) -> Measured:
    """Hand-written psycopg 3: batches of ``batch_size`` rows, one ``COPY … FROM STDIN``
    per batch (``keyed``: one ``executemany`` of ``INSERT … ON CONFLICT (id) DO UPDATE``,
    the statement the sink uses with a key); commit once per second (``commit="1s"``, when
    a batch ends after the interval, and at the end) or after every batch (``"batch"``)."""
    import psycopg

    table = _pg_table(keyed)
    _pg_reset(table, keyed)
    copy_sql = f"COPY {table} (id, v, name) FROM STDIN"
    upsert_sql = (
        f"INSERT INTO {table} (id, v, name) VALUES (%s, %s, %s) "
        "ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, name = EXCLUDED.name"
    )

    def go() -> Tally:
        with psycopg.connect(PG_DSN) as conn:
            cur = conn.cursor()

            def flush(batch: list[Record]) -> None:
                if keyed:
                    cur.executemany(upsert_sql, [(r["id"], r["v"], r["name"]) for r in batch])
                    return
                with cur.copy(copy_sql) as copy:
                    for r in batch:
                        copy.write_row((r["id"], r["v"], r["name"]))

            next_at = time.monotonic() + COMMIT_EVERY
            batch: list[Record] = []
            for i in sql_ids(n):
                batch.append(sql_row(i))
                if len(batch) >= batch_size:
                    flush(batch)
                    batch = []
                    if _commit_due(commit, next_at):
                        conn.commit()
                        next_at = time.monotonic() + COMMIT_EVERY
            if batch:
                flush(batch)
            conn.commit()
        return Tally()

    measured = _timed(go)
    measured.info["peak_rss_mb"] = peak_rss_mb()
    measured.tally = _pg_result(table, checkpointed=False)
    return measured


def w8_conveyor(
    n: int, checkpoint: bool = True, keyed: bool = False, batch_size: int = 1000, **_: Any
) -> Measured:
    """``PostgresSink(PG_DSN, table)`` (``keyed``: ``key=["id"]``, rows upserted; else
    COPY) after ``MapStage(sql_row)``, with checkpoints (default interval 1 s: one
    transaction per checkpoint, each batch in a savepoint, the checkpoint row committed
    with the rows) or without (each write its own transaction)."""
    c = _conveyor()
    from conveyor.connectors import PostgresSink

    table = _pg_table(keyed)
    _pg_reset(table, keyed)
    sink = PostgresSink(PG_DSN, table, key=["id"] if keyed else ())
    _, measured = _conveyor_sql(c, n, sink, checkpoint, batch_size)
    measured.tally = _pg_result(table, checkpointed=checkpoint)
    return measured


# W9: SQLite

W9_TABLE = "bench_w9"
W9_SCHEMA = f'CREATE TABLE {W9_TABLE} ("id" INTEGER, "v" REAL, "name" TEXT, PRIMARY KEY ("id"))'
"""The table as ``SqliteSink(key=["id"])`` would create it from W9's rows."""
W9_UPSERT = (
    f'INSERT INTO {W9_TABLE} ("id", "v", "name") VALUES (?, ?, ?) '
    'ON CONFLICT ("id") DO UPDATE SET "v" = excluded."v", "name" = excluded."name"'
)


def _w9_database() -> tuple[str, str]:
    """A fresh temporary directory and in it the database with W9's empty table (WAL)."""
    import sqlite3
    import tempfile

    tmp = tempfile.mkdtemp(prefix="conveyor-bench-w9-")
    path = os.path.join(tmp, "out.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(W9_SCHEMA)
    conn.commit()
    conn.close()
    return tmp, path


def _w9_result(path: str, checkpointed: bool) -> Tally:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        row = conn.execute(SQL_CHECK.format(table=W9_TABLE)).fetchone()
        if checkpointed:
            found = conn.execute(
                f"SELECT payload FROM {CHECKPOINTS_TABLE} WHERE pipeline LIKE ?", (SQL_ROW,)
            ).fetchone()
            _finished_checkpoint(found[0] if found else None, path)
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if mode != "wal":
            raise VerificationError(f"W9: journal_mode {mode}, expected wal")
    finally:
        conn.close()
    return _sql_tally(*row)


def w9_hand(n: int, commit: str = "1s", batch_size: int = 1000, **_: Any) -> Measured:
    """Hand-written sqlite3: WAL and ``synchronous=FULL``, batches of ``batch_size`` rows,
    one ``executemany`` of the sink's upsert per batch; commit once per second (``"1s"``,
    when a batch ends after the interval, and at the end) or after every batch."""
    import shutil
    import sqlite3

    tmp, path = _w9_database()
    try:

        def go() -> Tally:
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            next_at = time.monotonic() + COMMIT_EVERY
            batch: list[Record] = []
            for i in sql_ids(n):
                batch.append(sql_row(i))
                if len(batch) >= batch_size:
                    conn.executemany(W9_UPSERT, [(r["id"], r["v"], r["name"]) for r in batch])
                    batch = []
                    if _commit_due(commit, next_at):
                        conn.commit()
                        next_at = time.monotonic() + COMMIT_EVERY
            if batch:
                conn.executemany(W9_UPSERT, [(r["id"], r["v"], r["name"]) for r in batch])
            conn.commit()
            conn.close()
            return Tally()

        measured = _timed(go)
        measured.info["peak_rss_mb"] = peak_rss_mb()
        measured.tally = _w9_result(path, checkpointed=False)
        return measured
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def w9_conveyor(n: int, checkpoint: bool = True, batch_size: int = 1000, **_: Any) -> Measured:
    """``SqliteSink(path, table, key=["id"])`` after ``MapStage(sql_row)`` (the sink sets
    WAL and ``synchronous=FULL`` itself), with checkpoints (default interval 1 s) or
    without (each write its own transaction)."""
    import shutil

    c = _conveyor()
    from conveyor.connectors import SqliteSink

    tmp, path = _w9_database()
    try:
        sink = SqliteSink(path, W9_TABLE, key=["id"])
        _, measured = _conveyor_sql(c, n, sink, checkpoint, batch_size)
        measured.tally = _w9_result(path, checkpointed=checkpoint)
        return measured
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_SCRAPER = """
import select, sys, urllib.request
url = sys.argv[1]
while True:  # at once, then every 0.5 s, until stdin says stop (bounded by the run)
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read()
    print(int(b"conveyor_stage_records_in_total" in page), flush=True)
    if select.select([sys.stdin], [], [], 0.5)[0]:
        break
"""
"""W10's scraper: a process of its own, as Prometheus is."""


def w10_conveyor(
    n: int, metrics: str = "off", report: bool = False, batch_size: int = 1000, **_: Any
) -> Measured:
    """W1 run by a ``StreamRunner`` with the live-metrics exporter ``off``, ``on`` (nobody
    scraping) or ``scraped`` (another process fetching ``/metrics`` at once and then every
    0.5 s, as Prometheus does from its own process; until Dec 3 2026 a thread of this one,
    which paid its own GIL waits: see BENCHMARKS.md),
    and with ``report`` the run report of ``conveyor run --report run.html`` (a
    :class:`~conveyor.observe.RunRecorder` sampling at each 0.25 s progress tick, then the
    page written with the pipeline's drawing). Starting and stopping the server and
    writing the page are timed; importing prometheus_client is not."""
    import subprocess
    import sys
    import tempfile

    c = _conveyor()
    from conveyor.runtime import StreamRunner

    if metrics != "off":  # imported once at start-up, as by `conveyor run`: not timed
        import prometheus_client  # noqa: F401

        import conveyor.observe.metrics  # noqa: F401
    pipeline = w1_pipeline(c)
    options = c.RunOptions(
        batch_size=batch_size, capacity=2, dead_letters="memory", handle_signals=False
    )
    scrapes: list[int] = []
    pages: list[int] = []

    def go() -> Tally:
        tally = Tally()
        runner = StreamRunner(pipeline.spec(), lambda batch: tally.add(batch, "double"), options)
        server: Any = None
        scraper: subprocess.Popen[str] | None = None
        if metrics != "off":
            from conveyor.observe import serve_metrics

            server = serve_metrics(runner, port=0)
        if metrics == "scraped":  # another process, as Prometheus: scrapes until told to stop
            scraper = subprocess.Popen(
                [sys.executable, "-c", _SCRAPER, server.url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        recorder: Any = None
        if report:
            from conveyor.observe import RunRecorder

            recorder = RunRecorder()
        try:
            result = asyncio.run(_with_ticks(runner, runner.run(records(n)), recorder))
        finally:
            if scraper is not None:
                out, _ = scraper.communicate("stop\n", timeout=30)  # (its last scrape ends)
                scrapes.extend(int(flag) for flag in out.split())
            if server is not None:
                server.close()
        if result.records_in != n or result.dead_lettered:
            raise VerificationError(f"report: {result.records_in} in, {result.dead_lettered} dead")
        if recorder is not None:
            from conveyor.observe import render_svg, report_document, write_report

            doc = report_document(result, samples=recorder, graph_svg=render_svg(pipeline))
            with tempfile.TemporaryDirectory() as folder:
                page = write_report(doc, f"{folder}/run.html")
                pages.append(page.stat().st_size)
        return tally

    measured = _timed(go)
    if metrics == "scraped" and not any(scrapes):
        raise VerificationError(f"W10: no scrape named the stage counters ({scrapes})")
    if report and not all(pages):
        raise VerificationError("W10: the run report was not written")
    measured.tally.extra["shape"] = "W1"
    measured.info["scrapes"] = len(scrapes)
    return measured


async def _with_ticks(runner: Any, run: Any, recorder: Any) -> Any:
    """Await ``run``, calling ``recorder(runner)`` every 0.25 s as ``conveyor run``'s
    progress ticks do (and once at the end); just ``run`` without a recorder."""
    if recorder is None:
        return await run

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.25)
            recorder(runner)

    ticker = asyncio.create_task(tick())
    try:
        return await run
    finally:
        ticker.cancel()
        recorder(runner)


CONTENDERS: dict[str, Callable[..., Measured]] = {
    "w1_generators": w1_generators,
    "w1_conveyor": w1_conveyor,
    "w1_pypeln": w1_pypeln,
    "w1_bytewax": w1_bytewax,
    "w2_asyncio": w2_asyncio,
    "w2_conveyor_map": w2_conveyor_map,
    "w2_conveyor_options": w2_conveyor_options,
    "w2_pypeln": w2_pypeln,
    "w2_bytewax": w2_bytewax,
    "w3_pool": w3_pool,
    "w3_conveyor": w3_conveyor,
    "w3_pypeln": w3_pypeln,
    "w3_bytewax": w3_bytewax,
    "w4_generators": w4_generators,
    "w4_conveyor": w4_conveyor,
    "w4_pypeln": w4_pypeln,
    "w4_bytewax": w4_bytewax,
    "w5_conveyor": w5_conveyor,
    "w6_conveyor": w6_conveyor,
    "w7_conveyor": w7_conveyor,
    "w8_hand": w8_hand,
    "w8_conveyor": w8_conveyor,
    "w9_hand": w9_hand,
    "w9_conveyor": w9_conveyor,
    "w10_conveyor": w10_conveyor,
}

# Anything a peer might send home stays home (bytewax's dataflow API web server is off
# unless asked for; OpenTelemetry export is off).
TELEMETRY_ENV = {
    "OTEL_SDK_DISABLED": "true",
    "DO_NOT_TRACK": "1",
    "BYTEWAX_DATAFLOW_API_ENABLED": "",
}


def quiet_environment() -> None:
    """Apply :data:`TELEMETRY_ENV` to this process."""
    for key, value in TELEMETRY_ENV.items():
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
