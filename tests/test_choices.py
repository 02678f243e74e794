"""The readings the paper leaves open (issue 18): each a named option that does what its name
says, the ``legacy`` choice set, ablations, and the confidence-interval flag of reports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from attack_helpers import craft, make_context
from fedpoison.aggregators import krum
from fedpoison.attacks.krum_attack import krum_attack_solution
from fedpoison.config import RunConfig
from fedpoison.data import load
from fedpoison.data.base import Dataset
from fedpoison.data.custom import register_dataset
from fedpoison.errors import ConfigError
from fedpoison.experiments.executors import LocalExecutor
from fedpoison.experiments.spec import load_spec, parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs, run_ablation
from fedpoison.experiments.worker import execute, synthetic_result
from fedpoison.report.tables import Ablation, collect, format_ablation, format_markdown
from fedpoison.simulation import prepare

M, C, D = 30, 6, 400


def models(seed: int, m: int = M, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_re = 0.3 * torch.randn(d, generator=g)
    W = w_re - 0.02 * torch.randn(d, generator=g) + 0.1 * torch.randn(m, d, generator=g)
    return w_re, W


# ------------------------------------------------------------------ compromised workers
def _toy() -> Dataset:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(240, 12, generator=g)
    y = x[:, :4].argmax(1).long()
    return Dataset("toy-choice", x[:200], y[:200], x[200:], y[200:], 4)


def test_compromised_first_is_workers_0_to_c_and_random_is_not() -> None:
    ds = _toy()
    base = dict(dataset="mnist", model="lr", workers=20, compromised=5, iterations=1,
                attack="label-flip", seed=4)
    first = prepare(RunConfig(**base, compromised_choice="first"), ds)  # type: ignore[arg-type]
    rand = prepare(RunConfig(**base), ds)  # type: ignore[arg-type]
    assert first.adversary.compromised.tolist() == [0, 1, 2, 3, 4]
    assert rand.config.compromised_choice == "random"
    picked = rand.adversary.compromised.tolist()
    assert len(set(picked)) == 5 and picked != [0, 1, 2, 3, 4]
    assert picked == sorted(picked)
    # the label-flip attack changes exactly the chosen workers' labels
    owner = first.task.partition.owner
    changed = (first.labels_poisoned.cpu() != first.labels_clean.cpu())
    assert set(owner[changed].tolist()) <= {0, 1, 2, 3, 4}


def test_compromised_choice_is_validated_and_null_without_attack() -> None:
    with pytest.raises(ConfigError) as e:
        RunConfig(compromised_choice="last").resolve()
    assert e.value.field == "compromised_choice" and "random, first" in str(e.value)
    assert "\n" not in str(e.value)
    assert RunConfig(compromised_choice="first").resolve().compromised_choice is None
    cfg = RunConfig(attack="gaussian", compromised_choice="first").resolve()
    assert cfg.compromised_choice == "first"
    # no attack: which workers would be compromised cannot matter, one key for both
    assert (RunConfig(compromised_choice="first").config_hash()
            == RunConfig(compromised_choice="random").config_hash())


# ----------------------------------------------------------------------- Krum copies
def _krum(copies: str, seed: int = 2, **kw: Any) -> Any:
    w_re, W = models(seed)
    ctx = make_context(w_re, W, rule="krum", c=C, seed=9)
    return krum_attack_solution(ctx, epsilon=0.05, copies=copies, **kw), w_re, W


def test_exact_copies_equal_w1() -> None:
    r, _, _ = _krum("exact")
    assert all(torch.equal(row, r.models[0]) for row in r.models[1:])


def test_radius_copies_lie_at_u_times_epsilon() -> None:
    r, _, _ = _krum("radius")
    dist = torch.linalg.vector_norm(r.models[1:].double() - r.models[0].double(), dim=1)
    # the generator's draws after the attack's own: C − 1 normal directions, then C − 1 U
    g = torch.Generator().manual_seed(9)
    torch.randn((C - 1, D), generator=g)
    u = torch.rand((C - 1,), generator=g, dtype=torch.float64)
    assert torch.allclose(dist, 0.05 * u, rtol=1e-5, atol=1e-7)
    assert float(dist.max() - dist.min()) > 0.01  # spread over [0, ε), not at ε


def test_ball_copies_lie_near_the_sphere() -> None:
    r, _, _ = _krum("ball")
    dist = torch.linalg.vector_norm(r.models[1:].double() - r.models[0].double(), dim=1)
    g = torch.Generator().manual_seed(9)
    torch.randn((C - 1, D), generator=g)
    u = torch.rand((C - 1,), generator=g, dtype=torch.float64)
    assert torch.allclose(dist, 0.05 * u.pow(1.0 / D), rtol=1e-5, atol=1e-7)
    assert bool((dist > 0.045).all()) and bool((dist <= 0.05).all())


def test_copies_choice_leaves_w1_alone() -> None:
    rows = [_krum(c)[0].models[0] for c in ("ball", "radius", "exact")]
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[1], rows[2])


# ------------------------------------------------------------------------- zero sign
def test_krum_minus_one_pushes_unchanged_parameters_by_lambda() -> None:
    w_re, W = models(4)
    W[:, :3] = w_re[:3]  # three parameters nobody changes
    ctx = make_context(w_re, W, rule="krum", c=C)
    minus = krum_attack_solution(ctx, zero_sign="minus-one")
    zero = krum_attack_solution(make_context(w_re, W, rule="krum", c=C), zero_sign="zero")
    assert bool((minus.direction[:3] == -1).all()) and bool((zero.direction[:3] == 0).all())
    assert torch.equal(minus.direction[3:], zero.direction[3:])
    lam = minus.solution.lam
    assert torch.allclose(minus.models[0, :3], w_re[:3] + lam)  # w'₁ = w_Re − λs, s_j = −1
    assert torch.equal(zero.models[0, :3], w_re[:3])  # left at w_Re
    # partial knowledge: the paper's "otherwise −1"
    part = krum_attack_solution(make_context(w_re, W, rule="krum", c=C, knowledge="partial"),
                                zero_sign="minus-one")
    assert bool((part.direction[:3] == -1).all())


@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_trimmed_mean_minus_one_sends_unchanged_parameters_up(knowledge: str) -> None:
    w_re, W = models(0)
    # four parameters whose mean (of all rows, and of the compromised rows) does not move:
    # 0.5 ± 0.25 alternating, exact in float32, so s_j = 0 under every estimator
    w_re[:4] = 0.5
    W[:, :4] = 0.5 + 0.25 * (1 - 2 * (torch.arange(M) % 2)).unsqueeze(1).float()

    def attack(zero_sign: str) -> torch.Tensor:
        return craft("trimmed-mean", make_context(w_re, W, rule="trimmed-mean", c=C,
                                                  knowledge=knowledge, direction="mean",
                                                  zero_sign=zero_sign))

    up, down = attack("minus-one"), attack("zero")
    ref = W[C:, :4] if knowledge == "full" else W[:C, :4]
    if knowledge == "full":
        hi, lo = ref.amax(0), ref.amin(0)
    else:
        mu, sd = ref.double().mean(0), ref.double().std(0)
        hi, lo = (mu + 3 * sd).float(), (mu - 3 * sd).float()
    assert bool((up[:, :4] >= hi - 1e-6).all())  # s_j = −1: above the range
    assert bool((down[:, :4] <= lo + 1e-6).all())  # s_j = 0 treated as +1: below it
    assert torch.equal(up[:, 4:], down[:, 4:])


# ----------------------------------------------------------------------------- frame
def test_update_frame_intervals_are_on_updates_mapped_back() -> None:
    w_re = torch.tensor([5.0, 5.0, -5.0, -5.0])
    # benign updates: all positive for columns 0/2, all negative for 1/3 (model values
    # keep w_Re's sign, so the model frame and the update frame pick different intervals)
    delta = torch.tensor([[1.0, -1.0, 1.0, -1.0]]) * torch.linspace(1.0, 2.0, 10).unsqueeze(1)
    W = w_re + delta
    c = 2
    for s_sign in (1.0, -1.0):
        w = W.clone()
        w[:c] = w_re + s_sign * delta[:c].abs()
        ctx = make_context(w_re, w, rule="trimmed-mean", c=c, f=c, direction="mean",
                           frame="update", b=2.0)
        X = craft("trimmed-mean", ctx)
        B = (w[c:] - w_re).double()
        s = torch.sign(w.double().mean(0) - w_re.double())
        d_max, d_min = B.amax(0), B.amin(0)
        for j in range(4):
            if s[j] < 0:
                lo, hi = (d_max[j], 2 * d_max[j]) if d_max[j] > 0 else (d_max[j], d_max[j] / 2)
            else:
                lo, hi = (d_min[j] / 2, d_min[j]) if d_min[j] > 0 else (2 * d_min[j], d_min[j])
            got = X[:, j].double() - w_re[j].double()
            assert bool(((got >= lo - 1e-5) & (got <= hi + 1e-5)).all()), (s_sign, j)
        model = craft("trimmed-mean", make_context(w_re, w, rule="trimmed-mean", c=c, f=c,
                                                   direction="mean", b=2.0))
        assert not torch.allclose(model, X)  # the model frame draws elsewhere


# ------------------------------------------------------------------------- direction
def test_authors_direction_is_the_rule_for_krum() -> None:
    w_re, W = models(5)
    a = krum_attack_solution(make_context(w_re, W, rule="krum", c=C), direction="authors")
    r = krum_attack_solution(make_context(w_re, W, rule="krum", c=C), direction="rule")
    m = krum_attack_solution(make_context(w_re, W, rule="krum", c=C), direction="mean")
    assert torch.equal(a.models, r.models)
    selected = krum(W, C)
    assert torch.equal(r.direction, torch.sign(selected - w_re))
    assert not torch.equal(r.direction, m.direction)


def test_options_that_do_nothing_are_left_out_of_the_key() -> None:
    base = dict(rule="krum", attack="krum")
    part = RunConfig(**base, knowledge="partial",  # type: ignore[arg-type]
                     attack_options={"direction": "mean"}).resolve()
    assert "direction" not in part.attack_options and "zero_sign" in part.attack_options
    dev = RunConfig(**base, goal="deviation").resolve()  # type: ignore[arg-type]
    assert "direction" not in dev.attack_options and "zero_sign" not in dev.attack_options
    full = RunConfig(**base).resolve()  # type: ignore[arg-type]
    assert full.attack_options["direction"] == "rule"
    assert full.attack_options["copies"] == "radius"
    assert full.attack_options["zero_sign"] == "minus-one"
    with pytest.raises(ConfigError) as e:
        RunConfig(**base, attack_options={"copies": "cube"}).resolve()  # type: ignore[arg-type]
    assert "ball, radius, exact" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------- choices, legacy
def test_legacy_restores_previous_defaults_where_the_option_applies() -> None:
    spec = load_spec("table2a").effective(quick=True, choices={"legacy": True})
    assert spec.record_name == "table2a-legacy-quick"
    by = {p.labels: RunConfig.from_dict(p.config).resolve() for p in spec.points()}
    krum_full = by[(("rule", "krum"), ("attack", "full"))].attack_options
    assert (krum_full["direction"], krum_full["copies"], krum_full["zero_sign"]) == (
        "mean", "ball", "zero")
    tm_part = by[(("rule", "trimmed-mean"), ("attack", "partial"))].attack_options
    assert tm_part["zero_sign"] == "zero" and "direction" not in tm_part
    plain = load_spec("table2a").effective(quick=True)
    same = {p.key for p in plain.plan()} & {p.key for p in spec.plan()}
    assert len(same) == 9  # none, gaussian and label-flip do not change


def test_choices_reach_only_components_that_declare_them() -> None:
    spec = load_spec("table2a").effective(quick=True,
                                          choices={"direction": "mean",
                                                   "compromised_choice": "first"})
    cfgs = {p.labels: RunConfig.from_dict(p.config).resolve() for p in spec.points()}
    gauss = cfgs[(("rule", "krum"), ("attack", "gaussian"))]
    assert "direction" not in gauss.attack_options and gauss.compromised_choice == "first"
    assert cfgs[(("rule", "median"), ("attack", "full"))].attack_options["direction"] == "mean"
    with pytest.raises(ConfigError) as e:
        load_spec("table2a").effective(choices={"budget": 0.1}).points()
    assert "applies to no run of table2a" in str(e.value)
    with pytest.raises(ConfigError):
        load_spec("table2a").effective(choices={"nonsense": 1})


def test_cli_choices_read_config_fields_as_yaml_would() -> None:
    """``--choices lr=0.1`` is the number 0.1 (it used to reach RunConfig as the string
    '0.1' and fail validation); component options keep their text for their own check."""
    from fedpoison.experiments.spec import parse_choices

    got = parse_choices("legacy, lr=0.1, iterations=20, f=null, direction=mean, copies=1")
    assert got == {"legacy": True, "lr": 0.1, "iterations": 20, "f": None,
                   "direction": "mean", "copies": "1"}
    spec = load_spec("table2e").effective(quick=True, choices=parse_choices("lr=0.1"))
    assert {RunConfig.from_dict(p.config).resolve().lr for p in spec.points()} == {0.1}
    with pytest.raises(ConfigError, match="one value"):
        parse_choices("lr={a: 1}")


# ------------------------------------------------------------------------- ablation
_g = torch.Generator().manual_seed(1234)
_X = torch.rand(240, 12, generator=_g)
_Y = _X[:, :4].argmax(1).long()
register_dataset("toy-ablation", train=(_X[:200], _Y[:200]), test=(_X[200:], _Y[200:]),
                 replace=True)

TINY_TABLE = {
    "name": "tiny", "title": "tiny table", "trials": 2,
    "base": {"dataset": "toy-ablation", "workers": 10, "compromised": 2, "iterations": 4,
             "eval_every": 4, "batch_size": 8, "lr": 0.5},
    "row_key": "rule", "column_key": "attack",
    "rows": {"krum": {"rule": "krum"}, "trimmed-mean": {"rule": "trimmed-mean"}},
    "columns": {"none": {"attack": "none"},
                "full": {"attack": "{row}", "knowledge": "full"}},
    "paper": {"krum": {"none": 0.1, "full": 0.8}, "trimmed-mean": {"none": 0.1, "full": 0.5}},
}


def test_ablation_runs_each_alternative_and_prints_them_side_by_side(tmp_path: Path) -> None:
    spec = parse_spec(TINY_TABLE)
    with ResultStore(tmp_path / "s.sqlite") as store:
        done = run_ablation(spec, "direction", store,
                            lambda: LocalExecutor(execute, lambda n, s: load(n, seed=s)),
                            progress=False)
        runs = [(v, sp, collect(sp, store)) for v, sp in zip(done.values, done.specs,
                                                              strict=True)]
    assert done.values == ("mean", "rule", "authors")
    # 2 none cells shared by all three; 2 full cells × 3 values, minus the authors runs
    # that equal rule (Krum) or mean (trimmed mean): 8 distinct configs × 2 trials
    assert sum(o.stored for o in done.outcomes) == 16
    ablation = Ablation("direction", "rule", runs)
    assert ablation.affected() == [False, True, False, True]
    vals = {v: {s.point.labels: s.values for s in st} for v, _, st in runs}
    k = (("rule", "krum"), ("attack", "full"))
    t = (("rule", "trimmed-mean"), ("attack", "full"))
    assert vals["authors"][k] == vals["rule"][k] and vals["authors"][t] == vals["mean"][t]
    md = format_ablation(ablation, "note")
    assert "ablation of `direction`" in md
    assert "| direction=mean | direction=rule (default) | direction=authors | paper |" in md
    assert "| krum | full |" in md and "| 0.80 |" in md
    assert "Not reached by `direction`" in md and "krum/none" in md


def test_ablation_needs_an_option_with_alternatives(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store, pytest.raises(ConfigError) as e:
        run_ablation(parse_spec(TINY_TABLE), "epsilon", store, lambda: None)  # type: ignore
    assert "no fixed set of alternatives" in str(e.value) and "compromised_choice" in str(e.value)


# --------------------------------------------------------------- confidence intervals
def test_interval_flags_cells_that_exclude_the_paper_value(tmp_path: Path) -> None:
    spec = load_spec("table2a").effective(quick=True, trials=10)
    with ResultStore(tmp_path / "s.sqlite") as store:
        jobs, _, _ = plan_jobs(spec, store)
        by_key = {p.key: p for p in spec.plan()}
        points = spec.points()
        for job in jobs:
            planned = by_key[job.key]
            labels = dict(points[planned.point].labels)
            spread = 0.01 * (planned.trial - 4.5)  # 10 values, sample std 0.0303
            # krum/none around 0.14 (the paper's), krum/full around 0.70 (paper 0.80)
            err = 0.14 + spread if labels["attack"] != "full" else 0.70 + spread
            store.put(job.key, synthetic_result(job.config, err))
        stats = collect(spec, store)
    by = {s.point.labels: s for s in stats}
    none = by[(("rule", "krum"), ("attack", "none"))]
    full = by[(("rule", "krum"), ("attack", "full"))]
    lo, hi = none.ci  # type: ignore[misc]
    half = 2.2621571627 * 0.0302765035 / math.sqrt(10)  # t(0.975, 9) · s / √n
    assert (lo, hi) == pytest.approx((0.14 - half, 0.14 + half))
    assert none.paper_outside is False and full.paper_outside is True
    # just outside the paper's rounding: 0.14 ± 0.005 against an interval from 0.146
    md = format_markdown(spec, stats)
    assert f"0.700 ± 0.029 [{0.7 - half:.3f}, {0.7 + half:.3f}] (paper 0.80 ∉)" in md
    assert f"0.140 ± 0.029 [{0.14 - half:.3f}, {0.14 + half:.3f}] (paper 0.14)" in md
    assert "∉: the 95 % interval excludes the paper's value" in md
    assert full.to_json()["paper_outside_ci"] is True


def test_rounding_of_the_paper_value_counts_as_inside() -> None:
    from fedpoison.report.tables import PointStats

    spec = load_spec("table2a").effective(quick=True)
    point = spec.points()[0]
    near = PointStats(point, [0.1100, 0.1102, 0.1104], 3, 0.12)  # CI ≈ [0.1097, 0.1107]
    assert near.paper_outside is True  # below 0.115, the lower end of 0.12's rounding
    edge = PointStats(point, [0.1146, 0.1148, 0.1150], 3, 0.12)  # CI ≈ [0.1143, 0.1153]
    assert edge.paper_outside is False  # excludes 0.12 itself, but not its rounding
    assert PointStats(point, [0.2], 1, 0.12).paper_outside is None


def test_interval_of_a_rate_stays_within_0_and_1() -> None:
    """Three trials at 0.0, 0.0, 0.1: the raw t-interval reaches −0.11; an error rate's is
    cut at 0 (and 1), a loss's is not."""
    from fedpoison.report.tables import PointStats, t_interval

    point = load_spec("table2a").effective(quick=True).points()[0]
    raw = t_interval([0.0, 0.0, 0.1])
    assert raw is not None and raw[0] < -0.1 and raw[1] > 0.17
    assert PointStats(point, [0.0, 0.0, 0.1], 3, None).ci == (0.0, raw[1])
    assert PointStats(point, [1.0, 1.0, 0.9], 3, None).ci[1] == 1.0  # type: ignore[index]
    assert PointStats(point, [0.0, 0.0, 0.1], 3, None, rate=False).ci == raw


