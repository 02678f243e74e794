"""Tables from stored results: mean ± std over trials per grid point, beside the paper's value.

A spec with one block of two axes (the paper's tables: rules × attacks) renders as a grid,
each cell ``ours ± std [95 % CI] (paper X)``; any other spec renders one line per point. A
cell shows ``± std`` and the confidence interval only when it has two or more trials (one
trial measures no spread), and ``(paper X)`` only when the spec has paper values at all; ``∉``
after the paper's value flags a cell whose interval excludes it. Labels that hold a placeholder
(``attack: "{rule}"``) are shown resolved (see :func:`item_label`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fedpoison.experiments.spec import Point, SweepSpec
from fedpoison.experiments.store import RESULT_METRICS, ResultStore


@dataclass
class PointStats:
    """The stored values of one grid point's trials."""

    point: Point
    values: list[float]
    expected: int
    paper: float | None
    non_finite: int = 0  # trials whose final test loss was not finite (stored as null)
    other_version: int = 0  # trials shown that another version of the source computed
    elsewhere: int = 0  # missing trials that another version computed (not shown)
    keys: list[str] = field(default_factory=list)  # store keys of ``values``, in order
    undefined: int = 0  # stored trials without this metric (an ASR without a backdoor)
    rate: bool = True  # the metric is a rate in [0, 1] (errors, ASR), not a loss

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation over trials (0 for a single trial)."""
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def has_spread(self) -> bool:
        """Whether a spread was measured: two or more trials."""
        return len(self.values) > 1

    @property
    def ci(self) -> tuple[float, float] | None:
        """95 % confidence interval of the mean: a t-interval over the trials (sample std,
        n − 1 degrees of freedom), cut to [0, 1] for a rate (a mean rate cannot leave it;
        with 3 trials the raw interval often reaches below 0); None below two trials."""
        interval = t_interval(self.values)
        if interval is None or not self.rate:
            return interval
        return max(0.0, interval[0]), min(1.0, interval[1])

    @property
    def paper_outside(self) -> bool | None:
        """Whether the 95 % interval excludes the paper's value, read as the range its two
        printed decimals stand for (0.52 is [0.515, 0.525]); None without interval or
        paper."""
        interval = self.ci
        if interval is None or self.paper is None:
            return None
        return (interval[1] < self.paper - PAPER_ROUNDING
                or interval[0] > self.paper + PAPER_ROUNDING)

    @property
    def missing(self) -> int:
        return self.expected - len(self.values) - self.undefined

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"panel": self.point.block} if self.point.block else {}
        out.update({axis: resolved_label(self.point, axis) if _has_placeholder(x) else x
                    for axis, x in self.point.x})
        ci = self.ci
        out.update({
            "ours_mean": None if not self.values else round(self.mean, 6),
            "ours_std": round(self.std, 6) if self.has_spread else None,
            "trials": len(self.values),
            "paper": self.paper,
            "values": self.values,
            "non_finite": self.non_finite,
            "other_version": self.other_version,
            "ci95": None if ci is None else [round(ci[0], 6), round(ci[1], 6)],
            "paper_outside_ci": self.paper_outside,
        })
        return out


@lru_cache(maxsize=256)
def t_quantile(df: int, level: float = 0.975) -> float:
    """The ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-learn, a dependency

    return float(t.ppf(level, df))


def t_interval(values: Sequence[float], confidence: float = 0.95
               ) -> tuple[float, float] | None:
    """The two-sided t-interval of the mean of ``values`` (None below two values)."""
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(n - 1, 0.5 + confidence / 2) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


#: The paper prints error rates with two decimals: its 0.52 stands for [0.515, 0.525].
PAPER_ROUNDING = 0.005


def collect(spec: SweepSpec, store: ResultStore, any_version: bool = False
            ) -> list[PointStats]:
    """One PointStats per grid point of ``spec`` (effective), read from ``store``.

    A run's key hashes its config and the package source, so after any change to the code
    the runs stored before it no longer match. They are found by their config instead and
    counted (``elsewhere``); with ``any_version`` they are used, and counted as
    ``other_version``, so that a table says which of its numbers another version computed.
    """
    points = spec.points()
    plan = spec.plan()
    keys = {p.key: p.key for p in plan}
    metric = store.metrics(keys, spec.metric)
    missing = [p for p in plan if p.key not in metric]
    if missing:
        text = {p.key: json.dumps(p.config.resolved().to_dict(), sort_keys=True)
                for p in missing}
        found = store.keys_by_config(text.values())
        other = {k: found[c] for k, c in text.items() if c in found}
        if any_version:
            keys.update(other)
            metric.update(store.metrics(other.values(), spec.metric))
    else:
        other = {}
    loss = store.metrics(keys.values(), "final_loss")
    rate = spec.metric != "final_loss"
    stats = [PointStats(pt, [], 0, _paper(spec, pt), rate=rate) for pt in points]
    for p in plan:
        s = stats[p.point]
        s.expected += 1
        key = keys[p.key]
        v = metric.get(key)
        if v is not None:
            s.values.append(float(v))
            s.keys.append(key)
        elif key in metric and spec.metric in RESULT_METRICS:
            s.undefined += 1  # stored, but the metric does not apply (no backdoor)
        if key in loss and loss[key] is None:  # stored, with a non-finite loss
            s.non_finite += 1
        if p.key in other:
            if any_version:
                s.other_version += 1
            else:
                s.elsewhere += 1
    return stats


