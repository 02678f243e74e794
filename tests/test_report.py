"""Reports: tables (Markdown/CSV, mean ± std, paper values) and PNG plots from a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpoison.cli import main
from fedpoison.experiments.spec import Point, SweepSpec, load_spec, parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs
from fedpoison.experiments.worker import synthetic_result
from fedpoison.report import collect, format_csv, format_markdown, plot_spec
from fedpoison.report.tables import PointStats

PNG = b"\x89PNG\r\n\x1a\n"


def fill(spec: SweepSpec, store: ResultStore, skip: int = 0) -> None:
    """Store a synthetic result for every run of ``spec`` but the first ``skip``.

    The error is 0.1 + 0.01·trial, plus 0.5 for a 'full' series/column.
    """
    jobs, _, _ = plan_jobs(spec, store)
    by_key = {p.key: p for p in spec.plan()}
    points = spec.points()
    for job in jobs[skip:]:
        planned = by_key[job.key]
        labels = dict(points[planned.point].labels)
        err = 0.1 + 0.01 * planned.trial + (0.5 if "full" in labels.values() else 0.0)
        store.put(job.key, synthetic_result(job.config, err))


def test_table_mean_std_and_paper(tmp_path: Path) -> None:
    spec = load_spec("table2a").effective(quick=True, trials=3)
    with ResultStore(tmp_path / "s.sqlite") as store:
        fill(spec, store)
        stats = collect(spec, store)
    krum_full = next(s for s in stats
                     if s.point.labels == (("rule", "krum"), ("attack", "full")))
    assert krum_full.values == pytest.approx([0.6, 0.61, 0.62])
    assert krum_full.mean == pytest.approx(0.61) and krum_full.paper == 0.80
    assert krum_full.std == pytest.approx(0.008165, abs=1e-6)
    md = format_markdown(spec, stats, "note")
    # t-interval: 0.11 ± 4.303 · 0.01 / √3 = [0.085, 0.135], just below 0.14's rounding
    assert "| krum | 0.110 ± 0.008 [0.085, 0.135] (paper 0.14 ∉) |" in md
    assert "0.610 ± 0.008 [0.585, 0.635] (paper 0.80 ∉)" in md
    lines = format_csv(spec, stats).splitlines()
    assert lines[0] == ("rule,attack,ours_mean,ours_std,trials,paper,non_finite,other_version,"
                        "ci95_low,ci95_high,paper_outside_ci")
    assert lines[5] == "krum,full,0.610000,0.008165,3,0.8,0,0,0.585159,0.634841,true"
    assert lines[1].endswith(",0.085159,0.134841,true")
    assert "†" not in md


def test_non_finite_runs_are_marked(tmp_path: Path) -> None:
    """A run whose final loss is stored as null (a model that overflowed) is flagged."""
    spec = load_spec("table2a").effective(quick=True, trials=2)
    with ResultStore(tmp_path / "s.sqlite") as store:
        jobs, _, _ = plan_jobs(spec, store)
        by_key = {p.key: p for p in spec.plan()}
        points = spec.points()
        for job in jobs:
            labels = dict(points[by_key[job.key].point].labels)
            result = synthetic_result(job.config, 0.2)
            if labels == {"rule": "median", "attack": "full"} and by_key[job.key].trial == 1:
                result["final_error"], result["final_loss"] = 1.0, float("inf")
            store.put(job.key, result)
        stats = collect(spec, store)
    md = format_markdown(spec, stats)
    # an error rate's 95 % interval is cut to [0, 1]
    assert "| 0.600 ± 0.400 [0.000, 1.000] †1 (paper 0.29) |" in md
    assert md.count("†1") == 1 and "test cross-entropy was not finite" in md
    assert format_csv(spec, stats).splitlines()[-1] == (
        "median,full,0.600000,0.400000,2,0.29,1,0,0.000000,1.000000,false")


def test_runs_of_another_source_version(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a code change the stored runs no longer match their keys: the table says so,
    and --any-version uses them, marked."""
    import fedpoison.provenance as provenance

    spec = load_spec("table2a").effective(quick=True, trials=2)
    store_path = tmp_path / "s.sqlite"
    with ResultStore(store_path) as store:
        monkeypatch.setattr(provenance, "code_fingerprint", lambda: "old-source")
        old = load_spec("table2a").effective(quick=True, trials=2)
        fill(old, store, skip=2)  # runs 3..30 by the old source
        monkeypatch.undo()
        fill(spec, store, skip=29)  # run 30 also by this source; runs 1 and 2 by neither
        strict = collect(spec, store)
        loose = collect(spec, store, any_version=True)
    assert sum(len(s.values) for s in strict) == 1
    assert sum(s.elsewhere for s in strict) == 27 and sum(s.missing for s in strict) == 29
    md = format_markdown(spec, strict)
    assert "29 run(s) not in the store yet" in md and "27 of them are stored as computed by" in md
    assert sum(len(s.values) for s in loose) == 28  # this source's run 30 is preferred
    assert sum(s.other_version for s in loose) == 27
    krum_full = next(s for s in loose if s.point.labels == (("rule", "krum"), ("attack", "full")))
    assert krum_full.values == pytest.approx([0.6, 0.61]) and krum_full.other_version == 2
    md = format_markdown(spec, loose)
    assert "0.605 ± 0.005 [0.541, 0.669] ‡2 (paper 0.80 ∉)" in md
    assert "another version of fedpoison" in md
    assert format_csv(spec, loose).splitlines()[5].endswith(",0,2,0.541469,0.668531,true")


