"""The run report page (``conveyor run --report run.html``) in a real headless browser.

Debian's chromium and chromedriver (``make test`` installs them when missing); without
them the test is skipped saying so, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.project.scaffold import new_project

# 600 readings; every 7th is implausible (dead-lettered by validate), every 50th has a
# sensor name that tries to break out of the page, every 11th is out of range for enrich.
SOURCE = '''"""Messy readings."""

from collections.abc import Iterator

from pydantic import BaseModel

from conveyor.project import Source


class Readings(Source):
    deterministic = True

    class Config(BaseModel):
        count: int = 600

    def __init__(self, config: Config) -> None:
        self.config = config

    def read(self) -> Iterator[dict]:
        for i in range(self.config.count):
            sensor = f"s{i % 3}"
            if i % 50 == 0:
                sensor = '</script><img src="http://198.51.100.7/x.png" onerror="alert(1)">'
            celsius = 999.0 if i % 7 == 0 else (i % 50) - 10.0
            yield {"id": i, "sensor": sensor, "celsius": celsius}
'''

ENRICH = '''"""Fahrenheit, refusing readings whose id is a multiple of 11."""

from conveyor import MapStage


def enrich(reading):
    if reading["id"] % 11 == 0:
        raise ValueError(f"reading {reading['id']}: no calibration for this sensor")
    return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32}


stage = MapStage(enrich)
'''

MODELS = '''"""Records as plain dicts."""

from typing import Any

Reading = dict[str, Any]
EnrichedReading = dict[str, Any]
'''


def _service_missing(message: str) -> None:
    """Skip without the browser; under ``CI=true`` fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _binary(env: str, *names: str) -> str | None:
    given = os.environ.get(env)
    if given:
        return given
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = _binary("CONVEYOR_CHROMIUM", "chromium", "chromium-browser")
    driver_path = _binary("CONVEYOR_CHROMEDRIVER", "chromedriver")
    if chromium is None or driver_path is None:
        _service_missing(
            "the report's browser test needs Debian's chromium and chromedriver: `make test` "
            "installs them (or: apt-get install chromium chromium-driver)"
        )
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager: no usage statistics
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A messy project run through the CLI with --report run.html and --report run.json."""
    root = tmp_path_factory.mktemp("report") / "demo"
    new_project(root)
    stages = root / "src" / "pipeline" / "stages"
    (stages / "00_source.py").write_text(SOURCE)
    (stages / "20_enrich.py").write_text(ENRICH)
    (root / "src" / "pipeline" / "contracts" / "models.py").write_text(MODELS)
    conveyor = Path(sys.executable).with_name("conveyor")
    done = subprocess.run(
        [
            str(conveyor),
            "run",
            str(root),
            "pipeline.batch_size=40",
            "pipeline.max_dead_letters=50%",
            "stages.source.params.count=600",
            "--report",
            str(root / "out" / "run.html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote the run report to" in done.stdout
    page = root / "out" / "run.html"
    text = page.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="conveyor-report">')
    embedded = text[start:].split(">", 1)[1].split("</script>", 1)[0]
    return {"root": root, "page": page, "text": text, "doc": json.loads(embedded), "out": done}


def test_the_page_is_small_and_loads_nothing_from_anywhere(reported_run: dict[str, Any]) -> None:
    text = reported_run["text"]
    assert len(text.encode()) < 200_000
    # The only address in the page is inside the escaped hostile record text.
    outside = text.replace("http://198.51.100.7/x.png", "")
    assert "http://" not in outside
    assert "https://" not in outside
    assert "<img" not in text  # the hostile record's tag is text, not an element


def test_the_page_shows_the_numbers_of_the_run(browser: Any, reported_run: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    doc = reported_run["doc"]
    browser.get(reported_run["page"].as_uri())
    assert browser.execute_script("return document.readyState") == "complete"

    # The numbers the CLI printed are the numbers on the page.
    run = doc["run"]
    summary = f"{run['records_in']} in, {run['records_out']} out, {run['filtered']} filtered, "
    assert summary in reported_run["out"].stdout
    assert (run["records_in"], run["status"]) == (600, "completed")
    ids = list(range(600))
    implausible = {i for i in ids if i % 7 == 0}
    refused = {i for i in ids if i % 11 == 0} - implausible
    assert run["dead_lettered"] == len(implausible) + len(refused)
    assert run["records_out"] == 600 - run["dead_lettered"]
    assert browser.find_element(By.ID, "status").text == "completed"
    for key in ("records_in", "records_out", "dead_lettered", "filtered", "retried"):
        shown = browser.find_element(By.CSS_SELECTOR, f'[data-metric="{key}"]').text
        assert shown == f"{run[key]:,}", key

    # One row per stage with its counts; the sink's row names where it writes.
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-stage]")
    assert [r.get_attribute("data-stage") for r in rows] == [s["stage"] for s in doc["stages"]]
    for row, stage in zip(rows, doc["stages"], strict=True):
        for key in ("records_in", "records_out", "records_dead"):
            cell = row.find_element(By.CSS_SELECTOR, f'td[data-field="{key}"]').text
            assert cell == f"{stage[key]:,}", (stage["stage"], key)
    assert rows[-1].text.startswith("sink (data/readings.jsonl)")

    # Dead letters by stage and reason, with the counts of the store.
    letters = {
        row.get_attribute("data-letters"): int(
            row.find_element(By.CSS_SELECTOR, 'td[data-field="letters"]').text.replace(",", "")
        )
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-letters]")
    }
    assert letters == {"validate": len(implausible), "enrich": len(refused)}

    # The drawing and the charts are there; nothing was fetched; no script ran; no error.
    assert browser.find_elements(By.CSS_SELECTOR, ".graph svg text")
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert (
        browser.execute_script("return document.querySelectorAll('img, script[src]').length") == 0
    )
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []
    embedded = browser.execute_script(
        "return JSON.parse(document.getElementById('conveyor-report').textContent)"
    )
    assert embedded["run"] == run
