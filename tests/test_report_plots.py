"""Figures from stored results: chart kind by axis type, y range, legends and titles that fit,
file formats, error-vs-iteration curves, and the report command's figure options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from fedpoison.cli import main
from fedpoison.errors import ConfigError
from fedpoison.experiments.spec import SweepSpec, load_spec, parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs
from fedpoison.experiments.worker import synthetic_result
from fedpoison.report import (
    PlotOptions,
    collect,
    curves_figure,
    load_curves,
    plot_spec,
    spec_figures,
)
from fedpoison.report.plots import chart_kind, parse_formats, parse_ylim

PNG = b"\x89PNG\r\n\x1a\n"
BASE = {"dataset": "breast-cancer", "model": "lr", "workers": 10, "compromised": 2,
        "iterations": 30, "eval_every": 10}

ErrorFn = Callable[[dict[str, str], int], float]


def fill(spec: SweepSpec, store: ResultStore, error: ErrorFn) -> None:
    """Store a synthetic result for every run of ``spec``: error(labels, trial), with an error
    curve at iterations 10, 20, 30 falling to it (+0.2, +0.1, +0)."""
    jobs, _, _ = plan_jobs(spec, store)
    by_key = {p.key: p for p in spec.plan()}
    points = spec.points()
    for job in jobs:
        planned = by_key[job.key]
        e = error(dict(points[planned.point].labels), planned.trial)
        result = synthetic_result(job.config, e)
        result["curve"] = [[10, e + 0.2], [20, e + 0.1], [30, e]]
        store.put(job.key, result)


def stats_of(spec: SweepSpec, tmp_path: Path, error: ErrorFn) -> list[Any]:
    with ResultStore(tmp_path / "s.sqlite") as store:
        fill(spec, store, error)
        return collect(spec, store)


def sweep(grid: dict[str, Any], trials: int = 2, title: str = "t", **base: Any) -> SweepSpec:
    return parse_spec({"name": "s", "title": title, "base": {**BASE, **base}, "grid": grid,
                       "trials": trials}).effective()


def close(figures: list[tuple[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    for _, fig in figures:
        plt.close(fig)


def overlaps(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# ====================================================================== chart kinds
def test_chart_kind_follows_the_axes() -> None:
    table = load_spec("table2a").effective(quick=True)
    assert chart_kind(table, table.blocks[0]) == "heatmap"
    fig2 = load_spec("figure2").effective(quick=True)
    assert {chart_kind(fig2, b) for b in fig2.blocks} == {"lines"}
    bars = sweep({"rule": ["mean", "median"], "noniid": [0.1, 0.5]})
    assert chart_kind(bars, bars.blocks[0]) == "bars"  # categorical x, numeric series
    lines = sweep({"compromised": [1, 2], "rule": ["mean", "median"]})
    assert chart_kind(lines, lines.blocks[0]) == "lines"
    one = sweep({"rule": ["mean", "median"]})
    assert chart_kind(one, one.blocks[0]) == "bars"


def test_table_is_an_annotated_heatmap(tmp_path: Path) -> None:
    spec = load_spec("table2a").effective(quick=True, trials=2)
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.1 + 0.01 * t
                     + (0.5 if lb["attack"] == "full" else 0.0))
    figures = spec_figures(spec, stats)
    try:
        assert [s for s, _ in figures] == [""]
        fig = figures[0][1]
        ax = fig.axes[0]
        assert len([a for a in ax.get_children() if isinstance(a, AxesImage)]) == 1
        assert not ax.get_lines()  # no line joins krum, trimmed-mean and median
        texts = [t.get_text() for t in ax.texts]
        assert "0.605\n± 0.005\npaper 0.80" in texts  # krum × full, 2 trials
        assert len(texts) == 15
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "none", "gaussian", "label-flip", "partial", "full"]
        assert len(fig.axes) == 2  # the colour bar
        assert "± 1 std over trials" in fig.get_supxlabel()
    finally:
        close(figures)


def test_numeric_x_draws_lines_with_std_bands_and_a_fitted_y_range(tmp_path: Path) -> None:
    """Breast cancer's 0.03-0.09 fills the panel instead of a flat line at the bottom of 0-1;
    the band is ± 1 std over trials and the legend says so; placeholders are resolved."""
    spec = sweep({"compromised": [1, 2, 3],
                  "attack": [{"attack": "none"}, {"attack": "{rule}", "knowledge": "full"}]},
                 rule="median")
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.03 + 0.02 * int(lb["compromised"])
                     * (lb["attack"] != "none") + 0.01 * t)
    figures = spec_figures(spec, stats)
    try:
        fig = figures[0][1]
        ax = fig.axes[0]
        lo, hi = ax.get_ylim()
        assert 0.0 <= lo < 0.03 and 0.09 < hi < 0.15
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == ["none", "median"]
        assert legend.get_title().get_text() == "mean of 2 trials; shaded band: ± 1 std over trials"
        none_line = ax.get_lines()[0]
        assert list(none_line.get_ydata()) == pytest.approx([0.035] * 3)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert not overlaps(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    finally:
        close(figures)
    fixed = spec_figures(spec, stats, options=PlotOptions(ylim=(0.0, 1.0)))
    try:
        assert fixed[0][1].axes[0].get_ylim() == (0.0, 1.0)
    finally:
        close(fixed)


def test_series_colours_are_distinct_and_paper_series_keep_theirs(tmp_path: Path) -> None:
    spec = sweep({"compromised": [1, 2],
                  "attack": [{"attack": "{rule}", "knowledge": "full"}, {"attack": "gaussian"},
                             {"attack": "label-flip"}]}, rule="median")
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.2)
    figures = spec_figures(spec, stats)
    try:
        lines = {ln.get_label(): ln.get_color() for ln in figures[0][1].axes[0].get_lines()}
        assert lines["gaussian"] == "#1f77b4" and lines["label-flip"] == "#2ca02c"
        assert len(set(lines.values())) == 3
    finally:
        close(figures)


def test_one_trial_draws_no_band_and_says_so(tmp_path: Path) -> None:
    spec = sweep({"compromised": [1, 2]}, trials=1)
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.2)
    figures = spec_figures(spec, stats)
    try:
        fig = figures[0][1]
        assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
        assert fig.legends[0].get_title().get_text() == "1 trial per point: no spread measured"
    finally:
        close(figures)


def test_categorical_x_draws_grouped_bars_from_zero(tmp_path: Path) -> None:
    spec = sweep({"rule": ["mean", "trimmed-mean", "median"], "noniid": [0.1, 0.5]})
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.05 + 0.1 * float(lb["noniid"]) + 0.01 * t)
    figures = spec_figures(spec, stats)
    try:
        fig = figures[0][1]
        ax = fig.axes[0]
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(bars) == 6
        assert sorted(round(b.get_height(), 4) for b in bars) == [0.065] * 3 + [0.105] * 3
        assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] < 0.2
        assert [t.get_text() for t in ax.get_xticklabels()] == ["mean", "trimmed-mean", "median"]
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [
            "noniid = 0.1", "noniid = 0.5"]
        assert "error bars: ± 1 std" in fig.legends[0].get_title().get_text()
        assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 2
    finally:
        close(figures)


def test_long_titles_wrap_inside_the_figure(tmp_path: Path) -> None:
    title = "A very long title for a sweep " * 6
    spec = sweep({"compromised": [1, 2]}, title=title)
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.2)
    figures = spec_figures(spec, stats)
    try:
        fig = figures[0][1]
        text = fig.get_suptitle()
        assert "\n" in text and text.replace("\n", " ").split() == title.split()
        fig.canvas.draw()
        extent = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width
    finally:
        close(figures)


def test_figure_presets_keep_their_png_files_and_legend_below(tmp_path: Path) -> None:
    spec = load_spec("figure5").effective(quick=True, trials=2)
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.1 + 0.01 * t + 0.3 * ("epsilon" in lb))
    figures = spec_figures(spec, stats, note="REDUCED RUN")
    try:
        assert [s for s, _ in figures] == ["", "a", "b", "c"]
        fig = figures[0][1]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        assert all(not overlaps(legend, ax.get_window_extent(renderer)) for ax in fig.axes)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["none", "partial", "full"]
        assert fig.axes[1].get_xscale() == "log"  # panel (b): epsilon
        assert len({ax.get_ylim() for ax in fig.axes}) == 1  # panels side by side compare
    finally:
        close(figures)


# ========================================================================== formats
def test_png_svg_and_pdf(tmp_path: Path) -> None:
    spec = load_spec("figure5").effective(quick=True)
    stats = stats_of(spec, tmp_path, lambda lb, t: 0.3)
    paths = plot_spec(spec, stats, tmp_path / "f", options=PlotOptions(formats=parse_formats(
        "png,svg,pdf")))
    assert [p.name for p in paths[:3]] == ["figure5-quick.png", "figure5-quick.svg",
                                           "figure5-quick.pdf"]
    assert len(paths) == 12
    for p in paths:
        head = p.read_bytes()[:400]
        magic = {".png": PNG, ".svg": b"<?xml", ".pdf": b"%PDF"}[p.suffix]
        assert head.startswith(magic), p
        assert p.suffix != ".svg" or b"<svg" in head


def test_option_parsers_name_the_allowed_values() -> None:
    assert parse_formats("svg, PDF") == ("svg", "pdf")
    with pytest.raises(ConfigError, match="allowed: a comma list of png, svg, pdf"):
        parse_formats("png,gif")
    assert parse_ylim("0,0.2") == (0.0, 0.2)
    for bad in ("0.2", "a,b", "1,0", "0,inf", "0,1,2"):
        with pytest.raises(ConfigError, match="ylim"):
            parse_ylim(bad)


def test_an_empty_selection_is_an_error_not_an_empty_picture(tmp_path: Path) -> None:
    spec = load_spec("table2a").effective(quick=True)
    with ResultStore(tmp_path / "s.sqlite") as store:
        stats = collect(spec, store)
    with pytest.raises(ConfigError, match=r"none of its 15 runs is in the store"):
        plot_spec(spec, stats, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# =========================================================================== curves
def test_curves_are_the_mean_over_trials_with_a_band(tmp_path: Path) -> None:
    spec = sweep({"rule": ["mean", "median"], "attack": ["none", "gaussian"]})
    with ResultStore(tmp_path / "s.sqlite") as store:
        fill(spec, store, lambda lb, t: 0.1 + 0.02 * t + (0.3 if lb["rule"] == "median" else 0))
        stats = collect(spec, store)
        curves = load_curves(store, stats)
    assert [[list(pt) for pt in c] for c in curves[0]] == [
        [[10, pytest.approx(0.3)], [20, pytest.approx(0.2)], [30, pytest.approx(0.1)]],
        [[10, pytest.approx(0.32)], [20, pytest.approx(0.22)], [30, pytest.approx(0.12)]]]
    fig = curves_figure(spec, stats, curves)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in axes] == ["rule = mean", "rule = median"]
        lines = axes[1].get_lines()
        assert [ln.get_label() for ln in lines] == ["none", "gaussian"]
        assert list(lines[0].get_xdata()) == [10, 20, 30]
        assert list(lines[0].get_ydata()) == pytest.approx([0.61, 0.51, 0.41])
        assert len([c for c in axes[1].collections if isinstance(c, PolyCollection)]) == 2
        assert all(ax.get_xlabel() == "Iteration" for ax in axes)
        assert "band: ± 1 std" in fig.legends[0].get_title().get_text()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ============================================================================== CLI
def recorded_store(tmp_path: Path, spec: SweepSpec, error: ErrorFn | None = None) -> Path:
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        if error is not None:
            fill(spec, store, error)
        store.record_sweep(spec.record_name, dict(spec.raw), dict(spec.options), 0)
    return path


def test_cli_formats_curves_and_ylim(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    spec = sweep({"rule": ["mean", "median"], "attack": ["none", "gaussian"]})
    store = recorded_store(tmp_path, spec, lambda lb, t: 0.2)
    out = tmp_path / "rep"
    assert main(["report", str(store), "--figure", "s", "--curves", "--format", "svg,pdf",
                 "--ylim", "0,0.5", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "s-curves.pdf", "s-curves.svg", "s.csv", "s.md", "s.pdf", "s.svg"]
    capsys.readouterr()


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "gif"], "argument --format: got 'gif'; allowed: a comma list of png, svg, pdf"),
    (["--ylim", "1,0"], "argument --ylim: got '1,0'; needs LO < HI"),
    (["--ylim", "low"], "argument --ylim: got 'low'; expected LO,HI"),
])
def test_cli_bad_figure_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                args: list[str], message: str) -> None:
    store = recorded_store(tmp_path, sweep({"rule": ["mean"]}), lambda lb, t: 0.2)
    with pytest.raises(SystemExit) as info:
        main(["report", str(store), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_empty_figure_is_a_one_line_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = sweep({"compromised": [1, 2]})
    store = recorded_store(tmp_path, spec)  # recorded, no run stored
    out = tmp_path / "rep"
    assert main(["report", str(store), "--figure", "s", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedpoison: error: --figure: s: none of its 4 runs is in ")
    assert err.count("\n") == 1 and not out.exists()
    assert main(["report", str(store), "--table", "s", "--curves", "--out", str(out)]) == 2
    assert "--curves: s: none of its 4 runs" in capsys.readouterr().err


def test_cli_out_naming_a_file_is_a_one_line_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    store = recorded_store(tmp_path, sweep({"rule": ["mean"]}), lambda lb, t: 0.2)
    afile = tmp_path / "report.txt"
    afile.write_text("mine")
    assert main(["report", str(store), "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err == f"fedpoison: error: --out: {afile} is a file; name a folder (it is created " \
                  "if missing)\n"
    assert afile.read_text() == "mine"
    assert main(["report", str(store), "--out", str(afile / "sub")]) == 2
    assert "--out: cannot write into" in capsys.readouterr().err


def test_cli_export_to_an_unwritable_path_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = recorded_store(tmp_path, sweep({"rule": ["mean"]}), lambda lb, t: 0.2)
    afile = tmp_path / "afile"
    afile.write_text("")
    (tmp_path / "adir.csv").mkdir()
    for target in (afile / "runs.csv", tmp_path / "adir.csv"):
        assert main(["report", str(store), "--export", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fedpoison: error: --export: cannot write {target}: ")
        assert err.count("\n") == 1 and "Traceback" not in err
