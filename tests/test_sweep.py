"""Sweep specs (parsing, expansion, up-front validation), the driver and the executors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from fedpoison import registry
from fedpoison.cli import main
from fedpoison.data import Dataset, load
from fedpoison.data.custom import register_dataset
from fedpoison.errors import ConfigError
from fedpoison.experiments.executors import LocalExecutor, ProcessExecutor, make_executor
from fedpoison.experiments.presets import preset_names
from fedpoison.experiments.spec import load_spec, parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs, run_sweep
from fedpoison.experiments.worker import execute, synthetic_result

TINY = {"dataset": "toy", "workers": 6, "compromised": 1, "iterations": 3, "eval_every": 3,
        "batch_size": 8}


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(240, 12, generator=g)
    return x, (x[:, :4].argmax(1)).long()


# A small synthetic dataset (12 features, 4 classes) so that engine tests run in ms; registered
# at import, so a spawned pool worker that unpickles ``toy_loader`` registers it too.
_X, _Y = _toy()
register_dataset("toy", train=(_X[:200], _Y[:200]), test=(_X[200:], _Y[200:]), replace=True)


def toy_loader(name: str, seed: int) -> Dataset:
    """The registered toy dataset, as a sweep's loader."""
    return load(name, seed=seed)


def tiny_spec(**extra: Any) -> dict[str, Any]:
    return {"name": "tiny", "base": dict(TINY), "trials": 2,
            "grid": {"rule": ["mean", "median"], "attack": ["none", "label-flip"]}, **extra}


# ------------------------------------------------------------------------- specs
def test_grid_product_trials_and_order() -> None:
    spec = parse_spec(tiny_spec()).effective()
    points = spec.points()
    assert [p.labels for p in points[:2]] == [
        (("rule", "mean"), ("attack", "none")), (("rule", "mean"), ("attack", "label-flip"))]
    plan = spec.plan()
    assert len(plan) == 8 and [p.trial for p in plan] == [0] * 4 + [1] * 4  # trial-major
    assert all(p.config.seed == p.trial for p in plan)
    assert len({p.key for p in plan}) == 8


def test_labelled_and_linked_axes_with_placeholders() -> None:
    spec = parse_spec({
        "base": {**TINY, "workers": 10, "compromised": 2},
        "grid": {
            "rule": ["median", "trimmed-mean"],
            "size": [{"workers": 10, "compromised": 2}, {"workers": 20, "compromised": 4}],
            "series": {"none": {"attack": "none"},
                       "partial": {"attack": "{rule}", "knowledge": "partial"}},
        },
    }).effective()
    pts = spec.points()
    assert len(pts) == 8
    partial = [p for p in pts if p.label("series") == "partial"]
    assert {p.config["attack"] for p in partial} == {"median", "trimmed-mean"}
    assert all(p.config["attack"] == p.config["rule"] for p in partial)
    assert {p.label("size") for p in pts} == {"workers=10,compromised=2",
                                             "workers=20,compromised=4"}


def test_duplicate_configs_run_once() -> None:
    # the 'none' series clears the attack's options: every x point is the same run
    spec = parse_spec({
        "base": {**TINY, "rule": "krum", "workers": 10, "compromised": 2},
        "panels": {"a": {"x": {"field": "attack_options.epsilon", "values": [0.1, 0.2, 0.3]},
                         "series": {"none": {"attack": "none", "attack_options": {}},
                                    "krum": {"attack": "krum"}}}},
    }).effective()
    keys = [p.key for p in spec.plan()]
    assert len(keys) == 6 and len(set(keys)) == 4
    assert {p.config.attack_options.get("epsilon") for p in spec.plan()} == {None, 0.1, 0.2, 0.3}


