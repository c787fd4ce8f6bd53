"""Looking at pipelines: pictures of a pipeline's definition (Mermaid, SVG, PNG), and live
metrics of a run for Prometheus (:func:`serve_metrics`), and the report of a run to look at
afterwards (:func:`report_document`, :func:`write_report`).

This layer reads :mod:`conveyor.core` definitions, and runs only by their shape
(:class:`LiveRun`); it never runs anything.
"""

from conveyor.observe.graph import GRAPH_SUFFIXES, render_png, render_svg, to_mermaid, write_graph
from conveyor.observe.metrics import DEFAULT_METRICS_HOST, LiveRun, MetricsServer, serve_metrics
from conveyor.observe.run_page import RunRecorder, render_html, report_document, write_report

__all__ = [
    "DEFAULT_METRICS_HOST",
    "GRAPH_SUFFIXES",
    "LiveRun",
    "MetricsServer",
    "RunRecorder",
    "render_html",
    "render_png",
    "render_svg",
    "report_document",
    "serve_metrics",
    "to_mermaid",
    "write_graph",
    "write_report",
]