def test_missing_runs_are_marked(tmp_path: Path) -> None:
    spec = load_spec("table2a").effective(quick=True, trials=2)
    with ResultStore(tmp_path / "s.sqlite") as store:
        fill(spec, store, skip=16)  # trial-major: all of trial 0 and the first trial-1 run
        stats = collect(spec, store)
    md = format_markdown(spec, stats)
    assert "16 run(s) not in the store yet" in md
    assert "– (paper 0.14)" in md and "[1/2]" in md


def test_long_table_for_three_axes() -> None:
    spec = parse_spec({"name": "three", "base": {"workers": 10, "compromised": 2},
                       "grid": {"rule": ["mean", "median"], "noniid": [0.1, 0.5],
                                "attack": ["none", "label-flip"]}}).effective()
    stats = [PointStats(p, [0.2, 0.3], 2, None) for p in spec.points()]
    md = format_markdown(spec, stats)
    assert "| rule | noniid | attack | final_error (mean ± std) |" in md
    assert "| median | 0.5 | label-flip | 0.250 ± 0.050 [0.000, 0.885] |" in md


def test_one_trial_shows_no_spread_and_no_paper_without_paper_values() -> None:
    """One trial measured no spread (no ±, empty ours_std); a spec without paper values gets
    no paper column and no '(paper –)'."""
    spec = parse_spec({"name": "mine", "base": {"workers": 10, "compromised": 2},
                       "grid": {"rule": ["mean", "median"], "attack": ["none", "gaussian"]}}
                      ).effective()
    stats = collect_synthetic(spec, {0: [0.2], 1: [0.25, 0.35], 2: [], 3: [0.4]})
    md = format_markdown(spec, stats)
    assert "| rule ↓ attack → | none | gaussian |" in md
    assert "| mean | 0.200 | 0.300 ± 0.050 [0.000, 0.935] |" in md
    assert "| median | – | 0.400 |" in md
    assert "paper" not in md and "0.200 ±" not in md and "∉" not in md
    lines = format_csv(spec, stats).splitlines()
    assert lines[0] == ("rule,attack,ours_mean,ours_std,trials,non_finite,other_version,"
                        "ci95_low,ci95_high")
    assert lines[1] == "mean,none,0.200000,,1,0,0,,"
    assert lines[2] == "mean,gaussian,0.300000,0.050000,2,0,0,0.000000,0.935310"
    assert stats[0].to_json()["ours_std"] is None
    assert stats[1].to_json()["ours_std"] == 0.05


def test_paper_values_keep_their_column_and_dash_where_missing() -> None:
    spec = load_spec("table2a").effective(quick=True)
    stats = collect_synthetic(spec, {0: [0.2]})
    md = format_markdown(spec, stats)
    assert "| krum | 0.200 (paper 0.14) | – (paper 0.13) |" in md
    assert format_csv(spec, stats).splitlines()[0].split(",")[5] == "paper"


