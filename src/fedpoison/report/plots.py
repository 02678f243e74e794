"""Figures of stored results (PNG, SVG, PDF), drawn by what the axes hold.

* A spec of one block with two categorical axes (the paper's tables: rule × attack) is an
  annotated **heatmap**: one cell per point, its mean (``± std`` with two or more trials, the
  paper's value where the spec has one).
* A panel whose x axis is numeric (``compromised: [5, 10, 20]``) draws **lines**, one per
  series (the other axes), with a shaded band of ± one standard deviation over trials.
* A panel whose x axis is categorical draws **grouped bars**, with error bars of ± one
  standard deviation over trials.
* :func:`plot_curves` draws the stored **error-vs-iteration curves**: one subplot per panel
  and first-axis value, one line per series, mean over trials with a ± std band.

The y range fits the data (error rates stay inside [0, 1]) unless ``ylim`` fixes it; long
titles wrap and the legend sits below the panels, which never hides a line. What the band
or error bar means is said in the legend's title; one trial gets none ("no spread measured").
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpoison.errors import ConfigError
from fedpoison.experiments.spec import Axis, Block, SweepSpec
from fedpoison.report.tables import PointStats, item_label

FORMATS = ("png", "svg", "pdf")
"""File formats a figure can be written in."""

STYLE: dict[str, dict[str, Any]] = {
    "none": {"color": "#222222", "marker": "o"},
    "gaussian": {"color": "#1f77b4", "marker": "s"},
    "label-flip": {"color": "#2ca02c", "marker": "^"},
    "partial": {"color": "#ff7f0e", "marker": "D"},
    "full": {"color": "#d62728", "marker": "v"},
}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_MARKERS = "osD^v<>pP*Xh"
YLABEL = {"final_error": "Testing error rate", "best_error": "Best testing error rate",
          "final_loss": "Testing loss", "final_asr": "Attack success rate",
          "max_asr": "Highest attack success rate"}
CURVE_FIELD = {"final_error": "curve", "best_error": "curve", "final_loss": "loss_curve",
               "final_asr": "asr_curve", "max_asr": "asr_curve"}
"""The stored curve each metric's error-vs-iteration plot draws."""


@dataclass(frozen=True)
class PlotOptions:
    """How figures are written: file ``formats`` and a fixed y range (``None``: automatic)."""

    formats: tuple[str, ...] = ("png",)
    ylim: tuple[float, float] | None = None
    dpi: int = 150

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError("format", f"got {','.join(self.formats)!r}; allowed: a comma "
                                        f"list of {', '.join(FORMATS)}")
        if self.ylim is not None:
            lo, hi = self.ylim
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError("ylim", f"needs LO < HI, both finite; got {lo},{hi}")


def parse_formats(text: str) -> tuple[str, ...]:
    """``"png,svg"`` → ``("png", "svg")``; ConfigError names the allowed formats."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",")))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not text.strip():
        raise ConfigError("format", f"got {text!r}; allowed: a comma list of "
                                    f"{', '.join(FORMATS)} (e.g. png,svg,pdf)")
    return formats


def parse_ylim(text: str) -> tuple[float, float]:
    """``"0,0.2"`` → ``(0.0, 0.2)``; ConfigError says what is expected."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError("ylim", f"got {text!r}; expected LO,HI (two numbers, e.g. 0,0.2)") \
            from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError("ylim", f"got {text!r}; needs LO < HI, both finite")
    return lo, hi


# ======================================================================= structure
def is_numeric(axis: Axis) -> bool:
    """Whether every item of ``axis`` has a number as its coordinate (else: categorical)."""
    return all(isinstance(it.x, int | float) and not isinstance(it.x, bool)
               for it in axis.items)


def chart_kind(spec: SweepSpec, block: Block) -> str:
    """``heatmap``, ``lines`` or ``bars``: how a panel is drawn (see the module doc)."""
    if (len(spec.blocks) == 1 and len(block.axes) == 2
            and not any(is_numeric(a) for a in block.axes)):
        return "heatmap"
    return "lines" if is_numeric(block.axes[0]) else "bars"


