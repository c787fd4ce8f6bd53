import gc

from conveyor import MapStage, Pipeline, StageOptions
from conveyor.testing import run_pipeline_on


def sq(x):
    return x * x


def test_thread():
    p = Pipeline("p").add_stage(MapStage(sq, name="sq"))
    r = run_pipeline_on(p, range(10), batch_size=3, stage_options={"sq": StageOptions(executor="thread", concurrency=2)})
    assert r.outputs == [x * x for x in range(10)]


def test_other():
    gc.collect()
