"""The pipeline as a picture: Mermaid text, an SVG drawing, a PNG image.

Every renderer is a function of the pipeline's frozen definition (its stages and stage
options): nothing runs. The definition is first reduced to a small graph model (nodes and
branch groups), which the Mermaid writer prints and the layout places; the SVG and PNG
renderers draw the same layout. PNG output needs Pillow (``pip install 'conveyor[graph]'``).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from xml.sax.saxutils import escape, quoteattr

from conveyor.core.kinds import StageKind, flatten_stages, stage_kind
from conveyor.core.options import Executor, StageOptions
from conveyor.core.spec import HasSpec, PipelineSpec, spec_of
from conveyor.core.stage import PipelineStage
from conveyor.core.stages import BranchStage

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

__all__ = ["GRAPH_SUFFIXES", "Step", "render_png", "render_svg", "to_mermaid", "write_graph"]

GRAPH_SUFFIXES: tuple[str, ...] = (".mmd", ".md", ".svg", ".png")
"""The file suffixes :func:`write_graph` accepts."""

_Shape = Literal["terminal", "stage", "barrier"]
_TIMES = "\N{MULTIPLICATION SIGN}"
StrPath = str | os.PathLike[str]

# -- the graph model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    id: str
    name: str
    detail: str
    shape: _Shape


@dataclass(frozen=True, slots=True)
class _Branch:
    id: str
    name: str
    lanes: tuple[tuple[str, tuple[_Element, ...]], ...]


_Element = _Node | _Branch

_RESERVED_IDS = frozenset(
    {"end", "graph", "flowchart", "subgraph", "direction", "click", "call", "href"}
    | {"style", "class", "classdef", "linkstyle", "default", "source", "sink"}
)


@dataclass(slots=True)
class _Ids:
    """Allocates unique, Mermaid-safe node ids derived from stage names."""

    taken: set[str] = field(default_factory=set)

    def new(self, name: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "stage"
        if base.lower() in _RESERVED_IDS or base[0].isdigit():
            base = f"stage_{base}"
        candidate, n = base, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{base}_{n}"
        self.taken.add(candidate)
        return candidate


@dataclass(frozen=True)
class Step:
    """A whole-dataset step (a project's task stage), for drawing: its name and the files
    or folders it reads and writes."""

    name: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


Drawable = PipelineSpec | HasSpec | Sequence[Step]
"""What the renderers draw: a :class:`~conveyor.Pipeline` or its spec, or the steps of a
task-stage project (drawn as a chain from the first step's inputs to the last's outputs)."""


def _detail(kind: StageKind, options: StageOptions | None) -> str:
    """What is not default about how a stage runs: kind, executor, concurrency."""
    parts: list[str] = [] if kind in (StageKind.RECORD, StageKind.SINK) else [kind.value]
    if options is not None:
        if options.executor is not Executor.INLINE:
            parts.append(options.executor.value)
        if options.concurrency > 1:
            parts.append(f"{_TIMES}{options.concurrency}")
    return " ".join(parts)


def _element(
    stage: PipelineStage[Any, Any], options: Mapping[str, StageOptions], ids: _Ids
) -> _Element:
    if isinstance(stage, BranchStage):
        lanes = tuple(
            (key, tuple(_element(leaf, {}, ids) for leaf in flatten_stages([branch])))
            for key, branch in stage.branches.items()
        )
        return _Branch(ids.new(stage.name), stage.name, lanes)
    kind = stage_kind(stage)
    shape: _Shape = "barrier" if kind is StageKind.BARRIER else "stage"
    detail = _detail(kind, options.get(stage.name))
    windowing = getattr(stage, "windowing", None)  # a window stage: its kind and size
    if kind is StageKind.STATEFUL and windowing is not None:
        detail = f"window {windowing}"
    return _Node(ids.new(stage.name), stage.name, detail, shape)


def _model(
    pipeline: Drawable, stage_options: Mapping[str, StageOptions] | None
) -> tuple[_Element, ...]:
    """source, every leaf stage (branches as groups), sink."""
    if isinstance(pipeline, Sequence):
        return _steps(pipeline)
    spec = spec_of(pipeline)
    options = {**spec.stage_options, **(stage_options or {})}
    ids = _Ids({"source", "sink"})
    stages = [_element(leaf, options, ids) for leaf in spec.leaves]
    source = _Node("source", "source", "", "terminal")
    sink = _Node("sink", "sink", _detail(StageKind.SINK, options.get("sink")), "terminal")
    return (source, *stages, sink)


def _title(pipeline: Drawable) -> str:
    if isinstance(pipeline, Sequence):
        return " -> ".join(step.name for step in pipeline)
    return spec_of(pipeline).name


def _steps(steps: Sequence[Step]) -> tuple[_Element, ...]:
    """The first step's inputs, every step (its outputs as its detail), the last outputs."""
    ids = _Ids({"source", "sink"})
    first = ", ".join(steps[0].reads) if steps else ""
    last = ", ".join(steps[-1].writes) if steps else ""
    nodes = [
        _Node(ids.new(step.name), step.name, " ".join(["task", *step.writes]), "stage")
        for step in steps
    ]
    return (
        _Node("source", first or "start", "", "terminal"),
        *nodes,
        _Node("sink", last or "end", "", "terminal"),
    )


# -- Mermaid ------------------------------------------------------------------------------

_MERMAID_ESCAPES = str.maketrans(
    {"#": "#35;", '"': "#34;", "<": "#60;", ">": "#62;", "&": "#38;", "\n": " ", "\r": " "}
)
_MERMAID_SHAPES: dict[_Shape, tuple[str, str]] = {
    "terminal": ("([", "])"),
    "stage": ("[", "]"),
    "barrier": ("{{", "}}"),
}


def _quoted(text: str) -> str:
    return '"' + text.translate(_MERMAID_ESCAPES) + '"'


def _mermaid_label(node: _Node) -> str:
    label = node.name.translate(_MERMAID_ESCAPES)
    if node.detail:
        label += "<br/>" + node.detail.translate(_MERMAID_ESCAPES)
    return f'"{label}"'


def _mermaid_nodes(elements: Sequence[_Element], indent: str) -> Iterator[str]:
    for element in elements:
        if isinstance(element, _Node):
            left, right = _MERMAID_SHAPES[element.shape]
            yield f"{indent}{element.id}{left}{_mermaid_label(element)}{right}"
            continue
        yield f"{indent}subgraph {element.id} [{_quoted(element.name)}]"
        for _key, lane in element.lanes:
            yield from _mermaid_nodes(lane, indent + "    ")
        yield f"{indent}end"


def _entries(element: _Element) -> list[tuple[str | None, str]]:
    """(edge label, node id) of the nodes an edge into ``element`` reaches."""
    if isinstance(element, _Node):
        return [(None, element.id)]
    return [
        (key if inner is None else f"{key}.{inner}", node)
        for key, lane in element.lanes
        for inner, node in _entries(lane[0])
    ]


def _exits(element: _Element) -> list[str]:
    """Ids of the nodes an edge out of ``element`` leaves from."""
    if isinstance(element, _Node):
        return [element.id]
    return [node for _, lane in element.lanes for node in _exits(lane[-1])]


def _mermaid_edges(elements: Sequence[_Element], indent: str) -> Iterator[str]:
    for before, after in itertools.pairwise(elements):
        for start in _exits(before):
            for label, end in _entries(after):
                arrow = "-->" if label is None else f"-->|{_quoted(label)}|"
                yield f"{indent}{start} {arrow} {end}"
    for element in elements:
        if isinstance(element, _Branch):
            for _key, lane in element.lanes:
                yield from _mermaid_edges(lane, indent)


def to_mermaid(
    pipeline: Drawable, *, stage_options: Mapping[str, StageOptions] | None = None
) -> str:
    """The pipeline as a Mermaid ``flowchart LR`` (no trailing newline).

    A ``source`` node, one node per leaf stage (chains are flattened), and a ``sink`` node.
    A :class:`~conveyor.BranchStage` becomes a subgraph whose branches fan out (edges labelled
    with the branch keys) and fan back in. Labels show what is not default about a stage: its
    kind (``batch``, ``expand``, ``barrier``), executor and concurrency, from the pipeline's
    options overridden by ``stage_options``. Barrier stages are hexagons. Node ids are
    sanitized stage names; labels are quoted, with ``"``, ``<``, ``>``, ``&`` and ``#`` as
    Mermaid entity codes.

    >>> from conveyor import AggregateStage, MapStage, Pipeline
    >>> p = (
    ...     Pipeline[list[int], int]("p")
    ...     .add_stage(MapStage(abs, name="abs"))
    ...     .add_stage(AggregateStage(sum, name="total"))
    ...     .configure("abs", executor="thread")
    ... )
    >>> print(to_mermaid(p))
    flowchart LR
        source(["source"])
        abs["abs<br/>thread"]
        total{{"total<br/>barrier"}}
        sink(["sink"])
        source --> abs
        abs --> total
        total --> sink
    """
    elements = _model(pipeline, stage_options)
    lines = ["flowchart LR", *_mermaid_nodes(elements, "    "), *_mermaid_edges(elements, "    ")]
    return "\n".join(lines)


# -- layout -------------------------------------------------------------------------------

_FONT = 13.0  # stage names
_SMALL = 11.0  # details, branch keys, group titles
_PAD_X, _MIN_W = 14.0, 72.0
_H1, _H2 = 36.0, 50.0  # node height with one / two lines of text
_GAP = 48.0  # between elements of a row
_LANE_GAP, _TITLE_H, _FRAME_PAD = 14.0, 24.0, 12.0
_INSET = 10.0  # hexagon point depth
_MARGIN = 16.0
_ARROW = 8.0

Point = tuple[float, float]
Measure = Callable[[str, float], float]


@dataclass(frozen=True, slots=True)
class _Box:
    node: _Node
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True, slots=True)
class _Frame:
    title: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True, slots=True)
