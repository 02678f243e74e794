"""PNG plots of stored results: one subplot per panel (block), one line per series.

A panel's first axis is the x axis; the other axes (for the paper's figures: the attack
series) make the lines. Error bars show the standard deviation over trials when there are
several. Missing points are left out of their line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpoison.experiments.spec import Block, SweepSpec
from fedpoison.report.tables import PointStats

STYLE: dict[str, dict[str, Any]] = {
    "none": {"color": "#222222", "marker": "o"},
    "gaussian": {"color": "#1f77b4", "marker": "s"},
    "label-flip": {"color": "#2ca02c", "marker": "^"},
    "partial": {"color": "#ff7f0e", "marker": "D"},
    "full": {"color": "#d62728", "marker": "v"},
}
YLABEL = {"final_error": "Testing error rate", "best_error": "Best testing error rate",
          "final_loss": "Testing loss"}


def _series(block: Block, stats: Sequence[PointStats]) -> dict[str, list[PointStats]]:
    """Series label → its points in x order."""
    x_axis = block.axes[0].name
    out: dict[str, list[PointStats]] = {}
    for s in stats:
        if s.point.block != block.id:
            continue
        label = ", ".join(lbl for axis, lbl in s.point.labels if axis != x_axis) or "ours"
        out.setdefault(label, []).append(s)
    return out


def draw_panel(ax: Any, spec: SweepSpec, block: Block, stats: Sequence[PointStats]) -> None:
    """Draw one panel on matplotlib axes ``ax``."""
    x_axis = block.axes[0]
    numeric = all(isinstance(it.x, int | float) and not isinstance(it.x, bool)
                  for it in x_axis.items)
    positions = {it.label: (it.x if numeric else i) for i, it in enumerate(x_axis.items)}
    for i, (label, points) in enumerate(_series(block, stats).items()):
        have = [p for p in points if p.values]
        if not have:
            continue
        xs = [positions[p.point.label(x_axis.name)] for p in have]
        ys = [p.mean for p in have]
        err = [p.std for p in have] if any(len(p.values) > 1 for p in have) else None
        style = STYLE.get(label, {"marker": "ox^sDv*"[i % 7]})
        ax.errorbar(xs, ys, yerr=err, label=label, capsize=3, linewidth=1.5, markersize=5,
                    **style)
    if not numeric:
        ax.set_xticks(range(len(x_axis.items)), [it.label for it in x_axis.items])
    if x_axis.scale == "log":
        ax.set_xscale("log")
    ax.set_xlabel(x_axis.title or x_axis.name)
    ax.set_ylabel(YLABEL.get(spec.metric, spec.metric))
    if spec.metric != "final_loss":
        ax.set_ylim(0.0, 1.0)
    ax.set_title(block.title or block.id, fontsize=10)
    ax.grid(True, alpha=0.3)


def plot_spec(spec: SweepSpec, stats: Sequence[PointStats], out_dir: str | Path,
              note: str = "") -> list[Path]:
    """Write ``NAME.png`` (all panels side by side) and ``NAME<panel>.png`` per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = spec.record_name
    written = []
    blocks = [b for b in spec.blocks if b.axes]
    if not blocks:
        return written
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.3 * len(blocks), 4.0), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        draw_panel(ax, spec, block, stats)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6),
                   frameon=False)
    fig.suptitle(spec.title + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    path = out / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    if len(blocks) > 1:
        for block in blocks:
            fig, ax = plt.subplots(figsize=(4.8, 4.0))
            draw_panel(ax, spec, block, stats)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            if note:
                fig.text(0.01, 0.005, note, fontsize=6, alpha=0.7)
            fig.tight_layout()
            path = out / f"{name}{block.id}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written
