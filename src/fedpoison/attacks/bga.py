"""Back-gradient optimization poisoning (BGA) of multinomial logistic regression.

The attack of Muñoz-González, Biggio, Demontis, Paudice, Wongrassamee, Lupu and Roli, "Towards
Poisoning of Deep Learning Algorithms with Back-gradient Optimization" (AISec 2017), which
Fang et al. (USENIX Security 2020, Section 4.4 and Table 5) compare against. It solves the
bilevel problem

    max_{x_p ∈ [0, 1]^{P×F}}  A(w_T(x_p)) = cross-entropy of w_T on a validation set D_val
    s.t. w_T(x_p) = T steps of gradient descent on the training loss of D_tr ∪ D_p

by projected gradient ascent on the poisoned features x_p (labels stay fixed). The outer
gradient ∂A/∂x_p is a *back-gradient*: the T inner steps are run forward keeping only the
final state, then reversed one step at a time while the adjoints are accumulated with
Hessian-vector and mixed second-derivative products (Muñoz-González et al., Algorithm 1).

Exact reversal follows Maclaurin, Duvenaud and Adams, "Gradient-based Hyperparameter
Optimization through Reversible Learning" (ICML 2015): the inner learner is heavy-ball
gradient descent, v ← γv − η∇L(w), w ← w + v, carried out on integers in fixed point
(w = W·2⁻ᴿ). The only information a step destroys is the remainder of γ·V = (num/den)·V; it
is kept in a byte per parameter and step, so the reverse pass recovers every w_t and v_t bit
for bit (memory T·d bytes, e.g. 0.8 MB for T = 100 and d = 7850; no autograd graph, no
stored trajectory). The closed-form derivatives of softmax regression need no autograd.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fedpoison.attacks.base import DataAttackContext, TrainingData
from fedpoison.registry import Option, register_attack

Init = Literal["flip", "random"]
Placement = Literal["uniform", "single-worker"]

RADIX_BITS = 42
"""Fixed-point resolution of the inner learner's state: w = W·2⁻⁴² (≈ 2.3e-13)."""

_MAX_ABS = 2.0 ** (62 - RADIX_BITS - 8)
"""Largest |w| or |v| the int64 state may hold with room for γ's numerator (≤ 255)."""


