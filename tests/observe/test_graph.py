"""The pipeline as a picture: Mermaid text, SVG and PNG files."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    AggregateStage,
    BatchStage,
    BranchStage,
    FilterStage,
    FlattenStage,
    MapStage,
    Pipeline,
)
from conveyor.core.options import StageOptions
from conveyor.observe import GRAPH_SUFFIXES, render_png, render_svg, to_mermaid, write_graph

SVG = "{http://www.w3.org/2000/svg}"


def _linear() -> Pipeline[Any, Any]:
    return (
        Pipeline[list[int], list[int]]("linear")
        .add_stage(MapStage(int, name="parse"))
        .add_stage(MapStage(abs, name="enrich"), options=StageOptions(concurrency=4))
        .add_stage(FilterStage(bool, name="keep"))
        .configure("enrich", executor="thread")
    )


def _branched() -> Pipeline[Any, Any]:
    stats = BranchStage(
        {
            "total": AggregateStage(sum, name="sum_all"),
            "scaled": MapStage(abs, name="absolute") >> AggregateStage(max, name="biggest"),
        },
        name="stats",
    )
    return (
        Pipeline[list[int], Any]("branched")
        .add_stage(MapStage(int, name="parse"))
        .add_stage(stats)
        .add_stage(MapStage(str, name="report"))
    )


def _chained() -> Pipeline[Any, Any]:
    chain = MapStage(int, name="a") >> (BatchStage[int](2, name="b") >> FlattenStage(name="c"))
    return Pipeline[list[int], list[int]]("chained").add_stage(chain)


# -- Mermaid -------------------------------------------------------------------------------


def test_mermaid_of_a_linear_pipeline_is_exact() -> None:
    assert to_mermaid(_linear()) == "\n".join(
        [
            "flowchart LR",
            '    source(["source"])',
            '    parse["parse"]',
            '    enrich["enrich<br/>thread \N{MULTIPLICATION SIGN}4"]',
            '    keep["keep"]',
            '    sink(["sink"])',
            "    source --> parse",
            "    parse --> enrich",
            "    enrich --> keep",
            "    keep --> sink",
        ]
    )


def test_branches_become_a_subgraph_with_fan_out_and_fan_in() -> None:
    text = to_mermaid(_branched())
    lines = text.splitlines()
    start, end = lines.index('    subgraph stats ["stats"]'), lines.index("    end")
    inside = {line.strip() for line in lines[start + 1 : end]}
    assert inside == {
        'sum_all{{"sum_all<br/>barrier"}}',
        'absolute["absolute"]',
        'biggest{{"biggest<br/>barrier"}}',
    }
    edges = [line.strip() for line in lines if "-->" in line]
    assert edges == [
        "source --> parse",
        'parse -->|"total"| sum_all',  # fan out, labelled with the branch keys
        'parse -->|"scaled"| absolute',
        "sum_all --> report",  # fan in
        "biggest --> report",
        "report --> sink",
        "absolute --> biggest",  # the chain inside a branch
    ]


def test_chains_are_flattened_and_kinds_shown() -> None:
    text = to_mermaid(_chained())
    assert '    a["a"]' in text.splitlines()
    assert '    b["b<br/>batch"]' in text.splitlines()
    assert '    c["c<br/>expand"]' in text.splitlines()
    edges = [line.strip() for line in text.splitlines() if "-->" in line]
    assert edges == ["source --> a", "a --> b", "b --> c", "c --> sink"]


def test_stage_options_argument_overrides_the_pipeline_options() -> None:
    text = to_mermaid(
        _linear(),
        stage_options={
            "enrich": StageOptions(executor="process", concurrency=2),
            "sink": StageOptions(concurrency=3),
        },
    )
    assert '    enrich["enrich<br/>process \N{MULTIPLICATION SIGN}2"]' in text.splitlines()
    assert '    sink(["sink<br/>\N{MULTIPLICATION SIGN}3"])' in text.splitlines()


def test_ids_are_sanitized_unique_and_labels_escaped() -> None:
    pipeline = (
        Pipeline[list[int], list[int]]("odd names")
        .add_stage(MapStage(abs, name='say "hi" <b>&#1'))
        .add_stage(MapStage(abs, name="say hi b 1"))
        .add_stage(MapStage(abs, name="end"))
        .add_stage(MapStage(abs, name="sink"))
        .add_stage(MapStage(abs, name="2x"))
        .add_stage(MapStage(abs, name="<lambda>"))
    )
    nodes = to_mermaid(pipeline).splitlines()[2:8]
    assert nodes == [
        '    say_hi_b_1["say #34;hi#34; #60;b#62;#38;#35;1"]',
        '    say_hi_b_1_2["say hi b 1"]',
        '    stage_end["end"]',
        '    stage_sink["sink"]',
        '    stage_2x["2x"]',
        '    lambda["#60;lambda#62;"]',
    ]


def test_a_pipeline_without_stages_is_source_to_sink() -> None:
    text = to_mermaid(Pipeline[int, int]("empty"))
    assert text.splitlines()[-1] == "    source --> sink"


# -- SVG -----------------------------------------------------------------------------------


def _texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return [element.text or "" for element in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("make", [_linear, _branched, _chained])
def test_svg_parses_and_has_one_text_per_stage_name(make: Any) -> None:
    pipeline = make()
    texts = _texts(render_svg(pipeline))
    names = ["source", "sink"]
    for stage in pipeline.stages:
        leaves = getattr(stage, "stages", (stage,))
        for leaf in leaves:
            names.append(leaf.name)
            for branch in getattr(leaf, "branches", {}).values():
                names.extend(s.name for s in getattr(branch, "stages", (branch,)))
    for name in names:
        assert texts.count(name) == 1, name


def test_svg_stacks_branches_vertically_and_escapes_text(tmp_path: Path) -> None:
    pipeline = _branched().add_stage(MapStage(abs, name="<&>"))
    target = tmp_path / "g.svg"
    svg = render_svg(pipeline, target)
    assert target.read_text(encoding="utf-8") == svg + "\n"
    root = ET.fromstring(svg)
    by_text = {t.text: t for t in root.iter(f"{SVG}text")}
    assert "<&>" in by_text
    total, scaled = float(by_text["sum_all"].get("y", 0)), float(by_text["absolute"].get("y", 0))
    assert scaled > total  # second branch below the first
    assert float(by_text["absolute"].get("x", 0)) < float(by_text["biggest"].get("x", 0))
    assert {"total", "scaled"} <= set(by_text)  # branch keys are drawn too


# -- PNG -----------------------------------------------------------------------------------


def test_png_opens_with_pillow(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    target = render_png(_branched(), tmp_path / "g.png")
    with image_module.open(target) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 0
        assert height > 0
        assert any(low != high for low, high in image.getextrema())  # not blank


def test_png_without_pillow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[graph\]'"):
        render_png(_linear(), tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


# -- write_graph ---------------------------------------------------------------------------


def test_write_graph_dispatches_on_suffix(tmp_path: Path) -> None:
    pipeline = _linear()
    mermaid = to_mermaid(pipeline)
    assert write_graph(pipeline, tmp_path / "g.mmd").read_text() == mermaid + "\n"
    assert write_graph(pipeline, str(tmp_path / "g.md")).read_text() == (
        f"```mermaid\n{mermaid}\n```\n"
    )
    ET.fromstring(write_graph(pipeline, tmp_path / "g.SVG").read_text())
    assert write_graph(pipeline, tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert GRAPH_SUFFIXES == (".mmd", ".md", ".svg", ".png")


@pytest.mark.parametrize("name", ["g.txt", "g.jpeg", "graph"])
def test_write_graph_rejects_other_suffixes(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.mmd, \.md, \.svg, \.png") as info:
        write_graph(_linear(), tmp_path / name)
    assert name in str(info.value)
    assert not (tmp_path / name).exists()


def test_nested_branches_nest_subgraphs_and_join_edge_labels() -> None:
    inner = BranchStage({"x": AggregateStage(len, name="count"), "y": MapStage(abs, name="m")})
    outer = BranchStage({"a": MapStage(abs, name="solo"), "b": inner}, name="outer")
    lines = to_mermaid(Pipeline[list[int], Any]("nested").add_stage(outer)).splitlines()
    assert lines[2:9] == [
        '    subgraph outer ["outer"]',
        '        solo["solo"]',
        '        subgraph branch_x_y ["branch(x, y)"]',
        '            count{{"count<br/>barrier"}}',
        '            m["m"]',
        "        end",
        "    end",
    ]
    assert '    source -->|"b.y"| m' in lines
    assert "    m --> sink" in lines