def test_placeholders_never_reach_headers() -> None:
    """A column {attack: "{rule}"} is the row's own attack: resolved per row in long tables,
    CSV and JSON; a grid header names it in words."""
    raw = {"name": "ph", "base": {"workers": 10, "compromised": 2},
           "grid": {"rule": ["trimmed-mean", "median"],
                    "attack": [{"attack": "none"}, {"attack": "{rule}", "knowledge": "full"}]}}
    spec = parse_spec(raw).effective()
    stats = collect_synthetic(spec, {i: [0.1 * (i + 1)] for i in range(4)})
    md = format_markdown(spec, stats)
    assert "{" not in md and "| rule ↓ attack → | none | attack = rule |" in md
    assert "trimmed-mean,trimmed-mean,0.200000" in format_csv(spec, stats)
    assert stats[3].to_json()["attack"] == "median"
    # three axes: one line per point, each resolved
    raw["grid"]["noniid"] = [0.5]
    spec3 = parse_spec(raw).effective()
    md3 = format_markdown(spec3, collect_synthetic(spec3, {3: [0.4]}))
    assert "| median | median | 0.5 | 0.400 |" in md3 and "{" not in md3
    # a placeholder that resolves alike at every point is shown resolved
    from fedpoison.report.tables import item_label

    one = parse_spec({**raw, "grid": {"rule": ["median"], "attack": raw["grid"]["attack"]}})
    points = one.effective().points()
    assert item_label(points, "attack", "{rule}") == "median"


def collect_synthetic(spec: SweepSpec, values: dict[int, list[float]]) -> list[PointStats]:
    """PointStats of every point of ``spec``: point i has ``values[i]`` (default none)."""
    return [PointStats(p, list(values.get(i, [])), max(spec.trials, len(values.get(i, []))),
                       _paper_of(spec, p))
            for i, p in enumerate(spec.points())]


def _paper_of(spec: SweepSpec, point: Point) -> float | None:
    from fedpoison.report.tables import _paper

    return _paper(spec, point)


def test_figure_pngs_from_store(tmp_path: Path) -> None:
    spec = load_spec("figure5").effective(quick=True, trials=2)
    with ResultStore(tmp_path / "s.sqlite") as store:
        fill(spec, store)
        stats = collect(spec, store)
    paths = plot_spec(spec, stats, tmp_path / "png", note="REDUCED RUN")
    assert [p.name for p in paths] == ["figure5-quick.png", "figure5-quicka.png",
                                       "figure5-quickb.png", "figure5-quickc.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    # the pinned no-attack run is one run shared by every x of panel (b)
    none_b = [s for s in stats if s.point.block == "b" and s.point.label("series") == "none"]
    assert len(none_b) == 6 and all(s.values == none_b[0].values for s in none_b)


def test_cli_report_recorded_sweeps_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_path = tmp_path / "s.sqlite"
    spec = load_spec("figure4").effective(quick=True)
    with ResultStore(store_path) as store:
        fill(spec, store)
        store.record_sweep(spec.record_name, dict(spec.raw), dict(spec.options), 30)
    out = tmp_path / "rep"
    assert main(["report", str(store_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Figure 4" in text and "REDUCED RUN" in text
    assert (out / "figure4-quick.png").read_bytes().startswith(PNG)
    assert (out / "figure4-quickb.png").exists() and (out / "figure4-quick.csv").exists()
    assert main(["report", str(store_path), "--table", "figure4-quick", "--json",
                 "--out", str(out), "--export", str(tmp_path / "runs.csv")]) == 0
    dump = json.loads(capsys.readouterr().out)
    assert dump[0]["name"] == "figure4-quick" and len(dump[0]["points"]) == 32
    first = dump[0]["points"][0]
    assert first["panel"] == "a" and first["local_rounds"] == 1 and first["series"] == "none"
    assert (tmp_path / "runs.csv").read_text().count("\n") == 31  # header + 30 runs


def test_cli_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.sqlite")]) == 2
    assert "--store: no results store" in capsys.readouterr().err
    ResultStore(tmp_path / "empty.sqlite").close()
    assert main(["report", str(tmp_path / "empty.sqlite")]) == 2
    assert "records no sweep" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty.sqlite"), "--table", "table9z"]) == 2
    assert "no preset of that name" in capsys.readouterr().err
