"""Mimic does what Karimireddy, He, Jaggi (ICLR 2022) and their code do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attack_helpers import craft, hostile, loops_outside, make_context, synthetic
from fedpoison import RunConfig
from fedpoison.attacks import mimic
from fedpoison.errors import ConfigError

M, C, D = 30, 6, 40


def context(w_re: torch.Tensor, W: torch.Tensor, *, benign: torch.Tensor | None = None,
            seed: int = 1, **options: object):
    ctx = make_context(w_re, W, rule="mimic", c=C, benign=benign, seed=seed, **options)
    return dataclasses.replace(ctx, state={})  # one run: one state across its iterations


def reference_run(w_re: torch.Tensor, rounds: list[torch.Tensor], warmup: int, seed: int
                  ) -> list[int]:
    """The authors' procedure written out worker by worker: the target row per round."""
    g = torch.Generator().manual_seed(seed)
    targets: list[int] = []
    mu = z = None
    target = -1
    for t, W in enumerate(rounds):
        grads = [W[i].double() - w_re.double() for i in range(C, M)]
        avg = sum(grads) / len(grads)
        if t == 0:
            mu = avg
            z = torch.randn(D, generator=g).double()
            cumu = sum(float((x - mu) @ z) * (x - mu) for x in grads)
            z = cumu / cumu.norm()
        elif t < warmup:
            mu = t / (1 + t) * mu + avg / (1 + t)
            cumu = sum(float((x - mu) @ z) * (x - mu) for x in grads)
            z = t / (1 + t) * z + cumu / cumu.norm() / (1 + t)
            z = z / z.norm()
        if t < warmup:
            values = [float(x @ z) for x in grads]
            target = max(range(len(values)), key=values.__getitem__)
        targets.append(target)
    return targets


@pytest.mark.parametrize("warmup", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_copies_the_worker_the_papers_online_heuristic_picks(warmup: int, seed: int) -> None:
    w_re, _ = synthetic(seed, M, D)
    rounds = [synthetic(10 * seed + r, M, D)[1] for r in range(5)]
    want = reference_run(w_re, rounds, warmup, seed=7)
    ctx = context(w_re, rounds[0], seed=7, warmup=warmup)
    got = []
    for W in rounds:  # one run: the same state dict (and generator) carries the state
        X = craft("mimic", dataclasses.replace(ctx, compromised=W[:C], benign=W[C:]))
        j = int(torch.nonzero((W[C:] == X[0]).all(1))[0, 0])
        assert bool((W[C + j] == X).all())  # an exact copy, sent by every compromised worker
        got.append(j)
    assert got == want
    assert len(set(got[warmup - 1:])) == 1  # fixed after the warm-up


def test_picks_the_extreme_worker_along_the_planted_direction() -> None:
    g = torch.Generator().manual_seed(0)
    w_re = torch.zeros(D)
    axis = torch.zeros(D)
    axis[3] = 1.0
    spread = torch.randn(M, 1, generator=g) * 5.0  # large variance along coordinate 3
    W = 0.01 * torch.randn(M, D, generator=g) + spread * axis
    ctx = context(w_re, W, seed=2)
    X = craft("mimic", ctx)
    z = mimic.state_of(ctx).z
    assert abs(float(z[3])) > 0.99
    proj = (W[C:] @ z.float())
    assert torch.equal(X[0], W[C + int(proj.argmax())])
    assert abs(float(proj.max())) >= float(proj.abs().min())  # an extreme, not a central one


def test_needs_full_knowledge() -> None:
    base = {"dataset": "breast-cancer", "workers": 20, "compromised": 4, "attack": "mimic"}
    RunConfig(**base).resolve()
    with pytest.raises(ConfigError, match="supports full"):
        RunConfig(**base, knowledge="partial").resolve()
    with pytest.raises(ConfigError, match="warmup"):
        RunConfig(**base, attack_options={"warmup": 0}).resolve()
    w_re, W = synthetic(0, M, D)
    with pytest.raises(ValueError, match="full knowledge"):
        craft("mimic", make_context(w_re, W, rule="mimic", c=C, knowledge="partial"))


def test_hostile_benign_rows_do_not_crash() -> None:
    w_re, W = synthetic(3, M, D)
    for B in hostile(W[C:]):
        ctx = context(w_re, W, benign=B, warmup=2)
        for _ in range(3):
            assert craft("mimic", ctx).shape == (C, D)


def test_same_seed_same_rows() -> None:
    w_re, W = synthetic(4, M, D)
    assert torch.equal(craft("mimic", context(w_re, W, seed=3)),
                       craft("mimic", context(w_re, W, seed=3)))


def test_vectorized() -> None:
    assert loops_outside(mimic.__file__, set()) == []