class _Label:
    text: str
    x: float
    y: float


@dataclass(slots=True)
class _Picture:
    """Everything the SVG and PNG renderers draw, in layout units."""

    width: float = 0.0
    height: float = 0.0
    boxes: list[_Box] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    edges: list[tuple[Point, ...]] = field(default_factory=list)
    labels: list[_Label] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Placed:
    left: float
    right: float
    entries: list[Point]
    exits: list[Point]


def _estimate(text: str, size: float) -> float:
    """Text width without font metrics (generous for proportional sans-serif fonts)."""
    return len(text) * size * 0.62


class _Layout:
    """Left-to-right rows of boxes; the lanes of a branch stacked vertically in a frame."""

    def __init__(self, measure: Measure) -> None:
        self.measure = measure
        self.picture = _Picture()
        self._sizes: dict[str, tuple[float, float]] = {}

    def size(self, element: _Element) -> tuple[float, float]:
        if element.id not in self._sizes:
            self._sizes[element.id] = (
                self._node_size(element)
                if isinstance(element, _Node)
                else self._branch_size(element)
            )
        return self._sizes[element.id]

    def _node_size(self, node: _Node) -> tuple[float, float]:
        text = max(self.measure(node.name, _FONT), self.measure(node.detail, _SMALL))
        inset = 2 * _INSET if node.shape == "barrier" else 0.0
        return max(_MIN_W, text + 2 * _PAD_X + inset), _H2 if node.detail else _H1

    def _key_width(self, branch: _Branch) -> float:
        return max(self.measure(key, _SMALL) for key, _ in branch.lanes) + 2 * _FRAME_PAD

    def _branch_size(self, branch: _Branch) -> tuple[float, float]:
        lanes = [self.row_size(lane) for _, lane in branch.lanes]
        width = self._key_width(branch) + max(w for w, _ in lanes) + _FRAME_PAD
        width = max(width, self.measure(branch.name, _SMALL) + 2 * _FRAME_PAD)
        height = _TITLE_H + sum(h for _, h in lanes) + _LANE_GAP * (len(lanes) - 1)
        return width, height + _FRAME_PAD

    def row_size(self, row: Sequence[_Element]) -> tuple[float, float]:
        sizes = [self.size(element) for element in row]
        width = sum(w for w, _ in sizes) + _GAP * (len(sizes) - 1)
        return width, max(h for _, h in sizes)

    def place_row(self, row: Sequence[_Element], x: float, middle: float) -> _Placed:
        placed: list[_Placed] = []
        for element in row:
            width, height = self.size(element)
            placed.append(self.place(element, x, middle - height / 2))
            x += width + _GAP
        for before, after in itertools.pairwise(placed):
            self.connect(before, after)
        return _Placed(placed[0].left, placed[-1].right, placed[0].entries, placed[-1].exits)

    def place(self, element: _Element, x: float, y: float) -> _Placed:
        width, height = self.size(element)
        if isinstance(element, _Node):
            self.picture.boxes.append(_Box(element, x, y, width, height))
            middle = y + height / 2
            return _Placed(x, x + width, [(x, middle)], [(x + width, middle)])
        self.picture.frames.append(_Frame(element.name, x, y, width, height))
        entries: list[Point] = []
        exits: list[Point] = []
        top, lane_x = y + _TITLE_H, x + self._key_width(element)
        for key, lane in element.lanes:
            lane_height = self.row_size(lane)[1]
            row = self.place_row(lane, lane_x, top + lane_height / 2)
            for entry in row.entries[:1]:
                self.picture.labels.append(_Label(key, x + _FRAME_PAD, entry[1] - 8))
            entries += row.entries
            exits += row.exits
            top += lane_height + _LANE_GAP
        return _Placed(x, x + width, entries, exits)

    def connect(self, before: _Placed, after: _Placed) -> None:
        """Elbow edges from every exit of ``before`` to every entry of ``after``."""
        bend = (before.right + after.left) / 2
        for x0, y0 in before.exits:
            for x1, y1 in after.entries:
                if y0 == y1:
                    self.picture.edges.append(((x0, y0), (x1, y1)))
                else:
                    self.picture.edges.append(((x0, y0), (bend, y0), (bend, y1), (x1, y1)))