@dataclass(frozen=True)
class BGASettings:
    """Every parameter that changes the poisoned points (defaults: docs/choices.md, BGA).

    ``budget`` is the number of poisoned points as a fraction of the victim's training set
    (paper: 240/6000 = 4%). ``inner_steps`` is T, ``inner_lr`` η and ``momentum`` γ of the
    inner heavy-ball gradient descent, started from the model trained on clean data
    (``warm_steps`` steps of the same learner from zero). ``outer_steps`` projected ascent
    steps move every poisoned point along its L2-normalized back-gradient by a step that
    decays linearly from ``step_size`` (L2 norm, pixel units) to ``step_size``/10. ``init``:
    poisoned points start as copies of training points with labels flipped l → L − l − 1
    (``flip``, the paper's label-flip rule) or replaced by a uniformly random other label
    (``random``). ``val_fraction``: 0 (default) makes the whole clean training set both D_tr
    and D_val (full knowledge: the attacker maximizes the victim's loss on its own clean
    data); f > 0 holds out a random fraction f as D_val and trains on the rest.
    """

    budget: float = 0.04
    inner_steps: int = 60
    outer_steps: int = 100
    step_size: float = 1.0
    inner_lr: float = 0.5
    momentum: float = 0.9
    warm_steps: int = 300
    init: Init = "flip"
    val_fraction: float = 0.0
    dtype: Literal["float32", "float64"] = "float32"

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if not (math.isfinite(self.budget) and self.budget >= 0):
            raise ValueError(f"bga budget: must be a finite number >= 0, got {self.budget}")
        for name in ("inner_steps", "outer_steps", "warm_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"bga {name}: must be an integer >= 0, got {v!r}")
        for name in ("step_size", "inner_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"bga {name}: must be a finite number > 0, got {v}")
        _momentum_fraction(self.momentum)
        if self.init not in ("flip", "random"):
            raise ValueError(f"bga init: got {self.init!r}; allowed: flip, random")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"bga val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"bga dtype: got {self.dtype!r}; allowed: float32, float64")


def _momentum_fraction(gamma: float) -> Fraction:
    """γ as num/den with den ≤ 255, so one step's lost remainder fits in a byte."""
    frac = Fraction(gamma).limit_denominator(255)
    if not 0 < gamma < 1 or abs(float(frac) - gamma) > 1e-12:
        raise ValueError(
            f"bga momentum: must be in (0, 1) and equal to a fraction with denominator <= 255 "
            f"(e.g. 0.9 = 9/10), got {gamma}"
        )
    return frac


# --------------------------------------------------------------------------- inner problem
class InnerProblem:
    """Softmax regression loss on clean ∪ poisoned points, with its closed-form derivatives.

    Parameters are one matrix θ ∈ R^{(F+1)×L} (the last row is the bias: inputs carry a
    constant 1). The loss is L(θ) = Σᵢ cᵢ ℓᵢ(θ), ℓᵢ the cross-entropy of example i, with
    weight c = ``clean_weight``/Z on clean and 1/Z on poisoned examples, Z = Σ weights.
    """

    def __init__(
        self,
        x_clean: Tensor,
        y_clean: Tensor,
        y_poison: Tensor,
        num_classes: int,
        *,
        clean_weight: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n, p = x_clean.shape[0], y_poison.shape[0]
        self.num_features = x_clean.shape[1]
        self.num_classes = num_classes
        self.dtype = dtype
        self.num_clean = n
        total = clean_weight * n + p
        self.c_poison = 1.0 / total
        weight = torch.full((n + p, 1), clean_weight / total, dtype=dtype)
        weight[n:] = self.c_poison
        self.weight = weight
        y = torch.cat([y_clean, y_poison])
        self.onehot = torch.nn.functional.one_hot(y, num_classes).to(dtype)
        self.x = torch.ones(n + p, self.num_features + 1, dtype=dtype)
        self.x[:n, :-1] = x_clean.to(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_features + 1, self.num_classes)

    def set_poison(self, x_poison: Tensor) -> None:
        """Replace the poisoned points' features (rows after the clean ones)."""
        self.x[self.num_clean :, :-1] = x_poison.to(self.dtype)

    def derivatives(self, theta: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """∇L(θ), the Hessian-vector product H(θ)u, and for the poisoned rows p and J·s.

        One fused pass: [Z | S] = X̃[θ | u]; P = softmax(Z); J s = P ⊙ (S − ⟨P, S⟩) (J the
        softmax Jacobian, s = X̃u); then [∇L | Hu] = X̃ᵀ[c(P − Y) | c·J s]. The forward pass
        calls this with u = 0 so that ∇L is computed by the very same operations, hence bit
        for bit equal in the reverse pass (needed for exact reversal).
        """
        L = self.num_classes
        zs = self.x @ torch.cat([theta, u], dim=1)
        z, s = zs[:, :L], zs[:, L:]
        prob = torch.softmax(z, dim=1)
        js = prob * (s - (prob * s).sum(1, keepdim=True))
        gh = self.x.T @ (self.weight * torch.cat([prob - self.onehot, js], dim=1))
        n = self.num_clean
        return gh[:, :L], gh[:, L:], prob[n:], js[n:]

    def mixed(self, theta: Tensor, u: Tensor, prob_p: Tensor, js_p: Tensor) -> Tensor:
        """∂/∂x_p of ⟨u, ∇_θ L⟩ (rows: poisoned points), the mixed second derivative.

        For point j: c_j [(J_j s_j) θ_xᵀ + (p_j − y_j) u_xᵀ], θ_x, u_x without the bias row.
        """
        y_p = self.onehot[self.num_clean :]
        f = self.num_features
        return self.c_poison * (js_p @ theta[:f].T + (prob_p - y_p) @ u[:f].T)


def _loss_grad(x: Tensor, onehot: Tensor, theta: Tensor) -> tuple[float, Tensor]:
    """Mean cross-entropy of θ on (x̃, Y) and its gradient w.r.t. θ (x̃ with the 1 column)."""
    z = x @ theta
    logp = torch.log_softmax(z, dim=1)
    loss = -(logp * onehot).sum(1).mean()
    grad = x.T @ (logp.exp() - onehot) / x.shape[0]
    return float(loss), grad


# ------------------------------------------------------------------ reversible inner learner
@dataclass
class ReversibleState:
    """Fixed-point state of heavy-ball descent after T steps, plus what reversal needs."""

    W: Tensor  # int64 [F+1, L]: w = W·2⁻ᴿ
    V: Tensor  # int64 [F+1, L]: v = V·2⁻ᴿ
    remainders: Tensor  # uint8 [T, F+1, L]: (num·V_t) mod den of each step


def to_fixed(w: Tensor) -> Tensor:
    """Round a float tensor to the fixed-point grid (int64, radix 2⁻ᴿ)."""
    if not bool(torch.isfinite(w).all()) or float(w.abs().max()) >= _MAX_ABS:
        raise FloatingPointError(
            f"bga: inner parameters left the fixed-point range |w| < {_MAX_ABS:g} "
            "(inner_lr too large?)"
        )
    return torch.round(w.to(torch.float64) * 2.0**RADIX_BITS).to(torch.int64)


def from_fixed(W: Tensor, dtype: torch.dtype) -> Tensor:
    """The float value of a fixed-point tensor."""
    return (W.to(torch.float64) * 2.0**-RADIX_BITS).to(dtype)


def train_forward(
    problem: InnerProblem, W0: Tensor, steps: int, lr: float, momentum: float
) -> ReversibleState:
    """T steps of heavy-ball GD from (W0, V = 0), keeping only the final state and remainders.

    V ← ⌊num·V/den⌋ − round(η∇L(w)·2ᴿ); W ← W + V. The remainder num·V mod den is the only
    bit loss, so it is stored (one byte per parameter and step).
    """
    frac = _momentum_fraction(momentum)
    num, den = frac.numerator, frac.denominator
    W = W0.clone()
    V = torch.zeros_like(W0)
    rem = torch.empty((steps, *W0.shape), dtype=torch.uint8)
    zero = torch.zeros(problem.shape, dtype=problem.dtype)
    for t in range(steps):
        g, _, _, _ = problem.derivatives(from_fixed(W, problem.dtype), zero)
        G = to_fixed(lr * g)
        scaled = V * num
        q = torch.div(scaled, den, rounding_mode="floor")
        rem[t] = (scaled - q * den).to(torch.uint8)
        V = q - G
        W = W + V
        if max(int(V.abs().max()), int(W.abs().max())) >= _MAX_ABS * 2.0**RADIX_BITS:
            raise FloatingPointError(
                f"bga: inner parameters left the fixed-point range |w| < {_MAX_ABS:g} at step "
                f"{t + 1} (inner_lr too large?)"
            )
    return ReversibleState(W=W, V=V, remainders=rem)


@dataclass
class BackGradient:
    """Result of the reverse pass: ∂A/∂x_p, the recovered start and the reversal's exactness."""

    dx: Tensor  # [P, F]
    W0: Tensor  # int64: the recovered initial parameters
    V0: Tensor  # int64: the recovered initial velocity (0 when exact)
    inexact: int  # entries whose reverse division was not exact (0: bit-exact reversal)


def back_gradient(
    problem: InnerProblem,
    state: ReversibleState,
    dA_dw: Tensor,
    lr: float,
    momentum: float,
) -> BackGradient:
    """Reverse the T inner steps exactly and accumulate ∂A/∂x_p (Maclaurin et al., Alg. 2).

    Adjoints (dw, dv) of (w_{t+1}, v_{t+1}); with u = dv + dw (v_{t+1} also moves w_{t+1}):
    dx_p −= η ∂²L/∂x_p∂w · u; dw −= η H(w_t) u; dv = γu; then w_t = w_{t+1} − v_{t+1} and
    v_t = (v_{t+1} + η∇L(w_t))/γ, the division made exact by the stored remainder.
    """
    frac = _momentum_fraction(momentum)
    num, den = frac.numerator, frac.denominator
    dtype = problem.dtype
    W, V = state.W.clone(), state.V.clone()
    dw = dA_dw.to(dtype)
    dv = torch.zeros_like(dw)
    n_poison = problem.x.shape[0] - problem.num_clean
    dx = torch.zeros(n_poison, problem.num_features, dtype=dtype)
    inexact = 0
    for t in range(state.remainders.shape[0] - 1, -1, -1):
        W = W - V
        theta = from_fixed(W, dtype)
        u = dv + dw
        g, hu, prob_p, js_p = problem.derivatives(theta, u)
        dx -= lr * problem.mixed(theta, u, prob_p, js_p)
        dw = dw - lr * hu
        dv = float(frac) * u
        G = to_fixed(lr * g)
        scaled = (V + G) * den + state.remainders[t].to(torch.int64)
        V = torch.div(scaled, num, rounding_mode="floor")
        inexact += int((scaled - V * num).count_nonzero())
    return BackGradient(dx=dx, W0=W, V0=V, inexact=inexact)


# ----------------------------------------------------------------------------- the attack
def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def initial_poison(
    x_train: Tensor, y_train: Tensor, count: int, num_classes: int, init: Init,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Copies of ``count`` distinct random training points with flipped or random labels."""
    n = x_train.shape[0]
    if count > n:
        raise ValueError(f"bga: budget asks for {count} points but D_tr has only {n}")
    idx = torch.randperm(n, generator=generator)[:count]
    y = y_train[idx]
    if init == "flip":
        y_p = num_classes - 1 - y
    else:  # a uniformly random label other than the true one
        shift = torch.randint(1, num_classes, (count,), generator=generator)
        y_p = (y + shift) % num_classes
    return x_train[idx].clone(), y_p


def generate_poison(
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    *,
    budget: float = BGASettings.budget,
    T: int = BGASettings.inner_steps,
    outer_steps: int = BGASettings.outer_steps,
    step_size: float = BGASettings.step_size,
    inner_lr: float = BGASettings.inner_lr,
    momentum: float = BGASettings.momentum,
    warm_steps: int = BGASettings.warm_steps,
    init: Init = "flip",
    num_classes: int | None = None,
    clean_weight: float = 1.0,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    progress: bool | Callable[[int, float], None] = False,
) -> tuple[Tensor, Tensor]:
    """Poisoned points (x_p, y_p) for softmax regression by back-gradient optimization.

    ``round(budget · clean_weight · len(x_train))`` points start as training points with
    flipped/random labels (``init``) and move by projected gradient ascent in [0, 1]^F to
    maximize the validation cross-entropy of the model after T inner steps (module
    docstring). ``clean_weight`` makes each clean example count that many times in the inner
    loss, so that a D_tr split off from the victim's data keeps the victim's poison share.
    The ascent step decays linearly from ``step_size`` to ``step_size``/10.
    ``progress``: True shows a bar; a callable gets (outer step, validation loss).
    Returns x_p with x_train's trailing shape (float32, in [0, 1]) and y_p (int64).
    """
    settings = BGASettings(budget=budget, inner_steps=T, outer_steps=outer_steps,
                           step_size=step_size, inner_lr=inner_lr, momentum=momentum,
                           warm_steps=warm_steps, init=init)
    settings.validate()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    L = int(num_classes) if num_classes is not None else int(max(y_train.max(), y_val.max())) + 1
    xt, xv = _flat(x_train).to(dtype), _flat(x_val).to(dtype)
    count = round(budget * clean_weight * xt.shape[0])
    x_p, y_p = initial_poison(xt, y_train, count, L, init, g)
    if count == 0:
        return x_p.float().reshape(0, *x_train.shape[1:]), y_p

    problem = InnerProblem(xt, y_train, y_p, L, clean_weight=clean_weight, dtype=dtype)
    val_x = torch.cat([xv, torch.ones(xv.shape[0], 1, dtype=dtype)], dim=1)
    val_y = torch.nn.functional.one_hot(y_val, L).to(dtype)
    W0 = to_fixed(warm_start(xt, y_train, L, warm_steps, inner_lr, momentum, dtype))

    report = _progress(progress, outer_steps)
    for step in range(outer_steps):
        problem.set_poison(x_p)
        state = train_forward(problem, W0, T, inner_lr, momentum)
        loss, dA = _loss_grad(val_x, val_y, from_fixed(state.W, dtype))
        bg = back_gradient(problem, state, dA, inner_lr, momentum)
        report(step, loss)
        norm = bg.dx.norm(dim=1, keepdim=True).clamp_min(1e-30)
        step_k = step_size * (1.0 - 0.9 * step / max(outer_steps - 1, 1))
        x_p = (x_p + step_k * bg.dx / norm).clamp_(0.0, 1.0)
    report(outer_steps, float("nan"))
    return x_p.float().reshape(count, *x_train.shape[1:]), y_p


def warm_start(
    x: Tensor, y: Tensor, num_classes: int, steps: int, lr: float, momentum: float,
    dtype: torch.dtype,
) -> Tensor:
    """θ₀: the clean model, ``steps`` of the inner learner (heavy-ball GD) from zero."""
    xt = torch.cat([x.to(dtype), torch.ones(x.shape[0], 1, dtype=dtype)], dim=1)
    onehot = torch.nn.functional.one_hot(y, num_classes).to(dtype)
    theta = torch.zeros(xt.shape[1], num_classes, dtype=dtype)
    v = torch.zeros_like(theta)
    for _ in range(steps):
        _, grad = _loss_grad(xt, onehot, theta)
        v = momentum * v - lr * grad
        theta = theta + v
    return theta


def _progress(progress: bool | Callable[[int, float], None], total: int
              ) -> Callable[[int, float], None]:
    if callable(progress):
        return progress
    if not progress:
        return lambda step, loss: None
    from fedpoison.progress import tqdm_bar

    return bar_reporter(tqdm_bar(total=total, desc="bga poison", unit="step"), total)


def bar_reporter(bar: Any, total: int) -> Callable[[int, float], None]:
    """A ``report(step, loss)`` hook that drives ``bar`` (closed at step ``total``)."""

    def report(step: int, loss: float) -> None:
        if step >= total:
            bar.close()
            return
        bar.set_postfix_str(f"val_loss={loss:.4f}", refresh=False)
        bar.update(1)

    return report


# ------------------------------------------------------------------ federated placement
def place_poison(
    count: int, compromised: Tensor, placement: Placement, generator: torch.Generator
) -> Tensor:
    """Owner (worker id) of each poisoned point (Fang et al., Section 4.4).

    ``single-worker``: all points on one compromised worker, chosen uniformly at random;
    ``uniform``: each point on a compromised worker chosen uniformly at random (independently).
    """
    compromised = compromised.to(torch.int64).reshape(-1)
    if compromised.numel() == 0:
        raise ValueError("bga: placing poisoned points needs at least one compromised worker")
    c = compromised.numel()
    if placement == "single-worker":
        pick = torch.randint(c, (1,), generator=generator).expand(count)
    elif placement == "uniform":
        pick = torch.randint(c, (count,), generator=generator)
    else:
        raise ValueError(f"poison_placement: got {placement!r}; allowed: uniform, single-worker")
    return compromised[pick].clone()


def _poison_seed(seed: int) -> torch.Generator:
    """The poison's own random stream (distinct from the run's other streams)."""
    state = np.random.SeedSequence([seed, 0x626761]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def poison_for(
    x: Tensor, y: Tensor, num_classes: int, settings: BGASettings, seed: int,
    *, progress: bool | Callable[[int, float], None] = False,
) -> tuple[Tensor, Tensor]:
    """Generate the poison for the clean training set (x, y) as the attacker of 4.4 does.

    Full knowledge: with ``val_fraction`` 0 the whole clean set is both D_tr and D_val;
    otherwise a random ``val_fraction`` of it is D_val and the rest D_tr, weighted in the
    inner loss so that it stands for all of (x, y) (the victim's poison share is kept).
    Deterministic in ``seed``.
    """
    g = _poison_seed(seed)
    n = x.shape[0]
    if settings.val_fraction == 0.0:
        tr = val = torch.arange(n)
    else:
        perm = torch.randperm(n, generator=g)
        n_val = max(1, round(settings.val_fraction * n))
        val, tr = perm[:n_val].sort()[0], perm[n_val:].sort()[0]
        if tr.numel() == 0:
            raise ValueError(f"bga: val_fraction {settings.val_fraction} leaves no D_tr of {n}")
    return generate_poison(
        x[tr], y[tr], x[val], y[val],
        budget=settings.budget, T=settings.inner_steps, outer_steps=settings.outer_steps,
        step_size=settings.step_size, inner_lr=settings.inner_lr, momentum=settings.momentum,
        warm_steps=settings.warm_steps, init=settings.init, num_classes=num_classes,
        clean_weight=n / tr.numel(), dtype=getattr(torch, settings.dtype), generator=g,
        progress=progress,
    )


def cached_poison(
    x: Tensor, y: Tensor, num_classes: int, settings: BGASettings, seed: int,
    *, dataset: str | None = None, train_subset: int | None = None,
    progress: bool | Callable[[int, float], None] = False, info: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`poison_for`, through the on-disk cache (key: every input that changes it).

    The key holds the data's content digest (so any subset seed/size is covered), its
    ``dataset``/``train_subset`` labels, ``seed``, every setting, the fixed-point radix and
    the torch and fedpoison versions. ``info`` receives whether it was a cache hit.
    """
    from fedpoison import __version__
    from fedpoison.attacks.poison_cache import cached, tensor_digest

    params = {
        "dataset": dataset,
        "train_subset": train_subset,
        "seed": seed,
        "data": tensor_digest(x, y),
        "num_classes": num_classes,
        "settings": dataclasses.asdict(settings),
        "radix_bits": RADIX_BITS,
        "torch": torch.__version__.split("+")[0],
        "version": __version__,
    }
    return cached(
        "bga", params,
        lambda: poison_for(x, y, num_classes, settings, seed, progress=progress),
        info=info,
    )


def bga_attack(ctx: DataAttackContext, *, budget: float = 0.04,
               placement: str = "uniform", **settings: Any) -> TrainingData:
    """DataAttack ``bga``: append back-gradient poisoned points to compromised workers.

    The points are generated once from the whole clean training set (the attacker has full
    knowledge, Section 4.4) with the run's seed, cached on disk
    (:mod:`fedpoison.attacks.poison_cache`), then placed per ``placement`` (``uniform`` by
    default) with the attack's random stream. ``settings`` are the other
    :class:`BGASettings` fields.
    """
    config = BGASettings(budget=budget, **settings)
    config.validate()
    data = ctx.data
    bar = ctx.progress_bar("bga poison", config.outer_steps)
    try:
        x_p, y_p = cached_poison(
            data.x, data.y, ctx.num_classes, config, ctx.seed,
            dataset=ctx.dataset or None, train_subset=ctx.train_subset,
            progress=bar_reporter(bar, config.outer_steps),
        )
    finally:
        bar.close()
    owner_p = place_poison(x_p.shape[0], ctx.compromised_workers, placement,  # type: ignore[arg-type]
                           ctx.generator)
    return TrainingData(
        x=torch.cat([data.x, x_p.to(data.x.dtype).reshape(-1, *data.x.shape[1:])]),
        y=torch.cat([data.y, y_p.to(data.y.dtype)]),
        owner=torch.cat([data.owner, owner_p.to(data.owner.dtype)]),
    )


_DEFAULTS = BGASettings()
register_attack(
    "bga", bga_attack,
    reference="Muñoz-González et al., AISec 2017 (back-gradient poisoning), as compared in "
              "Fang, Cao, Jia, Gong, USENIX Security 2020, Section 4.4 and Table 5",
    summary="data poisoning: back-gradient optimized points (labels flipped) added to the "
            "compromised workers' data",
    data=True, knowledge=(), goals=(),
    options=[
        Option("budget", _DEFAULTS.budget, "poisoned points as a fraction of the training set "
               "(paper: 240/6000)", low=0.0, alias="poison_budget"),
        Option("placement", "uniform", "single-worker: all points on one compromised worker; "
               "uniform: each point on a random compromised worker",
               choices=("uniform", "single-worker"), alias="poison_placement"),
        Option("inner_steps", _DEFAULTS.inner_steps, "T, steps of the inner heavy-ball GD",
               low=0),
        Option("outer_steps", _DEFAULTS.outer_steps, "projected gradient-ascent steps", low=0),
        Option("step_size", _DEFAULTS.step_size, "outer step (L2 norm, pixel units)", low=0.0,
               low_open=True),
        Option("inner_lr", _DEFAULTS.inner_lr, "η of the inner learner", low=0.0,
               low_open=True),
        Option("momentum", _DEFAULTS.momentum, "γ of the inner learner", low=0.0, high=1.0,
               high_open=True),
        Option("warm_steps", _DEFAULTS.warm_steps, "steps of the clean warm start", low=0),
        Option("init", _DEFAULTS.init, "initial poisoned labels", choices=("flip", "random")),
        Option("val_fraction", _DEFAULTS.val_fraction, "share of the clean set held out as "
               "D_val (0: the whole set is both)", low=0.0, high=1.0, high_open=True),
        Option("dtype", _DEFAULTS.dtype, "precision of the outer problem",
               choices=("float32", "float64")),
    ],
)
