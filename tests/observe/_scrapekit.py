"""Reading a metrics page in the observe tests."""

from __future__ import annotations

import urllib.request

import pytest

parser = pytest.importorskip("prometheus_client.parser")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(metric name, sorted labels) -> value."""


def scrape(url: str) -> Samples:
    """The samples of the page at ``url``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }
