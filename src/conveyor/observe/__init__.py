"""Looking at pipelines: pictures of a pipeline's definition (Mermaid, SVG, PNG), and live
metrics of a run for Prometheus (:func:`serve_metrics`).

This layer reads :mod:`conveyor.core` definitions, and runs only by their shape
(:class:`LiveRun`); it never runs anything.
"""

from conveyor.observe.graph import GRAPH_SUFFIXES, render_png, render_svg, to_mermaid, write_graph
from conveyor.observe.metrics import DEFAULT_METRICS_HOST, LiveRun, MetricsServer, serve_metrics

__all__ = [
    "DEFAULT_METRICS_HOST",
    "GRAPH_SUFFIXES",
    "LiveRun",
    "MetricsServer",
    "render_png",
    "render_svg",
    "serve_metrics",
    "to_mermaid",
    "write_graph",
]
