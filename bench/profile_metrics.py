"""What one scrape of the live-metrics endpoint costs (W10's supplement).

Usage (after ``bash bench/setup.sh``)::

    bench/.venv/bin/python bench/profile_metrics.py [--scrapes 300]

Builds W1's ``StreamRunner`` (not run: its counters are read all the same), serves its
metrics with ``conveyor.observe.serve_metrics`` on 127.0.0.1 and prints the CPU time of
this process per collect-and-render of the page (``prometheus_client.generate_latest``)
and per whole HTTP scrape (the server thread and a ``urllib`` client, both in this
process, as in W10), the page's size and the time to start and stop the server. CPU time
is far steadier than W10's wall-clock ratios on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300)
    n = parser.parse_args().scrapes

    import workloads
    from prometheus_client import generate_latest

    import conveyor as c
    from conveyor.observe import serve_metrics
    from conveyor.runtime import StreamRunner

    options = c.RunOptions(batch_size=1000, capacity=2, dead_letters="memory")
    runner = StreamRunner(workloads.w1_pipeline(c).spec(), lambda batch: None, options)
    with serve_metrics(runner) as server:
        for _ in range(20):  # warm-up
            urllib.request.urlopen(server.url).read()
        cpu = time.process_time()
        for _ in range(n):
            generate_latest(server.registry)
        render = (time.process_time() - cpu) / n
        cpu = time.process_time()
        for _ in range(n):
            with urllib.request.urlopen(server.url) as response:
                page = response.read()
        scrape = (time.process_time() - cpu) / n
    wall = time.perf_counter()
    for _ in range(20):
        serve_metrics(runner).close()
    start_stop = (time.perf_counter() - wall) / 20
    print(f"collect + render: {render * 1e3:.3f} ms CPU per scrape ({len(page):,} bytes)")
    print(f"HTTP scrape (server + client in this process): {scrape * 1e3:.3f} ms CPU")
    print(f"  every 0.5 s: {scrape * 2 * 100:.2f}% of one core")
    print(f"start + stop the server: {start_stop * 1e3:.2f} ms (wall)")


if __name__ == "__main__":
    main()
