"""Publish the example's events to NATS JetStream, for the `source: {connector: nats}` switch.

    python examples/stream_metrics/publish.py [--url nats://127.0.0.1:4222] [--count N]
                                              [--rate R] [--stream EVENTS]

Makes the events as config.yaml's `generate` source does (the same fields, through
`conveyor.connectors.GenerateSource`) and publishes each as a JSON message on
`events.<site>`, creating the stream if it is missing. Endless without `--count`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from conveyor.connectors import GenerateSource

CONFIG = Path(__file__).parent / "src" / "pipeline" / "config.yaml"


def generated_fields() -> dict[str, Any]:
    """The `fields:` of the `generate` source in config.yaml (kept there as a comment's
    neighbour when the source is switched to NATS: the default ones otherwise)."""
    source = yaml.safe_load(CONFIG.read_text(encoding="utf-8")).get("source") or {}
    if source.get("connector") == "generate":
        return dict(source["fields"])
    return {
        "id": "sequence",
        "ts": {"now": "2.5s"},
        "sensor": {"choice": [f"s{i}" for i in range(1, 9)]},
        "site": {"choice": ["north", "south", "east"]},
        "value": {"uniform": [0, 100]},
    }


async def publish(url: str, stream: str, count: int | None, rate: float | None) -> int:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    sent = 0
    try:
        async for event in GenerateSource(generated_fields(), count=count, rate=rate, seed=7):
            await js.publish(f"{stream.lower()}.{event['site']}", json.dumps(event).encode())
            sent += 1
    finally:
        await nc.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="EVENTS")
    parser.add_argument("--count", type=int, default=None, help="events in all (default: endless)")
    parser.add_argument("--rate", type=float, default=500.0, help="events a second (0: no pacing)")
    args = parser.parse_args()
    rate = args.rate or None
    sent = asyncio.run(publish(args.url, args.stream, args.count, rate))
    print(f"published {sent} events to {args.stream}")


if __name__ == "__main__":
    main()
