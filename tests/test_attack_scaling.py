"""The model-replacement backdoor (Bagdasaryan et al., AISTATS 2020) and its success rate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attack_helpers import craft, make_context
from fedpoison import RunConfig, registry
from fedpoison.attacks.scaling import stamp
from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError
from fedpoison.simulation import prepare, run

SMALL = dict(model="lr", rule="mean", workers=20, compromised=4, iterations=20, eval_every=5,
             lr=0.3)


def test_stamp_is_exact_on_images_and_tabular_rows() -> None:
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    out = stamp(x, trigger_size=2, trigger_value=-1.0)
    want = x.clone()
    for i in (0, 1):
        for r in (3, 4):
            for c in (3, 4):
                want[i, 0, r, c] = -1.0  # the bottom-right 2×2 square, by hand
    assert torch.equal(out, want)
    assert out[1, 0].tolist()[3] == [40.0, 41.0, 42.0, -1.0, -1.0]
    assert float(x[0, 0, 4, 4]) == 24.0  # the input is left as it was
    rgb = stamp(torch.zeros(1, 3, 4, 4), trigger_size=1, trigger_value=0.5)
    assert rgb.sum() == 1.5 and bool((rgb[0, :, 3, 3] == 0.5).all())  # every channel
    rows = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    assert torch.equal(stamp(rows, trigger_size=2, trigger_value=-9.0),
                       torch.tensor([[1.0, 2.0, -9.0, -9.0], [5.0, 6.0, -9.0, -9.0]]))
    with pytest.raises(ValueError, match="trigger_size: 6 does not fit images of 5×5"):
        stamp(x, trigger_size=6, trigger_value=1.0)


def test_crafted_models_are_the_scaled_updates() -> None:
    g = torch.Generator().manual_seed(0)
    w_re = torch.randn(50, generator=g)
    W = w_re + 0.1 * torch.randn(10, 50, generator=g)
    opts = {"target": 0, "trigger_size": 3, "trigger_value": 1.0, "poison_share": 0.5}
    X = craft("scaling", make_context(w_re, W, rule="scaling", c=4, scale=None, **opts))
    assert torch.allclose(X, w_re + 10 / 4 * (W[:4] - w_re), atol=1e-6)  # γ = m′/c′
    X = craft("scaling", make_context(w_re, W, rule="scaling", c=4, scale=7.0, **opts))
    assert torch.allclose(X, w_re + 7.0 * (W[:4] - w_re), atol=1e-6)
    part = craft("scaling", make_context(w_re, W, rule="scaling", c=4, scale=7.0,
                                         knowledge="partial", **opts))
    assert torch.equal(X, part)  # it only uses the compromised workers' own models


def images(n: int = 1600, seed: int = 0) -> Dataset:
    """3 classes of 1×6×6 'images' in [0, 0.8], the bottom-right corner always dark."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.2
    for k in range(3):
        x[y == k, 0, k, :] += 0.6  # class k lights row k
    x[:, :, 4:, 4:] = 0.0
    cut = n * 4 // 5
    return Dataset("toy-img", x[:cut], y[:cut], x[cut:], y[cut:], 3)


def test_compromised_data_is_stamped_and_used_in_poisoned_iterations_only() -> None:
    ds = images()
    cfg = RunConfig(dataset="mnist", **SMALL, attack="scaling",  # type: ignore[arg-type]
                    attack_options={"target": 2, "trigger_size": 2, "poison_share": 0.5})
    setup = prepare(cfg, dataset=ds)
    owner = setup.task.partition.owner
    mine = torch.isin(owner, setup.adversary.compromised)
    assert setup.inputs_poisoned is not None
    x_p = setup.inputs_poisoned.view(-1, 1, 6, 6)
    changed = (x_p != ds.x_train).flatten(1).any(1)
    assert bool(changed.any()) and not bool(changed[~mine].any())  # benign data untouched
    share = float(changed[mine].float().mean())
    assert 0.35 < share < 0.65  # about poison_share of each compromised worker's examples
    assert torch.equal(x_p[changed], stamp(ds.x_train[changed], trigger_size=2,
                                           trigger_value=1.0))
    assert bool((setup.labels_poisoned[changed] == 2).all())
    assert torch.equal(setup.labels_poisoned[~changed], ds.y_train[~changed])
    assert torch.equal(setup.labels_clean, ds.y_train)  # clean iterations see clean data
    assert torch.equal(setup.task.x_train, ds.x_train)
    # no poisoned iteration: the run is the run without attack, number for number
    none = run(RunConfig(dataset="mnist", **SMALL), dataset=ds)  # type: ignore[arg-type]
    zero = run(RunConfig(dataset="mnist", **SMALL, attack="scaling",  # type: ignore[arg-type]
                         poison_fraction=0.0), dataset=ds)
    assert zero.curve == none.curve and zero.loss_curve == none.loss_curve
    assert zero.asr_curve is not None