def _block_stats(block: Block, stats: Sequence[PointStats]) -> list[PointStats]:
    return [s for s in stats if s.point.block == block.id]


def _series_key(block: Block, s: PointStats) -> tuple[tuple[str, str], ...]:
    return tuple((a, lbl) for a, lbl in s.point.labels if a != block.axes[0].name)


def _series_name(block: Block, key: tuple[tuple[str, str], ...],
                 stats: Sequence[PointStats]) -> str:
    """A series' legend entry: its label(s) on the axes other than x, placeholders resolved;
    ``axis = value`` where a bare value would not say what it is (numbers, several axes)."""
    if not key:
        return block.axes[0].title or block.axes[0].name
    points = [s.point for s in stats]
    axes = {a.name: a for a in block.axes}
    parts = []
    for a, lbl in key:
        text = item_label(points, a, lbl)
        parts.append(f"{a} = {text}" if len(key) > 1 or is_numeric(axes[a]) else text)
    return ", ".join(parts)


def _series(block: Block, stats: Sequence[PointStats]
            ) -> dict[str, list[PointStats]]:
    """Series legend entry → its points in x order."""
    mine = _block_stats(block, stats)
    out: dict[str, list[PointStats]] = {}
    for s in mine:
        out.setdefault(_series_name(block, _series_key(block, s), mine), []).append(s)
    return out