def _layout(
    pipeline: Drawable,
    stage_options: Mapping[str, StageOptions] | None,
    measure: Measure = _estimate,
) -> _Picture:
    elements = _model(pipeline, stage_options)
    layout = _Layout(measure)
    width, height = layout.row_size(elements)
    layout.place_row(elements, _MARGIN, _MARGIN + height / 2)
    layout.picture.width = width + 2 * _MARGIN
    layout.picture.height = height + 2 * _MARGIN
    return layout.picture


def _outline(box: _Box) -> list[Point]:
    """The polygon of a node's shape (a hexagon for barriers, else a rectangle)."""
    x, y, w, h = box.x, box.y, box.w, box.h
    if box.node.shape == "barrier":
        m = y + h / 2
        top = [(x + _INSET, y), (x + w - _INSET, y), (x + w, m)]
        return [*top, (x + w - _INSET, y + h), (x + _INSET, y + h), (x, m)]
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def _arrowhead(end: Point) -> list[Point]:
    x, y = end
    return [(x, y), (x - _ARROW, y - _ARROW / 2), (x - _ARROW, y + _ARROW / 2)]


def _text_lines(box: _Box) -> list[tuple[str, float, float]]:
    """(text, font size, baseline-centre y) of a node's name and detail lines."""
    middle = box.y + box.h / 2
    if not box.node.detail:
        return [(box.node.name, _FONT, middle)]
    return [(box.node.name, _FONT, middle - 8), (box.node.detail, _SMALL, middle + 9)]


