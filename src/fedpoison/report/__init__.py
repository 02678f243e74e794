"""Reports: stored results as Markdown/CSV tables and matplotlib figures (PNG, SVG, PDF)."""

from fedpoison.report.plots import (
    PlotOptions,
    curves_figure,
    load_curves,
    plot_curves,
    plot_spec,
    spec_figures,
)
from fedpoison.report.tables import PointStats, collect, format_csv, format_markdown

__all__ = ["PlotOptions", "PointStats", "collect", "curves_figure", "format_csv",
           "format_markdown", "load_curves", "plot_curves", "plot_spec", "spec_figures"]
