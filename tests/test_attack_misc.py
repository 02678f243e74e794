"""Gaussian baseline, the shared direction, the registry and input checks."""

from __future__ import annotations

import pytest
import torch

from attack_helpers import craft, make_context
from fedpoison import RunConfig, registry
from fedpoison.aggregators import krum, median, trimmed_mean
from fedpoison.attacks import AttackContext
from fedpoison.attacks.direction import direction, partial_direction
from fedpoison.errors import ConfigError

M, C, D = 40, 8, 300


def models(seed: int, m: int = M, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_re = torch.randn(d, generator=g)
    W = w_re - 0.02 * torch.randn(d, generator=g) + 0.1 * torch.randn(m, d, generator=g)
    return w_re, W


def context(w_re: torch.Tensor, W: torch.Tensor, rule: str = "gaussian", *,
            knowledge: str = "full", seed: int = 1, benign: torch.Tensor | None = None,
            c: int = C, **options: object) -> AttackContext:
    return make_context(w_re, W, rule=rule, c=c, knowledge=knowledge, seed=seed,
                        benign=benign, **options)


def test_registry_names() -> None:
    names = set(registry.names("attack"))
    assert {"gaussian", "krum", "trimmed-mean", "label-flip", "bga"} <= names
    assert registry.REGISTRY.canonical("attack", "median") == ("trimmed-mean",
                                                               {"target_rule": "median"})


def test_gaussian_matches_all_workers_statistics() -> None:
    w_re, W = models(0, m=400, d=50)
    c = 200  # many draws per coordinate to estimate the distribution
    X = craft("gaussian", context(w_re, W, c=c))
    mu, sd = W.double().mean(0), W.double().std(0)
    z = (X.double().mean(0) - mu) / (sd / c**0.5)
    assert float(z.abs().max()) < 5
    ratio = X.double().std(0) / sd
    assert float((ratio - 1).abs().max()) < 0.3
    assert X.dtype == torch.float32 and X.shape == (c, 50)


def test_gaussian_full_uses_benign_partial_does_not() -> None:
    w_re, W = models(1)
    full = craft("gaussian", context(w_re, W))
    W2 = W.clone()
    W2[C:] += 1.0
    assert not torch.equal(full, craft("gaussian", context(w_re, W2)))
    none = craft("gaussian", context(w_re, W, knowledge="partial"))
    nan = craft("gaussian",
        context(w_re, W, knowledge="partial", benign=torch.full((M - C, D), torch.nan)))
    assert torch.equal(none, nan) and bool(torch.isfinite(none).all())
    # partial: the compromised models' statistics
    mu = W[:C].double().mean(0)
    Z = torch.randn((C, D), generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(none.double(), mu + W[:C].double().std(0) * Z, rtol=0,
                               atol=1e-6)


def test_gaussian_seeded() -> None:
    w_re, W = models(2)
    a = craft("gaussian", context(w_re, W, seed=3))
    b = craft("gaussian", context(w_re, W, seed=3))
    c = craft("gaussian", context(w_re, W, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("rule", ["krum", "trimmed-mean", "median"])
@pytest.mark.parametrize("estimator", ["mean", "rule"])
def test_full_direction_is_sign_of_before_attack_change(rule: str, estimator: str) -> None:
    w_re, W = models(3)
    W[:, :2] = w_re[:2]  # no change -> 0
    agg = {"krum": krum, "trimmed-mean": trimmed_mean, "median": median}[rule]
    s = direction(context(w_re, W, rule), estimator)
    if estimator == "rule":
        assert torch.equal(s, torch.sign(agg(W, C) - w_re))
        assert torch.equal(s, direction(context(w_re, W, rule)))  # the default
    else:
        assert torch.equal(s, torch.sign(W.double().mean(0) - w_re.double()).float())
    assert bool((s[:2] == 0).all())
    # The compromised workers' before-attack models count: changing them changes w.
    W2 = W.clone()
    W2[:C, 2:] += 10.0
    assert not torch.equal(s, direction(context(w_re, W2, rule), estimator))


def test_partial_direction_is_sign_of_compromised_mean() -> None:
    w_re, W = models(4)
    ctx = context(w_re, W, "krum", knowledge="partial")
    assert torch.equal(partial_direction(ctx), torch.sign(W[:C].double().mean(0) - w_re).float())
    assert torch.equal(direction(ctx), partial_direction(ctx))


@pytest.mark.parametrize("name", ["gaussian", "krum", "trimmed-mean", "median"])
@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_every_attack_returns_float32_c_by_d(name: str, knowledge: str) -> None:
    w_re, W = models(5)
    X = craft(name, context(w_re, W.double(), name, knowledge=knowledge))
    assert X.shape == (C, D) and X.dtype == torch.float32 and X.device == w_re.device
    assert bool(torch.isfinite(X).all())


@pytest.mark.parametrize("name", ["gaussian", "krum", "trimmed-mean", "median"])
def test_bad_inputs_raise(name: str) -> None:
    w_re, W = models(6)
    with pytest.raises(ValueError, match="w_re"):
        craft(name, context(w_re[:-1], W, name))
    with pytest.raises(ValueError, match="knowledge"):
        craft(name, context(w_re, W, name, knowledge="some"))
    ctx = context(w_re, W, name)
    wrong_m = AttackContext(compromised=ctx.compromised, benign=ctx.benign, w_re=w_re, m=M + 1,
                            knowledge="full", f=C, generator=ctx.generator, target=ctx.target)
    with pytest.raises(ValueError, match="m must equal"):
        craft(name, wrong_m)


def test_attack_combinations_checked_when_the_config_resolves() -> None:
    base = {"dataset": "breast-cancer", "workers": 20, "compromised": 4}
    RunConfig(**base, rule="krum", attack="krum", knowledge="partial", goal="deviation").resolve()
    RunConfig(**base, rule="median", attack="median", goal="deviation").resolve()
    with pytest.raises(ConfigError, match="deviation"):
        RunConfig(**base, attack="trimmed-mean", knowledge="partial", goal="deviation").resolve()
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        RunConfig(**base, attack="nope").resolve()
    with pytest.raises(ConfigError, match="epsilon"):
        RunConfig(**base, rule="krum", attack="krum", attack_options={"epsilon": -1}).resolve()
    with pytest.raises(ConfigError, match="has no option 'epsilon'"):
        RunConfig(**base, attack="trimmed-mean", attack_options={"epsilon": 0.1}).resolve()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["gaussian", "krum", "trimmed-mean", "median"])
@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_cuda_gives_the_cpu_models(name: str, knowledge: str) -> None:
    w_re, W = models(7)
    cpu = craft(name, context(w_re, W, name, knowledge=knowledge))
    gpu = craft(name, context(w_re.cuda(), W.cuda(), name, knowledge=knowledge))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