_COLOURS: dict[_Shape, tuple[str, str]] = {  # fill, stroke
    "terminal": ("#e7f5e9", "#2e7d32"),
    "stage": ("#eaf1fd", "#2f5fb3"),
    "barrier": ("#fff3df", "#b86e00"),
}
_EDGE, _FRAME_FILL, _FRAME_STROKE, _TEXT, _MUTED = (
    "#555555",
    "#f7f7f7",
    "#9e9e9e",
    "#1a1a1a",
    "#666666",
)

# -- SVG ----------------------------------------------------------------------------------


def _points(points: Sequence[Point]) -> str:
    return " ".join(f"{x:g},{y:g}" for x, y in points)


def _svg_text(text: str, x: float, y: float, size: float, **attrs: str) -> str:
    extra = "".join(f" {key.replace('_', '-')}={quoteattr(value)}" for key, value in attrs.items())
    return (
        f'<text x="{x:g}" y="{y:g}" font-size="{size:g}" dominant-baseline="central"{extra}>'
        f"{escape(text)}</text>"
    )


def _svg_box(box: _Box) -> Iterator[str]:
    fill, stroke = _COLOURS[box.node.shape]
    if box.node.shape == "barrier":
        yield f'<polygon points="{_points(_outline(box))}" fill="{fill}" stroke="{stroke}"/>'
    else:
        radius = box.h / 2 if box.node.shape == "terminal" else 4
        yield (
            f'<rect x="{box.x:g}" y="{box.y:g}" width="{box.w:g}" height="{box.h:g}" '
            f'rx="{radius:g}" fill="{fill}" stroke="{stroke}"/>'
        )
    centre = box.x + box.w / 2
    for index, (text, size, y) in enumerate(_text_lines(box)):
        colour = _TEXT if index == 0 else _MUTED
        yield _svg_text(text, centre, y, size, text_anchor="middle", fill=colour)


