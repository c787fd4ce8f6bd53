"""Looking at pipelines: pictures of a pipeline's definition (Mermaid, SVG, PNG).

This layer reads :mod:`conveyor.core` definitions only; it never runs anything.
"""

from conveyor.observe.graph import GRAPH_SUFFIXES, render_png, render_svg, to_mermaid, write_graph

__all__ = ["GRAPH_SUFFIXES", "render_png", "render_svg", "to_mermaid", "write_graph"]