# ---------------------------------------------------------------------- quick label
def test_quick_dnn_tables_say_they_are_early_training() -> None:
    from fedpoison.report.outputs import note_for

    for name in ("table2b", "table2c", "table3"):
        note = note_for(load_spec(name).effective(quick=True))
        assert "EARLY-TRAINING VALUES" in note and "100 of the paper's 2,000" in note
    assert "EARLY" not in note_for(load_spec("table2b").effective())
    assert "EARLY" not in note_for(load_spec("table2a").effective(quick=True))


def test_cli_ablation_prints_every_value_beside_the_paper(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedpoison.cli import main

    store_path = tmp_path / "runs.sqlite"
    with ResultStore(store_path) as store:
        for i, copies in enumerate(("ball", "radius", "exact")):
            spec = load_spec("table7b").effective(quick=True, trials=2,
                                                  choices={"copies": copies})
            jobs, _, _ = plan_jobs(spec, store)
            for job in jobs:
                store.put(job.key, synthetic_result(job.config, 0.1 * (i + 1)))
    rc = main(["reproduce", "table7b", "--quick", "--trials", "2", "--ablation", "copies",
               "--store", str(store_path), "--out", str(tmp_path / "out")])
    assert rc == 0
    md = capsys.readouterr().out
    assert "| copies=ball | copies=radius (default) | copies=exact | paper |" in md
    assert "| bulyan | full | 0.100 ± 0.000 [0.100, 0.100] ∉ | 0.200" in md and "| 0.38 |" in md
    assert "Not reached by `copies`" in md and "bulyan/none" in md
    assert (tmp_path / "out" / "table7b-quick-ablation-copies.md").read_text() == md.rstrip(
        "\n") + "\n"
    assert main(["reproduce", "table7b", "--ablation", "epsilon", "--store",
                 str(store_path)]) == 2
    err = capsys.readouterr().err
    assert "no fixed set of alternatives" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("rule", ["trimmed-mean", "median"])
def test_frame_cannot_change_a_trimmed_mean_or_median_server(rule: str) -> None:
    """Every crafted value lies beyond the benign range in both frames, so with β ≥ c the
    trimmed mean keeps the same benign order statistics and the median the same middle
    values (docs/choices.md, "frame"); the mean, which averages the crafted values, moves."""
    from fedpoison.aggregators import mean, median, trimmed_mean

    w_re, W = models(6)
    agg = {"trimmed-mean": lambda X: trimmed_mean(X, C), "median": lambda X: median(X, C)}[rule]
    out = {}
    for frame in ("model", "update"):
        X = craft(rule, make_context(w_re, W, rule=rule, c=C, frame=frame))
        out[frame] = (agg(torch.cat([X, W[C:]])), mean(torch.cat([X, W[C:]]), C))
    assert torch.equal(out["model"][0], out["update"][0])
    assert not torch.allclose(out["model"][1], out["update"][1])


def test_report_options_that_differ_from_a_recorded_sweep_are_not_ignored() -> None:
    """``report --table table2a --choices legacy`` on a store that records ``table2a``
    under the default readings must not show the recorded (default) table."""
    import argparse

    from fedpoison.cli.experiments import _asks_otherwise

    recorded = {"quick": False, "trials": 10, "variant": None}

    def ns(**kw: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"trials": None, "quick": False, "variant": None,
                                     "choices": None, **kw})

    assert not _asks_otherwise(recorded, ns())
    assert not _asks_otherwise(recorded, ns(trials=10))
    assert _asks_otherwise(recorded, ns(trials=3))
    assert _asks_otherwise(recorded, ns(choices={"legacy": True}))
    assert _asks_otherwise(recorded, ns(quick=True))
    assert not _asks_otherwise({**recorded, "choices": {"legacy": True}},
                               ns(choices={"legacy": True}))