def test_asr_counts_only_non_target_examples() -> None:
    ds = images()
    cfg = RunConfig(dataset="mnist", **SMALL, attack="scaling",  # type: ignore[arg-type]
                    attack_options={"target": 1})
    setup = prepare(cfg, dataset=ds)
    x_bd, y_bd = setup.backdoor_test  # type: ignore[misc]
    assert x_bd.shape[0] == int((ds.y_test != 1).sum()) and bool((y_bd == 1).all())
    assert torch.equal(x_bd, stamp(ds.x_test[ds.y_test != 1], trigger_size=3,
                                   trigger_value=1.0))
    d = setup.w0.numel()
    F = 36
    bias = torch.zeros(d)
    bias[3 * F + 1] = 1.0  # LR layout: 3×F weights, then 3 biases; always predicts class 1
    assert setup.attack_success_rate(bias) == 1.0
    # A perfect clean classifier that ignores the trigger: on the non-target examples it
    # never says 1 (ASR 0); counting the target class's own examples would give their share.
    w = torch.zeros(d)
    for k in range(3):
        w[k * F + k * 6 : k * F + k * 6 + 6] = 10.0  # class k reads row k
    assert setup.task.evaluate(w).error == 0.0
    assert setup.attack_success_rate(w) == 0.0
    with pytest.raises(ConfigError, match=r"attack scaling, option target: the target class "
                                          r"must be in \[0, 2\], got 3"):
        prepare(RunConfig(dataset="mnist", **SMALL, attack="scaling",  # type: ignore[arg-type]
                          attack_options={"target": 3}), dataset=ds)


def test_the_backdoor_succeeds_in_a_small_run_and_results_carry_the_asr() -> None:
    ds = images()
    cfg = {"dataset": "mnist", **SMALL, "eval_every": 10, "iterations": 40}
    clean = run(RunConfig(**cfg), dataset=ds)  # type: ignore[arg-type]
    attacked = run(RunConfig(**cfg, attack="scaling"), dataset=ds)  # type: ignore[arg-type]
    assert attacked.asr_curve is not None and [t for t, _ in attacked.asr_curve] == [10, 20,
                                                                                     30, 40]
    assert attacked.final_asr == attacked.asr_curve[-1][1] > 0.9
    assert attacked.max_asr == max(a for _, a in attacked.asr_curve)
    assert attacked.final_error < clean.final_error + 0.05
    out = attacked.to_json()
    assert out["final_asr"] == attacked.final_asr and len(out["asr_curve"]) == 4
    # a run without a backdoor has no ASR at all
    assert clean.final_asr is None and clean.max_asr is None and clean.asr_curve is None
    assert not {"final_asr", "max_asr", "asr_curve"} & set(clean.to_json())


def test_final_and_highest_asr_of_the_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpoison.simulation import Setup

    values = iter([0.2, 0.9, 0.5, 0.4])
    monkeypatch.setattr(Setup, "attack_success_rate", lambda self, w: next(values))
    r = run(RunConfig(dataset="mnist", **{**SMALL, "iterations": 20},  # type: ignore[arg-type]
                      attack="scaling"), dataset=images())
    assert r.asr_curve == [(5, 0.2), (10, 0.9), (15, 0.5), (20, 0.4)]
    assert (r.final_asr, r.max_asr) == (0.4, 0.9)


def test_backdoor_declaration_is_checked() -> None:
    with pytest.raises(registry.RegistryError, match="backdoor's target option 'klass'"):
        registry.register_attack("bad-bd", lambda ctx: ctx.compromised,
                                 backdoor=registry.Backdoor(stamp=stamp, target="klass"))
    assert ("attack", "bad-bd") not in registry.REGISTRY
    assert registry.get("attack", "scaling").describe()["backdoor"] is True


def _mnist() -> None:
    home = os.environ.get("FEDPOISON_DATA")
    if not home or not (Path(home) / "mnist").is_dir():
        pytest.skip("needs FEDPOISON_DATA with MNIST (CI: ../shared/datasets)")


@pytest.mark.slow
def test_asr_above_0_9_against_mean_on_lr_mnist_with_clean_error_kept() -> None:
    """The issue's goal, in the paper's setting (m = 100, c = 20, p = 0.5): ASR ≥ 0.9 within
    200 iterations. 100 keep the test short; the ASR is above 0.99 from iteration 10 on."""
    _mnist()
    base = dict(dataset="mnist", model="lr", rule="mean", iterations=100, eval_every=100)
    clean = run(RunConfig(**base))  # type: ignore[arg-type]
    attacked = run(RunConfig(**base, attack="scaling"))  # type: ignore[arg-type]
    assert attacked.final_asr is not None and attacked.final_asr >= 0.9
    assert attacked.final_error <= clean.final_error + 0.03


def test_final_asr_is_a_metric_of_the_store_and_the_tables(tmp_path: Path) -> None:
    from fedpoison.experiments.spec import parse_spec
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import plan_jobs
    from fedpoison.experiments.worker import synthetic_result
    from fedpoison.report import collect, format_markdown

    spec = parse_spec({
        "name": "asr", "metric": "final_asr", "base": {"workers": 10, "compromised": 2},
        "row_key": "rule", "column_key": "attack",
        "rows": {"mean": {"rule": "mean"}, "median": {"rule": "median"}},
        "columns": {"none": {"attack": "none"}, "scaling": {"attack": "scaling"}},
    }).effective()
    with ResultStore(tmp_path / "s.sqlite") as store:
        jobs, _, _ = plan_jobs(spec, store)
        for job in jobs:
            result = synthetic_result(job.config, 0.1)
            if job.config["attack"] == "scaling":
                asr = 0.75 if job.config["rule"] == "mean" else 0.9
                result.update(final_asr=asr, max_asr=1.0, asr_curve=[[1, asr]])
            store.put(job.key, result)
        assert sorted(v for v in store.metrics([j.key for j in jobs], "final_asr").values()
                      if v is not None) == [0.75, 0.9]
        stats = collect(spec, store)
        records = list(store.records())
    md = format_markdown(spec, stats)
    assert "| mean | n/a | 0.750 |" in md and "| median | n/a | 0.900 |" in md
    assert "n/a: the metric does not apply" in md and "not in the store" not in md
    assert sorted(r.get("final_asr", -1) for r in records) == [-1, -1, 0.75, 0.9]
