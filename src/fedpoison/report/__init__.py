"""Reports: stored results as Markdown/CSV tables and matplotlib PNG plots."""

from fedpoison.report.plots import plot_spec
from fedpoison.report.tables import PointStats, collect, format_csv, format_markdown

__all__ = ["PointStats", "collect", "format_csv", "format_markdown", "plot_spec"]