def test_option_axes_aliases_and_strictness() -> None:
    spec = parse_spec({
        "base": {**TINY, "rule": "trimmed-mean", "workers": 10, "compromised": 2},
        "grid": {"rule_options.beta": [2, 3], "attack": {"none": {"attack": "none"},
                                                         "tm": {"attack": "median", "b": 3}}},
    }).effective()
    plan = [p.config.resolve() for p in spec.plan()]
    assert [c.rule_options["beta"] for c in plan] == [2, 2, 3, 3]
    assert plan[1].attack == "trimmed-mean"
    assert plan[1].attack_options == {"b": 3.0, "direction": "rule", "frame": "model",
                                      "zero_sign": "minus-one", "target_rule": "median"}
    bad = parse_spec({"base": {**TINY, "rule": "median", "workers": 10, "compromised": 2},
                      "grid": {"attack_options.epsilon": [0.1], "attack": ["label-flip"]}})
    with pytest.raises(ConfigError, match="has no option 'epsilon'"):
        bad.effective().plan()


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"grid": {"compromized": [1, 2]}}, "compromized", ["unknown config field", "compromized"]),
    ({"base": {"rulez": "krum"}}, "rulez", ["unknown config field", "base"]),
    ({"grid": {"rule": ["median", "krum"], "compromised": [1, 2]}}, "rule",
     ["krum", "m > 2f + 2", "entry rule=krum, compromised=2"]),
    ({"grid": {"noniid": [0.5, 1.5]}}, "split-opt", ["noniid=1.5", "[0, 1]", "option p"]),
    ({"grid": {"attack": ["none", "nope"]}}, "attack", ["attack=nope", "allowed"]),
    ({"base": {"seed": 3}}, "seed", ["trials"]),
    ({"grid": {"workers": []}}, "workers", ["non-empty"]),
    ({"trials": 0}, "trials", [">= 1"]),
    ({"grdi": {}}, "spec", ["unknown key 'grdi'"]),
    ({"grid": {"attack": ["{nothing}"]}}, "attack", ["{nothing}"]),
    ({"metric": "accuracy"}, "metric", ["final_error"]),
])
def test_invalid_specs_name_the_entry(spec: dict[str, Any], field: str, words: list[str]) -> None:
    body = {"name": "bad", "base": {**TINY, "workers": 6, "compromised": 1}}
    body["base"].update(spec.pop("base", {}))
    body.update(spec)
    with pytest.raises(ConfigError) as info:
        parse_spec(body, "bad.yaml").effective().plan()
    assert info.value.field == field
    for w in words:
        assert w in info.value.message, info.value.message


def test_shipped_presets_parse_and_validate() -> None:
    names = preset_names()
    assert {"table2a", "figure2", "figure3", "figure4", "figure5"} <= set(names)
    for name in names:  # every shipped spec parses (tables may need models still to come)
        assert load_spec(name).points()
    for name in ("table2a", "figure2", "figure3", "figure4", "figure5", "attack-matrix"):
        assert load_spec(name).effective(quick=True).plan()
    t = load_spec("table2a").effective()
    assert t.kind == "table" and len(t.points()) == 15
    cell = next(p for p in t.points() if p.labels == (("rule", "krum"), ("attack", "partial")))
    assert cell.config["attack"] == "krum" and cell.config["knowledge"] == "partial"
    assert t.paper["krum"]["partial"] == 0.72
    f2 = load_spec("figure2")
    assert f2.effective(quick=True).points()[0].config["iterations"] == 100
    assert f2.effective().points()[0].config["iterations"] == 500
    again = f2.effective(quick=True).effective()  # effective() starts from the spec as written
    assert again.points()[0].config["iterations"] == 500 and again.trials == 3
    dnn = f2.effective(variant="dnn")
    assert dnn.record_name == "figure2-dnn" and dnn.title.endswith("[dnn]")
    assert all(p.config["model"] == "cnn" for p in dnn.points())
    with pytest.raises(ConfigError, match="allowed: lr, dnn"):
        f2.effective(variant="vgg")


def test_attack_matrix_preset() -> None:
    """Every registered rule x (none, Fang's attacks, every standard model attack), full
    knowledge, Table 1."""
    spec = load_spec("attack-matrix").effective()
    points = spec.points()
    rules = {s.name for s in registry.specs("rule") if s.module.startswith("fedpoison.")}
    assert {p.label("rule") for p in points} == rules
    assert len(points) == len(rules) * 12 and spec.trials == 3
    cell = {(p.label("rule"), p.label("attack")): p.config for p in points}
    assert cell[("multi-krum", "agr-tailored")]["attack_options"] == {"target_rule": "krum"}
    assert cell[("fltrust", "none")]["validation_size"] == 100
    assert all(c["iterations"] == 500 and c["model"] == "lr" and c["workers"] == 100
               and c["compromised"] == 20 and c["noniid"] == 0.5 for c in cell.values())
    assert cell[("mean", "agr-tailored")]["attack_options"] == {"target_rule": "trimmed-mean"}
    assert "attack_options" not in cell[("krum", "agr-tailored")]
    assert cell[("mean", "alie")]["attack_options"] == {}
    assert cell[("median", "fang-trimmed-mean")]["attack_options"] == {
        "target_rule": "trimmed-mean"}
    runs = spec.plan()  # every cell resolves (the mean row's tailored attack included)
    assert {r.config.attack for r in runs} >= {"alie", "ipm", "sign-flip", "mimic", "min-max",
                                              "min-sum", "agr-tailored", "krum", "mpaf"}
    quick = load_spec("attack-matrix").effective(quick=True)
    assert quick.trials == 1 and quick.points()[0].config["iterations"] == 100
    dnn = load_spec("attack-matrix").effective(variant="dnn")
    assert all(p.config["model"] == "cnn" for p in dnn.points())


