"""CUDA gives the CPU's numbers: every rule, pre-aggregator and model attack on CUDA tensors,
and short simulations with ``device="cuda"`` against ``device="cpu"``.

Every test skips without CUDA (here and in CI). Random draws come from CPU generators in
both cases (the run's generators are CPU generators; the components draw on the
generator's device and move the draws), so the random streams are the same on both
devices and every output is compared to the CPU one, not only checked for shape.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedpoison import registry
from fedpoison.attacks import AttackContext
from fedpoison.config import RunConfig
from fedpoison.errors import ConfigError
from fedpoison.notes import settle_notes
from fedpoison.server import BoundPreaggregator, ServerContext, ServerData, bind_pipeline, bind_rule
from fedpoison.simulation import prepare, run

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

M, D, F = 25, 50, 5

RULES = [s.name for s in registry.specs("rule") if s.module.startswith("fedpoison.")]
PREAGGREGATORS = [s.name for s in registry.specs("preaggregator")
                  if s.module.startswith("fedpoison.")]
#: Rules an attack with ``target: option`` is crafted against.
TARGETS = ("krum", "bulyan", "trimmed-mean", "median")


def matrix(seed: int = 0, m: int = M, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """``(previous, W)``: a global model and ``m`` local models around it (float32)."""
    g = torch.Generator().manual_seed(seed)
    previous = torch.randn(d, generator=g)
    W = previous - 0.02 * torch.randn(d, generator=g) + 0.1 * torch.randn(m, d, generator=g)
    return previous, W


def server_context(W: torch.Tensor, previous: torch.Tensor, seed: int = 0) -> ServerContext:
    """A context on ``W``'s device: a CPU generator (as in a run) and server data whose
    ``evaluate`` and ``train`` compute on that device."""
    device = W.device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, W.shape[1], generator=g).to(device)
    y = torch.randint(2, (40,), generator=g).to(device)

    def evaluate(models: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = models.double().abs().sum(dim=1)
        return score, score

    def train(w: torch.Tensor, rounds: int, generator: torch.Generator) -> torch.Tensor:
        for _ in range(rounds):
            w = w + 0.1 * (x.mean(0) - w)
        return w

    return ServerContext(1, previous.clone(), {}, g, ServerData(x, y, evaluate, train),
                         workers=torch.arange(W.shape[0]), rows=W.shape[0])


def assert_same(gpu: torch.Tensor, cpu: torch.Tensor) -> None:
    assert gpu.device.type == "cuda", f"output on {gpu.device}"
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ rules


@needs_cuda
@pytest.mark.parametrize("name", RULES)
def test_rule_on_cuda_gives_the_cpu_output(name: str) -> None:
    previous, W = matrix(1)
    bound = bind_rule(name)
    bound.check(M, F)
    cpu = bound(W, F, server_context(W, previous))
    gpu = bound(W.cuda(), F, server_context(W.cuda(), previous.cuda()))
    assert_same(gpu, cpu)


@needs_cuda
@pytest.mark.parametrize("name", RULES)
def test_rule_leave_one_out_on_cuda(name: str) -> None:
    """``with_and_without`` (what the defenses call) on CUDA gives the CPU's rows."""
    previous, W = matrix(2, m=12, d=20)
    bound = bind_rule(name)
    f = 1
    try:
        bound.check(11, f)
    except ValueError:
        pytest.skip(f"{name} does not accept 11 rows with f = {f}")
    a_cpu, b_cpu = bound.with_and_without(W, f, server_context(W, previous))
    a_gpu, b_gpu = bound.with_and_without(W.cuda(), f,
                                          server_context(W.cuda(), previous.cuda()))
    assert_same(a_gpu, a_cpu)
    assert_same(b_gpu, b_cpu)


# ------------------------------------------------------------------ pre-aggregators


@needs_cuda
@pytest.mark.parametrize("name", PREAGGREGATORS)
def test_preaggregator_on_cuda_gives_the_cpu_output(name: str) -> None:
    previous, W = matrix(3)
    spec = registry.get("preaggregator", name)
    pre = BoundPreaggregator(spec, spec.resolve_options({}))
    cpu = pre(W, F, server_context(W, previous))
    gpu = pre(W.cuda(), F, server_context(W.cuda(), previous.cuda()))
    assert_same(gpu, cpu)
    # and followed by a rule
    pipeline = bind_pipeline("median", {}, [(name, {})])
    assert_same(pipeline(W.cuda(), F, server_context(W.cuda(), previous.cuda())),
                pipeline(W, F, server_context(W, previous)))


@needs_cuda
@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
@pytest.mark.parametrize("name", PREAGGREGATORS)
def test_leave_one_out_through_a_preaggregator_on_cuda(name: str, rule: str) -> None:
    """A defense's leave-one-out behind a pre-aggregator (bucketing's hook and the median's
    batched replaced-row path included) on CUDA gives the CPU's rows."""
    previous, W = matrix(4, m=12, d=20)
    pipeline = bind_pipeline(rule, {}, [(name, {})])
    a_cpu, b_cpu = pipeline.with_and_without(W, 1, server_context(W, previous))
    a_gpu, b_gpu = pipeline.with_and_without(W.cuda(), 1,
                                             server_context(W.cuda(), previous.cuda()))
    assert_same(a_gpu, a_cpu)
    assert_same(b_gpu, b_cpu)


# ------------------------------------------------------------------ model attacks