def _paper(spec: SweepSpec, point: Point) -> float | None:
    if len(point.labels) != 2 or not spec.paper:
        return None
    (_, row), (_, col) = point.labels
    value = spec.paper.get(row, {}).get(col)
    return None if value is None else float(value)


def is_grid(spec: SweepSpec) -> bool:
    return len(spec.blocks) == 1 and len(spec.blocks[0].axes) == 2


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")


def _has_placeholder(value: Any) -> bool:
    return isinstance(value, str) and _PLACEHOLDER.search(value) is not None


def resolved_label(point: Point, axis: str) -> str:
    """The point's label on ``axis``, each ``{name}`` in it replaced by the point's label on
    axis ``name`` or its value of field ``name`` (as the spec filled in its config)."""
    labels = dict(point.labels)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in labels and name != axis:
            return labels[name]
        value = point.config.get(name)
        return m.group(0) if value is None else str(value)

    return _PLACEHOLDER.sub(sub, labels[axis])


def item_label(points: Sequence[Point], axis: str, label: str) -> str:
    """One display label for item ``label`` of ``axis`` (a column header, a legend entry).

    A label without placeholders is itself. One with placeholders is resolved at every point
    carrying it: if all agree, that value; otherwise (``{rule}`` in a column of a table whose
    rows are rules) the placeholder is named in words: ``attack = rule`` for a label that is
    only ``{rule}``, else the label with its braces dropped.
    """
    if not _has_placeholder(label):
        return label
    values = {resolved_label(p, axis) for p in points if dict(p.labels).get(axis) == label}
    if len(values) == 1:
        return values.pop()
    whole = _PLACEHOLDER.fullmatch(label)
    if whole:
        return f"{axis} = {whole.group(1)}"
    return _PLACEHOLDER.sub(lambda m: m.group(1), label)


def has_paper(stats: Sequence[PointStats]) -> bool:
    """Whether any point has a paper value (else no paper column or ``(paper –)`` is shown)."""
    return any(s.paper is not None for s in stats)


def value_text(s: PointStats) -> str:
    """``mean ± std [lo, hi]`` (``± std`` and the 95 % interval only with two or more
    trials), or ``–`` with no trial."""
    if not s.values:
        return "–"
    ci = s.ci
    if ci is None:
        return f"{s.mean:.3f}"
    return f"{s.mean:.3f} ± {s.std:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(s: PointStats, paper: bool) -> str:
    ref = ""
    if paper:
        flag = " ∉" if s.paper_outside else ""
        ref = " (paper " + ("–" if s.paper is None else f"{s.paper:.2f}") + flag + ")"
    if not s.values:
        return ("n/a" if s.undefined and not s.missing else "–") + ref
    partial = f" [{len(s.values)}/{s.expected}]" if s.missing else ""
    mark = f" †{s.non_finite}" if s.non_finite else ""
    mark += f" ‡{s.other_version}" if s.other_version else ""
    return f"{value_text(s)}{partial}{mark}{ref}"


NON_FINITE_NOTE = ("†n: in n trials the final global model's test cross-entropy was not finite "
                   "(stored as null): its weights or logits overflowed; a model with non-finite "
                   "logits gets every prediction wrong (error 1.0).")
UNDEFINED_NOTE = ("n/a: the metric does not apply to these runs (an attack success rate is "
                  "measured only for an attack that plants a backdoor).")
SPREAD_NOTE = ("± is the standard deviation over trials (population); [lo, hi] the 95 % "
               "confidence interval of the mean (t-interval, n − 1 degrees of freedom, cut to "
               "[0, 1] for a rate); a cell with one trial shows neither: no spread was "
               "measured.")
OUTSIDE_NOTE = ("∉: the 95 % interval excludes the paper's value, read as the range its "
                "printed digits stand for (0.52: [0.515, 0.525]).")
OTHER_VERSION_NOTE = ("‡n: n trials were computed by another version of fedpoison's source "
                      "(same config; shown because of --any-version).")


