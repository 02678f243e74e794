"""MPAF (Cao & Gong, CVPR-W 2022): fake updates λ(w̃ − w_Re) drag the global model to w̃."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attack_helpers import craft, make_context
from fedpoison import RunConfig
from fedpoison.aggregators import mean
from fedpoison.attacks import AttackContext
from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError
from fedpoison.models.cnn import CNN
from fedpoison.simulation import prepare, run

M, C, D = 30, 6, 200
OPTS = {"scale": 1e6, "base": "normal", "base_seed": 0, "base_std": 1.0}


def models(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_re = torch.randn(D, generator=g)
    return w_re, w_re + 0.1 * torch.randn(M, D, generator=g)


def ctx_for(w_re: torch.Tensor, W: torch.Tensor, **options: object) -> AttackContext:
    return make_context(w_re, W, rule="mpaf", c=C, **{**OPTS, **options})


def test_every_fake_client_sends_lambda_times_the_way_to_the_base_model() -> None:
    w_re, W = models()
    X = craft("mpaf", ctx_for(w_re, W, scale=3.0, base_std=0.5))
    base = 0.5 * torch.randn(D, generator=torch.Generator().manual_seed(0))
    assert X.shape == (C, D) and X.dtype == torch.float32
    assert torch.allclose(X, (w_re + 3.0 * (base - w_re)).expand(C, -1), atol=1e-6)
    other = craft("mpaf", ctx_for(w_re, W, scale=3.0, base_std=0.5, base_seed=1))
    assert not torch.allclose(other, X)  # the seed picks the base model


def test_mean_moves_the_global_model_to_the_base_model() -> None:
    """With λ = m/c the fake updates replace the mean's update: w' = w̃ + benign drift."""
    w_re, W = models(1)
    X = craft("mpaf", ctx_for(w_re, W, scale=M / C))
    base = torch.randn(D, generator=torch.Generator().manual_seed(0))
    W2 = W.clone()
    W2[:C] = X
    new = mean(W2, C)
    drift = (W[C:] - w_re).sum(0) / M
    assert torch.allclose(new, base + drift, atol=1e-5)
    assert (new - base).norm() < 0.1 * (w_re - base).norm()


def test_base_init_is_the_models_own_initializer() -> None:
    cnn = CNN((1, 12, 12), 4)
    w_re = cnn.init(torch.Generator().manual_seed(5))
    W = w_re + 0.01 * torch.randn(M, cnn.dim, generator=torch.Generator().manual_seed(2))
    ctx = make_context(w_re, W, rule="mpaf", c=C, scale=2.0, base="init", base_seed=7,
                       base_std=1.0)
    ctx = dataclasses.replace(ctx, init=cnn.init)
    X = craft("mpaf", ctx)
    base = cnn.init(torch.Generator().manual_seed(7))
    assert torch.allclose(X[0], w_re + 2.0 * (base - w_re), atol=1e-5)
    with pytest.raises(ValueError, match="initializer"):
        craft("mpaf", make_context(w_re, W, rule="mpaf", c=C, scale=2.0, base="init",
                                   base_seed=7, base_std=1.0))


def test_needs_no_benign_model_and_survives_hostile_rows() -> None:
    w_re, W = models(2)
    full = craft("mpaf", ctx_for(w_re, W))
    partial = craft("mpaf", ctx_for(w_re, W, knowledge="partial"))
    hostile = W.clone()
    hostile[C:, ::3] = torch.nan
    hostile[C:, 1::3] = torch.inf
    hostile[:C, 2::3] = -torch.inf  # its own trained models are ignored too
    assert torch.equal(full, partial)
    assert torch.equal(full, craft("mpaf", ctx_for(w_re, hostile)))
    assert bool(torch.isfinite(full).all())


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"attack mpaf, option base: must be one of init, "
                                          r"normal, got 'zeros'"):
        RunConfig(attack="mpaf", attack_options={"base": "zeros"}).resolve()
    with pytest.raises(ConfigError, match=r"option scale: must be a number > 0"):
        RunConfig(attack="mpaf", attack_options={"scale": 0}).resolve()


@pytest.fixture(scope="module")
def toy() -> Dataset:
    g = torch.Generator().manual_seed(0)
    n, d, L = 1500, 12, 3
    centers = torch.randn(L, d, generator=g)
    y = torch.randint(L, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    return Dataset("toy", x[:1200], y[:1200], x[1200:], y[1200:], L)


def test_in_a_run_the_global_model_goes_to_the_base_model(toy: Dataset) -> None:
    """Under the mean rule the fake clients pull the global model onto w̃ (run loop, LR)."""
    cfg = dict(dataset="mnist", model="lr", rule="mean", workers=20, compromised=4,
               iterations=15, lr=0.3)
    opts = {"scale": 5.0, "base": "normal", "base_seed": 3}

    def distances(attack: str) -> list[float]:
        setup = prepare(RunConfig(**cfg, attack=attack,  # type: ignore[arg-type]
                                  attack_options=opts if attack != "none" else {}),
                        dataset=toy)
        base = torch.randn(setup.w0.numel(), generator=torch.Generator().manual_seed(3))
        w, out = setup.w0, []
        for t in range(1, 16):
            w = setup.step(w, t, {})
            out.append(float((w - base).norm() / base.norm()))
        return out

    clean, attacked = distances("none"), distances("mpaf")
    assert attacked[-1] < 0.2 and clean[-1] > 0.9  # λ = m/c: w̃ up to the benign drift
    error = run(RunConfig(**cfg, attack="mpaf", attack_options=opts),  # type: ignore[arg-type]
                dataset=toy)
    assert error.final_error > 0.4  # a random model: near chance for 3 classes