def attack_cases() -> list[tuple[str, str, str | None, str]]:
    """``(attack, knowledge, target rule, goal)`` for every model attack the registry has,
    against each rule it may target."""
    out = []
    for spec in registry.specs("attack"):
        if spec.data:
            continue
        targets: tuple[str | None, ...] = (None,)
        if spec.target == "option":
            targets = TARGETS
        elif spec.target is not None:
            targets = (spec.target,)
        for knowledge in spec.knowledge:
            for goal in spec.goals or ("directed",):
                for target in targets:
                    opts = spec.resolve_options({})
                    opts.pop("target_rule", None)
                    if spec.check is not None:
                        try:
                            spec.check(m=M, c=F, f=F, knowledge=knowledge, goal=goal,
                                       **({"target_rule": target}
                                          if spec.target == "option" else {}), **opts)
                        except (ValueError, ConfigError):
                            continue
                    out.append((spec.name, knowledge, target, goal))
    return out


def attack_context(W: torch.Tensor, w_re: torch.Tensor, knowledge: str, target: str | None,
                   goal: str, generator: torch.Generator) -> AttackContext:
    d = W.shape[1]
    return AttackContext(
        compromised=W[:F], benign=W[F:] if knowledge == "full" else None, w_re=w_re, m=M,
        knowledge=knowledge,  # type: ignore[arg-type]
        goal=goal,  # type: ignore[arg-type]
        f=F, generator=generator,
        target=bind_pipeline(target, {}) if target else None,
        init=lambda g: torch.zeros(d))  # LR's initializer (MPAF's base model)


@needs_cuda
@pytest.mark.parametrize(("name", "knowledge", "target", "goal"), attack_cases(),
                         ids=lambda v: str(v))
def test_attack_on_cuda_gives_the_cpu_models(name: str, knowledge: str, target: str | None,
                                             goal: str) -> None:
    w_re, W = matrix(4)
    spec = registry.get("attack", name)
    opts = spec.resolve_options({})
    opts.pop("target_rule", None)

    def craft(W: torch.Tensor, w_re: torch.Tensor) -> torch.Tensor:
        # Mimic keeps its state per run (ctx.state): one fresh generator and state per
        # device, two calls (the warm-up and the next iteration).
        g, state = torch.Generator().manual_seed(0), {}
        ctx = dataclasses.replace(attack_context(W, w_re, knowledge, target, goal, g),
                                  state=state)
        out = spec.impl(ctx, **opts)
        if name == "mimic":
            out = spec.impl(dataclasses.replace(ctx, state=state), **opts)
        return out

    cpu = craft(W, w_re)
    gpu = craft(W.cuda(), w_re.cuda())
    assert_same(gpu, cpu)


# ------------------------------------------------------------------ simulations


def tiny(**kw: object) -> RunConfig:
    base: dict[str, object] = dict(dataset="mnist", model="lr", workers=20, compromised=4,
                                   iterations=5, eval_every=1)
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


SIMULATIONS: dict[str, dict[str, object]] = {
    **{f"rule {r}": {"rule": r} for r in ("mean", "krum", "trimmed-mean", "median", "bulyan")},
    "attack krum full": {"rule": "krum", "attack": "krum", "knowledge": "full"},
    "attack krum partial": {"rule": "krum", "attack": "krum", "knowledge": "partial"},
    "attack trimmed-mean": {"rule": "trimmed-mean", "attack": "trimmed-mean"},
    "attack alie": {"rule": "median", "attack": "alie"},
    "attack min-max": {"rule": "median", "attack": "min-max"},
    "defense union": {"rule": "mean", "defense": "union"},
    "model cnn": {"rule": "median", "model": "cnn", "iterations": 2},
}


def check_config(config: RunConfig) -> None:
    """Bulyan needs m >= 4c + 3: 20 >= 19 with c = 4."""
    bind_rule(config.rule).check(config.workers, config.compromised)


@needs_cuda
@pytest.mark.parametrize("label", list(SIMULATIONS))
def test_simulation_on_cuda_gives_the_cpu_curves(label: str) -> None:
    config = tiny(**SIMULATIONS[label])
    check_config(config)
    cpu = run(config)
    gpu = run(tiny(**SIMULATIONS[label], device="cuda"))
    assert [t for t, _ in gpu.curve] == [t for t, _ in cpu.curve]
    for (t, e_gpu), (_, e_cpu) in zip(gpu.curve, cpu.curve, strict=True):
        assert abs(e_gpu - e_cpu) <= 0.01, f"{label}: error at iteration {t}: " \
                                           f"cuda {e_gpu} vs cpu {e_cpu}"
    for (t, l_gpu), (_, l_cpu) in zip(gpu.loss_curve, cpu.loss_curve, strict=True):
        assert abs(l_gpu - l_cpu) <= 1e-3 * abs(l_cpu), f"{label}: loss at iteration {t}: " \
                                                       f"cuda {l_gpu} vs cpu {l_cpu}"



@needs_cuda
@pytest.mark.parametrize("model", ["lr", "cnn"])
@pytest.mark.parametrize("rule", ["mean", "trimmed-mean", "median"])
def test_an_iteration_never_waits_for_the_device(model: str, rule: str) -> None:
    """Issue 16: without an attack, an iteration on CUDA (batch draw, upload, local
    training, aggregation, diagnostics) never makes the host wait for the device; only
    reading the evaluation's scalars does. ``set_sync_debug_mode("error")`` raises on any
    synchronizing call (``.item()``, ``bool(tensor)``, a blocking copy, ``nonzero``)."""
    setup = prepare(tiny(rule=rule, model=model, device="cuda"))
    notes: dict[str, list[object]] = {}
    w = setup.step(setup.w0, 1, notes)  # warm-up: allocators, pinned host blocks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in (2, 3, 4):
            w = setup.step(w, t, notes)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    settle_notes(notes)
    assert len(notes["against_mean_direction"]) == 4
    assert all(isinstance(v, float) for v in notes["against_mean_direction"])
    assert bool(torch.isfinite(w).all())