def test_defense_matrix_preset() -> None:
    """Every registered rule and defense, alone and after bucketing (Bulyan alone only),
    against no attack, Gaussian, label flipping and every full-knowledge model attack but
    the backdoor; every cell resolves."""
    spec = load_spec("defense-matrix").effective()
    points = spec.points()
    rows = {p.label("defense") for p in points}
    rules = {s.name for s in registry.specs("rule") if s.module.startswith("fedpoison.")}
    defenses = {s.name for s in registry.specs("defense") if s.module.startswith("fedpoison.")}
    configs = {p.label("defense"): p.config for p in points}
    assert rules <= {c["rule"] for c in configs.values()}
    assert defenses <= {c.get("defense") for c in configs.values()}
    assert "bucketing+bulyan" not in rows and "bucketing+krum" in rows
    assert configs["bucketing+krum"]["preaggregators"] == ["bucketing:s=2"]
    models = {s.name for s in registry.specs("attack")
              if not s.data and s.module.startswith("fedpoison.")} - {"scaling"}
    columns = {p.label("attack") for p in points}
    assert models | {"none", "gaussian", "label-flip"} <= columns | {"trimmed-mean"}
    assert len(points) == len(rows) * len(columns) and spec.trials == 3
    runs = spec.plan()  # every cell resolves, bucketed rows and tailored targets included
    assert len(runs) == 3 * len(points)


def test_alie_paper_preset() -> None:
    """ALIE against its paper's MNIST claim: the authors' code's setting, planned not run."""
    spec = load_spec("alie-paper").effective()
    points = spec.points()
    assert len(points) == 4 * 3 and spec.trials == 3
    cell = {(p.label("rule"), p.label("attack")): p.config for p in points}
    assert all(c["dataset"] == "mnist" and c["model"] == "mlp" and c["workers"] == 51
               and c["compromised"] == 12 and c["split"] == "iid"
               and c["knowledge"] == "partial" and c["iterations"] == 300
               for c in cell.values())
    assert cell[("krum", "alie-z1.5")]["attack_options"] == {"z": 1.5}
    assert "attack_options" not in cell[("bulyan", "alie")]
    assert spec.paper["bulyan"]["alie"] == 0.50 and "mean" not in spec.paper
    runs = spec.plan()  # Bulyan's m >= 4c + 3 holds (51 = 4·12 + 3)
    assert {r.config.attack for r in runs} == {"none", "alie"}
    quick = load_spec("alie-paper").effective(quick=True)
    assert quick.trials == 1 and quick.points()[0].config["iterations"] == 100


# ------------------------------------------------------------------------ driver
def counting_runner(calls: list[str]) -> Any:
    def runner(config: dict[str, Any], ds: Dataset) -> dict[str, Any]:
        calls.append(config["rule"])
        return execute(config, ds)

    return runner


def test_sweep_stores_everything_and_resumes(tmp_path: Path) -> None:
    spec = parse_spec(tiny_spec()).effective()
    calls: list[str] = []
    with ResultStore(tmp_path / "s.sqlite") as store:
        first = run_sweep(spec, store, LocalExecutor(counting_runner(calls), toy_loader),
                          progress=False)
        assert (first.planned, first.skipped, first.stored) == (8, 0, 8) and first.complete
        assert len(store) == 8 and len(calls) == 8
        again = run_sweep(spec, store, LocalExecutor(counting_runner(calls), toy_loader),
                          progress=False)
        assert (again.skipped, again.stored) == (8, 0) and len(calls) == 8
        more = run_sweep(spec.effective(trials=3), store,
                         LocalExecutor(counting_runner(calls), toy_loader), progress=False)
        assert (more.planned, more.skipped, more.stored) == (12, 8, 4)
        assert [s["name"] for s in store.sweeps()] == ["tiny"]


def test_failed_run_is_reported_and_others_stored(tmp_path: Path) -> None:
    def runner(config: dict[str, Any], ds: Dataset) -> dict[str, Any]:
        if config["rule"] == "median" and config["seed"] == 1:
            raise RuntimeError("boom")
        return execute(config, ds)

    spec = parse_spec(tiny_spec()).effective()
    with ResultStore(tmp_path / "s.sqlite") as store:
        out = run_sweep(spec, store, LocalExecutor(runner, toy_loader), progress=False)
        assert out.stored == 6 and len(out.failed) == 2 and not out.complete
        assert "RuntimeError: boom" in out.failed[0][1]


