"""A project on Dask from its config alone: `pipeline.executor=dask` and `pipeline.dask.*`
(a real LocalCluster on 127.0.0.1) run the scaffold's project with the same results as
inline, and the summary says where each stage ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

CONVEYOR = Path(sys.executable).parent / "conveyor"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONVEYOR), *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )


def test_pipeline_executor_dask_runs_the_project_on_a_local_cluster(tmp_path: Path) -> None:
    assert run("new", "demo", cwd=tmp_path).returncode == 0
    inline = run("run", "demo", "--report", "inline.json", cwd=tmp_path)
    assert inline.returncode == 0, inline.stdout + inline.stderr
    done = run(
        "run", "demo", "--fresh", "--force", "pipeline.executor=dask",
        "pipeline.dask.workers=1", "pipeline.dask.threads_per_worker=2",
        "--report", "dask.json", cwd=tmp_path,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "on LocalCluster tcp://127.0.0.1:" in out
    assert "(1 worker process x 2 threads, memory limit auto)" in out
    counts = [
        {s["stage"]: (s["received"], s["emitted"], s["dead_lettered"]) for s in report["stages"]}
        for report in (
            json.loads((tmp_path / name).read_text(encoding="utf-8"))
            for name in ("inline.json", "dask.json")
        )
    ]
    assert counts[0] == counts[1]  # the same records in and out of every stage


def test_a_bad_dask_setting_is_an_error_at_its_key(tmp_path: Path) -> None:
    assert run("new", "demo", cwd=tmp_path).returncode == 0
    done = run("run", "demo", "pipeline.dask.workers=0", cwd=tmp_path)
    assert done.returncode == 1
    assert "pipeline.dask.workers: Input should be greater than or equal to 1" in (
        done.stdout + done.stderr
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 1),  # inline: one micro-batch at a time
        (["pipeline.executor=thread"], 1),
        (["pipeline.executor=process"], 2),  # the pool's two processes both busy
        (["pipeline.executor=process", "stages.enrich.workers=3"], 3),
        (["pipeline.executor=dask"], 4),  # 2 workers x 1 thread, one task queued on each
        (["pipeline.executor=dask", "pipeline.dask.workers=3"], 6),
        (["pipeline.executor=dask", "pipeline.dask.threads_per_worker=2"], 8),
        (["pipeline.executor=dask", "pipeline.concurrency=3"], 3),  # set: taken as it is
        (["pipeline.executor=dask", "stages.enrich.concurrency=5"], 5),
    ],
)
def test_an_unset_concurrency_keeps_the_executors_workers_busy(
    tmp_path: Path, overrides: list[str], expected: int
) -> None:
    from conveyor.project import load_project
    from conveyor.project.scaffold import new_project

    new_project(tmp_path / "demo")
    project = load_project(tmp_path / "demo", overrides)
    assert project.stage_options(project.stage("enrich")).concurrency == expected