def _svg_elements(picture: _Picture) -> Iterator[str]:
    for frame in picture.frames:
        yield (
            f'<rect x="{frame.x:g}" y="{frame.y:g}" width="{frame.w:g}" height="{frame.h:g}" '
            f'rx="8" fill="{_FRAME_FILL}" stroke="{_FRAME_STROKE}" stroke-dasharray="5 3"/>'
        )
        yield _svg_text(
            frame.title, frame.x + _FRAME_PAD, frame.y + _TITLE_H / 2, _SMALL, fill=_MUTED
        )
    for edge in picture.edges:
        yield f'<polyline points="{_points(edge)}" fill="none" stroke="{_EDGE}"/>'
        yield f'<polygon points="{_points(_arrowhead(edge[-1]))}" fill="{_EDGE}"/>'
    for label in picture.labels:
        yield _svg_text(label.text, label.x, label.y, _SMALL, fill=_MUTED, font_style="italic")
    for box in picture.boxes:
        yield from _svg_box(box)


def render_svg(
    pipeline: Drawable,
    path: StrPath | None = None,
    *,
    stage_options: Mapping[str, StageOptions] | None = None,
) -> str:
    """A self-contained SVG drawing of the pipeline; written to ``path`` too if given.

    Boxes run left to right from ``source`` to ``sink``; the branches of a
    :class:`~conveyor.BranchStage` are stacked vertically in a dashed frame; barriers are
    hexagons. Each stage name is one ``<text>`` element.
    """
    picture = _layout(pipeline, stage_options)
    width, height = picture.width, picture.height
    svg = "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{height:g}" '
            f'viewBox="0 0 {width:g} {height:g}" font-family="Helvetica, Arial, sans-serif">',
            f"<title>{escape(_title(pipeline))}</title>",
            f'<rect width="{width:g}" height="{height:g}" fill="white"/>',
            *_svg_elements(picture),
            "</svg>",
        ]
    )
    if path is not None:
        Path(path).write_text(svg + "\n", encoding="utf-8")
    return svg


# -- PNG ----------------------------------------------------------------------------------

_SCALE = 2.0  # pixels per layout unit


_PILLOW_HINT = "render_png needs Pillow, an optional dependency: pip install 'conveyor[graph]'"


def _png_text(text: str) -> str:
    """Pillow's default font has no multiplication sign: draw an ``x`` instead."""
    return text.replace(_TIMES, "x")