def pool_runner(config: dict[str, Any], ds: Dataset) -> dict[str, Any]:
    """Kills its own worker process the first time it sees rule=median, seed=0."""
    marker = Path(os.environ["FEDPOISON_TEST_MARKER"])
    if config["rule"] == "median" and config["seed"] == 0 and config["attack"] == "none" \
            and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(config, ds)


def test_process_pool_matches_local_and_survives_a_dead_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDPOISON_TEST_MARKER", str(tmp_path / "killed"))
    spec = parse_spec(tiny_spec()).effective()
    with ResultStore(tmp_path / "a.sqlite") as a, ResultStore(tmp_path / "b.sqlite") as b:
        run_sweep(spec, a, LocalExecutor(execute, toy_loader), progress=False)
        ex = ProcessExecutor(2, runner=pool_runner, loader=toy_loader)
        out = run_sweep(spec, b, ex, progress=False)
        assert (tmp_path / "killed").exists()
        assert out.stored == 8 and not out.failed
        for key in a:
            ra, rb = a.get(key), b.get(key)
            assert ra is not None and rb is not None
            assert (ra["curve"], ra["final_loss"]) == (rb["curve"], rb["final_loss"])


def test_make_executor_errors() -> None:
    with pytest.raises(ConfigError) as e:
        make_executor("dask")
    assert e.value.field == "executor"
    with pytest.raises(ConfigError) as e:
        make_executor("local", address="auto")
    assert e.value.field == "address"
    with pytest.raises(ConfigError) as e:
        make_executor("local", jobs=2)
    assert e.value.field == "jobs"


# --------------------------------------------------------------------------- CLI
def test_cli_sweep_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {workers: 10}\ngrid:\n  rule: [median, krum]\n  compromised: [2, 4]\n")
    assert main(["sweep", str(bad), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedpoison: error: --rule: krum")
    assert "entry rule=krum, compromised=4" in err[0]
    assert not (tmp_path / "s.sqlite").exists()  # nothing opened before validation


def test_cli_dry_run_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps(tiny_spec()))  # JSON is YAML
    assert main(["sweep", str(spec), "--dry-run", "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "4 points × 2 trial(s) → 8 distinct runs; 0 stored" in capsys.readouterr().out
    assert not (tmp_path / "s.sqlite").exists()  # a dry run creates no store
    with ResultStore(tmp_path / "s.sqlite") as store:
        key = parse_spec(tiny_spec()).effective().plan()[0].key
        store.put(key, synthetic_result(parse_spec(tiny_spec()).effective().plan()[0]
                                        .config.to_dict(), 0.5))
    before = (tmp_path / "s.sqlite").stat().st_mtime_ns
    assert main(["sweep", str(spec), "--dry-run", "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "8 distinct runs; 1 stored" in capsys.readouterr().out
    assert (tmp_path / "s.sqlite").stat().st_mtime_ns == before


def test_reproduce_reads_the_store_and_keeps_its_json_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec("table2a").effective(quick=True, trials=2)
    store_path = tmp_path / "runs.sqlite"
    with ResultStore(store_path) as store:
        jobs, _, _ = plan_jobs(spec, store)
        for i, job in enumerate(jobs):
            store.put(job.key, synthetic_result(job.config, 0.1 + 0.01 * (i % 2)))
    out = tmp_path / "out"
    rc = main(["reproduce", "table2a", "--quick", "--trials", "2", "--json", "--store",
               str(store_path), "--out", str(out)])
    assert rc == 0
    cells = json.loads(capsys.readouterr().out)
    assert len(cells) == 15
    first = cells[0]
    assert list(first)[:6] == ["rule", "attack", "ours_mean", "ours_std", "trials", "paper"]
    assert (first["rule"], first["attack"], first["trials"], first["paper"]) == (
        "krum", "none", 2, 0.14)
    assert first["ours_mean"] == pytest.approx(0.105)
    md = (out / "table2a-quick.md").read_text()
    assert "REDUCED RUN (--quick: iterations=200)" in md and "(paper 0.72" in md
    assert (out / "table2a-quick.csv").read_text().startswith(
        "rule,attack,ours_mean,ours_std,trials,paper,non_finite,other_version,ci95_low,"
        "ci95_high,paper_outside_ci")