def format_markdown(spec: SweepSpec, stats: list[PointStats], note: str = "") -> str:
    """The table as Markdown (a grid for two-axis specs, else one line per point)."""
    lines = [f"### {spec.title}", ""]
    missing = sum(s.missing for s in stats)
    if missing:
        note = (note + " " if note else "") + (
            f"{missing} run(s) not in the store yet; [n/N] marks cells with fewer trials.")
    elsewhere = sum(s.elsewhere for s in stats)
    if elsewhere:
        note += (f" {elsewhere} of them are stored as computed by another version of "
                 "fedpoison's source: `fedpoison report --any-version` shows them, marked.")
    if note:
        lines += [note, ""]
    paper = has_paper(stats)
    points = [s.point for s in stats]
    if is_grid(spec):
        rows, cols = spec.blocks[0].axes
        by = {s.point.labels: s for s in stats}
        heads = [item_label(points, cols.name, c.label) for c in cols.items]
        lines.append(f"| {rows.name} ↓ {cols.name} → | " + " | ".join(heads) + " |")
        lines.append("|---" * (len(cols.items) + 1) + "|")
        for r in rows.items:
            cells = [_cell(by[((rows.name, r.label), (cols.name, c.label))], paper)
                     for c in cols.items]
            lines.append(f"| {item_label(points, rows.name, r.label)} | "
                         + " | ".join(cells) + " |")
    else:
        head = _head(spec)
        spread = " (mean ± std)" if any(s.has_spread for s in stats) else ""
        lines.append("| " + " | ".join([*head, f"{spec.metric}{spread}"]) + " |")
        lines.append("|---" * (len(head) + 1) + "|")
        for s in stats:
            lines.append("| " + " | ".join([*_labels(spec, s), _cell(s, paper)]) + " |")
    lines += _legend(stats)
    return "\n".join(lines) + "\n"


def _legend(stats: Sequence[PointStats]) -> list[str]:
    """The notes under a table: spread and interval, flags, non-finite and other versions."""
    lines: list[str] = []
    if any(s.has_spread for s in stats):
        lines += ["", SPREAD_NOTE]
    if any(s.paper_outside for s in stats):
        inside = sum(1 for s in stats if s.paper_outside is False)
        judged = sum(1 for s in stats if s.paper_outside is not None)
        lines += ["", f"{OUTSIDE_NOTE} The interval meets the paper's value in {inside} of "
                      f"{judged} cells."]
    if any(s.non_finite for s in stats):
        lines += ["", NON_FINITE_NOTE]
    if any(s.other_version for s in stats):
        lines += ["", OTHER_VERSION_NOTE]
    if any(s.undefined for s in stats):
        lines += ["", UNDEFINED_NOTE]
    return lines


def format_csv(spec: SweepSpec, stats: list[PointStats]) -> str:
    """One CSV line per point: its labels, ours_mean, ours_std (empty below two trials: no
    spread measured), trials, paper (only when the spec has paper values), non_finite (trials
    whose final test loss was not finite), other_version (trials computed by another version
    of the source, with ``--any-version``), then the 95 % interval ci95_low, ci95_high (empty
    below two trials) and, with paper values, paper_outside_ci (true, false or empty)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    paper = has_paper(stats)
    w.writerow([*_head(spec), "ours_mean", "ours_std", "trials", *(["paper"] if paper else []),
                "non_finite", "other_version", "ci95_low", "ci95_high",
                *(["paper_outside_ci"] if paper else [])])
    for s in stats:
        ref = ["" if s.paper is None else s.paper] if paper else []
        ci = s.ci
        outside = s.paper_outside
        flag = ["" if outside is None else str(outside).lower()] if paper else []
        w.writerow([*_labels(spec, s), "" if not s.values else f"{s.mean:.6f}",
                    f"{s.std:.6f}" if s.has_spread else "", len(s.values), *ref,
                    s.non_finite, s.other_version,
                    "" if ci is None else f"{ci[0]:.6f}", "" if ci is None else f"{ci[1]:.6f}",
                    *flag])
    return buf.getvalue()


@dataclass
class Ablation:
    """One preset run once per value of ``option``: (value, effective spec, stats) each."""

    option: str
    default: Any
    runs: list[tuple[Any, SweepSpec, list[PointStats]]]

    def affected(self) -> list[bool]:
        """Per point: whether its runs differ between the values (a point whose components
        do not declare the option runs the same configs under every value)."""
        keys = [[tuple(p.key for p in spec.plan() if p.point == i)
                 for i in range(len(stats))] for _, spec, stats in self.runs]
        return [len({k[i] for k in keys}) > 1 for i in range(len(keys[0]))]

    def to_json(self) -> dict[str, Any]:
        return {"option": self.option, "default": self.default,
                "affected": self.affected(),
                "values": [{"value": v, "name": spec.record_name,
                            "points": [s.to_json() for s in stats]}
                           for v, spec, stats in self.runs]}


def format_ablation(ablation: Ablation, note: str = "") -> str:
    """The preset's cells side by side, one column per value of the option, beside the
    paper's value; points the option does not reach are listed once below."""
    _, first, stats0 = ablation.runs[0]
    option = ablation.option
    lines = [f"### {first.raw.get('title', first.name) if first.raw else first.title}: "
             f"ablation of `{option}`", ""]
    if note:
        lines += [note, ""]
    affected = ablation.affected()
    head = _head(first)
    values = [f"{option}={v}" + (" (default)" if v == ablation.default else "")
              for v, _, _ in ablation.runs]
    paper = has_paper(stats0)
    lines.append("| " + " | ".join([*head, *values, *(["paper"] if paper else [])]) + " |")
    lines.append("|---" * (len(head) + len(values) + (1 if paper else 0)) + "|")
    everything: list[PointStats] = []
    for i, s in enumerate(stats0):
        if not affected[i]:
            continue
        cells = []
        for _, _, stats in ablation.runs:
            t = stats[i]
            everything.append(t)
            flag = " ∉" if t.paper_outside else ""
            partial = f" [{len(t.values)}/{t.expected}]" if t.missing else ""
            mark = f" †{t.non_finite}" if t.non_finite else ""
            cells.append(f"{value_text(t)}{partial}{mark}{flag}")
        ref = ["–" if s.paper is None else f"{s.paper:.2f}"] if paper else []
        lines.append("| " + " | ".join([*_labels(first, s), *cells, *ref]) + " |")
    same = [s for i, s in enumerate(stats0) if not affected[i]]
    if same:
        text = "; ".join(f"{'/'.join(_labels(first, s))} {_cell(s, paper)}" for s in same)
        lines += ["", f"Not reached by `{option}` (the same runs under every value): {text}."]
        everything += same
    lines += [line.replace("∉: the 95 % interval", "∉ after a value: its 95 % interval")
              for line in _legend(everything)]
    return "\n".join(lines) + "\n"