class _Painter:
    """Draws a :class:`_Picture` with Pillow, scaling layout units to pixels."""

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        fonts: Mapping[float, ImageFont.ImageFont | ImageFont.FreeTypeFont],
    ) -> None:
        self.draw = draw
        self.fonts = fonts

    def xy(self, points: Sequence[Point]) -> list[tuple[float, float]]:
        return [(x * _SCALE, y * _SCALE) for x, y in points]

    def text(self, text: str, x: float, y: float, size: float, colour: str, centred: bool) -> None:
        font, text = self.fonts[size], _png_text(text)
        left, _, right, _ = self.draw.textbbox((0, 0), text, font=font)
        _, top, _, bottom = self.draw.textbbox((0, 0), "Hg", font=font)
        px = x * _SCALE - ((right - left) / 2 + left if centred else left)
        py = y * _SCALE - (top + bottom) / 2
        self.draw.text((px, py), text, fill=colour, font=font)

    def paint(self, picture: _Picture) -> None:
        width = round(_SCALE)
        for frame in picture.frames:
            corners = self.xy([(frame.x, frame.y), (frame.x + frame.w, frame.y + frame.h)])
            self.draw.rounded_rectangle(corners, 8 * _SCALE, _FRAME_FILL, _FRAME_STROKE, width)
            self.text(
                frame.title, frame.x + _FRAME_PAD, frame.y + _TITLE_H / 2, _SMALL, _MUTED, False
            )
        for edge in picture.edges:
            self.draw.line(self.xy(edge), _EDGE, width)
            self.draw.polygon(self.xy(_arrowhead(edge[-1])), _EDGE)
        for label in picture.labels:
            self.text(label.text, label.x, label.y, _SMALL, _MUTED, False)
        for box in picture.boxes:
            self.box(box)

    def box(self, box: _Box) -> None:
        fill, stroke = _COLOURS[box.node.shape]
        width = round(_SCALE)
        if box.node.shape == "barrier":
            self.draw.polygon(self.xy(_outline(box)), fill, stroke, width)
        else:
            radius = (box.h / 2 if box.node.shape == "terminal" else 4) * _SCALE
            corners = self.xy([(box.x, box.y), (box.x + box.w, box.y + box.h)])
            self.draw.rounded_rectangle(corners, radius, fill, stroke, width)
        for index, (text, size, y) in enumerate(_text_lines(box)):
            colour = _TEXT if index == 0 else _MUTED
            self.text(text, box.x + box.w / 2, y, size, colour, True)


def render_png(
    pipeline: Drawable,
    path: StrPath,
    *,
    stage_options: Mapping[str, StageOptions] | None = None,
) -> Path:
    """Draw the pipeline as a PNG image at ``path`` (the :func:`render_svg` layout, with text
    measured in Pillow's default font); return the path. Needs Pillow:
    ``pip install 'conveyor[graph]'``."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise ImportError(_PILLOW_HINT) from exc
    fonts = {size: ImageFont.load_default(size=size * _SCALE) for size in (_FONT, _SMALL)}

    def measure(text: str, size: float) -> float:
        return float(fonts[size].getlength(_png_text(text))) / _SCALE if text else 0.0

    picture = _layout(pipeline, stage_options, measure)
    size = (round(picture.width * _SCALE), round(picture.height * _SCALE))
    image = Image.new("RGB", size, "white")
    _Painter(ImageDraw.Draw(image), fonts).paint(picture)
    target = Path(path)
    image.save(target, format="PNG")
    return target


# -- files --------------------------------------------------------------------------------


def write_graph(
    pipeline: Drawable,
    path: StrPath,
    *,
    stage_options: Mapping[str, StageOptions] | None = None,
) -> Path:
    """Write the pipeline's picture to ``path``, in the format its suffix names:
    ``.mmd`` (Mermaid text), ``.md`` (Mermaid in a fenced block), ``.svg`` or ``.png``.
    Return the path; any other suffix is a :class:`ValueError`."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in GRAPH_SUFFIXES:
        raise ValueError(
            f"cannot write a graph to {str(target)!r}: unknown suffix {suffix or '(none)'!r}; "
            f"use one of {', '.join(GRAPH_SUFFIXES)}"
        )
    if suffix == ".png":
        return render_png(pipeline, target, stage_options=stage_options)
    if suffix == ".svg":
        render_svg(pipeline, target, stage_options=stage_options)
        return target
    text = to_mermaid(pipeline, stage_options=stage_options)
    if suffix == ".md":
        text = f"```mermaid\n{text}\n```"
    target.write_text(text + "\n", encoding="utf-8")
    return target