class _Styles:
    """One colour and marker per series name, the same in every panel of a figure. The
    paper's series (``STYLE``) keep theirs; other names take the first unused palette colour
    (not one that a paper series of the same figure, ``names``, will take)."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self._given: dict[str, dict[str, Any]] = {}
        self._reserved = {STYLE[n]["color"] for n in names if n in STYLE}

    def __call__(self, name: str) -> dict[str, Any]:
        if name not in self._given:
            if name in STYLE:
                self._given[name] = dict(STYLE[name])
            else:
                used = {s["color"] for s in self._given.values()} | self._reserved
                free = [c for c in _PALETTE if c not in used] or list(_PALETTE)
                n = len(self._given)
                self._given[name] = {"color": free[0], "marker": _MARKERS[n % len(_MARKERS)]}
        return self._given[name]


def _trials_phrase(stats: Sequence[PointStats], what: str) -> str:
    """The legend title that says what the spread drawn is (or that none was measured)."""
    counts = [len(s.values) for s in stats if s.values]
    most = max(counts, default=0)
    if most <= 1:
        return "1 trial per point: no spread measured"
    n = f"{most}" if min(counts) == most else f"up to {most}"
    return f"mean of {n} trials; {what}: ± 1 std over trials"


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` points."""
    chars = max(12, int(width_in * 72 / (0.58 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines() or [""])


def _is_rate(metric: str) -> bool:
    return metric != "final_loss"


def _auto_ylim(lows: Sequence[float], highs: Sequence[float], rate: bool,
               from_zero: bool = False) -> tuple[float, float]:
    """A y range around ``[min(lows), max(highs)]`` with a margin; error rates stay in [0, 1]."""
    lo = 0.0 if from_zero else min(lows)
    hi = max(highs)
    span = hi - lo
    pad = 0.08 * span if span > 0 else max(0.01, 0.05 * abs(hi))
    lo = lo if from_zero else lo - pad
    hi = hi + pad
    lo = max(lo, 0.0)
    if rate:
        hi = min(hi, 1.0)
        if hi <= lo:
            lo, hi = max(0.0, hi - 0.02), min(1.0, hi + 0.02)
    return lo, hi


# ========================================================================== panels
def _draw_lines(ax: Any, block: Block, stats: Sequence[PointStats], styles: _Styles) -> None:
    x_axis = block.axes[0]
    for name, points in _series(block, stats).items():
        have = [p for p in points if p.values]
        if not have:
            continue
        style = styles(name)
        xs = [p.point.coordinate(x_axis.name) for p in have]
        ys = [p.mean for p in have]
        sd = [p.std for p in have]
        ax.plot(xs, ys, label=name, linewidth=1.6, markersize=5, **style)
        if any(p.has_spread for p in have):
            ax.fill_between(xs, [y - d for y, d in zip(ys, sd, strict=True)],
                            [y + d for y, d in zip(ys, sd, strict=True)],
                            color=style["color"], alpha=0.18, linewidth=0)
    if x_axis.scale == "log":
        ax.set_xscale("log")
    ticks = [it.x for it in x_axis.items]
    if len(ticks) <= 12:
        ax.set_xticks(ticks, [it.label for it in x_axis.items])


def _draw_bars(ax: Any, block: Block, stats: Sequence[PointStats], styles: _Styles) -> None:
    x_axis = block.axes[0]
    series = _series(block, stats)
    k = max(len(series), 1)
    width = 0.8 / k
    index = {it.label: i for i, it in enumerate(x_axis.items)}
    for j, (name, points) in enumerate(series.items()):
        have = [p for p in points if p.values]
        if not have:
            continue
        style = styles(name)
        xs = [index[p.point.label(x_axis.name)] - 0.4 + width * (j + 0.5) for p in have]
        ys = [p.mean for p in have]
        err = [p.std for p in have] if any(p.has_spread for p in have) else None
        ax.bar(xs, ys, width=width * 0.92, color=style["color"], label=name,
               yerr=err, capsize=3 if err else 0, error_kw={"linewidth": 1, "ecolor": "#333"})
    mine = [s.point for s in _block_stats(block, stats)]
    labels = [item_label(mine, x_axis.name, it.label) for it in x_axis.items]
    longest = max((len(lbl) for lbl in labels), default=0)
    rotate = longest * len(labels) > 40
    ax.set_xticks(range(len(labels)), [textwrap.fill(lbl, 18) for lbl in labels],
                  rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _draw_heatmap(fig: Any, ax: Any, spec: SweepSpec, block: Block,
                  stats: Sequence[PointStats], ylim: tuple[float, float] | None) -> None:
    import matplotlib as mpl
    import numpy as np

    rows, cols = block.axes
    by = {s.point.labels: s for s in _block_stats(block, stats)}
    grid = [[by[((rows.name, r.label), (cols.name, c.label))] for c in cols.items]
            for r in rows.items]
    values = np.array([[s.mean if s.values else np.nan for s in row] for row in grid])
    finite = values[np.isfinite(values)]
    if ylim is not None:
        lo, hi = ylim
    else:
        lo, hi = float(finite.min()), float(finite.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.01, hi + 0.01
    cmap = mpl.colormaps["YlOrRd"].with_extremes(bad="#e8e8e8")
    norm = mpl.colors.Normalize(lo, hi)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    points = [s.point for s in _block_stats(block, stats)]
    col_labels = [item_label(points, cols.name, c.label) for c in cols.items]
    row_labels = [item_label(points, rows.name, r.label) for r in rows.items]
    rotate = max(len(c) for c in col_labels) * len(col_labels) > 50
    ax.set_xticks(range(len(col_labels)), [textwrap.fill(c, 16) for c in col_labels],
                  rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(len(row_labels)), [textwrap.fill(r, 18) for r in row_labels])
    ax.set_xlabel(cols.title or cols.name)
    ax.set_ylabel(rows.title or rows.name)
    ax.tick_params(length=0)
    size = 8 if len(cols.items) <= 6 else 7
    for i, row in enumerate(grid):
        for j, s in enumerate(row):
            text = _heat_text(s)
            if s.values:
                r, g, b, _ = cmap(norm(s.mean))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            else:
                dark = False
            ax.text(j, i, text, ha="center", va="center", fontsize=size,
                    color="white" if dark else "#111111")
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(YLABEL.get(spec.metric, spec.metric))


def _heat_text(s: PointStats) -> str:
    lines = [f"{s.mean:.3f}" if s.values else "–"]
    if s.has_spread:
        lines.append(f"± {s.std:.3f}")
    if s.values and s.missing:
        lines.append(f"[{len(s.values)}/{s.expected}]")
    if s.paper is not None:
        lines.append(f"paper {s.paper:.2f}")
    return "\n".join(lines)


def panel_ylim(spec: SweepSpec, stats: Sequence[PointStats], kind: str
               ) -> tuple[float, float] | None:
    """The automatic y range of ``kind`` (lines or bars) panels of ``spec``: one for all of
    them, so that panels side by side compare; bars start at 0, error rates stay in [0, 1]."""
    blocks = {b.id for b in spec.blocks if b.axes and chart_kind(spec, b) == kind}
    have = [s for s in stats if s.values and s.point.block in blocks]
    if not have:
        return None
    return _auto_ylim([s.mean - s.std for s in have], [s.mean + s.std for s in have],
                      _is_rate(spec.metric), from_zero=kind == "bars")


def _draw_panel(fig: Any, ax: Any, spec: SweepSpec, block: Block,
                stats: Sequence[PointStats], styles: _Styles, opts: PlotOptions,
                width_in: float) -> str:
    """Draw one panel; returns its chart kind."""
    kind = chart_kind(spec, block)
    if kind == "heatmap":
        _draw_heatmap(fig, ax, spec, block, stats, opts.ylim)
    else:
        (_draw_lines if kind == "lines" else _draw_bars)(ax, block, stats, styles)
        ylim = opts.ylim or panel_ylim(spec, stats, kind)
        if ylim is not None:
            ax.set_ylim(ylim)
        x_axis = block.axes[0]
        ax.set_xlabel(_wrap(x_axis.title or x_axis.name, width_in, 10))
        ax.set_ylabel(YLABEL.get(spec.metric, spec.metric))
        if kind == "lines":
            ax.grid(True, alpha=0.3)
    if block.title or (block.id and len(spec.blocks) > 1):
        ax.set_title(_wrap(block.title or block.id, width_in, 10), fontsize=10)
    return kind


# ========================================================================= figures
def _check_nonempty(spec: SweepSpec, stats: Sequence[PointStats], what: str) -> None:
    if not any(s.values for s in stats):
        runs = sum(s.expected for s in stats)
        elsewhere = sum(s.elsewhere for s in stats)
        hint = (f"; {elsewhere} are stored as computed by another version of fedpoison: add "
                "--any-version") if elsewhere else ""
        raise ConfigError("figure", f"{spec.record_name}: none of its {runs} runs is in the "
                                    f"store, nothing to {what}{hint}")


def _legend(fig: Any, axes: Sequence[Any], title: str, width_in: float) -> None:
    """One legend for all panels, below them (never over a line)."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    if not handles:
        return
    longest = max(len(lbl) for lbl in labels)
    per_row = max(1, int(width_in * 72 / (7 * min(longest, 40) + 40)))
    ncol = min(len(labels), per_row, 6)
    fig.legend(handles, [textwrap.fill(lbl, 40) for lbl in labels], loc="outside lower center",
               ncol=ncol, frameon=False, fontsize=9, title=_wrap(title, width_in, 9),
               title_fontsize=9)


def _save(fig: Any, base: Path, opts: PlotOptions) -> list[Path]:
    written = []
    for fmt in opts.formats:
        path = base.with_name(f"{base.name}.{fmt}")
        metadata = {"Creator": "fedpoison"} if fmt != "png" else {"Software": "fedpoison"}
        fig.savefig(path, dpi=opts.dpi, metadata=metadata)
        written.append(path)
    return written


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spec_figures(spec: SweepSpec, stats: Sequence[PointStats], note: str = "",
                 options: PlotOptions | None = None) -> list[tuple[str, Any]]:
    """The figures of ``spec`` as (file-name suffix, matplotlib Figure): all panels side by
    side (suffix ``""``) and, for a spec of several panels, one per panel with stored runs
    (suffix: the panel id). The caller closes them.

    Raises ConfigError when none of the spec's runs is stored (an empty picture says
    nothing).
    """
    opts = options or PlotOptions()
    blocks = [b for b in spec.blocks if b.axes]
    _check_nonempty(spec, stats, "plot")
    plt = _pyplot()
    styles = _Styles([n for b in blocks for n in _series(b, stats)])
    if chart_kind(spec, blocks[0]) == "heatmap":
        rows, cols = (len(a.items) for a in blocks[0].axes)
        width, height = min(3.4 + 1.15 * cols, 18.0), min(2.4 + 0.9 * rows, 14.0)
    else:
        width, height = min(4.4 * len(blocks), 18.0), 4.6
    fig, axes = plt.subplots(1, len(blocks), figsize=(width, height), squeeze=False,
                             layout="constrained")
    kinds = [_draw_panel(fig, ax, spec, b, stats, styles, opts, width / len(blocks))
             for ax, b in zip(axes[0], blocks, strict=True)]
    what = "shaded band" if "lines" in kinds else "error bars"
    _legend(fig, axes[0], _trials_phrase(stats, what), width)
    fig.suptitle(_wrap(spec.title + (f"\n{note}" if note else ""), width, 11), fontsize=11)
    if kinds == ["heatmap"]:
        fig.supxlabel(_trials_phrase(stats, "second line"), fontsize=8)
    figures: list[tuple[str, Any]] = [("", fig)]
    if len(blocks) > 1:
        for block in blocks:
            mine = _block_stats(block, stats)
            if not any(s.values for s in mine):
                continue
            fig, ax = plt.subplots(figsize=(5.2, 4.6), layout="constrained")
            kind = _draw_panel(fig, ax, spec, block, stats, styles, opts, 5.2)
            _legend(fig, [ax], _trials_phrase(mine, "shaded band" if kind == "lines"
                                              else "error bars"), 5.2)
            if note:
                fig.suptitle(_wrap(note, 5.2, 8), fontsize=8)
            figures.append((block.id, fig))
    return figures


def plot_spec(spec: SweepSpec, stats: Sequence[PointStats], out_dir: str | Path,
              note: str = "", options: PlotOptions | None = None) -> list[Path]:
    """Write ``NAME.<fmt>`` (all panels side by side) and, for a spec of several panels,
    ``NAME<panel>.<fmt>`` per panel (see :func:`spec_figures`); returns the paths written."""
    opts = options or PlotOptions()
    figures = spec_figures(spec, stats, note, opts)
    plt = _pyplot()
    out = Path(out_dir)
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for suffix, fig in figures:
            written += _save(fig, out / f"{spec.record_name}{suffix}", opts)
    finally:
        for _, fig in figures:
            plt.close(fig)
    return written


# ========================================================================== curves
Curve = list[tuple[float, float]]


def load_curves(store: Any, stats: Sequence[PointStats], metric: str = "final_error"
                ) -> list[list[Curve]]:
    """Per point of ``stats``, the stored curve of each of its trials (``[(iteration, value),
    ...]``): the error curve, or the loss curve for the ``final_loss`` metric."""
    field = CURVE_FIELD.get(metric, "curve")
    out: list[list[Curve]] = []
    for s in stats:
        curves = []
        for key in s.keys:
            result = store.get(key) or {}
            curve = [(float(i), float(v)) for i, v in result.get(field) or []
                     if v is not None]
            if curve:
                curves.append(curve)
        out.append(curves)
    return out


def _mean_curve(curves: Sequence[Curve]) -> tuple[list[float], list[float], list[float]]:
    """Iterations every trial evaluated, the mean and the population std there."""
    common = set.intersection(*(set(i for i, _ in c) for c in curves))
    its = sorted(common)
    by = [dict(c) for c in curves]
    means = [statistics.fmean(d[i] for d in by) for i in its]
    stds = [statistics.pstdev([d[i] for d in by]) if len(by) > 1 else 0.0 for i in its]
    return its, means, stds


def _curve_panels(spec: SweepSpec, stats: Sequence[PointStats]
                  ) -> Iterator[tuple[str, list[int]]]:
    """(subplot title, indices into ``stats``): one per block and first-axis value (a block
    of one axis is one subplot)."""
    for block in spec.blocks:
        idx = [i for i, s in enumerate(stats) if s.point.block == block.id]
        if not block.axes:
            continue
        prefix = (block.title or block.id) if len(spec.blocks) > 1 else ""
        if len(block.axes) == 1:
            yield prefix, idx
            continue
        first = block.axes[0]
        points = [stats[i].point for i in idx]
        for item in first.items:
            mine = [i for i in idx if stats[i].point.label(first.name) == item.label]
            label = f"{first.title or first.name} = {item_label(points, first.name, item.label)}"
            yield (f"{prefix}: {label}" if prefix else label), mine


def curves_figure(spec: SweepSpec, stats: Sequence[PointStats],
                  curves: Sequence[Sequence[Curve]], note: str = "",
                  options: PlotOptions | None = None) -> Any:
    """The test error (loss for ``final_loss``) against the iteration as a matplotlib Figure:
    one subplot per panel and first-axis value, one line per series, mean over trials with a
    ± std band. ``curves`` is :func:`load_curves`'s result. The caller closes it.

    Raises ConfigError when no point has a stored curve.
    """
    opts = options or PlotOptions()
    if not any(curves):
        _check_nonempty(spec, stats, "plot")
        raise ConfigError("curves", f"{spec.record_name}: its stored runs hold no curve")
    plt = _pyplot()
    panels = [(t, [i for i in idx if curves[i]]) for t, idx in _curve_panels(spec, stats)]
    panels = [(t, idx) for t, idx in panels if idx]
    ncols = min(len(panels), 5 if len(spec.blocks) == 1 else
                max(len(b.axes[0].items) for b in spec.blocks if b.axes))
    ncols = max(1, min(ncols, 5))
    nrows = math.ceil(len(panels) / ncols)
    width = min(3.6 * ncols + 0.6, 18.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.9 * nrows + 1.4), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    styles = _Styles([lbl for s in stats for _, lbl in s.point.labels])
    lows: list[float] = []
    highs: list[float] = []
    spread = False
    for ax, (title, idx) in zip(axes.flat, panels, strict=False):
        for i in idx:
            s = stats[i]
            block = next(b for b in spec.blocks if b.id == s.point.block)
            key = (s.point.labels if len(block.axes) == 1
                   else _series_key(block, s))
            name = _series_name(block, key, _block_stats(block, stats))
            its, ys, sd = _mean_curve(curves[i])
            style = styles(name)
            ax.plot(its, ys, label=name, color=style["color"], linewidth=1.4)
            if len(curves[i]) > 1:
                spread = True
                ax.fill_between(its, [y - d for y, d in zip(ys, sd, strict=True)],
                                [y + d for y, d in zip(ys, sd, strict=True)],
                                color=style["color"], alpha=0.18, linewidth=0)
            lows += [y - d for y, d in zip(ys, sd, strict=True)]
            highs += [y + d for y, d in zip(ys, sd, strict=True)]
        if title:
            ax.set_title(_wrap(title, width / ncols, 9), fontsize=9)
        ax.grid(True, alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for k, ax in enumerate(flat[:len(panels)]):
        if k + ncols >= len(panels):  # nothing below it: the bottom of its column
            ax.set_xlabel("Iteration")
            ax.xaxis.set_tick_params(labelbottom=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    rate = spec.metric != "final_loss"
    axes[0][0].set_ylim(opts.ylim or _auto_ylim(lows, highs, rate))
    fig.supylabel("Testing error rate" if rate else "Testing loss", fontsize=10)
    counts = [len(c) for c in curves if c]
    phrase = (f"mean of {'up to ' if min(counts) != max(counts) else ''}{max(counts)} trials; "
              "shaded band: ± 1 std over trials") if spread else \
        "1 trial per point: no spread measured"
    _legend(fig, list(axes.flat), phrase, width)
    title = f"{spec.title}\nTest {'error' if rate else 'loss'} vs iteration"
    fig.suptitle(_wrap(title + (f"\n{note}" if note else ""), width, 11), fontsize=11)
    return fig


def plot_curves(spec: SweepSpec, stats: Sequence[PointStats],
                curves: Sequence[Sequence[Curve]], out_dir: str | Path, note: str = "",
                options: PlotOptions | None = None) -> list[Path]:
    """Write ``NAME-curves.<fmt>`` (see :func:`curves_figure`); returns the paths written."""
    opts = options or PlotOptions()
    fig = curves_figure(spec, stats, curves, note, opts)
    try:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return _save(fig, out / f"{spec.record_name}-curves", opts)
    finally:
        _pyplot().close(fig)