def _positions(spec: SweepSpec) -> list[str | None]:
    """Per axis position: its name if every block names it alike, else None."""
    width = max(len(b.axes) for b in spec.blocks)
    out: list[str | None] = []
    for i in range(width):
        names = {b.axes[i].name if i < len(b.axes) else None for b in spec.blocks}
        out.append(names.pop() if len(names) == 1 else None)
    return out


def _has_panels(spec: SweepSpec) -> bool:
    return len(spec.blocks) > 1 or bool(spec.blocks[0].id)


def _head(spec: SweepSpec) -> list[str]:
    """Column names: panel (figures), then one per axis position; a position whose axis
    differs between panels (a figure's x) is called x, and its cells read field=value."""
    cols = [name if name is not None else ("x" if i == 0 else f"axis{i + 1}")
            for i, name in enumerate(_positions(spec))]
    return (["panel"] if _has_panels(spec) else []) + cols


def _labels(spec: SweepSpec, s: PointStats) -> list[str]:
    cells = [s.point.block] if _has_panels(spec) else []
    for i, name in enumerate(_positions(spec)):
        if i >= len(s.point.labels):
            cells.append("")
        else:
            axis, _ = s.point.labels[i]
            label = resolved_label(s.point, axis)
            cells.append(label if name is not None else f"{axis}={label}")
    return cells


# ---------------------------------------------------------------------- single runs
RUN_METRICS = ("final_error", "best_error", "seconds")


def runs_table(records: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(Markdown, CSV) with one line per stored run (``ResultStore.records()``): its key,
    the config columns whose value differs between the runs (all of dataset, model, rule,
    attack, defense when there is one run), its metrics and when it was stored."""
    from fedpoison.experiments.store import PHASES

    skip = {"key", "curve", "version", "git_commit", "executor", "host", "created_at",
            "best_iteration", "final_loss", *RUN_METRICS, *(f"time_{p}" for p in PHASES)}
    columns: list[str] = []
    for rec in records:
        columns += [c for c in rec if c not in skip and c not in columns]
    always = ("dataset", "model", "rule", "attack", "defense")
    shown = [c for c in columns
             if c in always or len({json.dumps(r.get(c), sort_keys=True) for r in records}) > 1]
    head = ["key", *shown, *RUN_METRICS, "created_at"]

    def cell(value: Any, column: str) -> str:
        if value is None:
            return ""
        if column in RUN_METRICS and isinstance(value, float):
            return f"{value:.2f}" if column == "seconds" else f"{value:.4f}"
        return str(value)

    rows = [[cell(r.get(c), c) for c in head] for r in records]
    md = [f"### Stored runs ({len(records)})", "", "| " + " | ".join(head) + " |",
          "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(rows)
    return "\n".join(md) + "\n", buf.getvalue()
